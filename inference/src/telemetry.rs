//! Structured logging with `tracing`: human-readable text or one JSON
//! object per line (`--log-format json`) for log pipelines, and the same
//! spans exported over OTLP when `--otlp-endpoint` is set
//! ([`backhaul_telemetry`]). `RUST_LOG` overrides the default filter.

use backhaul_telemetry::{Flush, OtlpArgs, TelemetryError};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// `service.name` of exported spans unless `--otlp-service-name` says.
const SERVICE: &str = "backhaul-inference";

/// Default filter: our crate at info, the engine's chatter at warn.
const DEFAULT_FILTER: &str = "info,mistralrs_core=warn,mistralrs_quant=warn,hyper=warn,h2=warn";

/// Installs the global subscriber; call once, first thing in `main`, and
/// keep the returned guard until exit (it exports the last spans).
pub fn init(format: LogFormat, otlp: &OtlpArgs) -> Result<Option<Flush>, TelemetryError> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => {
            let registry = registry.with(fmt::layer());
            let (export, flush) = otlp.layer(SERVICE)?.unzip();
            registry.with(export).init();
            Ok(flush)
        }
        LogFormat::Json => {
            let registry = registry.with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            );
            let (export, flush) = otlp.layer(SERVICE)?.unzip();
            registry.with(export).init();
            Ok(flush)
        }
    }
}

/// Logs what is running, so every log stream starts with the build.
pub fn log_build_info() {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        cuda = cfg!(feature = "cuda"),
        flash_attn = cfg!(feature = "flash-attn"),
        debug_assertions = cfg!(debug_assertions),
        "backhaul-inference starting"
    );
}
