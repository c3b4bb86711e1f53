//! Shared pieces of the control-plane tests: CRD installation, an in-process
//! operator watching one namespace, and a route receiver that checks
//! signatures like the Worker does.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::put;
use backhaul_operator::config::{OperatorConfig, PublishConfig};
use backhaul_operator::controller::{Context, run_controller};
use backhaul_operator::crd::{ModelDeployment, RegionStatus};
use backhaul_operator::metrics::Metrics;
use backhaul_testkit::wait_for;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, CustomResourceExt};
use serde_json::Value;

/// The test operators' publisher key id.
pub const KEY_ID: &str = "test-cluster";

/// The test operators' publisher key; the receiver holds its public half.
pub fn signing_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}

/// Held by every control-plane test of a binary for as long as it runs, and
/// taken exclusively by the one test that stores an object under another
/// schema: while that object exists, cluster-wide typed lists fail on it and
/// the CRD briefly has another schema, so nothing else may run beside it.
static CRD: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A test's share of the CRD (see [`CRD`]); hold it for the whole test.
#[must_use = "hold it for the whole test"]
pub struct CrdShare(#[allow(dead_code)] tokio::sync::RwLockReadGuard<'static, ()>);

/// The CRD to oneself (see [`CRD`]).
#[must_use = "hold it for the whole test"]
pub struct CrdExclusive(#[allow(dead_code)] tokio::sync::RwLockWriteGuard<'static, ()>);

/// Installs the CRD (see [`apply_crd`]) and holds a share of it.
pub async fn install_crd(client: &Client) -> CrdShare {
    let share = CrdShare(CRD.read().await);
    apply_crd(client).await;
    share
}

/// Installs the CRD (see [`apply_crd`]) with no other test running beside.
pub async fn install_crd_exclusive(client: &Client) -> CrdExclusive {
    let exclusive = CrdExclusive(CRD.write().await);
    apply_crd(client).await;
    exclusive
}

/// Installs (server-side applies) the CRD and waits until it is served.
pub async fn apply_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ModelDeployment::crd();
    let name = "modeldeployments.backhaul.dev";
    crds.patch(
        name,
        &PatchParams::apply("backhaul-operator-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    wait_for(Duration::from_secs(30), || async {
        let crd = crds.get(name).await.ok()?;
        crd.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
            .then_some(())
    })
    .await
    .expect("CRD established");
    // Established can precede discovery; wait until the resource answers.
    // Metadata only: an object stored under another schema must not fail it.
    let mds: Api<ModelDeployment> = Api::all(client.clone());
    wait_for(Duration::from_secs(30), || async {
        mds.list_metadata(&ListParams::default().limit(1))
            .await
            .ok()
    })
    .await
    .expect("ModelDeployments are served");
}

/// One request the receiver accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// `PUT` or `DELETE`.
    pub method: String,
    /// `namespace/name/region`.
    pub route: String,
}

#[derive(Default, Debug)]
struct ReceiverState {
    routes: BTreeMap<String, Value>,
    log: Vec<Logged>,
    rejected: usize,
    first_put: BTreeMap<String, std::time::Instant>,
    /// The last lease sequence accepted, and how many renewals.
    lease_sequence: u64,
    leases: usize,
}

/// A local stand-in for the Worker's admin API that verifies signatures.
#[derive(Clone, Debug)]
pub struct Receiver {
    state: Arc<Mutex<ReceiverState>>,
    /// Base URL to give the operator.
    pub url: url::Url,
    stop: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
}

fn verify(headers: &HeaderMap, method: &Method, path: &str, body: &[u8]) -> bool {
    let (Some(ts), Some(sig)) = (
        headers
            .get("x-backhaul-timestamp")
            .and_then(|v| v.to_str().ok()),
        headers
            .get("x-backhaul-signature")
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let Ok(ts_num) = ts.parse::<u64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(ts_num) > 300 {
        return false;
    }
    // The operator's own payload builder, and the library's verification:
    // nothing of the scheme is written out again here.
    use base64::Engine as _;
    let key_id = headers
        .get("x-backhaul-key-id")
        .and_then(|v| v.to_str().ok());
    let Some(encoded) = sig.strip_prefix("ed25519=") else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
        return false;
    };
    let Ok(signature) = ed25519_dalek::Signature::from_slice(&bytes) else {
        return false;
    };
    let payload =
        backhaul_operator::publish::signing_payload(KEY_ID, ts_num, method.as_str(), path, body);
    key_id == Some(KEY_ID)
        && signing_key()
            .verifying_key()
            .verify_strict(&payload, &signature)
            .is_ok()
}

async fn handle(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    Path((ns, name, region)): Path<(String, String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let mut s = state.lock().unwrap();
    if !verify(&headers, &method, uri.path(), &body) {
        s.rejected += 1;
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"message":"bad signature"}}"#.into(),
        );
    }
    let key = format!("{ns}/{name}/{region}");
    s.log.push(Logged {
        method: method.to_string(),
        route: key.clone(),
    });
    if method == Method::PUT {
        let Ok(route) = serde_json::from_slice::<Value>(&body) else {
            return (StatusCode::BAD_REQUEST, "{}".into());
        };
        if route["namespace"] != ns || route["name"] != name || route["region"] != region {
            return (StatusCode::BAD_REQUEST, "{}".into());
        }
        s.first_put
            .entry(key.clone())
            .or_insert_with(std::time::Instant::now);
        s.routes.insert(key, route.clone());
        (
            StatusCode::OK,
            serde_json::json!({ "route": route }).to_string(),
        )
    } else {
        s.routes.remove(&key);
        (StatusCode::NO_CONTENT, String::new())
    }
}

/// `PUT /admin/v1/leases/{keyId}` as docs/publication.md says: answers with
/// the count and digest of the routes held.
async fn handle_lease(
    State(state): State<Arc<Mutex<ReceiverState>>>,
    Path(key_id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let mut s = state.lock().unwrap();
    if key_id != KEY_ID || !verify(&headers, &Method::PUT, uri.path(), &body) {
        s.rejected += 1;
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"message":"bad signature","code":"invalid_signature"}}"#.into(),
        );
    }
    let Ok(lease) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "{}".into());
    };
    let sequence = lease["sequence"].as_u64().unwrap_or(0);
    if sequence <= s.lease_sequence {
        return (
            StatusCode::CONFLICT,
            r#"{"error":{"message":"stale","code":"stale_sequence"}}"#.into(),
        );
    }
    s.lease_sequence = sequence;
    s.leases += 1;
    s.log.push(Logged {
        method: "LEASE".into(),
        route: key_id.clone(),
    });
    let keys: Vec<(backhaul_operator::publish::RouteKey, u64)> = s
        .routes
        .values()
        .map(|r| {
            let field = |f: &str| r[f].as_str().unwrap_or_default().to_owned();
            (
                backhaul_operator::publish::RouteKey {
                    namespace: field("namespace"),
                    name: field("name"),
                    region: field("region"),
                },
                r["sequence"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let digest = backhaul_operator::publish::lease_digest(keys.iter().map(|(k, q)| (k, *q)));
    let answer = serde_json::json!({"lease": {"keyId": key_id, "sequence": sequence,
        "renewedAt": "2026-12-01T00:00:00Z", "routes": keys.len(), "digest": digest}});
    (StatusCode::OK, answer.to_string())
}

impl Receiver {
    /// Starts on 127.0.0.1 on a free port, as a Worker that predates leases
    /// (the lease answers 404: the operator renews each route with a PUT).
    pub async fn start() -> Self {
        Self::start_inner(false).await
    }

    /// Starts a receiver that also accepts leases.
    pub async fn start_with_leases() -> Self {
        Self::start_inner(true).await
    }

    /// Lease renewals accepted.
    pub fn leases(&self) -> usize {
        self.state.lock().unwrap().leases
    }

    async fn start_inner(leases: bool) -> Self {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let mut app = Router::new().route(
            "/admin/v1/routes/{ns}/{name}/{region}",
            put(handle).delete(handle),
        );
        if leases {
            app = app.route("/admin/v1/leases/{key}", put(handle_lease));
        }
        let app = app.with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            state,
            url: format!("http://{addr}").parse().unwrap(),
            stop: Arc::new(Mutex::new(Some(tx))),
        }
    }

    /// Routes currently held, by `namespace/name/region`.
    pub fn routes(&self) -> BTreeMap<String, Value> {
        self.state.lock().unwrap().routes.clone()
    }

    /// Every accepted request, in order.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// When each route was first PUT.
    pub fn first_puts(&self) -> BTreeMap<String, std::time::Instant> {
        self.state.lock().unwrap().first_put.clone()
    }

    /// Requests refused for a bad signature.
    pub fn rejected(&self) -> usize {
        self.state.lock().unwrap().rejected
    }

    /// Stops the server.
    pub fn stop(&self) {
        if let Some(tx) = self.stop.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

/// An operator running in this process, watching one namespace.
pub struct Operator {
    /// Its metrics (to see it reconcile).
    pub metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), kube::Error>>>,
}

/// Operator settings for tests.
pub fn config(
    namespace: &str,
    receiver: Option<&Receiver>,
    regions: Option<&[&str]>,
) -> OperatorConfig {
    OperatorConfig {
        inference_image: "backhaul-inference:test".into(),
        inference_image_cuda: "backhaul-inference:test-cuda".into(),
        regions: regions.map(|r| r.iter().map(|s| (*s).to_owned()).collect()),
        publish: receiver.map(|r| PublishConfig {
            worker_url: r.url.clone(),
            key_id: KEY_ID.into(),
            key: signing_key(),
            timeout: Duration::from_secs(5),
            concurrency: 8,
            fleet_poll_interval: Duration::from_secs(30),
        }),
        watch_namespace: Some(namespace.to_owned()),
        identity: format!(
            "test-{}",
            regions.map(|r| r.join("-")).unwrap_or_else(|| "all".into())
        ),
        max_concurrent_reconciles: 16,
        pod_env: Vec::new(),
    }
}

impl Operator {
    /// Starts the controller, with a client of its own whose requests it counts.
    pub fn start(config: OperatorConfig) -> Self {
        Self::start_with(config, |_| {})
    }

    /// Successful reconciles so far.
    pub fn successes(&self) -> u64 {
        let text = self.metrics.render();
        text.lines()
            .find(|l| l.starts_with("backhaul_operator_reconciles_total{result=\"success\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Requests this operator sent the API server, by HTTP method.
    pub fn requests(&self) -> std::collections::BTreeMap<String, u64> {
        let text = self.metrics.render();
        text.lines()
            .filter_map(|l| l.strip_prefix("backhaul_operator_kube_requests_total{method=\""))
            .filter_map(|l| {
                let (method, rest) = l.split_once('"')?;
                Some((method.to_owned(), rest.rsplit(' ').next()?.parse().ok()?))
            })
            .collect()
    }

    /// Write requests (POST, PUT, PATCH, DELETE) among [`Operator::requests`].
    pub fn writes(&self) -> u64 {
        self.requests()
            .iter()
            .filter(|(m, _)| matches!(m.as_str(), "POST" | "PUT" | "PATCH" | "DELETE"))
            .map(|(_, n)| n)
            .sum()
    }

    /// Stops the controller and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(90), task)
                .await
                .expect("operator stopped in time")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A ModelDeployment named `name` with `regions` as (name, replicas).
pub fn model_deployment(name: &str, regions: &[(&str, i32)], gpus: u32) -> ModelDeployment {
    let locations = |r: &str| match r {
        "us-east" => (39.04, -77.49),
        "eu-west" => (53.35, -6.26),
        _ => (19.08, 72.88),
    };
    let regions: Vec<Value> = regions
        .iter()
        .map(|(r, replicas)| {
            let (lat, lon) = locations(r);
            serde_json::json!({
                "name": r, "replicas": replicas,
                "location": {"latitude": lat, "longitude": lon},
                "endpoint": format!("https://{r}.gpu.example.com"),
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "backhaul.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"source": "/models/smollm2", "format": "gguf",
                      "ggufFiles": ["SmolLM2-135M-Instruct.Q4_1.gguf"], "servedName": "smollm2-135m"},
            "resources": {"gpusPerReplica": gpus},
            "regions": regions,
            "routing": {"ttlSeconds": 30},
        },
    }))
    .unwrap()
}

/// Deletes every ModelDeployment in `api`'s namespace and waits until the
/// (still running) operator has let them go, so the test namespace does not
/// hang on finalizers.
pub async fn delete_all(api: &Api<ModelDeployment>) {
    api.delete_collection(&Default::default(), &Default::default())
        .await
        .expect("delete ModelDeployments");
    wait_for(Duration::from_secs(180), || async {
        api.list(&Default::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await
    .expect("ModelDeployments deleted (finalizers removed)");
}

/// The condition `type_` of `md`, as (status, reason, message).
pub fn condition(md: &ModelDeployment, type_: &str) -> Option<(String, String, String)> {
    md.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// The status entry of region `name` in `md`.
pub fn region_status(md: &ModelDeployment, name: &str) -> Option<RegionStatus> {
    md.status
        .as_ref()?
        .regions
        .iter()
        .find(|r| r.name == name)
        .cloned()
}

impl Operator {
    /// Starts the controller after `adjust` has seen its context.
    pub fn start_with(config: OperatorConfig, adjust: impl FnOnce(&Context)) -> Self {
        // Logs with `--nocapture` (RUST_LOG to filter); a no-op after the first.
        // No trace export: OtlpArgs' default has no endpoint.
        let _ = backhaul_operator::telemetry::init(
            backhaul_operator::config::LogFormat::Text,
            &backhaul_telemetry::OtlpArgs::default(),
        );
        let metrics = Metrics::new();
        let client =
            backhaul_operator::counted_client(backhaul_testkit::cluster_config(), &metrics)
                .unwrap();
        let ctx = Context::new(client, config, metrics.clone()).unwrap();
        adjust(&ctx);
        let ctx = Arc::new(ctx);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run_controller(ctx, async move {
            let _ = rx.await;
        }));
        Self {
            metrics,
            stop: Some(tx),
            task: Some(task),
        }
    }
}
