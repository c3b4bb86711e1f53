//! Command-line and environment configuration. Every flag also reads a
//! `BACKHAUL_*` variable (the trace export flags: OpenTelemetry's standard
//! `OTEL_*` ones); the operator builds pod arguments from exactly
//! these names, so renaming one is a breaking change.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, ValueEnum};

/// Backhaul inference server: one model, served over gRPC and an
/// OpenAI-compatible HTTP API.
#[derive(Debug, Clone, Parser)]
#[command(name = "backhaul-inference", version, about, long_about = None)]
pub struct Config {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Log line format.
    #[arg(long, env = "BACKHAUL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Download an `hf://` model into --model-cache, check every file
    /// against the Hub's listing (size and hash; a bad file is fetched
    /// again, once), and exit without serving: a weight cache's fill.
    #[arg(long, env = "BACKHAUL_DOWNLOAD_ONLY")]
    pub download_only: bool,
    /// OpenTelemetry trace export (off unless --otlp-endpoint is set).
    #[command(flatten, next_help_heading = "Tracing")]
    pub otlp: backhaul_telemetry::OtlpArgs,
}

/// What to load and where to run it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// Model to serve: a GGUF file, a directory (safetensors, or GGUF with
    /// --gguf-file), or `hf://org/repo[@revision]` downloaded into
    /// --model-cache.
    #[arg(long, env = "BACKHAUL_MODEL")]
    pub model: String,
    /// Weights format; `auto` picks GGUF for `.gguf` files or when
    /// --gguf-file is given, and plain safetensors otherwise.
    #[arg(long, env = "BACKHAUL_FORMAT", value_enum, default_value_t = ModelFormat::Auto)]
    pub format: ModelFormat,
    /// GGUF file name inside a directory or hf:// repo (repeat for sharded
    /// models).
    #[arg(long = "gguf-file", env = "BACKHAUL_GGUF_FILE", value_delimiter = ',')]
    pub gguf_files: Vec<String>,
    /// Name clients use in `model`; defaults to the model's file or repo name.
    #[arg(long, env = "BACKHAUL_SERVED_NAME")]
    pub served_name: Option<String>,
    /// Chat template overriding the model's own: a `.jinja` file, or a
    /// `tokenizer_config.json`-style `.json` file.
    #[arg(long, env = "BACKHAUL_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
    /// In-situ quantization for plain models, e.g. `q4k`, `q8_0`, `4`, `8`.
    #[arg(long, env = "BACKHAUL_ISQ")]
    pub isq: Option<String>,
    /// Where hf:// models are downloaded.
    #[arg(
        long,
        env = "BACKHAUL_MODEL_CACHE",
        default_value = "/var/cache/backhaul/models"
    )]
    pub model_cache: PathBuf,
    /// Resolve an hf:// model from --model-cache alone, without contacting
    /// the Hub: the cache must hold a completed `--download-only` fill of
    /// the same model (a weight cache, mounted read-only). Every file is
    /// checked against the listing the fill saved.
    #[arg(long, env = "BACKHAUL_HUB_OFFLINE")]
    pub hub_offline: bool,
    /// Device to run on; `auto` uses CUDA device 0 when built with the
    /// `cuda` feature and one is present, else the CPU.
    #[arg(long, env = "BACKHAUL_DEVICE", value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Activation and weight dtype for plain models.
    #[arg(long, env = "BACKHAUL_DTYPE", value_enum, default_value_t = DtypeChoice::Auto)]
    pub dtype: DtypeChoice,
    /// How one replica splits the model over several GPUs: `tensor`
    /// (NCCL tensor parallelism over every visible GPU; a build with the
    /// `nccl` feature) or `layers` (whole layers per GPU, one GPU busy at a
    /// time; needs MISTRALRS_NO_NCCL=1 in an `nccl` build). Unset: the
    /// engine's default for the build.
    #[arg(long, env = "BACKHAUL_PARALLELISM", value_enum)]
    pub parallelism: Option<ParallelismChoice>,
    /// Most sequences the engine batches together.
    #[arg(long, env = "BACKHAUL_MAX_NUM_SEQS", default_value_t = 32)]
    pub max_num_seqs: usize,
    /// Cap on the context window (prompt plus generated tokens); defaults
    /// to the model's own. Also sizes the PagedAttention cache and device
    /// mapping.
    #[arg(long, env = "BACKHAUL_MAX_SEQ_LEN")]
    pub max_seq_len: Option<usize>,
    /// Use PagedAttention (CUDA only; ignored, with a warning, on CPU).
    #[arg(long, env = "BACKHAUL_PAGED_ATTN")]
    pub paged_attn: bool,
    /// Fraction of GPU memory PagedAttention may take for its KV cache.
    #[arg(long, env = "BACKHAUL_PAGED_ATTN_GPU_MEM_UTIL", default_value_t = 0.9)]
    pub paged_attn_gpu_mem_util: f32,
}

/// How requests are accepted, bounded and drained.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Serving")]
pub struct ServeArgs {
    /// gRPC listen address (Inference, Health, reflection).
    #[arg(long, env = "BACKHAUL_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (OpenAI API, /health, /ready).
    #[arg(long, env = "BACKHAUL_HTTP_ADDR", default_value = "0.0.0.0:8000")]
    pub http_addr: SocketAddr,
    /// Metrics listen address: plain HTTP without a credential, serving
    /// only /metrics (Prometheus) and /health. Do not expose it beside the
    /// API.
    #[arg(long, env = "BACKHAUL_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// File of the bearer tokens accepted on /v1/* and the
    /// backhaul.inference.v1 gRPC service: one per line, blank lines and
    /// `#` comments ignored; every line is accepted. Re-read when it
    /// changes (a mounted Secret), so rotation needs no restart.
    #[arg(long, env = "BACKHAUL_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Serve the API without any credential (local development). Without
    /// this or --api-key-file the server refuses to start.
    #[arg(long, env = "BACKHAUL_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// How often --api-key-file is checked for changes, e.g. `1s`, `500ms`.
    #[arg(long, env = "BACKHAUL_API_KEY_RELOAD_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub api_key_reload_interval: Duration,
    /// Requests generating at once; more wait in the queue.
    #[arg(long, env = "BACKHAUL_MAX_IN_FLIGHT", default_value_t = 32)]
    pub max_in_flight: usize,
    /// Requests waiting for a generation slot; beyond this a request is
    /// refused at once with RESOURCE_EXHAUSTED / HTTP 429 and Retry-After.
    #[arg(long, env = "BACKHAUL_MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,
    /// On SIGTERM/SIGINT, how long in-flight requests may run before they
    /// are cancelled, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, env = "BACKHAUL_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// Events a streaming client may fall behind before it is cut off (its
    /// sequence cancelled) so that it cannot hold up the batch.
    #[arg(long, env = "BACKHAUL_STREAM_BUFFER", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(2..))]
    pub stream_buffer: u32,
    /// On SIGTERM/SIGINT, how long readiness reports NOT_SERVING while new
    /// requests are still accepted, before the drain starts refusing them:
    /// time for load balancers to stop sending work here. Under Kubernetes
    /// the operator's preStop sleep does this, and the default 0s stays.
    #[arg(long, env = "BACKHAUL_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    #[command(flatten)]
    pub limits: Limits,
}

/// Per-request and per-connection bounds. Each has a default here and a
/// test at its edge (tests/limits.rs); docs/inference-limits.md lists them.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Limits")]
pub struct Limits {
    /// Longest a request may run, from receipt to its last token, on either
    /// API; a gRPC `grpc-timeout` can only shorten it. Past it the request
    /// ends with DEADLINE_EXCEEDED / HTTP 504 (or a final error event).
    #[arg(long, env = "BACKHAUL_REQUEST_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Tokens generated when a chat request sets no `max_tokens` (capped by
    /// the room left in the context window).
    #[arg(long, env = "BACKHAUL_DEFAULT_MAX_TOKENS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub default_max_tokens: u32,
    /// Largest `max_tokens` a request may ask for; more is refused (400).
    #[arg(long, env = "BACKHAUL_MAX_TOKENS_LIMIT", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_tokens_limit: u32,
    /// Largest HTTP request body in bytes; more is refused with 413.
    #[arg(long, env = "BACKHAUL_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest gRPC request message in bytes; more is refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "BACKHAUL_MAX_GRPC_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_grpc_message_bytes: usize,
    /// Longest stop sequence, in bytes (at most 16 per request).
    #[arg(long, env = "BACKHAUL_MAX_STOP_BYTES", default_value_t = 256)]
    pub max_stop_bytes: usize,
    /// Largest prompt text in bytes (message contents, or the completion
    /// prompt); more is refused with 400 before anything tokenizes it.
    /// Unset, the bound is what could possibly fit the context window
    /// (context × the longest vocabulary entry × 2; docs/inference-limits.md),
    /// which a vocabulary with one very long token makes loose.
    #[arg(long, env = "BACKHAUL_MAX_PROMPT_BYTES")]
    pub max_prompt_bytes: Option<usize>,
    /// Prompts tokenized at once; more wait (cancellably, within their
    /// deadline) for a turn. Tokenization runs on the engine's loop, so
    /// each one delays running streams while it lasts.
    #[arg(long, env = "BACKHAUL_MAX_CONCURRENT_TOKENIZATIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_tokenizations: u32,
    /// Time a client has to send a request's headers (HTTP/1.1); a
    /// keep-alive connection waiting for its next request is closed after
    /// it too.
    #[arg(long, env = "BACKHAUL_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[arg(long, env = "BACKHAUL_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Open connections per listener (API, gRPC, metrics); a connection
    /// beyond it is closed as soon as it is accepted.
    #[arg(long, env = "BACKHAUL_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// HTTP/2 keepalive: a PING this often on a connection...
    #[arg(long, env = "BACKHAUL_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// ...closes it when unanswered for this long.
    #[arg(long, env = "BACKHAUL_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub http2_keepalive_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelFormat {
    Auto,
    Gguf,
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeChoice {
    Auto,
    Bf16,
    F16,
    F32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParallelismChoice {
    Tensor,
    Layers,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown duration unit `{unit}` in `{text}`")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3d").is_err());
    }

    #[test]
    fn every_flag_has_a_backhaul_env_var() {
        let command = Config::command();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no env var"));
            // The trace export flags read OpenTelemetry's own variables,
            // which collectors' injectors set.
            let env = env.to_string_lossy();
            assert!(
                env.starts_with("BACKHAUL_") || env.starts_with("OTEL_"),
                "{id}: {env}"
            );
        }
        command.debug_assert();
    }

    #[test]
    fn defaults_match_the_documented_ports() {
        let config = Config::try_parse_from(["backhaul-inference", "--model", "m.gguf"]).unwrap();
        assert_eq!(config.serve.grpc_addr.port(), 50051);
        assert_eq!(config.serve.http_addr.port(), 8000);
        assert_eq!(config.serve.metrics_addr.port(), 9090);
        assert_eq!(config.serve.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.serve.api_key_file, None);
        assert!(!config.serve.allow_unauthenticated);
        assert_eq!(config.serve.api_key_reload_interval, Duration::from_secs(1));
    }

    #[test]
    fn limits_have_their_documented_defaults() {
        let config = Config::try_parse_from(["backhaul-inference", "--model", "m.gguf"]).unwrap();
        let l = &config.serve.limits;
        assert_eq!(config.serve.drain_delay, Duration::ZERO);
        assert_eq!(l.request_timeout, Duration::from_secs(600));
        assert_eq!((l.default_max_tokens, l.max_tokens_limit), (1024, 8192));
        assert_eq!(l.max_body_bytes, 4 << 20);
        assert_eq!(l.max_grpc_message_bytes, 4 << 20);
        assert_eq!(l.max_stop_bytes, 256);
        assert_eq!(l.max_prompt_bytes, None);
        assert_eq!(l.max_concurrent_tokenizations, 2);
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        assert_eq!(l.max_connections, 1024);
        assert_eq!(l.http2_keepalive_interval, Duration::from_secs(30));
        assert_eq!(l.http2_keepalive_timeout, Duration::from_secs(20));
    }
}
