//! The children cache: the API server's copies of the operator's children, as
//! its watches report them, and what the operator last applied to each.
//!
//! A reconcile skips the server-side apply of a child when the desired object
//! is the one it last applied and the cached copy has not changed since (same
//! `metadata.generation`, or `resourceVersion` for kinds without one). So a
//! resync of an unchanged `ModelDeployment` (a heartbeat, a periodic requeue,
//! a child's status update) sends the API server no request at all, where
//! applying regardless sent one PATCH per child (926 for 100 objects,
//! measured), and a spec edit by someone else (a new generation) still gets
//! corrected. Prune reads the same caches instead of listing.
//!
//! After a restart the operator has applied nothing yet. Every child carries
//! the digest of the object last applied to it ([`APPLIED_HASH_ANNOTATION`]);
//! where that matches and the live object still holds every desired value
//! ([`first_difference`]), the child is adopted as applied with one read and no write.
//!
//! The caches hold trimmed copies (no `managedFields`, no pod template, only
//! the metadata of Services and PodDisruptionBudgets) to keep the operator's
//! memory flat at thousands of children.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ObjectMeta, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde::Serialize;

/// Annotation on every child: digest of the object the operator last applied.
pub const APPLIED_HASH_ANNOTATION: &str = "backhaul.dev/applied-hash";

/// A child, by kind, namespace and name.
type ChildKey = (&'static str, String, String);

/// What the operator last applied to a child, and the child's marker as the
/// API server answered that apply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Applied {
    hash: String,
    marker: String,
}

/// Read side of the caches, shared by every reconcile.
pub struct ChildCache {
    deployments: Store<Deployment>,
    services: Store<PartialObjectMeta<Service>>,
    pdbs: Store<PartialObjectMeta<PodDisruptionBudget>>,
    /// Whole objects: the upstream credential is read from them (few and small).
    secrets: Store<Secret>,
    applied: Mutex<HashMap<ChildKey, Applied>>,
    /// Measurement only: behave as if there were no cache (see [`ChildCache::bypass`]).
    bypassed: std::sync::atomic::AtomicBool,
}

/// Write side: the watches that fill the caches (see [`ChildWriters::streams`]).
pub struct ChildWriters {
    deployments: reflector::store::Writer<Deployment>,
    services: reflector::store::Writer<PartialObjectMeta<Service>>,
    pdbs: reflector::store::Writer<PartialObjectMeta<PodDisruptionBudget>>,
    secrets: reflector::store::Writer<Secret>,
}

/// The watch streams of the children: each keeps its cache current and
/// yields the objects it touched, to trigger their owners' reconciles.
pub struct ChildStreams {
    /// Deployments.
    pub deployments: BoxStream<'static, Result<Deployment, watcher::Error>>,
    /// Services.
    pub services: BoxStream<'static, Result<PartialObjectMeta<Service>, watcher::Error>>,
    /// PodDisruptionBudgets.
    pub pdbs: BoxStream<'static, Result<PartialObjectMeta<PodDisruptionBudget>, watcher::Error>>,
    /// The upstream-credential Secrets.
    pub secrets: BoxStream<'static, Result<Secret, watcher::Error>>,
}

impl std::fmt::Debug for ChildCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildCache")
            .field("ready", &self.ready())
            .finish_non_exhaustive()
    }
}

/// A digest of what would be sent to the API server, stable across operator
/// versions and restarts (it is stored on the child).
fn digest<K: Serialize>(object: &K) -> String {
    use sha2::{Digest, Sha256};
    // Serialization of k8s-openapi types is deterministic (maps are BTreeMaps).
    let bytes = serde_json::to_vec(object).unwrap_or_default();
    hex::encode(&Sha256::digest(&bytes)[..12])
}

/// `object` with [`APPLIED_HASH_ANNOTATION`] set to the digest of the rest.
pub fn with_digest<K: Resource + Serialize>(mut object: K) -> K {
    let meta = object.meta_mut();
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(APPLIED_HASH_ANNOTATION);
        if a.is_empty() {
            meta.annotations = None;
        }
    }
    let hash = digest(&object);
    object
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_HASH_ANNOTATION.to_owned(), hash);
    object
}

/// The digest a child carries.
pub fn applied_digest(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(APPLIED_HASH_ANNOTATION)
        .map(String::as_str)
}

/// Where `actual` first fails to hold a value of `desired` (a JSON path),
/// `None` when it holds them all: objects key by key, arrays element by
/// element (same length: the API server keeps list order and only adds
/// defaults inside elements). A value the API server rewrites (a quantity in
/// another form) reads as different, which costs one apply, never a missed
/// change.
pub fn first_difference(desired: &serde_json::Value, actual: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (desired, actual) {
        (Value::Object(d), Value::Object(a)) => d.iter().find_map(|(k, v)| {
            if v.is_null() {
                return None;
            }
            let empty = match v {
                Value::Object(m) => m.is_empty(),
                Value::Array(l) => l.is_empty(),
                _ => false,
            };
            match a.get(k) {
                // The API server drops empty maps and lists.
                None if empty => None,
                None => Some(format!(".{k}")),
                Some(x) => first_difference(v, x).map(|rest| format!(".{k}{rest}")),
            }
        }),
        (Value::Array(d), Value::Array(a)) if d.len() == a.len() => d
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(x, y).map(|rest| format!("[{i}]{rest}"))),
        (d, a) if d == a => None,
        _ => Some(String::new()),
    }
}

/// Kept on cached copies only (never written to the API server): the
/// [`meta_digest`] of the child's metadata before [`trim_meta`] dropped its
/// annotations.
const CACHED_META_DIGEST: &str = "backhaul.dev/cached-meta-digest";

/// Digest of what a generation does not cover: labels, annotations and
/// owner references (an edit to any of them leaves `metadata.generation`
/// alone, and the operator must still put its own values back).
fn meta_digest(meta: &ObjectMeta) -> String {
    if let Some(d) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(CACHED_META_DIGEST))
    {
        return d.clone();
    }
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    annotations.remove(LAST_APPLIED_ANNOTATION);
    digest(&(&meta.labels, &annotations, &meta.owner_references))
}

/// What changes when anyone changes a child: its generation where the kind
/// has one (status updates leave it alone), else its resourceVersion; and
/// its labels, annotations and owner references.
fn marker(meta: &ObjectMeta) -> String {
    let version = match meta.generation {
        Some(g) => format!("g{g}"),
        None => format!("rv{}", meta.resource_version.as_deref().unwrap_or_default()),
    };
    format!("{version}/{}", meta_digest(meta))
}

fn trim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    let digest = meta_digest(meta);
    let hash = meta
        .annotations
        .as_mut()
        .and_then(|a| a.remove(APPLIED_HASH_ANNOTATION));
    let mut kept: std::collections::BTreeMap<String, String> = hash
        .map(|h| [(APPLIED_HASH_ANNOTATION.to_owned(), h)].into())
        .unwrap_or_default();
    kept.insert(CACHED_META_DIGEST.to_owned(), digest);
    meta.annotations = Some(kept);
}

/// The annotation `kubectl apply` stores the whole last-applied object in.
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Trims a watched `ModelDeployment` before it enters the controller's store:
/// `managedFields` (a JSON tree per field manager, the largest part of an
/// object with status) and `kubectl apply`'s copy of the spec are never
/// read, and at 1,000 objects they were most of the store.
pub fn trim_owner<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED_ANNOTATION);
    }
}

fn trim_deployment(d: &mut Deployment) {
    trim_meta(&mut d.metadata);
    // Readiness needs replicas and status; the pod template is the bulk.
    d.spec.template = PodTemplateSpec::default();
}

impl ChildCache {
    /// Empty caches (never ready until their writers' streams run) and their writers.
    pub fn new() -> (Self, ChildWriters) {
        let (deployments, dw) = reflector::store();
        let (services, sw) = reflector::store();
        let (pdbs, pw) = reflector::store();
        let (secrets, xw) = reflector::store();
        (
            Self {
                deployments,
                services,
                pdbs,
                secrets,
                applied: Mutex::default(),
                bypassed: Default::default(),
            },
            ChildWriters {
                deployments: dw,
                services: sw,
                pdbs: pw,
                secrets: xw,
            },
        )
    }

    /// For measuring what this cache saves: with `on`, every reconcile
    /// applies every child and prune lists them, as an operator without it
    /// would (the watches still run; they trigger reconciles).
    pub fn bypass(&self, on: bool) {
        self.bypassed
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_bypassed(&self) -> bool {
        self.bypassed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether every cache has seen its initial list.
    pub fn ready(&self) -> bool {
        let ready = |f: Option<Result<(), _>>| f.is_some_and(|r| r.is_ok());
        ready(self.deployments.wait_until_ready().now_or_never())
            && ready(self.services.wait_until_ready().now_or_never())
            && ready(self.pdbs.wait_until_ready().now_or_never())
            && ready(self.secrets.wait_until_ready().now_or_never())
    }

    /// The cached Secret `namespace/name` (only the operator's own are watched).
    pub fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(&ObjectRef::new(name).within(namespace))
    }

    /// The cached Deployment `namespace/name`.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// Metadata of the cached child of `K`'s kind, `namespace/name`.
    pub fn meta<K: Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<ObjectMeta> {
        match K::kind(&()).as_ref() {
            "Deployment" => self.deployment(namespace, name).map(|d| d.metadata.clone()),
            "Service" => self
                .services
                .get(&ObjectRef::new(name).within(namespace))
                .map(|s| s.metadata.clone()),
            "PodDisruptionBudget" => self
                .pdbs
                .get(&ObjectRef::new(name).within(namespace))
                .map(|p| p.metadata.clone()),
            "Secret" => self.secret(namespace, name).map(|s| s.metadata.clone()),
            _ => None,
        }
    }

    /// Cached Deployments and PodDisruptionBudgets in `namespace` whose
    /// labels include all of `labels`; `None` until the caches are ready.
    pub fn children(
        &self,
        namespace: &str,
        labels: &[(&str, &str)],
    ) -> Option<(Vec<ObjectMeta>, Vec<ObjectMeta>)> {
        if !self.ready() || self.is_bypassed() {
            return None;
        }
        let matches = |meta: &ObjectMeta| {
            meta.namespace.as_deref() == Some(namespace)
                && labels.iter().all(|(k, v)| {
                    meta.labels
                        .as_ref()
                        .and_then(|l| l.get(*k))
                        .is_some_and(|x| x == v)
                })
        };
        let deployments = self
            .deployments
            .state()
            .iter()
            .filter(|d| matches(&d.metadata))
            .map(|d| d.metadata.clone())
            .collect();
        let pdbs = self
            .pdbs
            .state()
            .iter()
            .filter(|p| matches(&p.metadata))
            .map(|p| p.metadata.clone())
            .collect();
        Some((deployments, pdbs))
    }

    /// Whether nothing was applied to the child of `desired` since this
    /// process started (then [`first_difference`] may adopt it).
    pub fn first_sight<K: Resource<DynamicType = ()>>(&self, desired: &K, namespace: &str) -> bool {
        if self.is_bypassed() {
            return false;
        }
        let key = (kind_of::<K>(), namespace.to_owned(), desired.name_any());
        !self
            .applied
            .lock()
            .expect("not poisoned")
            .contains_key(&key)
    }

    /// Whether `desired` is what was last applied and `cached` (the child as
    /// the cache holds it now) is unchanged since.
    ///
    /// `desired` carries its digest ([`with_digest`]); that is what is compared.
    pub fn unchanged<K: Resource<DynamicType = ()>>(
        &self,
        desired: &K,
        namespace: &str,
        cached: Option<&ObjectMeta>,
    ) -> bool {
        let Some(cached) = cached else { return false };
        if self.is_bypassed() {
            return false;
        }
        let key = (kind_of::<K>(), namespace.to_owned(), desired.name_any());
        let applied = self.applied.lock().expect("not poisoned");
        applied.get(&key).is_some_and(|a| {
            Some(a.hash.as_str()) == applied_digest(desired.meta()) && a.marker == marker(cached)
        })
    }

    /// Records that `desired` was applied and the API server answered `result`.
    pub fn record<K: Resource<DynamicType = ()>>(
        &self,
        desired: &K,
        namespace: &str,
        result: &ObjectMeta,
    ) {
        let key = (kind_of::<K>(), namespace.to_owned(), desired.name_any());
        let applied = Applied {
            hash: applied_digest(desired.meta())
                .unwrap_or_default()
                .to_owned(),
            marker: marker(result),
        };
        self.applied
            .lock()
            .expect("not poisoned")
            .insert(key, applied);
    }

    /// Forgets what was applied to `namespace/name` of `K`'s kind (deleted).
    pub fn forget<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str) {
        self.applied.lock().expect("not poisoned").remove(&(
            kind_of::<K>(),
            namespace.to_owned(),
            name.to_owned(),
        ));
    }

    /// Forgets the children of every kind named `namespace/name` (their
    /// owner is gone).
    pub fn forget_all(&self, namespace: &str, name: &str) {
        self.applied
            .lock()
            .expect("not poisoned")
            .retain(|(_, ns, n), _| !(ns == namespace && n == name));
    }

    /// Number of children whose last apply is remembered (a metric).
    pub fn remembered(&self) -> usize {
        self.applied.lock().expect("not poisoned").len()
    }
}

/// Bounded name of a child kind.
pub fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Deployment" => "Deployment",
        "Service" => "Service",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "Pod" => "Pod",
        "Secret" => "Secret",
        "Job" => "Job",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        _ => "object",
    }
}

/// A metadata-only watch (`Api<PartialObjectMeta<_>>` asks for metadata
/// only) filling `writer` with trimmed copies; yields what it touched.
fn metadata_stream<K>(
    api: Api<PartialObjectMeta<K>>,
    config: &watcher::Config,
    writer: reflector::store::Writer<PartialObjectMeta<K>>,
) -> BoxStream<'static, Result<PartialObjectMeta<K>, watcher::Error>>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(api, config.clone())
        .default_backoff()
        .modify(|o: &mut PartialObjectMeta<K>| trim_meta(&mut o.metadata))
        .reflect(writer)
        .touched_objects()
        .boxed()
}

impl ChildWriters {
    /// The watches of the children selected by `config` in `namespace` (all
    /// namespaces when `None`), filling the caches.
    pub fn streams(
        self,
        client: &kube::Client,
        namespace: Option<&str>,
        config: &watcher::Config,
    ) -> ChildStreams {
        fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
        where
            K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        {
            match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let deployments = watcher(api::<Deployment>(client, namespace), config.clone())
            .default_backoff()
            .modify(trim_deployment)
            .reflect(self.deployments)
            .touched_objects();
        let services = metadata_stream(api(client, namespace), config, self.services);
        let pdbs = metadata_stream(api(client, namespace), config, self.pdbs);
        let secrets = watcher(api::<Secret>(client, namespace), config.clone())
            .default_backoff()
            .modify(|s: &mut Secret| trim_meta(&mut s.metadata))
            .reflect(self.secrets)
            .touched_objects()
            .boxed();
        ChildStreams {
            deployments: deployments.boxed(),
            services,
            pdbs,
            secrets,
        }
    }

    /// Fills the caches from a complete listing, as a watch's initial list
    /// would (tests).
    #[cfg(test)]
    pub fn fill(
        &mut self,
        deployments: Vec<Deployment>,
        services: Vec<ObjectMeta>,
        pdbs: Vec<ObjectMeta>,
        secrets: Vec<Secret>,
    ) {
        use kube::runtime::watcher::Event;
        fn init<K: kube::runtime::reflector::Lookup + Clone>(
            w: &mut reflector::store::Writer<K>,
            items: Vec<K>,
        ) where
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            w.apply_watcher_event(&Event::Init);
            for item in items {
                w.apply_watcher_event(&Event::InitApply(item));
            }
            w.apply_watcher_event(&Event::InitDone);
        }
        fn partial<K>(metadata: ObjectMeta) -> PartialObjectMeta<K> {
            PartialObjectMeta {
                types: None,
                metadata,
                _phantom: std::marker::PhantomData,
            }
        }
        init(&mut self.deployments, deployments);
        init(
            &mut self.services,
            services.into_iter().map(partial).collect(),
        );
        init(&mut self.pdbs, pdbs.into_iter().map(partial).collect());
        init(&mut self.secrets, secrets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trimmed_owner_keeps_what_reconciles_read() {
        use crate::crd::{FINALIZER, ModelDeployment, SKIP_UNPUBLISH_ANNOTATION};
        let mut md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "backhaul.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ns", "generation": 3, "finalizers": [FINALIZER],
                "annotations": {SKIP_UNPUBLISH_ANNOTATION: "true", LAST_APPLIED_ANNOTATION: "{\"spec\":{}}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:regions": {}}}}]},
            "spec": {"model": {"source": "/models/m", "format": "gguf", "ggufFiles": ["m.gguf"], "servedName": "m"},
                "regions": [{"name": "us-east", "replicas": 1, "endpoint": "https://us-east.example.com",
                    "location": {"latitude": 1.0, "longitude": 2.0}}]},
            "status": {"observedGeneration": 3, "regions": [{"name": "us-east", "published": true}]},
        }))
        .unwrap();
        let before = md.clone();
        trim_owner(&mut md);
        assert_eq!(md.metadata.managed_fields, None);
        let annotations = md.metadata.annotations.clone().unwrap();
        assert_eq!(
            annotations
                .get(SKIP_UNPUBLISH_ANNOTATION)
                .map(String::as_str),
            Some("true")
        );
        assert!(!annotations.contains_key(LAST_APPLIED_ANNOTATION));
        assert_eq!(md.finalizers(), before.finalizers());
        assert_eq!(md.metadata.generation, Some(3));
        assert_eq!(json!(md.spec), json!(before.spec));
        assert_eq!(json!(md.status), json!(before.status));
    }

    #[test]
    fn first_difference_names_the_path_and_ignores_added_defaults() {
        let desired = json!({"spec": {"replicas": 2, "ports": [{"name": "grpc", "port": 50051}]}});
        let defaulted = json!({"spec": {"replicas": 2, "clusterIP": "10.0.0.1",
            "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}]}});
        assert_eq!(first_difference(&desired, &defaulted), None);
        let scaled = json!({"spec": {"replicas": 3, "ports": [{"name": "grpc", "port": 50051}]}});
        assert_eq!(
            first_difference(&desired, &scaled).as_deref(),
            Some(".spec.replicas")
        );
        let port_gone = json!({"spec": {"replicas": 2, "ports": []}});
        assert_eq!(
            first_difference(&desired, &port_gone).as_deref(),
            Some(".spec.ports")
        );
        let port_added = json!({"spec": {"replicas": 2,
            "ports": [{"name": "grpc", "port": 50051}, {"name": "x", "port": 1}]}});
        assert_eq!(
            first_difference(&desired, &port_added).as_deref(),
            Some(".spec.ports")
        );
        let renamed = json!({"spec": {"replicas": 2, "ports": [{"name": "http", "port": 50051}]}});
        assert_eq!(
            first_difference(&desired, &renamed).as_deref(),
            Some(".spec.ports[0].name")
        );
        assert_eq!(
            first_difference(&desired, &json!({})).as_deref(),
            Some(".spec")
        );
        let empty = json!({"resources": {"limits": {}}, "args": []});
        assert_eq!(first_difference(&empty, &json!({"resources": {}})), None);
    }

    #[test]
    fn digest_is_stable_and_ignores_its_own_annotation() {
        let mut svc = Service::default();
        svc.metadata.name = Some("a".into());
        let once = with_digest(svc.clone());
        let twice = with_digest(once.clone());
        let hash = applied_digest(&once.metadata).unwrap();
        assert_eq!(hash.len(), 24);
        assert_eq!(Some(hash), applied_digest(&twice.metadata));
        svc.metadata.name = Some("b".into());
        assert_ne!(Some(hash), applied_digest(&with_digest(svc).metadata));
    }

    /// An edit to a child's labels, annotations or owner references (none
    /// moves its generation) reads as a change, so the next reconcile puts
    /// the operator's values back; a status update does not.
    #[test]
    fn marker_sees_metadata_edits_that_leave_the_generation() {
        let meta: ObjectMeta = serde_json::from_value(json!({
            "name": "c", "namespace": "ns", "generation": 4, "resourceVersion": "10",
            "labels": {"backhaul.dev/model": "m"},
            "annotations": {APPLIED_HASH_ANNOTATION: "abc", LAST_APPLIED_ANNOTATION: "{}"},
            "ownerReferences": [{"apiVersion": "backhaul.dev/v1alpha1", "kind": "ModelDeployment",
                "name": "m", "uid": "u1", "controller": true}],
        }))
        .unwrap();
        let mut trimmed = meta.clone();
        trim_meta(&mut trimmed);
        // The cache's trimmed copy and the apply's full answer agree.
        assert_eq!(marker(&trimmed), marker(&meta));
        let mut status_update = meta.clone();
        status_update.resource_version = Some("11".into());
        assert_eq!(marker(&status_update), marker(&meta));
        let mut relabelled = meta.clone();
        relabelled
            .labels
            .as_mut()
            .unwrap()
            .insert("backhaul.dev/model".into(), "other".into());
        let mut annotated = meta.clone();
        annotated
            .annotations
            .as_mut()
            .unwrap()
            .insert("someone".into(), "else".into());
        let mut orphaned = meta.clone();
        orphaned.owner_references = None;
        for edited in [relabelled, annotated, orphaned] {
            let mut cached = edited.clone();
            trim_meta(&mut cached);
            assert_ne!(marker(&cached), marker(&meta), "{edited:?}");
        }
    }
}
