//! The fleet view: every region of this fleet's models as the routing
//! Worker's signed table shows them (`GET /admin/v1/fleet`, docs/publication.md
//! "The fleet view"). With one cluster per region, each operator sees only its
//! own region's pods; this is how `status.fleet`, and so `kubectl get md` in
//! one cluster, shows the other clusters' regions too.
//!
//! [`FleetClient`] sends the signed GET (signed by [`publish::sign`], with the
//! operator's publisher key) with `If-None-Match`, so an unchanged table costs
//! a `304` and no parse. [`FleetPoller`] polls it every
//! `--fleet-poll-interval` into the [`FleetView`], and sends the keys of the
//! ModelDeployments whose model's entries changed to the controller, which
//! reconciles them (kube's `Controller::reconcile_on`). The hook [`start`]
//! returns fills `status.fleet` on every status computation, and learns on the
//! way which object serves which model. Snapshots are compared as the status
//! entries they map to ([`fleet_status`]), so a lease renewal that only moves
//! a live route's expiry triggers nothing and rewrites no status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use kube::ResourceExt;
use serde::Deserialize;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use url::Url;

use crate::config::PublishConfig;
use crate::controller::FleetHook;
use crate::crd::{FleetRegionStatus, ModelDeployment, ModelDeploymentStatus};
use crate::publish::{self, PublishError};
use crate::route_sync::ObjectKey;

/// Default of `--fleet-poll-interval`, in seconds: other clusters' regions
/// show up (or show as expired) in status within this plus their TTL.
pub const DEFAULT_POLL_INTERVAL_SECONDS: u64 = 30;
/// Most `--fleet-poll-interval` may be, in seconds (the longest route TTL:
/// a slower poll would miss whole lifetimes of routes).
pub const MAX_POLL_INTERVAL_SECONDS: u64 = 3600;
/// Most entries one object's `status.fleet` holds (the CRD says the same);
/// the rest are left out, in (region, namespace, name, keyId) order. Bounds
/// the status of a model published from very many clusters.
pub const MAX_FLEET_ENTRIES: usize = 64;

/// One route of the Worker's fleet view, as it answers it.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetRoute {
    /// Namespace of the publishing ModelDeployment.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Region.
    pub region: String,
    /// The publisher key that last wrote it.
    pub key_id: String,
    /// Ready replicas it reports.
    #[serde(default)]
    pub ready_replicas: i32,
    /// When it expires, or expired (RFC 3339, the Worker's clock).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// Whether it has expired.
    #[serde(default)]
    pub expired: bool,
}

#[derive(Deserialize)]
struct FleetAnswer {
    version: String,
    models: BTreeMap<String, Vec<FleetRoute>>,
}

/// What one request for the fleet view brought.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// `304`: the table is as it was at the ETag sent.
    NotModified,
    /// `200`: the table, by served model name, and its ETag.
    Table {
        /// The `ETag` to send next time (`"{version}"` when the Worker sent none).
        etag: String,
        /// Routes by served model name.
        models: BTreeMap<String, Vec<FleetRoute>>,
    },
}

/// `{worker}/admin/v1/fleet`, keeping any base path.
pub fn fleet_url(worker: &Url) -> Url {
    let mut url = worker.clone();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}/admin/v1/fleet"));
    url.set_query(None);
    url
}

/// Signed HTTP client for the Worker's fleet view.
#[derive(Clone, Debug)]
pub struct FleetClient {
    http: reqwest::Client,
    config: PublishConfig,
    url: Url,
}

impl FleetClient {
    /// A client for the Worker and key of `config`.
    pub fn new(config: PublishConfig) -> Result<Self, reqwest::Error> {
        let http = publish::admin_http(&config)?;
        let url = fleet_url(&config.worker_url);
        Ok(Self { http, config, url })
    }

    /// `GET /admin/v1/fleet`, with `If-None-Match: etag` when given.
    pub async fn fetch(&self, etag: Option<&str>) -> Result<Fetched, PublishError> {
        let mut request = publish::signed_request(
            &self.http,
            &self.config,
            reqwest::Method::GET,
            &self.url,
            Vec::new(),
        );
        if let Some(etag) = etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        let url = self.url.to_string();
        let transport = |source| PublishError::Transport {
            method: "GET",
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(Fetched::NotModified);
        }
        let header_etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await.map_err(transport)?;
        if !status.is_success() {
            return Err(publish::rejection("GET", &self.url, status.as_u16(), text));
        }
        let answer: FleetAnswer =
            serde_json::from_str(&text).map_err(|e| PublishError::Unreadable {
                url: url.clone(),
                message: format!("expected {{\"version\", \"models\"}}: {e}"),
            })?;
        Ok(Fetched::Table {
            etag: header_etag.unwrap_or_else(|| format!("\"{}\"", answer.version)),
            models: answer.models,
        })
    }
}

/// A model's routes as `status.fleet` shows them: sorted by region,
/// namespace, name and key, at most [`MAX_FLEET_ENTRIES`]. A live route's
/// expiry is left out (it moves with every lease renewal); an expired one's
/// is kept, as `expiredAt`.
pub fn fleet_status(routes: &[FleetRoute]) -> Vec<FleetRegionStatus> {
    let mut entries: Vec<FleetRegionStatus> = routes
        .iter()
        .map(|r| FleetRegionStatus {
            region: r.region.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            key_id: r.key_id.clone(),
            ready_replicas: r.ready_replicas,
            expired: r.expired,
            expired_at: if r.expired {
                r.expires_at.clone()
            } else {
                None
            },
        })
        .collect();
    entries.sort_by(|a, b| {
        (&a.region, &a.namespace, &a.name, &a.key_id).cmp(&(
            &b.region,
            &b.namespace,
            &b.name,
            &b.key_id,
        ))
    });
    entries.truncate(MAX_FLEET_ENTRIES);
    entries
}

/// `status.fleetRegions`, the printer column: the regions with a live route,
/// then those whose every route expired, marked, e.g.
/// `eu-west,local,us-east(expired)`; `None` when the fleet is empty.
pub fn fleet_regions(entries: &[FleetRegionStatus]) -> Option<String> {
    let live: BTreeSet<&str> = entries
        .iter()
        .filter(|e| !e.expired)
        .map(|e| e.region.as_str())
        .collect();
    let expired: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.expired && !live.contains(e.region.as_str()))
        .map(|e| e.region.as_str())
        .collect();
    let names: Vec<String> = live
        .iter()
        .map(|r| (*r).to_owned())
        .chain(expired.iter().map(|r| format!("{r}(expired)")))
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// The fleet view at one answer of the Worker, as status entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// The answer's ETag.
    pub etag: String,
    /// `status.fleet` entries by served model name.
    pub models: BTreeMap<String, Vec<FleetRegionStatus>>,
}

impl Snapshot {
    /// The snapshot of one `200` answer.
    pub fn new(etag: String, models: &BTreeMap<String, Vec<FleetRoute>>) -> Self {
        Self {
            etag,
            models: models
                .iter()
                .map(|(model, routes)| (model.clone(), fleet_status(routes)))
                .collect(),
        }
    }
}

/// Which ModelDeployments a new snapshot concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Every one: the first snapshot (status may hold what an earlier
    /// operator wrote, about any model).
    All,
    /// Those serving these models.
    Models(BTreeSet<String>),
}

impl Changes {
    /// Whether a ModelDeployment serving `model` is concerned.
    pub fn includes(&self, model: &str) -> bool {
        match self {
            Changes::All => true,
            Changes::Models(models) => models.contains(model),
        }
    }
}

/// The models whose entries differ between two snapshots.
pub fn changed_models(old: &Snapshot, new: &Snapshot) -> BTreeSet<String> {
    old.models
        .keys()
        .chain(new.models.keys())
        .filter(|model| old.models.get(*model) != new.models.get(*model))
        .cloned()
        .collect()
}

/// The latest snapshot, shared between the poller and reconciles.
#[derive(Debug, Default)]
pub struct FleetView {
    latest: RwLock<Option<Arc<Snapshot>>>,
}

impl FleetView {
    /// The `status.fleet` entries of served model `model` as of the latest
    /// answer (empty when the Worker holds none); `None` before the first
    /// answer.
    pub fn fleet(&self, model: &str) -> Option<Vec<FleetRegionStatus>> {
        let latest = self.latest.read().expect("not poisoned");
        latest
            .as_ref()
            .map(|s| s.models.get(model).cloned().unwrap_or_default())
    }

    fn etag(&self) -> Option<String> {
        let latest = self.latest.read().expect("not poisoned");
        latest.as_ref().map(|s| s.etag.clone())
    }

    /// Stores `next`; returns what changed (`None`: nothing any status shows).
    pub fn replace(&self, next: Snapshot) -> Option<Changes> {
        let mut latest = self.latest.write().expect("not poisoned");
        let changes = match latest.as_deref() {
            None => Some(Changes::All),
            Some(old) => {
                let models = changed_models(old, &next);
                (!models.is_empty()).then_some(Changes::Models(models))
            }
        };
        *latest = Some(Arc::new(next));
        changes
    }
}

/// Sets `status.fleet` and `status.fleetRegions` of `desired` (the status a
/// reconcile is about to write for a ModelDeployment serving `model`) from
/// `view`; before the view's first answer they stay as `prev` said, and
/// without a view (publication disabled) there is no fleet.
pub fn set_status(
    desired: &mut ModelDeploymentStatus,
    prev: &ModelDeploymentStatus,
    view: Option<&FleetView>,
    model: &str,
) {
    let fleet = match view {
        None => Vec::new(),
        Some(view) => view.fleet(model).unwrap_or_else(|| prev.fleet.clone()),
    };
    desired.fleet_regions = fleet_regions(&fleet);
    desired.fleet = fleet;
}

/// Which object serves which model, learnt from the status hook (every
/// reconcile computes status): a change of one model's entries reconciles
/// only the objects serving it. An object deleted stays until the process
/// ends; its trigger finds nothing to reconcile.
#[derive(Debug, Default)]
struct Served {
    models: Mutex<HashMap<ObjectKey, String>>,
}

impl Served {
    fn note(&self, key: ObjectKey, model: &str) {
        let mut models = self.models.lock().expect("not poisoned");
        if models.get(&key).is_none_or(|m| m != model) {
            models.insert(key, model.to_owned());
        }
    }

    fn concerned(&self, changes: &Changes) -> Vec<ObjectKey> {
        let models = self.models.lock().expect("not poisoned");
        let mut keys: Vec<ObjectKey> = models
            .iter()
            .filter(|(_, model)| changes.includes(model))
            .map(|(key, _)| key.clone())
            .collect();
        keys.sort();
        keys
    }
}

/// The fleet view of the Worker and key in `publish`: the status hook and the
/// keys of the objects to reconcile for the controller
/// ([`crate::controller::Context::with_fleet`]), and the poller to run while
/// this operator reconciles ([`FleetPoller::spawn`]).
pub fn start(
    publish: &PublishConfig,
) -> Result<(FleetHook, UnboundedReceiver<ObjectKey>, FleetPoller), reqwest::Error> {
    let client = FleetClient::new(publish.clone())?;
    let view = Arc::new(FleetView::default());
    let served = Arc::new(Served::default());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let hook: FleetHook = {
        let (view, served) = (view.clone(), served.clone());
        Arc::new(
            move |md: &ModelDeployment, desired: &mut ModelDeploymentStatus| {
                let model = &md.spec.model.served_name;
                // Noted before the view is read: a change stored in between still
                // finds this object (the poller stores, then looks up).
                served.note((md.namespace().unwrap_or_default(), md.name_any()), model);
                let prev = md.status.clone().unwrap_or_default();
                set_status(desired, &prev, Some(&view), model);
            },
        )
    };
    let poller = FleetPoller {
        client,
        view,
        served,
        tx,
        interval: publish.fleet_poll_interval,
    };
    Ok((hook, rx, poller))
}

/// Polls the fleet view into a [`FleetView`] and asks for the reconciles its
/// changes need.
#[derive(Debug)]
pub struct FleetPoller {
    client: FleetClient,
    view: Arc<FleetView>,
    served: Arc<Served>,
    tx: UnboundedSender<ObjectKey>,
    interval: Duration,
}

impl FleetPoller {
    /// One request (with the latest ETag); what changed (`None`: nothing),
    /// after asking for the reconciles of the objects it concerns.
    pub async fn poll_once(&self) -> Result<Option<Changes>, PublishError> {
        let changes = match self.client.fetch(self.view.etag().as_deref()).await? {
            Fetched::NotModified => None,
            Fetched::Table { etag, models } => self.view.replace(Snapshot::new(etag, &models)),
        };
        if let Some(changes) = &changes {
            let keys = self.served.concerned(changes);
            tracing::debug!(
                ?changes,
                objects = keys.len(),
                "the Worker's fleet view changed"
            );
            for key in keys {
                // Closed only when the controller is gone.
                let _ = self.tx.send(key);
            }
        }
        Ok(changes)
    }

    /// Polls now and then every interval, forever. A failed request keeps
    /// the last snapshot and is retried at the next interval.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = self.poll_once().await {
                tracing::warn!(
                    error = %e, category = e.category(),
                    "reading the Worker's fleet view failed; status keeps the last one"
                );
            }
        }
    }

    /// Runs [`FleetPoller::run`] on its own task until the returned guard is
    /// dropped (a standby, which does not reconcile, does not poll).
    pub fn spawn(self) -> PollerTask {
        PollerTask(tokio::spawn(self.run()))
    }
}

/// The poller's task; dropping it stops the poller.
#[derive(Debug)]
pub struct PollerTask(tokio::task::JoinHandle<()>);

impl Drop for PollerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use ed25519_dalek::{Signature, SigningKey, Verifier};

    use super::*;

    fn route(
        region: &str,
        key: &str,
        ready: i32,
        expires: &str,
        expired: bool,
    ) -> serde_json::Value {
        serde_json::json!({"namespace": "ml", "name": "smollm2", "region": region, "keyId": key,
                           "readyReplicas": ready, "receivedAt": "2026-12-01T20:00:00Z",
                           "expiresAt": expires, "expired": expired})
    }

    /// An in-process Worker answering `GET /admin/v1/fleet` as
    /// docs/publication.md says: it checks the signature, answers `304` to a
    /// matching `If-None-Match`, and records what it was sent.
    #[derive(Default)]
    struct Fake {
        version: String,
        models: serde_json::Value,
        /// Answer this status with an OpenAI-shaped error instead.
        fail: Option<u16>,
        /// (If-None-Match sent, status answered) per request.
        requests: Vec<(Option<String>, u16)>,
    }

    type Shared = Arc<Mutex<Fake>>;

    async fn fake_fleet(
        State((fake, public)): State<(Shared, ed25519_dalek::VerifyingKey)>,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let mut fake = fake.lock().unwrap();
        let if_none_match = header("if-none-match");
        let signed = (|| {
            let key_id = header("x-backhaul-key-id")?;
            let ts: u64 = header("x-backhaul-timestamp")?.parse().ok()?;
            let b64 = header("x-backhaul-signature")?
                .strip_prefix("ed25519=")?
                .to_owned();
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            let signature = Signature::from_slice(&bytes).ok()?;
            let payload = publish::signing_payload(&key_id, ts, "GET", uri.path(), b"");
            (key_id == "cluster-a" && public.verify(&payload, &signature).is_ok()).then_some(())
        })();
        let (status, response) = if signed.is_none() {
            (401, (StatusCode::UNAUTHORIZED, axum::Json(serde_json::json!({"error": {"message": "bad signature", "code": "invalid_signature"}}))).into_response())
        } else if let Some(code) = fake.fail {
            let status = StatusCode::from_u16(code).unwrap();
            (code, (status, axum::Json(serde_json::json!({"error": {"message": "table unavailable", "code": "unavailable"}}))).into_response())
        } else if if_none_match.as_deref() == Some(format!("\"{}\"", fake.version).as_str()) {
            (304, StatusCode::NOT_MODIFIED.into_response())
        } else {
            let body = serde_json::json!({"version": fake.version, "models": fake.models});
            (
                200,
                (
                    [("etag", format!("\"{}\"", fake.version))],
                    axum::Json(body),
                )
                    .into_response(),
            )
        };
        fake.requests.push((if_none_match, status));
        response
    }

    async fn serve(fake: Shared) -> (PublishConfig, tokio::task::JoinHandle<()>) {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let router = axum::Router::new()
            .route("/edge/admin/v1/fleet", axum::routing::get(fake_fleet))
            .with_state((fake, key.verifying_key()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        // Through the flags, as the operator reads them.
        use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("key.pem");
        std::fs::write(&pem, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let url = format!("http://{addr}/edge/");
        let cli = <crate::config::Cli as clap::Parser>::try_parse_from([
            "backhaul-operator",
            "--worker-url",
            url.as_str(),
            "--publish-key-file",
            pem.to_str().unwrap(),
            "--publish-key-id",
            "cluster-a",
        ])
        .unwrap();
        let config = crate::config::OperatorConfig::from_args(&cli.args)
            .unwrap()
            .publish
            .unwrap();
        (config, task)
    }

    fn fake(version: &str, models: serde_json::Value) -> Shared {
        Arc::new(Mutex::new(Fake {
            version: version.into(),
            models,
            ..Fake::default()
        }))
    }

    fn poller(config: PublishConfig) -> (FleetPoller, Arc<FleetView>) {
        let (_hook, _keys, poller) = start(&config).unwrap();
        let view = poller.view.clone();
        (poller, view)
    }

    #[test]
    fn the_workers_table_maps_to_status_fleet() {
        let routes: Vec<FleetRoute> = serde_json::from_value(serde_json::json!([
            route("us-east", "cluster-c", 1, "2026-12-01T20:01:00Z", true),
            route("local", "cluster-a", 1, "2026-12-01T20:05:00Z", false),
            route("eu-west", "cluster-b", 2, "2026-12-01T20:05:00Z", false),
        ]))
        .unwrap();
        let fleet = fleet_status(&routes);
        let yaml = serde_json::to_value(&fleet).unwrap();
        assert_eq!(
            yaml,
            serde_json::json!([
                {"region": "eu-west", "namespace": "ml", "name": "smollm2", "keyId": "cluster-b", "readyReplicas": 2, "expired": false},
                {"region": "local", "namespace": "ml", "name": "smollm2", "keyId": "cluster-a", "readyReplicas": 1, "expired": false},
                {"region": "us-east", "namespace": "ml", "name": "smollm2", "keyId": "cluster-c", "readyReplicas": 1, "expired": true,
                 "expiredAt": "2026-12-01T20:01:00Z"},
            ])
        );
        assert_eq!(
            fleet_regions(&fleet).as_deref(),
            Some("eu-west,local,us-east(expired)")
        );
        // A region live from one cluster and expired from another is live.
        let mut both = fleet.clone();
        both.push(FleetRegionStatus {
            key_id: "cluster-d".into(),
            ..fleet[0].clone()
        });
        both[0].expired = true;
        assert_eq!(
            fleet_regions(&both).as_deref(),
            Some("eu-west,local,us-east(expired)")
        );
        assert_eq!(fleet_regions(&[]), None);
    }

    #[test]
    fn status_fleet_holds_at_most_64_entries() {
        let routes = |n: usize| -> Vec<FleetRoute> {
            (0..n)
                .map(|i| FleetRoute {
                    namespace: "ml".into(),
                    name: "m".into(),
                    region: format!("r-{i:03}"),
                    key_id: "k".into(),
                    ready_replicas: 1,
                    expires_at: None,
                    expired: false,
                })
                .collect()
        };
        assert_eq!(fleet_status(&routes(MAX_FLEET_ENTRIES)).len(), 64);
        let capped = fleet_status(&routes(MAX_FLEET_ENTRIES + 1));
        assert_eq!(capped.len(), 64);
        // The first 64 in order are kept, the last left out.
        assert_eq!(capped.last().unwrap().region, "r-063");
        // The CRD says the same bound.
        let crd =
            serde_json::to_value(<ModelDeployment as kube::CustomResourceExt>::crd()).unwrap();
        let fleet = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            ["properties"]["fleet"];
        assert_eq!(fleet["maxItems"], 64, "{fleet}");
    }

    #[tokio::test]
    async fn an_unchanged_table_costs_a_304_and_triggers_nothing() {
        let shared = fake(
            "v1",
            serde_json::json!({"smollm2-135m": [route("eu-west", "cluster-b", 1, "2026-12-01T20:05:00Z", false)]}),
        );
        let (config, _server) = serve(shared.clone()).await;
        let (poller, view) = poller(config);
        assert_eq!(
            view.fleet("smollm2-135m"),
            None,
            "nothing before the first answer"
        );
        // The first answer concerns every object: status may hold an earlier operator's view.
        assert_eq!(poller.poll_once().await.unwrap(), Some(Changes::All));
        let fleet = view.fleet("smollm2-135m").unwrap();
        assert_eq!(fleet.len(), 1);
        assert_eq!(fleet[0].region, "eu-west");
        assert_eq!(view.fleet("another-model"), Some(Vec::new()));
        assert_eq!(poller.poll_once().await.unwrap(), None);
        assert_eq!(poller.poll_once().await.unwrap(), None);
        assert_eq!(
            shared.lock().unwrap().requests,
            [
                (None, 200),
                (Some("\"v1\"".to_owned()), 304),
                (Some("\"v1\"".to_owned()), 304)
            ]
        );
        assert_eq!(
            view.fleet("smollm2-135m").unwrap(),
            fleet,
            "kept through the 304s"
        );
    }

    #[tokio::test]
    async fn only_models_whose_entries_changed_trigger() {
        let shared = fake(
            "v1",
            serde_json::json!({
                "a": [route("eu-west", "cluster-b", 1, "2026-12-01T20:05:00Z", false)],
                "b": [route("eu-west", "cluster-b", 1, "2026-12-01T20:05:00Z", false)],
                "c": [route("us-east", "cluster-c", 1, "2026-12-01T20:05:00Z", false)],
            }),
        );
        let (config, _server) = serve(shared.clone()).await;
        let (poller, view) = poller(config);
        poller.poll_once().await.unwrap();
        {
            let mut fake = shared.lock().unwrap();
            fake.version = "v2".into();
            fake.models = serde_json::json!({
                // a: another replica became ready.
                "a": [route("eu-west", "cluster-b", 2, "2026-12-01T20:05:00Z", false)],
                // b: only a lease renewal moved its expiry.
                "b": [route("eu-west", "cluster-b", 1, "2026-12-01T20:06:00Z", false)],
                // c: gone; d: new.
                "d": [route("local", "cluster-a", 1, "2026-12-01T20:06:00Z", false)],
            });
        }
        let changes = poller.poll_once().await.unwrap();
        assert_eq!(
            changes,
            Some(Changes::Models(
                ["a", "c", "d"].iter().map(|m| (*m).to_owned()).collect()
            ))
        );
        assert_eq!(view.fleet("c"), Some(Vec::new()));
        // Expiry is a change: the entry says so, with when.
        {
            let mut fake = shared.lock().unwrap();
            fake.version = "v3".into();
            fake.models["a"] = serde_json::json!([route(
                "eu-west",
                "cluster-b",
                2,
                "2026-12-01T20:05:00Z",
                true
            )]);
        }
        assert_eq!(
            poller.poll_once().await.unwrap(),
            Some(Changes::Models(BTreeSet::from(["a".to_owned()])))
        );
        let a = view.fleet("a").unwrap();
        assert!(a[0].expired);
        assert_eq!(a[0].expired_at.as_deref(), Some("2026-12-01T20:05:00Z"));
        // A new version with the same entries (renewals only) triggers nothing.
        {
            let mut fake = shared.lock().unwrap();
            fake.version = "v4".into();
            fake.models["b"] = serde_json::json!([route(
                "eu-west",
                "cluster-b",
                1,
                "2026-12-01T20:07:00Z",
                false
            )]);
        }
        assert_eq!(poller.poll_once().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failed_poll_keeps_the_last_snapshot() {
        let shared = fake(
            "v1",
            serde_json::json!({"a": [route("eu-west", "cluster-b", 1, "2026-12-01T20:05:00Z", false)]}),
        );
        let (config, _server) = serve(shared.clone()).await;
        let (poller, view) = poller(config.clone());
        poller.poll_once().await.unwrap();
        shared.lock().unwrap().fail = Some(503);
        let err = poller.poll_once().await.unwrap_err();
        assert!(
            matches!(&err, PublishError::Rejected { status: 503, code, .. } if code == "unavailable"),
            "{err}"
        );
        assert_eq!(view.fleet("a").unwrap().len(), 1);
        // Signed with another key: refused, as the Worker refuses it.
        let stranger = FleetClient::new(PublishConfig {
            key: SigningKey::from_bytes(&[8u8; 32]),
            ..config
        })
        .unwrap();
        let err = stranger.fetch(None).await.unwrap_err();
        assert_eq!(err.category(), "unauthorized", "{err}");
    }

    fn md(namespace: &str, name: &str, served: &str) -> ModelDeployment {
        let yaml = crate::build::tests::FIXTURE
            .replace(
                "name: smollm2, namespace: ml",
                &format!("name: {name}, namespace: {namespace}"),
            )
            .replace("servedName: smollm2-135m", &format!("servedName: {served}"));
        serde_yaml::from_str(&yaml).unwrap()
    }

    #[tokio::test]
    async fn changes_reconcile_the_objects_serving_the_changed_models() {
        let shared = fake(
            "v1",
            serde_json::json!({"a": [route("eu-west", "cluster-b", 1, "2026-12-01T20:05:00Z", false)]}),
        );
        let (config, _server) = serve(shared.clone()).await;
        let config = PublishConfig {
            fleet_poll_interval: Duration::from_millis(50),
            ..config
        };
        let (hook, mut keys, poller) = start(&config).unwrap();
        // Reconciles compute status through the hook; before the first
        // answer it leaves status.fleet as the object had it.
        let objects = [
            md("ml", "one", "a"),
            md("team", "two", "a"),
            md("ml", "three", "b"),
        ];
        for object in &objects {
            let mut desired = ModelDeploymentStatus::default();
            hook(object, &mut desired);
            assert!(desired.fleet.is_empty());
        }
        let _task = poller.spawn();
        // The first answer concerns every object.
        let mut first = vec![
            next(&mut keys).await,
            next(&mut keys).await,
            next(&mut keys).await,
        ];
        first.sort();
        assert_eq!(first, ["ml/one", "ml/three", "team/two"]);
        let mut desired = ModelDeploymentStatus::default();
        hook(&objects[0], &mut desired);
        assert_eq!(desired.fleet.len(), 1);
        assert_eq!(desired.fleet_regions.as_deref(), Some("eu-west"));
        // Model a changes: the two objects serving it, and nothing else.
        {
            let mut fake = shared.lock().unwrap();
            fake.version = "v2".into();
            fake.models["a"] = serde_json::json!([route(
                "eu-west",
                "cluster-b",
                2,
                "2026-12-01T20:05:00Z",
                false
            )]);
        }
        let mut second = vec![next(&mut keys).await, next(&mut keys).await];
        second.sort();
        assert_eq!(second, ["ml/one", "team/two"]);
        // Unchanged since: the poller keeps asking (304s) and asks for no reconcile.
        let polled = shared.lock().unwrap().requests.len();
        wait_until(|| shared.lock().unwrap().requests.len() >= polled + 3).await;
        assert!(keys.try_recv().is_err(), "no reconcile without a change");
        assert!(
            shared.lock().unwrap().requests[polled..]
                .iter()
                .all(|(_, status)| *status == 304)
        );
    }

    async fn next(keys: &mut UnboundedReceiver<ObjectKey>) -> String {
        let (namespace, name) = tokio::time::timeout(Duration::from_secs(10), keys.recv())
            .await
            .expect("a reconcile asked for within 10 s")
            .expect("the poller runs");
        format!("{namespace}/{name}")
    }

    async fn wait_until(cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "not within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn status_keeps_its_fleet_until_the_first_answer() {
        let prev = ModelDeploymentStatus {
            fleet: vec![FleetRegionStatus {
                region: "eu-west".into(),
                ..FleetRegionStatus::default()
            }],
            fleet_regions: Some("eu-west".into()),
            ..ModelDeploymentStatus::default()
        };
        let view = FleetView::default();
        let mut desired = ModelDeploymentStatus::default();
        set_status(&mut desired, &prev, Some(&view), "a");
        assert_eq!(desired.fleet, prev.fleet);
        assert_eq!(desired.fleet_regions.as_deref(), Some("eu-west"));
        view.replace(Snapshot::default());
        set_status(&mut desired, &prev, Some(&view), "a");
        assert!(desired.fleet.is_empty());
        assert_eq!(desired.fleet_regions, None);
        // Publication disabled: no Worker, no fleet.
        set_status(&mut desired, &prev, None, "a");
        assert!(desired.fleet.is_empty());
    }

    #[test]
    fn fleet_url_keeps_base_path() {
        let base = Url::parse("https://worker.example.com/edge/").unwrap();
        assert_eq!(
            fleet_url(&base).as_str(),
            "https://worker.example.com/edge/admin/v1/fleet"
        );
    }
}
