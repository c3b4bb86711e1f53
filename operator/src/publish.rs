//! Publish: routes on the Backhaul Worker, exactly per docs/publication.md.
//!
//! [`route`] builds the PUT body (pure), [`sign`] the HMAC-SHA256 signature,
//! [`Publisher`] sends signed PUT/DELETE requests, and [`RouteTracker`] remembers
//! what was sent when, so a reconcile republishes only when a route changed or its
//! heartbeat (`ttlSeconds / 3`) is due, and backs off after failures.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use url::Url;

use crate::config::PublishConfig;
use crate::crd::RegionSpec;
use crate::validate::ValidatedModelDeployment;

/// Location of a region, in degrees.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct RouteLocation {
    /// Latitude.
    pub latitude: f64,
    /// Longitude.
    pub longitude: f64,
}

/// Routing settings as the Worker reads them.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRouting {
    /// Prompt tokens from which a request is heavy.
    pub heavy_prompt_tokens: u32,
    /// `max_tokens` from which a request is heavy.
    pub heavy_max_tokens: u32,
    /// Budget of one upstream attempt.
    pub request_timeout_ms: u64,
    /// Time to response headers before failing over.
    pub first_byte_timeout_ms: u64,
    /// Most regions one request tries.
    pub failover_attempts: u32,
}

/// The PUT body.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Namespace of the ModelDeployment.
    pub namespace: String,
    /// Name of the ModelDeployment.
    pub name: String,
    /// Region name.
    pub region: String,
    /// Served model name.
    pub model: String,
    /// Base URL of the region's HTTP surface.
    pub endpoint: String,
    /// Where the region is.
    pub location: RouteLocation,
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// Routing settings.
    pub routing: RouteRouting,
    /// Workers AI model for light requests, or `null`.
    pub edge_model: Option<String>,
    /// The ModelDeployment's `metadata.generation`.
    pub generation: i64,
    /// When sent (RFC 3339, whole seconds).
    pub published_at: String,
    /// Seconds the route lives unless republished.
    pub ttl_seconds: u32,
}

/// The route for `region` with `ready_replicas` ready, sent at `published_at`.
pub fn route(
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
    ready_replicas: i32,
    published_at: &str,
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
        published_at: published_at.to_owned(),
        ttl_seconds: r.ttl_seconds,
    }
}

/// `now` as RFC 3339 in whole seconds, the `publishedAt` format.
pub fn rfc3339_seconds(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let ts = k8s_openapi::jiff::Timestamp::from_second(secs as i64)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `v1=<hex>` of `HMAC-SHA256(secret, "{timestamp}.{METHOD}.{path}.{body}")`.
pub fn sign(secret: &[u8], timestamp: u64, method: &str, path: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(format!("{timestamp}.{}.{path}.", method.to_ascii_uppercase()).as_bytes());
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
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
    #[error("{method} {url}: HTTP {status}: {message}")]
    Rejected {
        /// HTTP method.
        method: &'static str,
        /// Target.
        url: String,
        /// Response status.
        status: u16,
        /// The Worker's error message.
        message: String,
    },
}

impl PublishError {
    /// Bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            PublishError::Transport { .. } => "transport",
            PublishError::Rejected { status: 401, .. } => "unauthorized",
            PublishError::Rejected { status: 409, .. } => "conflict",
            PublishError::Rejected { .. } => "rejected",
        }
    }
}

/// Signed HTTP client for the Worker's admin API.
#[derive(Clone, Debug)]
pub struct Publisher {
    http: reqwest::Client,
    config: PublishConfig,
}

impl Publisher {
    /// A client for `config`.
    pub fn new(config: PublishConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("backhaul-operator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, config })
    }

    /// PUT the route.
    pub async fn put(&self, route: &Route) -> Result<(), PublishError> {
        let url = route_url(
            &self.config.worker_url,
            &route.namespace,
            &route.name,
            &route.region,
        );
        let body = serde_json::to_vec(route).expect("a route serializes");
        self.send(reqwest::Method::PUT, url, body).await
    }

    /// DELETE the route (absent routes are fine: deletes are idempotent).
    pub async fn delete(
        &self,
        namespace: &str,
        name: &str,
        region: &str,
    ) -> Result<(), PublishError> {
        let url = route_url(&self.config.worker_url, namespace, name, region);
        self.send(reqwest::Method::DELETE, url, Vec::new()).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        url: Url,
        body: Vec<u8>,
    ) -> Result<(), PublishError> {
        let method_name: &'static str = if method == reqwest::Method::PUT {
            "PUT"
        } else {
            "DELETE"
        };
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = sign(
            &self.config.secret,
            timestamp,
            method_name,
            url.path(),
            &body,
        );
        let mut request = self
            .http
            .request(method, url.clone())
            .header("X-Backhaul-Timestamp", timestamp.to_string())
            .header("X-Backhaul-Signature", signature);
        if !body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| PublishError::Transport {
                method: method_name,
                url: url.to_string(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        // Prefer the Worker's OpenAI-shaped message; keep it short and stable
        // because it lands in status.
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
            .unwrap_or(text);
        Err(PublishError::Rejected {
            method: method_name,
            url: url.to_string(),
            status: status.as_u16(),
            message: message.chars().take(200).collect(),
        })
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

#[derive(Clone, Debug)]
struct Sent {
    /// The route with `publishedAt` blanked, to detect content changes.
    content: Route,
    at: Instant,
}

#[derive(Clone, Debug, Default)]
struct Failures {
    count: u32,
    retry_at: Option<Instant>,
}

/// In-memory memory of publications, per route. Lost on restart, which only
/// costs one early heartbeat.
#[derive(Debug, Default)]
pub struct RouteTracker {
    sent: Mutex<HashMap<RouteKey, Sent>>,
    failures: Mutex<HashMap<RouteKey, Failures>>,
}

/// What a reconcile should do about one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send now.
    Now,
    /// Nothing to send until then.
    At(Instant),
}

fn blank(route: &Route) -> Route {
    Route {
        published_at: String::new(),
        ..route.clone()
    }
}

impl RouteTracker {
    /// Whether `route` must be sent: it changed, its heartbeat is due, or it was
    /// never sent; but not before a failure's backoff ends.
    pub fn put_due(&self, key: &RouteKey, route: &Route, now: Instant) -> Due {
        if let Some(at) = self.retry_at(key)
            && at > now
        {
            return Due::At(at);
        }
        let heartbeat = Duration::from_secs(u64::from(route.ttl_seconds / 3).max(1));
        match self.sent.lock().expect("not poisoned").get(key) {
            Some(sent) if sent.content == blank(route) && sent.at + heartbeat > now => {
                Due::At(sent.at + heartbeat)
            }
            _ => Due::Now,
        }
    }

    /// Whether a DELETE may be sent now (not inside a failure backoff).
    pub fn delete_due(&self, key: &RouteKey, now: Instant) -> Due {
        match self.retry_at(key) {
            Some(at) if at > now => Due::At(at),
            _ => Due::Now,
        }
    }

    fn retry_at(&self, key: &RouteKey) -> Option<Instant> {
        self.failures
            .lock()
            .expect("not poisoned")
            .get(key)
            .and_then(|f| f.retry_at)
    }

    /// Whether this process has sent `key` and not withdrawn it.
    pub fn is_sent(&self, key: &RouteKey) -> bool {
        self.sent.lock().expect("not poisoned").contains_key(key)
    }

    /// Records a successful PUT.
    pub fn put_ok(&self, key: &RouteKey, route: &Route, now: Instant) {
        self.failures.lock().expect("not poisoned").remove(key);
        self.sent.lock().expect("not poisoned").insert(
            key.clone(),
            Sent {
                content: blank(route),
                at: now,
            },
        );
    }

    /// Records a successful DELETE.
    pub fn delete_ok(&self, key: &RouteKey) {
        self.failures.lock().expect("not poisoned").remove(key);
        self.sent.lock().expect("not poisoned").remove(key);
    }

    /// Records a failure; returns when to retry (1 s doubling to 60 s).
    pub fn failed(&self, key: &RouteKey, now: Instant) -> Instant {
        let mut failures = self.failures.lock().expect("not poisoned");
        let f = failures.entry(key.clone()).or_default();
        f.count = f.count.saturating_add(1);
        let backoff = Duration::from_secs(1u64 << f.count.saturating_sub(1).min(6))
            .min(Duration::from_secs(60));
        let at = now + backoff;
        f.retry_at = Some(at);
        at
    }

    /// Forgets every route of one object (after cleanup).
    pub fn forget(&self, namespace: &str, name: &str) {
        let keep = |k: &RouteKey| !(k.namespace == namespace && k.name == name);
        self.sent
            .lock()
            .expect("not poisoned")
            .retain(|k, _| keep(k));
        self.failures
            .lock()
            .expect("not poisoned")
            .retain(|k, _| keep(k));
    }
}

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
        let r = route(&v, &v.regions[0], 2, "2026-11-23T07:00:00Z");
        let expected: serde_json::Value = serde_json::from_str(
            r#"{
  "namespace": "ml", "name": "smollm2", "region": "us-east", "model": "smollm2-135m",
  "endpoint": "https://us-east.example.com",
  "location": { "latitude": 39.04, "longitude": -77.49 },
  "replicas": 3, "readyReplicas": 2,
  "routing": { "heavyPromptTokens": 1024, "heavyMaxTokens": 512, "requestTimeoutMs": 120000,
               "firstByteTimeoutMs": 15000, "failoverAttempts": 3 },
  "edgeModel": "@cf/meta/llama-3.2-1b-instruct",
  "generation": 2, "publishedAt": "2026-11-23T07:00:00Z", "ttlSeconds": 60
}"#,
        )
        .unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), expected);
        // No edge model: an explicit null, not a missing field.
        let v = validated(FIXTURE);
        let r = serde_json::to_value(route(&v, &v.regions[0], 2, "x")).unwrap();
        assert!(r.as_object().unwrap()["edgeModel"].is_null());
    }

    #[test]
    fn signature_is_hmac_of_timestamp_method_path_body() {
        // Computed independently:
        // printf '1700000000.PUT./admin/v1/routes/a/b/c.{}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            sign(
                b"secret",
                1_700_000_000,
                "put",
                "/admin/v1/routes/a/b/c",
                b"{}"
            ),
            "v1=64d5c85d2bbf408f43a6c1f087ece39ea6b9c86cd68ecb8b5e2b358a5aeef3bd"
        );
        assert_eq!(
            sign(
                b"secret",
                1_700_000_000,
                "DELETE",
                "/admin/v1/routes/a/b/c",
                b""
            ),
            "v1=0af6ad37dc0dfd75047f8e0cc4b52fd62dcfa415df7df0fc7afdc41c8aed8969"
        );
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

    #[test]
    fn heartbeat_every_third_of_ttl_and_on_change() {
        let t = RouteTracker::default();
        let v = validated(FIXTURE);
        let key = RouteKey {
            namespace: "ml".into(),
            name: "smollm2".into(),
            region: "us-east".into(),
        };
        let now = Instant::now();
        let r = route(&v, &v.regions[0], 1, "t0");
        assert_eq!(t.put_due(&key, &r, now), Due::Now);
        t.put_ok(&key, &r, now);
        // Same content, different timestamp: not due until ttl/3 = 20 s.
        let r2 = route(&v, &v.regions[0], 1, "t1");
        assert_eq!(
            t.put_due(&key, &r2, now + Duration::from_secs(5)),
            Due::At(now + Duration::from_secs(20))
        );
        assert_eq!(
            t.put_due(&key, &r2, now + Duration::from_secs(20)),
            Due::Now
        );
        // Changed content: due at once.
        let r3 = route(&v, &v.regions[0], 2, "t1");
        assert_eq!(t.put_due(&key, &r3, now + Duration::from_secs(1)), Due::Now);
    }

    #[test]
    fn failures_back_off_exponentially() {
        let t = RouteTracker::default();
        let key = RouteKey {
            namespace: "ml".into(),
            name: "m".into(),
            region: "r".into(),
        };
        let now = Instant::now();
        assert_eq!(t.failed(&key, now), now + Duration::from_secs(1));
        assert_eq!(t.failed(&key, now), now + Duration::from_secs(2));
        assert_eq!(t.failed(&key, now), now + Duration::from_secs(4));
        assert_eq!(
            t.delete_due(&key, now),
            Due::At(now + Duration::from_secs(4))
        );
        for _ in 0..10 {
            t.failed(&key, now);
        }
        assert_eq!(t.failed(&key, now), now + Duration::from_secs(60));
        t.delete_ok(&key);
        assert_eq!(t.delete_due(&key, now), Due::Now);
    }
}
