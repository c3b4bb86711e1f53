//! Structured logging with `tracing`: human-readable text or one JSON
//! object per line (`--log-format json`) for log pipelines. `RUST_LOG`
//! overrides the default filter.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Default filter: our crate at info, the engine's chatter at warn.
const DEFAULT_FILTER: &str = "info,mistralrs_core=warn,mistralrs_quant=warn,hyper=warn,h2=warn";

/// Installs the global subscriber; call once, first thing in `main`.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt::layer()).init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .init(),
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
