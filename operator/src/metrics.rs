//! Prometheus metrics (`backhaul_operator_` prefix) and the HTTP server for
//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The operator's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_duration: HistogramVec,
    publishes: IntCounterVec,
    kube_requests: IntCounterVec,
    managed_models: IntGauge,
    routes_held: IntGauge,
    leader: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "backhaul_operator_reconciles_total",
                "Reconciles by result (success or an error category)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "backhaul_operator_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["result"],
        )
        .expect("valid metric");
        let publishes = IntCounterVec::new(
            Opts::new(
                "backhaul_operator_publishes_total",
                "Requests to the Worker by operation (put, delete, lease) and result (success, unsupported for a lease to a Worker without leases, or an error category)",
            ),
            &["operation", "result"],
        )
        .expect("valid metric");
        let kube_requests = IntCounterVec::new(
            Opts::new(
                "backhaul_operator_kube_requests_total",
                "Requests to the Kubernetes API server by HTTP method (watches included)",
            ),
            &["method"],
        )
        .expect("valid metric");
        let managed_models = IntGauge::new(
            "backhaul_operator_managed_models",
            "ModelDeployments this operator currently manages",
        )
        .expect("valid metric");
        let routes_held = IntGauge::new(
            "backhaul_operator_routes_held",
            "Routes the Worker holds from this operator (renewed by its lease)",
        )
        .expect("valid metric");
        let leader = IntGaugeVec::new(
            Opts::new(
                "backhaul_operator_leader",
                "1 while this process reconciles (holds the leader election Lease, or runs without leader election), 0 while it stands by",
            ),
            &["lease"],
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_duration.clone()),
            Box::new(publishes.clone()),
            Box::new(kube_requests.clone()),
            Box::new(managed_models.clone()),
            Box::new(routes_held.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            reconciles,
            reconcile_duration,
            publishes,
            kube_requests,
            managed_models,
            routes_held,
            leader,
        }
    }

    /// Counts one request to the Kubernetes API server.
    pub fn kube_request(&self, method: &http::Method) {
        // Bounded: the methods a Kubernetes client sends.
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::PATCH => "PATCH",
            http::Method::DELETE => "DELETE",
            _ => "OTHER",
        };
        self.kube_requests.with_label_values(&[method]).inc();
    }

    /// Counts one reconcile and its duration.
    pub fn reconciled(&self, result: &str, duration: Duration) {
        self.reconciles.with_label_values(&[result]).inc();
        self.reconcile_duration
            .with_label_values(&[result])
            .observe(duration.as_secs_f64());
    }

    /// Counts one request to the Worker.
    pub fn published(&self, operation: &str, result: &str) {
        self.publishes.with_label_values(&[operation, result]).inc();
    }

    /// Sets the number of managed ModelDeployments.
    pub fn set_managed_models(&self, n: usize) {
        self.managed_models
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets the number of routes held on the Worker.
    pub fn set_routes_held(&self, n: usize) {
        self.routes_held.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets whether this process leads: holds `lease` (empty without leader
    /// election) and so reconciles.
    pub fn set_leader(&self, lease: &str, leading: bool) {
        self.leader
            .with_label_values(&[lease])
            .set(i64::from(leading));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("text exposition is UTF-8")
    }
}

/// Whether the process is ready to serve (leading with synced caches, or
/// standing by as a healthy follower).
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the process ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
    /// Whether ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The router serving `/metrics`, `/healthz` and `/readyz`.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    s.metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move {
                if s.readiness.get() {
                    (StatusCode::OK, "ready").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
                }
            }),
        )
        .with_state(AppState { metrics, readiness })
}

/// Serves [`router`] on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prefixed_metrics() {
        let m = Metrics::new();
        m.reconciled("success", Duration::from_millis(20));
        m.published("put", "success");
        m.set_managed_models(3);
        m.set_leader("backhaul-operator", false);
        assert!(
            m.render()
                .contains("backhaul_operator_leader{lease=\"backhaul-operator\"} 0")
        );
        m.set_leader("backhaul-operator", true);
        let text = m.render();
        assert!(text.contains("backhaul_operator_leader{lease=\"backhaul-operator\"} 1"));
        assert!(text.contains("backhaul_operator_reconciles_total{result=\"success\"} 1"));
        assert!(
            text.contains(
                "backhaul_operator_publishes_total{operation=\"put\",result=\"success\"} 1"
            )
        );
        assert!(text.contains("backhaul_operator_managed_models 3"));
        assert!(text.contains("backhaul_operator_reconcile_duration_seconds_bucket"));
    }
}
