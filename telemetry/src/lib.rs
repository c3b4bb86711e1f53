//! OpenTelemetry trace export for Backhaul's binaries, on the `tracing`
//! ecosystem: the spans both binaries already record (the inference
//! server's `generation`, the operator's reconciles) become OTLP spans when
//! an endpoint is configured, and nothing changes when it is not (the
//! default).
//!
//! - [`OtlpArgs`] is the one definition of the flags (`--otlp-endpoint`,
//!   `--otlp-sample-ratio`, `--otlp-service-name`, with the standard
//!   `OTEL_*` environment variables as fallbacks), flattened into both
//!   binaries' configurations.
//! - [`OtlpArgs::layer`] builds a `tracing` layer exporting over
//!   OTLP/HTTP with protobuf bodies, batched on the SDK's own thread,
//!   and a [`Flush`] guard that exports what is left when the binary ends.
//! - [`continue_trace`] makes a span the child of a W3C `traceparent`, so
//!   a region's spans join the routing Worker's trace.
//! - [`download_progress`]: the progress line a weight cache's fill prints
//!   and the operator reads back from its log.

pub mod download_progress;
pub use download_progress::DownloadProgress;

use std::{collections::HashMap, time::Duration};

use opentelemetry::{propagation::TextMapPropagator, trace::TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracer, SdkTracerProvider},
};
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};

/// How long [`Flush`] waits for the last batch on exit.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one export may take before it is dropped.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The variable `--otlp-endpoint` falls back to (OpenTelemetry's own name).
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The variable `--otlp-sample-ratio` falls back to.
pub const SAMPLE_RATIO_ENV: &str = "OTEL_TRACES_SAMPLER_ARG";

/// Trace export settings (the same flags in the operator and the inference
/// server).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OtlpArgs {
    /// OTLP/HTTP collector base URL for traces, e.g.
    /// `http://otel-collector.observability:4318`; spans go to its
    /// `/v1/traces` (protobuf). Unset: no spans are exported.
    #[arg(
        long = "otlp-endpoint",
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT"
    )]
    pub endpoint: Option<String>,
    /// Share of new traces sampled, 0 to 1. A trace continued from a
    /// `traceparent` follows its sampled flag instead.
    #[arg(
        long = "otlp-sample-ratio",
        global = true,
        env = SAMPLE_RATIO_ENV,
        default_value_t = 1.0,
        value_parser = parse_ratio
    )]
    pub sample_ratio: f64,
    /// `service.name` of the exported spans (default: the binary's name).
    #[arg(long = "otlp-service-name", global = true, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("`{value}` is not a number from 0 to 1")),
    }
}

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP trace export to `{endpoint}`: {source}")]
pub struct TelemetryError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Exports the spans still batched when dropped (or on [`Flush::flush`]).
#[derive(Debug)]
pub struct Flush {
    provider: SdkTracerProvider,
}

impl Flush {
    /// Exports what is batched now, waiting for the collector.
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "could not flush spans to the OTLP collector");
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        // A collector that is down must not hold up exit.
        let _ = self.provider.shutdown_with_timeout(FLUSH_TIMEOUT);
    }
}

impl OtlpArgs {
    /// The environment that gives a child process (an inference pod) the
    /// same export: empty when export is off.
    pub fn child_env(&self) -> Vec<(&'static str, String)> {
        match self.endpoint.as_deref().filter(|e| !e.is_empty()) {
            None => Vec::new(),
            Some(endpoint) => vec![
                (ENDPOINT_ENV, endpoint.to_string()),
                (SAMPLE_RATIO_ENV, self.sample_ratio.to_string()),
            ],
        }
    }

    /// The export layer for a subscriber, or `None` when no endpoint is
    /// set. `default_service` names the service unless
    /// `--otlp-service-name` does. Call inside a Tokio runtime or not:
    /// export runs on the SDK's own thread.
    #[allow(clippy::type_complexity)]
    pub fn layer<S>(
        &self,
        default_service: &'static str,
    ) -> Result<Option<(OpenTelemetryLayer<S, SdkTracer>, Flush)>, TelemetryError>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        let Some(base) = self.endpoint.as_deref().filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let endpoint = traces_url(base);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(&endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|source| TelemetryError {
                endpoint: endpoint.clone(),
                source,
            })?;
        let service = self
            .service_name
            .clone()
            .unwrap_or_else(|| default_service.to_string());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                self.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(service)
                    .with_attribute(opentelemetry::KeyValue::new(
                        "service.version",
                        env!("CARGO_PKG_VERSION"),
                    ))
                    .build(),
            )
            .build();
        let tracer = provider.tracer(default_service);
        Ok(Some((
            tracing_opentelemetry::layer().with_tracer(tracer),
            Flush { provider },
        )))
    }
}

/// `base` + `/v1/traces`, as the OTLP spec builds a signal's URL from
/// `OTEL_EXPORTER_OTLP_ENDPOINT`; a URL already ending in it is kept.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Makes `span` a child of the remote span in a W3C `traceparent`. An
/// invalid header is ignored (the span starts a trace of its own), as the
/// W3C spec asks; without an export layer this does nothing.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    // Fails only when no layer is installed, which is the off state.
    let _ = span.set_parent(parent);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        otlp: OtlpArgs,
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_given() {
        let cli = Cli::try_parse_from(["bin"]).unwrap();
        assert_eq!(cli.otlp.endpoint, None);
        assert_eq!(cli.otlp.sample_ratio, 1.0);
        let layer = cli
            .otlp
            .layer::<tracing_subscriber::Registry>("backhaul-test")
            .unwrap();
        assert!(layer.is_none());
    }

    #[test]
    fn the_sample_ratio_is_bounded_at_its_edges() {
        for ok in ["0", "1", "0.25"] {
            assert!(Cli::try_parse_from(["bin", "--otlp-sample-ratio", ok]).is_ok());
        }
        for bad in ["-0.01", "1.01", "half"] {
            let error = Cli::try_parse_from(["bin", &format!("--otlp-sample-ratio={bad}")])
                .err()
                .unwrap()
                .to_string();
            assert!(error.contains("from 0 to 1"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_child_gets_the_same_export_through_the_variables_the_flags_read() {
        let off = Cli::try_parse_from(["bin"]).unwrap().otlp;
        assert!(off.child_env().is_empty());
        let on = Cli::try_parse_from([
            "bin",
            "--otlp-endpoint",
            "http://collector:4318",
            "--otlp-sample-ratio",
            "0.5",
        ])
        .unwrap()
        .otlp;
        let env = on.child_env();
        assert_eq!(
            env,
            vec![
                (ENDPOINT_ENV, "http://collector:4318".to_string()),
                (SAMPLE_RATIO_ENV, "0.5".to_string()),
            ]
        );
        // What the child's parser reads back from those variables.
        let command = <Cli as clap::CommandFactory>::command();
        for (name, _) in &env {
            assert!(
                command
                    .get_arguments()
                    .any(|a| a.get_env().is_some_and(|e| e == *name)),
                "{name}"
            );
        }
    }

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
