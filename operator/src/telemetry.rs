//! Logging: `tracing` to stderr as text or JSON, filtered by `RUST_LOG`
//! (default `info`); the same spans (each reconcile's, with the object's
//! namespace and name) exported over OTLP when `--otlp-endpoint` is set
//! ([`backhaul_telemetry`]).

use backhaul_telemetry::{Flush, OtlpArgs, TelemetryError};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// `service.name` of exported spans unless `--otlp-service-name` says.
const SERVICE: &str = "backhaul-operator";

/// Installs the global subscriber; a second call is a no-op (tests), and
/// so exports nothing. Keep the returned guard until exit.
pub fn init(format: LogFormat, otlp: &OtlpArgs) -> Result<Option<Flush>, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let flush = match format {
        LogFormat::Text => {
            let registry = registry.with(fmt::layer().with_writer(std::io::stderr));
            let (export, flush) = otlp.layer(SERVICE)?.unzip();
            registry.with(export).try_init().ok().and(flush)
        }
        LogFormat::Json => {
            let registry = registry.with(fmt::layer().json().with_writer(std::io::stderr));
            let (export, flush) = otlp.layer(SERVICE)?.unzip();
            registry.with(export).try_init().ok().and(flush)
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "backhaul-operator starting"
    );
    Ok(flush)
}
