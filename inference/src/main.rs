//! `backhaul-inference`: parse flags, start the server, drain on
//! SIGTERM/SIGINT, exit 0 once drained.

use anyhow::Context;
use backhaul_inference::{Config, ModelSource, start, telemetry};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    require_cpu_features();
    run()
}

/// A build for x86-64-v3 (`-C target-cpu=x86-64-v3`: AVX2 and FMA, which
/// candle's quantized kernels need to use SIMD at all) dies of an illegal
/// instruction on an older CPU, somewhere in the middle of loading a model.
/// Say so at once instead. Checked before the runtime starts, while nothing
/// compiled for AVX2 has run yet.
fn require_cpu_features() {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    {
        let missing: Vec<&str> = [
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
            ("bmi2", std::arch::is_x86_feature_detected!("bmi2")),
        ]
        .into_iter()
        .filter_map(|(name, present)| (!present).then_some(name))
        .collect();
        if !missing.is_empty() {
            eprintln!(
                "backhaul-inference: this build is for x86-64-v3 CPUs (AVX2, FMA, BMI2; Intel \
                 Haswell, AMD Excavator and later), and this CPU lacks {}; use a build for \
                 baseline x86-64",
                missing.join(", ")
            );
            std::process::exit(2);
        }
    }
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let Config {
        model,
        serve,
        log_format,
        download_only,
        otlp,
    } = Config::parse();
    let _flush = telemetry::init(log_format, &otlp).context("setting up trace export")?;
    // mistral.rs's NCCL tensor parallelism runs this binary again, with the
    // same flags, as one worker process per further GPU. A worker loads its
    // shard and then serves the engine's replicated steps inside the load
    // call; it must not bind the server's ports, which the first process
    // holds.
    if mistralrs::core::distributed::is_daemon() {
        tracing::info!("tensor-parallel worker: loading this process's shard");
        backhaul_inference::Engine::load(&model)
            .await
            .context("loading the model in a tensor-parallel worker")?;
        return Ok(());
    }
    telemetry::log_build_info();
    if download_only {
        return download(&model).await;
    }

    let handle = start(serve, ModelSource::Load(model))
        .await
        .context("starting the server")?;
    let drain = handle.drain_token();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown signal received; draining");
        drain.cancel();
    });
    handle.wait().await.context("serving")?;
    Ok(())
}

/// `--download-only`: fetch and verify the model, then exit.
async fn download(model: &backhaul_inference::config::ModelArgs) -> anyhow::Result<()> {
    if backhaul_inference::model_source::HubRef::parse(&model.model).is_none() {
        anyhow::bail!(
            "--download-only needs an hf://org/repo[@revision] model, not `{}`",
            model.model
        );
    }
    let local = backhaul_inference::model_source::fill(model)
        .await
        .context("downloading the model")?;
    tracing::info!(model = %model.model, ?local, "model downloaded and verified");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
