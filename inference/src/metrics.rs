//! Prometheus metrics, all prefixed `backhaul_inference_`. Labels are
//! bounded: `api` is an [`Api`], `outcome` is `ok`, `client_cancelled` or an
//! [`crate::error::InferenceError::category`], `reason` is `missing` or
//! `invalid`, `result` is `ok` or `error`. Histogram buckets follow
//! vLLM's so dashboards built for it read these too. Each server owns its
//! registry, so several servers in one process (tests) do not collide.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Which API a request came in on; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    GrpcChatStream,
    GrpcChat,
    GrpcComplete,
    OpenAiChat,
    OpenAiCompletions,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GrpcChatStream => "grpc_chat_stream",
            Self::GrpcChat => "grpc_chat",
            Self::GrpcComplete => "grpc_complete",
            Self::OpenAiChat => "openai_chat_completions",
            Self::OpenAiCompletions => "openai_completions",
        }
    }
}

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub in_flight: IntGauge,
    pub queued: IntGauge,
    pub model_load_seconds: Gauge,
    pub engine_info: IntGaugeVec,
    pub auth_refused: IntCounterVec,
    pub api_keys_loaded: IntGauge,
    pub api_key_reloads: IntCounterVec,
    pub tokenization_seconds: Histogram,
    pub connections_open: IntGaugeVec,
    pub connections_refused: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("backhaul_inference".into()), None)
            .expect("static registry prefix is valid");
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Requests by API and outcome."),
            &["api", "outcome"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from receiving a request to its last token or error.",
            )
            .buckets(E2E_BUCKETS.to_vec()),
            &["api"],
        )
        .expect("valid metric");
        let time_to_first_token = Histogram::with_opts(
            HistogramOpts::new(
                "time_to_first_token_seconds",
                "Time from receiving a request to its first generated text.",
            )
            .buckets(TTFT_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let inter_token_latency = Histogram::with_opts(
            HistogramOpts::new(
                "inter_token_latency_seconds",
                "Time between successive generated tokens of a request.",
            )
            .buckets(ITL_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let prompt_tokens =
            IntCounter::new("prompt_tokens_total", "Prompt tokens processed.").expect("valid");
        let generation_tokens =
            IntCounter::new("generation_tokens_total", "Tokens generated.").expect("valid");
        let in_flight =
            IntGauge::new("requests_in_flight", "Requests generating now.").expect("valid metric");
        let queued = IntGauge::new("requests_queued", "Requests waiting for a generation slot.")
            .expect("valid metric");
        let model_load_seconds = Gauge::new(
            "model_load_seconds",
            "Seconds the model took to load (resolve, download, load).",
        )
        .expect("valid metric");
        let engine_info = IntGaugeVec::new(
            Opts::new("engine_info", "The served model; always 1."),
            &["model", "device", "version"],
        )
        .expect("valid metric");
        let auth_refused = IntCounterVec::new(
            Opts::new(
                "auth_refused_total",
                "Requests refused for a missing or invalid bearer token, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let api_keys_loaded = IntGauge::new(
            "api_keys_loaded",
            "Bearer tokens accepted now (from --api-key-file).",
        )
        .expect("valid metric");
        let api_key_reloads = IntCounterVec::new(
            Opts::new(
                "api_key_reloads_total",
                "Looks at --api-key-file that loaded changed tokens (ok) or could not read it \
                 (error; the tokens loaded last stay in force).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let tokenization_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tokenization_seconds",
                "Time a prompt took to tokenize, from the engine taking it to its answer.",
            )
            .buckets(TTFT_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let connections_open = IntGaugeVec::new(
            Opts::new("connections_open", "Open connections, by listener."),
            &["listener"],
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "connections_refused_total",
                "Connections closed on arrival because --max-connections were open, by listener.",
            ),
            &["listener"],
        )
        .expect("valid metric");
        // Every series exists from the start, so a rate() has a baseline.
        for listener in ["api", "grpc", "metrics"] {
            connections_open.with_label_values(&[listener]);
            connections_refused.with_label_values(&[listener]);
        }
        for reason in ["missing", "invalid"] {
            auth_refused.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            api_key_reloads.with_label_values(&[result]);
        }
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(time_to_first_token.clone()),
            Box::new(inter_token_latency.clone()),
            Box::new(prompt_tokens.clone()),
            Box::new(generation_tokens.clone()),
            Box::new(in_flight.clone()),
            Box::new(queued.clone()),
            Box::new(model_load_seconds.clone()),
            Box::new(engine_info.clone()),
            Box::new(auth_refused.clone()),
            Box::new(api_keys_loaded.clone()),
            Box::new(api_key_reloads.clone()),
            Box::new(tokenization_seconds.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_refused.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            request_duration,
            time_to_first_token,
            inter_token_latency,
            prompt_tokens,
            generation_tokens,
            in_flight,
            queued,
            model_load_seconds,
            engine_info,
            auth_refused,
            api_keys_loaded,
            api_key_reloads,
            tokenization_seconds,
            connections_open,
            connections_refused,
        }
    }

    /// Counts a request that ended, and how long it took.
    pub fn record_outcome(&self, api: Api, outcome: &'static str, elapsed: std::time::Duration) {
        self.requests
            .with_label_values(&[api.as_str(), outcome])
            .inc();
        self.request_duration
            .with_label_values(&[api.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics_with_bounded_labels() {
        let metrics = Metrics::new();
        metrics.record_outcome(Api::OpenAiChat, "ok", std::time::Duration::from_millis(20));
        let text = metrics.render();
        assert!(text.contains(
            "backhaul_inference_requests_total{api=\"openai_chat_completions\",outcome=\"ok\"} 1"
        ));
        assert!(text.contains("backhaul_inference_request_duration_seconds_bucket"));
    }
}
