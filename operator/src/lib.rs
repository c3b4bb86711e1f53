//! Backhaul's Kubernetes operator.
//!
//! It turns each `ModelDeployment` (`backhaul.dev/v1alpha1`) into one GPU
//! inference Deployment, Service and (with more than one replica) PodDisruptionBudget
//! per region, and keeps the routing Worker's table true by publishing a route for
//! every region with ready replicas (docs/publication.md).
//!
//! A reconcile is a pipeline, one module per step:
//! look up (the controller's watch) → [`validate`] into a [`validate::ValidatedModelDeployment`]
//! → [`build`] (pure functions of the validated value) → [`apply`] (server-side apply,
//! field manager `backhaul-operator`) → [`observe`] (what the pods say) → desired routes,
//! handed to [`route_sync`] (the one owner of publication: signed PUT/DELETE and the
//! lease through [`publish`], on its own clock) → [`status`] (computed from what was
//! applied, observed and held, written only when it changed). [`controller`] wires the steps together;
//! [`leader`] keeps two replicas from reconciling at once.
#![forbid(unsafe_code)]

pub mod apply;
pub mod build;
pub mod cache;
pub mod config;
pub mod controller;
pub mod crd;
#[cfg(test)]
mod fake_api;
pub mod fleet;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod publish;
pub mod route_sync;
pub mod status;
pub mod telemetry;
pub mod upstream_auth;
pub mod validate;
pub mod weights_cache;

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::config::{Args, ConfigError, OperatorConfig};
use crate::controller::Context;
use crate::leader::{LeaderElector, Lost, Timing};
use crate::metrics::{Metrics, Readiness};

/// The operator's exit status when it lost leadership (distinct from 1, a
/// failure, and 2, bad flags). Its container restarts as a standby.
pub const LOST_LEADERSHIP_EXIT_CODE: i32 = 3;

/// How often readiness checks whether the watches have synced.
const SYNC_POLL: Duration = Duration::from_millis(100);

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad flags or secret.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No usable kubeconfig or in-cluster configuration.
    #[error("connecting to Kubernetes: {0}")]
    Connect(#[source] kube::Error),
    /// The HTTP client for the Worker could not be built.
    #[error("building the Worker client: {0}")]
    Publisher(#[source] reqwest::Error),
    /// The controller could not start (CRD missing, RBAC).
    #[error(
        "starting the controller (is the CRD installed? `backhaul-operator crd | kubectl apply -f -`): {0}"
    )]
    Controller(#[source] kube::Error),
    /// The metrics server failed.
    #[error("metrics server: {0}")]
    Metrics(#[source] std::io::Error),
    /// The OTLP trace exporter could not be set up.
    #[error(transparent)]
    Telemetry(#[from] backhaul_telemetry::TelemetryError),
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// A client for `config` whose every request is counted in
/// `backhaul_operator_kube_requests_total`.
pub fn counted_client(config: kube::Config, metrics: &Metrics) -> Result<Client, kube::Error> {
    let counter = metrics.clone();
    let count =
        tower::util::MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
            counter.kube_request(request.method());
            request
        });
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&count)
        .build())
}

/// Chooses rustls' process-wide crypto provider (ring, as kube's `ring`
/// feature asks). The workspace also links aws-lc-rs (mistral.rs' HTTP
/// client), and with both present rustls refuses to guess, so every process
/// that builds a kube client calls this first. Idempotent.
pub fn install_crypto_provider() {
    // An Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Ends the process on loss of leadership, at once.
///
/// From here on another replica may lead, so this one must not write again.
/// Its writes are reconciles (applies, status, Events) in flight on the
/// controller's stream and the route publisher's requests to the Worker,
/// running in tasks of their own; stopping them one by one and waiting for
/// them (a graceful shutdown) could take as long as the slowest of them,
/// against an API server or Worker that may be hung. Exiting the process
/// ends them all without waiting for any, as controller-runtime does. The
/// Lease is not released: it is not ours any more.
fn exit_on_lost_leadership(lease: &str, lost: &Lost) -> ! {
    tracing::error!(
        lease,
        reason = %lost,
        exit_code = LOST_LEADERSHIP_EXIT_CODE,
        "lost leadership; exiting now, without waiting for in-flight reconciles or publications"
    );
    // Logs go to stderr, which is unbuffered; flush anyway before the exit
    // skips every destructor.
    let _ = std::io::Write::flush(&mut std::io::stderr());
    std::process::exit(LOST_LEADERSHIP_EXIT_CODE)
}

/// Marks `readiness` ready once the controller's watches have synced.
async fn ready_when_synced(ctx: Arc<Context>, readiness: Readiness) {
    let mut tick = tokio::time::interval(SYNC_POLL);
    loop {
        tick.tick().await;
        if ctx.synced() {
            tracing::info!("caches synced: ready");
            readiness.set(true);
            return;
        }
    }
}

/// Runs the operator with `args` until SIGTERM.
///
/// With `--leader-election` it stands by (ready, `backhaul_operator_leader`
/// 0) until it holds the Lease, then reconciles, ready once its watches have
/// synced. On loss of leadership (another holder, or no renewal within the
/// renew deadline) it exits the process with [`LOST_LEADERSHIP_EXIT_CODE`]
/// at once, without returning ([`exit_on_lost_leadership`] says why). On
/// SIGTERM it finishes in-flight reconciles, still renewing, and releases
/// the Lease so a standby takes over without waiting for it to expire.
pub async fn run(args: Args) -> Result<(), RunError> {
    // Held to the end of `run`: exports the last spans.
    let _flush = telemetry::init(args.log_format, &args.otlp)?;
    let config = OperatorConfig::from_args(&args)?;
    tracing::info!(
        regions = ?config.regions,
        publication = config.publish.is_some(),
        namespace = ?config.watch_namespace,
        identity = %config.identity,
        "configured"
    );
    install_crypto_provider();
    let metrics = Metrics::new();
    let kube_config = kube::Config::infer()
        .await
        .map_err(|e| RunError::Connect(kube::Error::InferConfig(e)))?;
    let client = counted_client(kube_config, &metrics).map_err(RunError::Connect)?;
    let readiness = Readiness::default();

    // One shutdown signal fans out to the metrics server and the controller.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let server = tokio::spawn(metrics::serve(
        args.metrics_addr,
        metrics.clone(),
        readiness.clone(),
        stopped(stop_rx.clone()),
    ));
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = signal_tx.send(true);
    });

    let mut ctx = Context::new(client.clone(), config.clone(), metrics.clone())
        .map_err(RunError::Publisher)?;
    // The Worker's fleet view for status.fleet, read only while this replica
    // reconciles (a standby does not poll).
    let mut fleet_poller = None;
    if let Some(publish) = &config.publish {
        let (hook, keys, poller) = fleet::start(publish).map_err(RunError::Publisher)?;
        ctx = ctx.with_fleet(hook, keys);
        fleet_poller = Some(poller);
    }
    let ctx = Arc::new(ctx);
    if args.leader_election {
        let elector = Arc::new(LeaderElector::new(
            client,
            &args.lease_namespace,
            &args.lease_name,
            &config.identity,
            Timing::default(),
        ));
        tracing::info!(
            lease = %args.lease_name,
            namespace = %args.lease_namespace,
            identity = %config.identity,
            "standing by for leadership"
        );
        // A standby is healthy and ready: it only waits.
        metrics.set_leader(&args.lease_name, false);
        readiness.set(true);
        let renewed_at = tokio::select! {
            at = elector.acquire() => at,
            () = stopped(stop_rx.clone()) => return Ok(()),
        };
        metrics.set_leader(&args.lease_name, true);
        readiness.set(false);
        tokio::spawn(ready_when_synced(ctx.clone(), readiness.clone()));
        // Its own task, so that renewals (and the exit) do not wait on the
        // controller's stream.
        let holder = elector.clone();
        let hold = tokio::spawn(async move {
            let lost = holder.hold(renewed_at).await;
            exit_on_lost_leadership(holder.lease(), &lost)
        });
        let polling = fleet_poller.map(fleet::FleetPoller::spawn);
        let result = controller::run_controller(ctx, stopped(stop_rx.clone())).await;
        drop(polling);
        hold.abort();
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "releasing the lease failed");
        }
        metrics.set_leader(&args.lease_name, false);
        result.map_err(RunError::Controller)?;
    } else {
        metrics.set_leader("", true);
        tokio::spawn(ready_when_synced(ctx.clone(), readiness.clone()));
        let _polling = fleet_poller.map(fleet::FleetPoller::spawn);
        controller::run_controller(ctx, stopped(stop_rx.clone()))
            .await
            .map_err(RunError::Controller)?;
    }
    let _ = stop_tx.send(true);
    if let Ok(Err(e)) = server.await {
        return Err(RunError::Metrics(e));
    }
    Ok(())
}
