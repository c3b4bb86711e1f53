//! Publish: routes on the Backhaul Worker, exactly per docs/publication.md.
//!
//! [`route`] builds the PUT body (pure; [`Route`] is the one definition of its
//! shape, with the JSON Schema the Worker is tested against), [`sign`] the
//! Ed25519 signature, [`Publisher`] sends signed PUT/DELETE/GET requests,
//! [`put_route`]/[`delete_route`] give each write a sequence number and recover
//! from `409 stale_sequence` ([`Sequences`] remembers the last one per route),
//! and [`Publisher::renew`] renews the key's lease. What to send when is
//! decided by [`crate::route_sync`], the one owner of publication.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use schemars::JsonSchema;
use serde::Serialize;
use url::Url;

use crate::config::PublishConfig;
use crate::crd::RegionSpec;
use crate::validate::ValidatedModelDeployment;

/// Kubernetes names in the route's path and body.
const K8S_NAME: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// The largest integer JSON numbers (and so the Worker) hold exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// What an upstream token may look like (base64, base64url, hex and the like).
pub const UPSTREAM_TOKEN_PATTERN: &str = r"^[A-Za-z0-9._~+/=-]{16,512}$";

/// Whether `token` matches [`UPSTREAM_TOKEN_PATTERN`] (no regex engine in the
/// operator for one character class).
pub fn valid_upstream_token(token: &str) -> bool {
    (16..=512).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~+/=-".contains(&b))
}

/// Location of a region, in degrees.
#[derive(Serialize, JsonSchema, Clone, Copy, Debug, PartialEq)]
pub struct RouteLocation {
    /// Latitude.
    #[schemars(range(min = -90.0, max = 90.0))]
    pub latitude: f64,
    /// Longitude.
    #[schemars(range(min = -180.0, max = 180.0))]
    pub longitude: f64,
}

/// Routing settings as the Worker reads them: the CRD's `routing`, in milliseconds.
#[derive(Serialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRouting {
    /// Estimated prompt tokens from which a request is heavy (0: every request is heavy).
    #[schemars(range(min = 0, max = 4_294_967_295u32))]
    pub heavy_prompt_tokens: u32,
    /// `max_tokens` from which a request is heavy (0: every request is heavy).
    #[schemars(range(min = 0, max = 4_294_967_295u32))]
    pub heavy_max_tokens: u32,
    /// Budget of one upstream attempt.
    #[schemars(range(min = 1000, max = 3_600_000))]
    pub request_timeout_ms: u64,
    /// Time to response headers before failing over.
    #[schemars(range(min = 1000, max = 3_600_000))]
    pub first_byte_timeout_ms: u64,
    /// Most regions one request tries.
    #[schemars(range(min = 1, max = 32))]
    pub failover_attempts: u32,
}

/// The PUT body (docs/publication.md, "The route"). Its JSON Schema,
/// [`route_schema`], is committed as docs/schemas/route.schema.json.
#[derive(Serialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(
    title = "Route",
    description = "A region's route, as the operator publishes it to the routing Worker (docs/publication.md)."
)]
pub struct Route {
    /// Namespace of the ModelDeployment.
    #[schemars(regex(pattern = K8S_NAME), length(min = 1, max = 63))]
    pub namespace: String,
    /// Name of the ModelDeployment.
    #[schemars(regex(pattern = K8S_NAME), length(min = 1, max = 63))]
    pub name: String,
    /// Region name.
    #[schemars(regex(pattern = K8S_NAME), length(min = 1, max = 63))]
    pub region: String,
    /// Served model name: what clients put in `model`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9._:/-]{1,128}$"))]
    pub model: String,
    /// Base URL of the region's HTTP surface (https, or http for loopback hosts).
    #[schemars(extend("format" = "uri"))]
    pub endpoint: String,
    /// Where the region is.
    pub location: RouteLocation,
    /// Desired replicas.
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Ready replicas.
    #[schemars(range(min = 0, max = 1000))]
    pub ready_replicas: i32,
    /// Routing settings.
    pub routing: RouteRouting,
    /// Workers AI model for light requests, or `null`: every request goes to a region.
    #[schemars(regex(pattern = r"^[A-Za-z0-9@._:/-]{1,128}$"))]
    pub edge_model: Option<String>,
    /// The ModelDeployment's `metadata.generation`.
    #[schemars(range(min = 0, max = MAX_SAFE_INTEGER))]
    pub generation: i64,
    /// Increases with every write of this route; the Worker refuses a write not above the stored one.
    #[schemars(range(min = 1, max = MAX_SAFE_INTEGER))]
    pub sequence: u64,
    /// When sent (RFC 3339, whole seconds); within 300 s of the Worker's clock.
    #[schemars(extend("format" = "date-time"))]
    pub published_at: String,
    /// Seconds the route lives after the Worker received it, unless republished.
    #[schemars(range(min = 10, max = 3600))]
    pub ttl_seconds: u32,
    /// The credential the Worker sends the region (`Authorization: Bearer`); never returned by the Worker.
    #[schemars(regex(pattern = UPSTREAM_TOKEN_PATTERN))]
    pub upstream_token: String,
}

/// The committed JSON Schema of [`Route`] (pretty JSON, trailing newline).
pub fn route_schema() -> String {
    let schema = schemars::schema_for!(Route);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// The route for `region` with `ready_replicas` ready, sent at `published_at`
/// with `upstream_token`. Its `sequence` is set when it is sent ([`put_route`]).
pub fn route(
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
    ready_replicas: i32,
    published_at: &str,
    upstream_token: &str,
) -> Route {
    let r = &v.routing;
    Route {
        namespace: v.namespace.clone(),
        name: v.name.clone(),
        region: region.name.clone(),
        model: v.model.served_name.clone(),
        endpoint: region.endpoint.clone(),
        location: RouteLocation {
            latitude: region.location.latitude,
            longitude: region.location.longitude,
        },
        replicas: region.replicas,
        ready_replicas,
        routing: RouteRouting {
            heavy_prompt_tokens: r.heavy_prompt_tokens,
            heavy_max_tokens: r.heavy_max_tokens,
            request_timeout_ms: u64::from(r.request_timeout_seconds) * 1000,
            first_byte_timeout_ms: u64::from(r.first_byte_timeout_seconds) * 1000,
            failover_attempts: r.failover_attempts,
        },
        edge_model: r.edge_model.clone(),
        generation: v.generation,
        sequence: 0,
        published_at: published_at.to_owned(),
        ttl_seconds: r.ttl_seconds,
        upstream_token: upstream_token.to_owned(),
    }
}

/// `now` as RFC 3339 in whole seconds, the `publishedAt` format.
pub fn rfc3339_seconds(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let ts = k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The signed bytes: `backhaul-v2.{keyId}.{timestamp}.{METHOD}.{path}.` + body.
pub fn signing_payload(
    key_id: &str,
    timestamp: u64,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut payload = format!(
        "backhaul-v2.{key_id}.{timestamp}.{}.{path}.",
        method.to_ascii_uppercase()
    )
    .into_bytes();
    payload.extend_from_slice(body);
    payload
}

/// The `X-Backhaul-Signature` value: `ed25519=<base64 signature>` of [`signing_payload`].
pub fn sign(
    key: &SigningKey,
    key_id: &str,
    timestamp: u64,
    method: &str,
    path: &str,
    body: &[u8],
) -> String {
    let signature = key.sign(&signing_payload(key_id, timestamp, method, path, body));
    format!(
        "ed25519={}",
        base64::engine::general_purpose::STANDARD.encode(signature.to_bytes())
    )
}

/// The base64 raw public key of `key`: its `publicKey` in the Worker's `BACKHAUL_PUBLISHERS`.
pub fn public_key_base64(key: &SigningKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes())
}

/// `{worker}/admin/v1/routes/{namespace}/{name}/{region}`, keeping any base path.
pub fn route_url(worker: &Url, namespace: &str, name: &str, region: &str) -> Url {
    let mut url = worker.clone();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!(
        "{base}/admin/v1/routes/{namespace}/{name}/{region}"
    ));
    url.set_query(None);
    url
}

/// A request to the Worker failed; the route stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No response (connection refused, timeout, TLS).
    #[error("{method} {url}: {source}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Target.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The Worker answered with an error status.
    #[error("{method} {url}: HTTP {status} {code}: {message}")]
    Rejected {
        /// HTTP method.
        method: &'static str,
        /// Target.
        url: String,
        /// Response status.
        status: u16,
        /// The Worker's error code (`stale_sequence`, `model_owned`, ...); empty when it gave none.
        code: String,
        /// The Worker's error message.
        message: String,
    },
    /// The Worker's answer to a GET was not the documented JSON.
    #[error("GET {url}: unreadable answer: {message}")]
    Unreadable {
        /// Target.
        url: String,
        /// What was wrong.
        message: String,
    },
}

impl PublishError {
    /// Bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            PublishError::Transport { .. } => "transport",
            PublishError::Rejected { status: 401, .. } => "unauthorized",
            PublishError::Rejected { status: 403, .. } => "forbidden",
            PublishError::Rejected { status: 409, .. } => "conflict",
            PublishError::Rejected { .. } | PublishError::Unreadable { .. } => "rejected",
        }
    }

    /// Whether the Worker holds a higher sequence for the route (recoverable: [`put_route`]).
    pub fn is_stale_sequence(&self) -> bool {
        matches!(self, PublishError::Rejected { status: 409, code, .. } if code == "stale_sequence")
    }
}

/// Signed HTTP client for the Worker's admin API.
#[derive(Clone, Debug)]
pub struct Publisher {
    http: reqwest::Client,
    config: PublishConfig,
}

/// The HTTP client every signed request to the Worker's admin API uses.
pub(crate) fn admin_http(config: &PublishConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .user_agent(concat!("backhaul-operator/", env!("CARGO_PKG_VERSION")))
        // The admin API never redirects; a redirect would carry a signed
        // request somewhere else.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// `method url` with `body`, signed with `config`'s key (docs/publication.md).
pub(crate) fn signed_request(
    http: &reqwest::Client,
    config: &PublishConfig,
    method: reqwest::Method,
    url: &Url,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let signature = sign(
        &config.key,
        &config.key_id,
        timestamp,
        method.as_str(),
        url.path(),
        &body,
    );
    let request = http
        .request(method, url.clone())
        .header("X-Backhaul-Key-Id", &config.key_id)
        .header("X-Backhaul-Timestamp", timestamp.to_string())
        .header("X-Backhaul-Signature", signature);
    if body.is_empty() {
        request
    } else {
        request
            .header("content-type", "application/json")
            .body(body)
    }
}

/// The Worker's refusal (`status`, answer `text`) of `method url`.
pub(crate) fn rejection(
    method: &'static str,
    url: &Url,
    status: u16,
    text: String,
) -> PublishError {
    // Prefer the Worker's OpenAI-shaped message; keep it short and stable
    // because it lands in status.
    let error = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .map(|v| v["error"].clone());
    let field = |name: &str| {
        error
            .as_ref()
            .and_then(|e| e[name].as_str().map(str::to_owned))
    };
    PublishError::Rejected {
        method,
        url: url.to_string(),
        status,
        code: field("code").unwrap_or_default(),
        message: field("message").unwrap_or(text).chars().take(200).collect(),
    }
}

impl Publisher {
    /// A client for `config`.
    pub fn new(config: PublishConfig) -> Result<Self, reqwest::Error> {
        let http = admin_http(&config)?;
        Ok(Self { http, config })
    }

    /// PUT the route (its `sequence` set by the caller).
    pub async fn put(&self, route: &Route) -> Result<(), PublishError> {
        let url = route_url(
            &self.config.worker_url,
            &route.namespace,
            &route.name,
            &route.region,
        );
        let body = serde_json::to_vec(route).expect("a route serializes");
        self.send(reqwest::Method::PUT, url, body).await.map(drop)
    }

    /// DELETE the route with `sequence` (absent routes are fine: deletes are
    /// idempotent and leave a tombstone).
    pub async fn delete(&self, key: &RouteKey, sequence: u64) -> Result<(), PublishError> {
        let url = route_url(
            &self.config.worker_url,
            &key.namespace,
            &key.name,
            &key.region,
        );
        let body = serde_json::to_vec(&serde_json::json!({ "sequence": sequence }))
            .expect("a sequence serializes");
        self.send(reqwest::Method::DELETE, url, body)
            .await
            .map(drop)
    }

    /// The highest sequence the Worker holds for the route (its stored route's or
    /// tombstone's), 0 when it holds neither.
    pub async fn stored_sequence(&self, key: &RouteKey) -> Result<u64, PublishError> {
        let url = route_url(
            &self.config.worker_url,
            &key.namespace,
            &key.name,
            &key.region,
        );
        let text = self
            .send(reqwest::Method::GET, url.clone(), Vec::new())
            .await?;
        let unreadable = |message: String| PublishError::Unreadable {
            url: url.to_string(),
            message,
        };
        let answer: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| unreadable(e.to_string()))?;
        let sequence = |field: &str| answer[field]["sequence"].as_u64().unwrap_or(0);
        if answer.get("route").is_none() || answer.get("tombstone").is_none() {
            return Err(unreadable("expected {\"route\", \"tombstone\"}".into()));
        }
        Ok(sequence("route").max(sequence("tombstone")))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Vec<u8>,
    ) -> Result<String, PublishError> {
        let method_name: &'static str = match method {
            reqwest::Method::PUT => "PUT",
            reqwest::Method::DELETE => "DELETE",
            _ => "GET",
        };
        let request = signed_request(&self.http, &self.config, method, &url, body);
        let response = request
            .send()
            .await
            .map_err(|source| PublishError::Transport {
                method: method_name,
                url: url.to_string(),
                source,
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_success() {
            return Ok(text);
        }
        Err(rejection(method_name, &url, status.as_u16(), text))
    }
}

/// Unix time in milliseconds: the floor of a route's next sequence, so a
/// restarted operator (whose memory is gone) still writes above its previous self.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Worker's admin API as route sync uses it: [`Publisher`] in production,
/// a fake in tests.
pub trait WorkerApi: Send + Sync + 'static {
    /// PUT `route` (its `sequence` set by the caller).
    fn put(&self, route: &Route) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// DELETE the route with `sequence`.
    fn delete(
        &self,
        key: &RouteKey,
        sequence: u64,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
    /// The highest sequence the Worker holds for the route (0: none).
    fn stored_sequence(
        &self,
        key: &RouteKey,
    ) -> impl Future<Output = Result<u64, PublishError>> + Send;
    /// Renews this key's lease (`PUT /admin/v1/leases/{keyId}`).
    fn renew(
        &self,
        lease: &LeaseRequest,
    ) -> impl Future<Output = Result<LeaseAnswer, PublishError>> + Send;
}

impl WorkerApi for Publisher {
    fn put(&self, route: &Route) -> impl Future<Output = Result<(), PublishError>> + Send {
        Publisher::put(self, route)
    }
    fn delete(
        &self,
        key: &RouteKey,
        sequence: u64,
    ) -> impl Future<Output = Result<(), PublishError>> + Send {
        Publisher::delete(self, key, sequence)
    }
    fn stored_sequence(
        &self,
        key: &RouteKey,
    ) -> impl Future<Output = Result<u64, PublishError>> + Send {
        Publisher::stored_sequence(self, key)
    }
    fn renew(
        &self,
        lease: &LeaseRequest,
    ) -> impl Future<Output = Result<LeaseAnswer, PublishError>> + Send {
        Publisher::renew(self, lease)
    }
}

/// The lease renewal's body (docs/publication.md, "Leases").
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseRequest {
    /// Above the stored lease's.
    pub sequence: u64,
    /// Number of routes held.
    pub routes: usize,
    /// [`lease_digest`] of the routes held.
    pub digest: String,
}

/// What the Worker holds for the key: its count and digest of the live
/// routes that key last wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseAnswer {
    /// Count.
    pub routes: usize,
    /// Digest.
    pub digest: String,
}

/// The lease digest: lower-case hex SHA-256 of the lines
/// `"{namespace}/{name}/{region} {sequence}\n"`, sorted bytewise.
pub fn lease_digest<'a>(held: impl IntoIterator<Item = (&'a RouteKey, u64)>) -> String {
    use sha2::{Digest, Sha256};
    let mut lines: Vec<String> = held
        .into_iter()
        .map(|(key, sequence)| format!("{key} {sequence}\n"))
        .collect();
    lines.sort_unstable();
    let mut hasher = Sha256::new();
    for line in &lines {
        hasher.update(line.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// `{worker}/admin/v1/leases/{keyId}`, keeping any base path.
pub fn lease_url(worker: &Url, key_id: &str) -> Url {
    let mut url = worker.clone();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}/admin/v1/leases/{key_id}"));
    url.set_query(None);
    url
}

impl Publisher {
    /// PUTs this key's lease; the answer carries the Worker's count and digest.
    pub async fn renew(&self, lease: &LeaseRequest) -> Result<LeaseAnswer, PublishError> {
        let url = lease_url(&self.config.worker_url, &self.config.key_id);
        let body = serde_json::to_vec(lease).expect("a lease serializes");
        let text = self.send(reqwest::Method::PUT, url.clone(), body).await?;
        let answer: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| PublishError::Unreadable {
                url: url.to_string(),
                message: e.to_string(),
            })?;
        let lease = &answer["lease"];
        match (lease["routes"].as_u64(), lease["digest"].as_str()) {
            (Some(routes), Some(digest)) => Ok(LeaseAnswer {
                routes: usize::try_from(routes).unwrap_or(usize::MAX),
                digest: digest.to_owned(),
            }),
            _ => Err(PublishError::Unreadable {
                url: url.to_string(),
                message: "expected {\"lease\": {\"routes\", \"digest\"}}".into(),
            }),
        }
    }
}

/// PUTs `route` with the next sequence. On `409 stale_sequence` (the Worker
/// holds a higher one: another operator, or this one's clock went back) it
/// reads the stored sequence and retries once above it.
pub async fn put_route<W: WorkerApi>(
    worker: &W,
    sequences: &Sequences,
    key: &RouteKey,
    route: &mut Route,
) -> Result<(), PublishError> {
    route.sequence = sequences.next(key, unix_millis());
    match worker.put(route).await {
        Err(e) if e.is_stale_sequence() => {
            let stored = worker.stored_sequence(key).await?;
            tracing::info!(route = %key, stored, sent = route.sequence, "the Worker holds a higher sequence; publishing above it");
            sequences.observe(key, stored);
            route.sequence = sequences.next(key, unix_millis());
            worker.put(route).await
        }
        result => result,
    }
}

/// DELETEs the route with the next sequence, recovering from `409
/// stale_sequence` as [`put_route`] does.
pub async fn delete_route<W: WorkerApi>(
    worker: &W,
    sequences: &Sequences,
    key: &RouteKey,
) -> Result<(), PublishError> {
    let sequence = sequences.next(key, unix_millis());
    match worker.delete(key, sequence).await {
        Err(e) if e.is_stale_sequence() => {
            let stored = worker.stored_sequence(key).await?;
            sequences.observe(key, stored);
            worker.delete(key, sequences.next(key, unix_millis())).await
        }
        result => result,
    }
}

/// Identifies one route.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
}

impl std::fmt::Display for RouteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.name, self.region)
    }
}

/// The last sequence sent (or seen stored on the Worker), per route. Lost on
/// restart: the Unix-millisecond floor keeps a new process above its previous self.
#[derive(Debug, Default)]
pub struct Sequences(Mutex<HashMap<RouteKey, u64>>);

impl Sequences {
    /// The sequence of the next write of `key`: above every one sent or seen,
    /// and at least `floor` (Unix milliseconds). Every attempt takes a new one.
    pub fn next(&self, key: &RouteKey, floor: u64) -> u64 {
        let mut sequences = self.0.lock().expect("not poisoned");
        let last = sequences.entry(key.clone()).or_default();
        *last = (*last + 1).max(floor);
        *last
    }

    /// Records that the Worker holds `stored` for `key`.
    pub fn observe(&self, key: &RouteKey, stored: u64) {
        let mut sequences = self.0.lock().expect("not poisoned");
        let last = sequences.entry(key.clone()).or_default();
        *last = (*last).max(stored);
    }

    /// Forgets every route of one object (after cleanup).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.0
            .lock()
            .expect("not poisoned")
            .retain(|k, _| !(k.namespace == namespace && k.name == name));
    }
}

/// What makes a route different from the one the Worker holds: everything
/// but when it was sent and its sequence. Kept as a SHA-256 digest of the
/// route's JSON without those two, so route sync holds one copy of each
/// route (its body), not two.
pub fn fingerprint(route: &Route) -> Fingerprint {
    let unsent = Route {
        published_at: String::new(),
        sequence: 0,
        ..route.clone()
    };
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(&unsent).expect("a route serializes");
    Fingerprint(Sha256::digest(&json).into())
}

/// A route's [`fingerprint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::{FIXTURE, validated};

    #[test]
    fn route_body_matches_the_contract() {
        let v = validated(&FIXTURE.replace(
            "  regions:",
            "  routing: {edgeModel: \"@cf/meta/llama-3.2-1b-instruct\"}\n  regions:",
        ));
        let r = route(
            &v,
            &v.regions[0],
            2,
            "2026-11-23T07:00:00Z",
            "tok-0123456789abcdef",
        );
        let expected: serde_json::Value = serde_json::from_str(
            r#"{
  "namespace": "ml", "name": "smollm2", "region": "us-east", "model": "smollm2-135m",
  "endpoint": "https://us-east.example.com",
  "location": { "latitude": 39.04, "longitude": -77.49 },
  "replicas": 3, "readyReplicas": 2,
  "routing": { "heavyPromptTokens": 1024, "heavyMaxTokens": 512, "requestTimeoutMs": 120000,
               "firstByteTimeoutMs": 15000, "failoverAttempts": 3 },
  "edgeModel": "@cf/meta/llama-3.2-1b-instruct",
  "generation": 2, "sequence": 0, "publishedAt": "2026-11-23T07:00:00Z", "ttlSeconds": 60,
  "upstreamToken": "tok-0123456789abcdef"
}"#,
        )
        .unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), expected);
        // No edge model: an explicit null, not a missing field.
        let v = validated(FIXTURE);
        let r = serde_json::to_value(route(&v, &v.regions[0], 2, "x", "t")).unwrap();
        assert!(r.as_object().unwrap()["edgeModel"].is_null());
    }

    /// docs/schemas/publication-signature-vectors.json, made with Python's
    /// `cryptography`; the Worker's verifier checks the same file.
    #[test]
    fn signatures_match_the_shared_vectors() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let vectors: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/schemas/publication-signature-vectors.json"
        ))
        .unwrap();
        // The primitive itself: RFC 8032, TEST 1.
        let rfc = &vectors["rfc8032Test1"];
        let seed: [u8; 32] = hex::decode(rfc["secretKey"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(
            hex::encode(key.sign(b"").to_bytes()),
            rfc["signature"].as_str().unwrap()
        );
        let cases = vectors["cases"].as_array().unwrap();
        assert!(cases.len() >= 4);
        for case in cases {
            let id = case["keyId"].as_str().unwrap();
            let k = &vectors["keys"][id];
            let key = SigningKey::from_pkcs8_pem(k["pkcs8Pem"].as_str().unwrap()).unwrap();
            assert_eq!(public_key_base64(&key), k["publicKey"].as_str().unwrap());
            let ts: u64 = case["timestamp"].as_str().unwrap().parse().unwrap();
            let (method, path, body) = (
                case["method"].as_str().unwrap(),
                case["path"].as_str().unwrap(),
                case["body"].as_str().unwrap().as_bytes(),
            );
            assert_eq!(
                signing_payload(id, ts, method, path, body),
                case["signedBytes"].as_str().unwrap().as_bytes(),
                "{case}"
            );
            assert_eq!(
                sign(&key, id, ts, &method.to_lowercase(), path, body),
                case["signature"].as_str().unwrap(),
                "{case}"
            );
        }
    }

    /// The committed schema is the type's: `make generate` rewrites it.
    #[test]
    fn committed_route_schema_matches_the_type() {
        let committed = include_str!("../../docs/schemas/route.schema.json");
        assert!(
            committed == route_schema(),
            "docs/schemas/route.schema.json is stale: run `make generate`"
        );
    }

    #[test]
    fn upstream_tokens_are_checked_against_the_pattern() {
        assert!(valid_upstream_token("abcdefghijklmnop"));
        assert!(valid_upstream_token(&"A-_.~+/=9".repeat(56)));
        assert!(!valid_upstream_token("short-token-15ch"[..15].as_ref()));
        assert!(!valid_upstream_token(&"a".repeat(513)));
        assert!(!valid_upstream_token("has space in the token"));
        assert!(!valid_upstream_token("newline\nin-the-token"));
        // The pattern in the schema says the same.
        assert_eq!(UPSTREAM_TOKEN_PATTERN, r"^[A-Za-z0-9._~+/=-]{16,512}$");
    }

    #[test]
    fn sequences_increase_per_route_and_jump_above_what_the_worker_holds() {
        let t = Sequences::default();
        let key = RouteKey {
            namespace: "ml".into(),
            name: "m".into(),
            region: "r".into(),
        };
        let other = RouteKey {
            region: "s".into(),
            ..key.clone()
        };
        assert_eq!(t.next(&key, 1000), 1000);
        // Same millisecond, or a clock that went back: still increasing.
        assert_eq!(t.next(&key, 1000), 1001);
        assert_eq!(t.next(&key, 5), 1002);
        assert_eq!(t.next(&other, 7), 7);
        t.observe(&key, 9_000);
        assert_eq!(t.next(&key, 1003), 9_001);
        // A lower stored sequence never lowers ours.
        t.observe(&key, 10);
        assert_eq!(t.next(&key, 0), 9_002);
        t.forget("ml", "m");
        assert_eq!(t.next(&key, 3), 3);
    }

    #[test]
    fn route_url_keeps_base_path() {
        let base = Url::parse("https://worker.example.com/edge/").unwrap();
        assert_eq!(
            route_url(&base, "ml", "smollm2", "us-east").as_str(),
            "https://worker.example.com/edge/admin/v1/routes/ml/smollm2/us-east"
        );
        let base = Url::parse("http://127.0.0.1:8787").unwrap();
        assert_eq!(
            route_url(&base, "a", "b", "c").path(),
            "/admin/v1/routes/a/b/c"
        );
    }

    /// A value from `printf ... | sha256sum`, and the shared vectors of
    /// docs/schemas/lease-digest-vectors.json (the Worker checks the same file).
    #[test]
    fn lease_digest_is_sha256_of_sorted_lines() {
        let key = |ns: &str, name: &str, region: &str| RouteKey {
            namespace: ns.into(),
            name: name.into(),
            region: region.into(),
        };
        // printf '' | sha256sum
        assert_eq!(
            lease_digest(std::iter::empty()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let (a, b) = (key("ml", "llama", "us-east"), key("ml", "llama", "eu-west"));
        // printf 'ml/llama/eu-west 7\nml/llama/us-east 1796112000123\n' | sha256sum
        let expected = "dac6ce40aab0ff429137c29f3f93d85847e24fc898339400d13455440c2b76ba";
        assert_eq!(lease_digest([(&a, 1_796_112_000_123), (&b, 7)]), expected);
        assert_eq!(lease_digest([(&b, 7), (&a, 1_796_112_000_123)]), expected);
        // The shared vectors (scripts/signature-vectors.py, Python hashlib).
        let vectors: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/schemas/lease-digest-vectors.json"))
                .unwrap();
        let cases = vectors["cases"].as_array().expect("cases");
        assert!(cases.len() >= 3);
        for case in cases {
            let routes: Vec<(RouteKey, u64)> = case["routes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let parts: Vec<&str> = r["key"].as_str().unwrap().split('/').collect();
                    (
                        key(parts[0], parts[1], parts[2]),
                        r["sequence"].as_u64().unwrap(),
                    )
                })
                .collect();
            assert_eq!(routes.len() as u64, case["count"].as_u64().unwrap());
            assert_eq!(
                lease_digest(routes.iter().map(|(k, s)| (k, *s))),
                case["digest"].as_str().unwrap(),
                "{case}"
            );
        }
    }

    #[test]
    fn lease_url_keeps_base_path() {
        let base = Url::parse("https://worker.example.com/edge/").unwrap();
        assert_eq!(
            lease_url(&base, "us-east-1").as_str(),
            "https://worker.example.com/edge/admin/v1/leases/us-east-1"
        );
    }
}
