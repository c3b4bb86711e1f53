//! Process lifecycle: check the credential flags and read the key file,
//! bind the listeners (gRPC, HTTP API, metrics) first (so health answers
//! NOT_SERVING while the model loads), load, serve, and drain.
//!
//! Drain (SIGTERM/SIGINT in the binary, [`ServerHandle::drain`] in tests),
//! in the order load balancers need:
//! 1. readiness turns NOT_SERVING at once (gRPC health for "" and the
//!    service, and HTTP /ready), while new requests are still served for
//!    `--drain-delay`, so that endpoints stop routing here first;
//! 2. then new requests get UNAVAILABLE / 503; queued ones keep their
//!    place, and everything accepted gets `--drain-timeout` to finish and is
//!    cancelled (with an explicit error) after it;
//! 3. then the listeners stop.
//!
//! Every listener is served by [`crate::connections`], under the
//! connection limits of `--max-connections` and the timeouts.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use backhaul_proto::{INFERENCE_SERVICE_NAME, inference::v1::inference_server::InferenceServer};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    admission::Admission,
    auth::{AuthConfigError, AuthMode, Authenticator},
    config::{ModelArgs, ServeArgs},
    connections::{self, ConnectionLimits, Protocol},
    engine::{Engine, LoadError},
    grpc::{self, GrpcApi, RequireCredential},
    http,
    metrics::Metrics,
    service::{InferenceService, ServiceOptions},
    validate::RequestLimits,
};

/// How long listeners get to close connections after the drain; long-lived
/// health `Watch` streams would otherwise hold the gRPC server open.
const LISTENER_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("gRPC server failed: {0}")]
    Grpc(String),
    #[error("server task failed: {0}")]
    Task(String),
}

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// Load from these arguments after the listeners are up.
    Load(ModelArgs),
    /// An engine loaded already (tests share one across servers).
    Loaded(Arc<Engine>),
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// `/metrics` (and `/health`), without a credential.
    pub metrics_addr: SocketAddr,
    ready: watch::Receiver<Readiness>,
    drain: CancellationToken,
    task: Option<JoinHandle<Result<(), ServeError>>>,
    service: InferenceService,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    Loading,
    Ready,
    Failed(String),
}

impl ServerHandle {
    /// Waits until the model is loaded and requests are served.
    pub async fn ready(&mut self) -> Result<(), String> {
        let state = self
            .ready
            .wait_for(|r| *r != Readiness::Loading)
            .await
            .map_err(|_| "server stopped before it was ready".to_string())?;
        match &*state {
            Readiness::Failed(message) => Err(message.clone()),
            _ => Ok(()),
        }
    }

    /// Starts the graceful drain (as SIGTERM does); returns at once.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// A token that starts the drain when cancelled.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// Requests admitted and not yet finished.
    pub fn active_requests(&self) -> usize {
        self.service.admission().active()
    }

    /// Waits for the server to stop (after a drain, or a load failure).
    pub async fn wait(mut self) -> Result<(), ServeError> {
        match self.task.take() {
            Some(task) => task.await.map_err(|e| ServeError::Task(e.to_string()))?,
            None => Ok(()),
        }
    }

    /// Drains and waits for the server to stop.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        self.drain();
        self.wait().await
    }
}

impl Drop for ServerHandle {
    /// A dropped handle stops its server (tests rely on this).
    fn drop(&mut self) {
        self.drain.cancel();
        self.service.cancel_all();
    }
}

/// Checks the credential flags (fail closed: a key file, or
/// `--allow-unauthenticated`), binds the listeners and starts serving; the
/// model loads in the background (see [`ServerHandle::ready`]).
pub async fn start(serve: ServeArgs, model: ModelSource) -> Result<ServerHandle, ServeError> {
    let metrics = Metrics::new();
    let auth = Authenticator::new(AuthMode::from_args(&serve)?, &metrics).await?;
    let admission = Admission::new(serve.max_in_flight, serve.max_queue, metrics.clone());
    let limits = &serve.limits;
    let service = InferenceService::new(
        admission,
        metrics.clone(),
        ServiceOptions {
            stream_buffer: serve.stream_buffer as usize,
            limits: RequestLimits::from(limits),
            request_timeout: limits.request_timeout,
            max_concurrent_tokenizations: limits.max_concurrent_tokenizations as usize,
        },
    );
    let connection_limits = ConnectionLimits::from(limits);

    let grpc_listener =
        TcpListener::bind(serve.grpc_addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: serve.grpc_addr,
                source,
            })?;
    let http_listener =
        TcpListener::bind(serve.http_addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: serve.http_addr,
                source,
            })?;
    let metrics_listener = TcpListener::bind(serve.metrics_addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: serve.metrics_addr,
            source,
        })?;
    let grpc_addr = local_addr(&grpc_listener, serve.grpc_addr)?;
    let http_addr = local_addr(&http_listener, serve.http_addr)?;
    let metrics_addr = local_addr(&metrics_listener, serve.metrics_addr)?;

    let (health, health_service) = tonic_health::server::health_reporter();
    // tonic-health starts "" as SERVING; nothing is served until the model
    // has loaded.
    set_health(&health, ServingStatus::NotServing).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(backhaul_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Grpc(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(backhaul_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Grpc(e.to_string()))?;

    let stop_listeners = CancellationToken::new();
    let inference = InferenceServer::new(GrpcApi::new(service.clone()))
        .max_decoding_message_size(limits.max_grpc_message_bytes);
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            inference,
            RequireCredential(auth.clone()),
        ))
        .prepare();
    // Not tonic's `transport::Server`: it wraps every call in a timer from
    // the caller's `grpc-timeout` that answers CANCELLED ("Timeout
    // expired") when it fires first. The Inference service honours
    // `grpc-timeout` itself, for the whole generation and with
    // DEADLINE_EXCEEDED, as the gRPC spec says.
    let grpc_service = tower::ServiceBuilder::new()
        .map_response(grpc::message_limit_status::<tonic::body::Body>)
        .service(routes);
    let grpc_task = tokio::spawn(connections::serve(
        grpc_listener,
        grpc_service,
        Protocol::Http2Only,
        connection_limits,
        "grpc",
        metrics.clone(),
        stop_listeners.clone(),
    ));
    let http_task = tokio::spawn(connections::serve(
        http_listener,
        http::router(service.clone(), auth.clone(), limits.max_body_bytes),
        Protocol::Http,
        connection_limits,
        "api",
        metrics.clone(),
        stop_listeners.clone(),
    ));
    let metrics_task = tokio::spawn(connections::serve(
        metrics_listener,
        http::metrics_router(metrics.clone()),
        Protocol::Http,
        connection_limits,
        "metrics",
        metrics.clone(),
        stop_listeners.clone(),
    ));
    auth.spawn_reloader(stop_listeners.clone());
    tracing::info!(%grpc_addr, %http_addr, %metrics_addr, "listening");

    let (ready_tx, ready_rx) = watch::channel(Readiness::Loading);
    let drain = CancellationToken::new();
    let lifecycle = Lifecycle {
        service: service.clone(),
        health,
        metrics,
        drain: drain.clone(),
        drain_delay: serve.drain_delay,
        drain_timeout: serve.drain_timeout,
        ready: ready_tx,
        stop_listeners,
    };
    let task = tokio::spawn(lifecycle.run(model, [grpc_task, http_task, metrics_task]));
    Ok(ServerHandle {
        grpc_addr,
        http_addr,
        metrics_addr,
        ready: ready_rx,
        drain,
        task: Some(task),
        service,
    })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(INFERENCE_SERVICE_NAME, status)
        .await;
}

struct Lifecycle {
    service: InferenceService,
    health: HealthReporter,
    metrics: Metrics,
    drain: CancellationToken,
    drain_delay: Duration,
    drain_timeout: Duration,
    ready: watch::Sender<Readiness>,
    stop_listeners: CancellationToken,
}

impl Lifecycle {
    async fn run(
        self,
        model: ModelSource,
        listeners: [JoinHandle<()>; 3],
    ) -> Result<(), ServeError> {
        let loaded = tokio::select! {
            loaded = load(model) => Some(loaded),
            () = self.drain.cancelled() => None,
        };
        let result = match loaded {
            Some(Ok(engine)) => {
                self.on_loaded(engine).await;
                self.drain.cancelled().await;
                self.on_drain().await;
                Ok(())
            }
            Some(Err(error)) => {
                tracing::error!(%error, "model failed to load");
                let _ = self.ready.send(Readiness::Failed(error.to_string()));
                Err(ServeError::Load(error))
            }
            None => Ok(()),
        };
        self.stop_listeners.cancel();
        for task in listeners {
            let abort = task.abort_handle();
            match tokio::time::timeout(LISTENER_SHUTDOWN_GRACE, task).await {
                Ok(Err(error)) => tracing::warn!(%error, "listener task failed"),
                Ok(Ok(())) => {}
                Err(_) => {
                    tracing::warn!("listener did not close in time; aborting it");
                    abort.abort();
                }
            }
        }
        tracing::info!("server stopped");
        result
    }

    async fn on_loaded(&self, engine: Arc<Engine>) {
        let info = engine.info().clone();
        self.metrics.model_load_seconds.set(engine.load_seconds());
        self.metrics
            .engine_info
            .with_label_values(&[
                info.served_name.as_str(),
                info.device.as_str(),
                env!("CARGO_PKG_VERSION"),
            ])
            .set(1);
        self.service.set_engine(engine.clone());
        set_health(&self.health, ServingStatus::Serving).await;
        let _ = self.ready.send(Readiness::Ready);
        tracing::info!(
            model = %info.served_name,
            context_length = info.context_length,
            quantization = %info.quantization,
            device = %info.device,
            max_prompt_bytes = ?info.max_prompt_bytes,
            load_seconds = engine.load_seconds(),
            "model loaded; serving"
        );
    }

    async fn on_drain(&self) {
        self.service.stop_reporting_ready();
        set_health(&self.health, ServingStatus::NotServing).await;
        if !self.drain_delay.is_zero() {
            tracing::info!(
                drain_delay_s = self.drain_delay.as_secs_f64(),
                "shutting down: reporting not ready, still serving while endpoints converge"
            );
            tokio::time::sleep(self.drain_delay).await;
        }
        self.service.admission().start_draining();
        let active = self.service.admission().active();
        tracing::info!(
            active,
            drain_timeout_s = self.drain_timeout.as_secs_f64(),
            "draining: no new requests; waiting for queued and in-flight ones"
        );
        let idle = self.service.admission().wait_idle();
        if tokio::time::timeout(self.drain_timeout, idle)
            .await
            .is_err()
        {
            tracing::warn!(
                active = self.service.admission().active(),
                "drain timeout reached; cancelling the remaining generations"
            );
            self.service.cancel_all();
            // Cancelled relays end their streams at once; give clients a
            // moment to read the final event.
            let _ = tokio::time::timeout(
                LISTENER_SHUTDOWN_GRACE,
                self.service.admission().wait_idle(),
            )
            .await;
        }
        tracing::info!("drained");
    }
}

async fn load(model: ModelSource) -> Result<Arc<Engine>, LoadError> {
    match model {
        ModelSource::Loaded(engine) => Ok(engine),
        ModelSource::Load(args) => {
            tracing::info!(model = %args.model, "loading model");
            // Loading blocks its thread for seconds to minutes; keep it off
            // the workers serving health checks.
            let handle = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || handle.block_on(Engine::load(&args)))
                .await
                .map_err(|e| LoadError::Engine {
                    model: String::new(),
                    message: format!("loader task failed: {e}"),
                })?
                .map(Arc::new)
        }
    }
}
