//! The reconciler: look up → validate → build/apply → observe → desired
//! routes → status for one `ModelDeployment`, run under kube's `Controller`.
//!
//! Publication is not done here: [`reconcile_apply`] hands each object's
//! desired routes to [`RouteSync`] and reads back what it holds, so a
//! reconcile never waits for the Worker. Route sync wakes the object's next
//! reconcile (`reconcile_on`) when its publication changes; otherwise objects
//! reconcile on change and on a slow resync.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::core::{DeserializeGuard, error_boundary::InvalidObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::apply::{self, ApplyError};
use crate::build;
use crate::cache::{self, ChildCache, ChildWriters};
use crate::config::OperatorConfig;
use crate::crd::{
    CacheStatus, FINALIZER, ModelDeployment, ModelDeploymentStatus, RegionStatus,
    SKIP_UNPUBLISH_ANNOTATION,
};
use crate::metrics::Metrics;
use crate::observe::{self, RegionObservation};
use crate::publish::{self, Publisher};
use crate::route_sync::{DesiredRoutes, ObjectKey, RouteState, RouteSync, SyncConfig};
use crate::status::{self, Publication};
use crate::upstream_auth::{self, Credential};
use crate::validate::{ValidatedModelDeployment, ValidationError, validate};
use crate::weights_cache;

/// The ModelDeployment watch's item: an object that does not deserialize is
/// reported and skipped rather than failing the whole list.
type Guarded = DeserializeGuard<ModelDeployment>;

/// Requeue while a region is not ready, to notice pods that stay Pending
/// (their changes do not touch the Deployment).
const NOT_READY_REQUEUE: Duration = Duration::from_secs(10);
/// The slow resync of a steady object (drift correction). Routes are renewed
/// by route sync's lease, not by reconciles.
const RESYNC: Duration = Duration::from_secs(300);
/// Objects per page of the watches' initial lists. A page is held whole,
/// untrimmed (managedFields and all), until its objects reach the stores: at
/// kube's default of 500, the lists of a restart over 1,000 objects (3,000
/// Deployments and pods) more than doubled the operator's resident memory.
const LIST_PAGE_SIZE: u32 = 50;

/// A reconcile failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Applying, listing or deleting a child failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Writing status failed.
    #[error("writing status of {namespace}/{name}: {source}")]
    Status {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: kube::Error,
    },
    /// The routes of a deleted object are not withdrawn yet; the finalizer stays.
    #[error("waiting for the Worker to confirm withdrawal of {namespace}/{name} in {regions}")]
    Unpublishing {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Regions still held, with their last error.
        regions: String,
        /// When the wait ends regardless (the routes' TTL since deletion).
        gives_up_in: Duration,
    },
    /// Another operator still holds routes of a deleted object.
    #[error("waiting for the operators of regions {regions} to withdraw their routes")]
    WaitingForPeers {
        /// Regions still published.
        regions: String,
    },
    /// The finalizer helper failed (adding or removing the finalizer).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// Bounded label for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Apply(_) => "apply",
            Error::Status { .. } => "status",
            Error::Unpublishing { .. } => "unpublish",
            Error::WaitingForPeers { .. } => "waiting_for_peers",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.category()
                }
                _ => "finalizer",
            },
        }
    }

    /// The latest retry this error allows (the finalizer's deadline).
    fn retry_within(&self) -> Option<Duration> {
        match self {
            Error::Unpublishing { gives_up_in, .. } => Some(*gives_up_in),
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::CleanupFailed(inner) => inner.retry_within(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The fleet poller's hook (operator/src/fleet.rs): given an object and the
/// status this operator is about to write, fills in what the Worker's fleet
/// view says of the regions other operators serve (`status.fleet`). Called
/// on every status computation, before the changed-or-not comparison.
pub type FleetHook = Arc<dyn Fn(&ModelDeployment, &mut ModelDeploymentStatus) + Send + Sync>;

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Operator settings.
    pub config: OperatorConfig,
    /// The owner of publication, `None` when publication is disabled.
    pub sync: Option<RouteSync>,
    /// Metrics.
    pub metrics: Metrics,
    /// The operator's children as the API server holds them.
    pub children: ChildCache,
    /// Fills `status.fleet` (see [`FleetHook`]); `None` until the fleet poller exists.
    pub fleet: Option<FleetHook>,
    triggers: Mutex<Vec<BoxStream<'static, ObjectKey>>>,
    /// The controller's store of ModelDeployments, once [`run_controller`] made it.
    objects: std::sync::OnceLock<reflector::Store<Guarded>>,
    writers: Mutex<Option<ChildWriters>>,
    recorder: Recorder,
    failures: Mutex<HashMap<(String, String), u32>>,
    managed: Mutex<BTreeSet<(String, String)>>,
    /// Undecodable objects already reported, by (uid, resourceVersion).
    undecodable: Mutex<BTreeSet<(String, String)>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Some(sync) = &self.sync {
            sync.stop();
        }
    }
}

/// A stream of `rx`'s keys.
fn key_stream(
    rx: tokio::sync::mpsc::UnboundedReceiver<ObjectKey>,
) -> BoxStream<'static, ObjectKey> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|k| (k, rx)) }).boxed()
}

impl Context {
    /// A context for `config`; starts route sync when publication is on.
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Metrics,
    ) -> Result<Self, reqwest::Error> {
        let mut triggers = Vec::new();
        let sync = match &config.publish {
            Some(publish) => {
                let publisher = Publisher::new(publish.clone())?;
                let (sync, changes) = RouteSync::start(
                    publisher,
                    SyncConfig {
                        concurrency: publish.concurrency,
                    },
                    metrics.clone(),
                );
                triggers.push(key_stream(changes));
                Some(sync)
            }
            None => None,
        };
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "backhaul-operator".into(),
                instance: Some(config.identity.clone()),
            },
        );
        let (children, writers) = ChildCache::new();
        Ok(Self {
            client,
            config,
            sync,
            children,
            fleet: None,
            triggers: Mutex::new(triggers),
            objects: std::sync::OnceLock::new(),
            writers: Mutex::new(Some(writers)),
            metrics,
            recorder,
            failures: Mutex::default(),
            managed: Mutex::default(),
            undecodable: Mutex::default(),
        })
    }

    /// Installs the fleet poller's hook and the keys of objects whose fleet
    /// view changed (each is reconciled).
    pub fn with_fleet(
        mut self,
        hook: FleetHook,
        changed: tokio::sync::mpsc::UnboundedReceiver<ObjectKey>,
    ) -> Self {
        self.fleet = Some(hook);
        self.triggers
            .get_mut()
            .expect("not poisoned")
            .push(key_stream(changed));
        self
    }

    /// The writers of [`Context::children`], once (the controller's watches
    /// own them).
    pub fn take_writers(&self) -> Option<ChildWriters> {
        self.writers.lock().expect("not poisoned").take()
    }

    /// Whether every watch with a cache (the ModelDeployments and the
    /// children) has seen its initial list: until then a reconcile may act
    /// on a partial view. Readiness waits for this.
    pub fn synced(&self) -> bool {
        self.objects.get().is_some_and(|s| {
            s.wait_until_ready()
                .now_or_never()
                .is_some_and(|r| r.is_ok())
        }) && self.children.ready()
    }

    fn serves(&self) -> impl Fn(&str) -> bool + '_ {
        |r| self.config.serves(r)
    }

    async fn event(
        &self,
        md: &ModelDeployment,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.event_on(&md.object_ref(&()), type_, reason, action, note)
            .await;
    }

    async fn event_on(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, reference).await {
            tracing::warn!(error = %e, reason, "recording an event failed");
        }
    }

    fn set_managed(&self, key: (String, String), managed: bool) {
        let mut set = self.managed.lock().expect("not poisoned");
        if managed {
            set.insert(key);
        } else {
            set.remove(&key);
        }
        self.metrics.set_managed_models(set.len());
    }
}

fn key(md: &impl Resource) -> (String, String) {
    (
        md.meta().namespace.clone().unwrap_or_default(),
        md.meta().name.clone().unwrap_or_default(),
    )
}

/// Reconciles one object (the `Controller`'s reconciler). An object that
/// does not deserialize (stored under another schema) is reported once with
/// a Warning Event and skipped; the others carry on.
#[tracing::instrument(skip_all, fields(namespace = object.meta().namespace.as_deref(), name = object.meta().name.as_deref()))]
pub async fn reconcile(
    object: Arc<DeserializeGuard<ModelDeployment>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let md = match &object.0 {
        Ok(md) => Arc::new(md.clone()),
        Err(invalid) => {
            report_undecodable(invalid, &ctx).await;
            ctx.metrics.reconciled("undecodable", started.elapsed());
            return Ok(Action::await_change());
        }
    };
    let api: Api<ModelDeployment> =
        Api::namespaced(ctx.client.clone(), &md.namespace().unwrap_or_default());
    let k = key(md.as_ref());
    let result = finalizer::finalizer(&api, FINALIZER, md, |event| async {
        match event {
            Finalizer::Apply(md) => reconcile_apply(&md, &ctx).await,
            Finalizer::Cleanup(md) => reconcile_cleanup(&md, &ctx).await,
        }
    })
    .await;
    let result = match result {
        // The object went while its finalizer was being removed (another
        // operator's removal was the last): the cleanup is done.
        Err(finalizer::Error::RemoveFinalizer(kube::Error::Api(status))) if status.code == 404 => {
            Ok(Action::await_change())
        }
        other => other.map_err(|e| Error::Finalizer(Box::new(e))),
    };
    let label = match &result {
        Ok(_) => "success",
        Err(e) => e.category(),
    };
    ctx.metrics.reconciled(label, started.elapsed());
    if result.is_ok() {
        ctx.failures.lock().expect("not poisoned").remove(&k);
    }
    result
}

/// Requeues failed reconciles with exponential backoff (1 s doubling to
/// 5 min), never past the deadline the error carries.
pub fn error_policy(
    object: Arc<DeserializeGuard<ModelDeployment>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let mut failures = ctx.failures.lock().expect("not poisoned");
    let n = failures.entry(key(object.as_ref())).or_insert(0);
    *n = n.saturating_add(1);
    let mut delay = Duration::from_secs(1u64 << (*n - 1).min(9)).min(Duration::from_secs(300));
    if let Some(within) = error.retry_within() {
        delay = delay.min(within.max(Duration::from_millis(100)));
    }
    tracing::warn!(
        namespace = object.meta().namespace.as_deref(), name = object.meta().name.as_deref(), error = %error,
        category = error.category(), retry_in_ms = delay.as_millis() as u64, "reconcile failed"
    );
    Action::requeue(delay)
}

/// A stored object that does not deserialize: one Warning Event per
/// resourceVersion, on the object (through its metadata alone).
async fn report_undecodable(invalid: &InvalidObject, ctx: &Context) {
    let meta = &invalid.metadata;
    let marker = (
        meta.uid.clone().unwrap_or_default(),
        meta.resource_version.clone().unwrap_or_default(),
    );
    if !ctx.undecodable.lock().expect("not poisoned").insert(marker) {
        return;
    }
    tracing::warn!(
        namespace = meta.namespace.as_deref(), name = meta.name.as_deref(), error = %invalid.error,
        "skipping an object that does not match the ModelDeployment schema"
    );
    let reference = ObjectReference {
        api_version: Some(ModelDeployment::api_version(&()).into_owned()),
        kind: Some(ModelDeployment::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    };
    ctx.event_on(
        &reference,
        EventType::Warning,
        "InvalidObject",
        "Decode",
        format!(
            "the stored object does not match this operator's ModelDeployment schema and is skipped until it is fixed: {}",
            invalid.error
        ),
    )
    .await;
}

/// One region of the spec after apply and observe.
#[derive(Debug, Clone)]
pub struct ObservedRegion {
    /// Index in [`ValidatedModelDeployment::regions`].
    pub index: usize,
    /// What its pods say.
    pub observation: RegionObservation,
    /// Whether its traffic reaches this object's pods (its Deployment and
    /// Service are its own).
    pub routable: bool,
    /// Its weight cache, when the spec asks for one.
    pub cache: Option<CacheStatus>,
    /// Weight cache claims its replicas mount or are to mount.
    pub weights_in_use: Vec<String>,
}

impl ObservedRegion {
    /// Whether the region should have a route.
    pub fn ready(&self, v: &ValidatedModelDeployment) -> bool {
        v.regions[self.index].replicas > 0 && self.observation.ready_replicas > 0 && self.routable
    }
}

async fn reconcile_apply(md: &ModelDeployment, ctx: &Context) -> Result<Action, Error> {
    let object = key(md);
    ctx.set_managed(object.clone(), true);
    let v = match validate(md, &ctx.config) {
        Ok(v) => v,
        Err(invalid) => {
            // Routes stay as they are (the pods of the last valid spec run on).
            reconcile_invalid(md, ctx, &invalid).await?;
            return Ok(Action::await_change());
        }
    };
    // The Worker's credential first: the pods mount it.
    let credential = upstream_auth::ensure(&ctx.client, &ctx.children, &v).await?;
    let prev = md.status.clone().unwrap_or_default();
    let observed = apply_and_observe(ctx, &v, &credential, &prev).await?;
    apply::prune(&ctx.client, &ctx.children, &v, ctx.serves()).await?;
    // Only objects that have or had a cache pay the two lists (a resync of
    // any other sends no request).
    let had_cache = v.model.cache.is_some()
        || observed.iter().any(|o| !o.weights_in_use.is_empty())
        || prev.regions.iter().any(|r| r.cache.is_some());
    if had_cache {
        let in_use = observed
            .iter()
            .flat_map(|o| o.weights_in_use.clone())
            .collect();
        for removed in weights_cache::prune(&ctx.client, &v, &in_use, ctx.serves()).await? {
            tracing::info!(%removed, "deleted a weight cache no replica uses");
        }
    }
    let now = publish::rfc3339_seconds(SystemTime::now());
    let routes = desired_routes(&v, &observed, &credential, &prev, ctx.serves(), &now);
    let held = match &ctx.sync {
        Some(sync) => {
            sync.desire(&object, routes);
            Some(sync.states(&object))
        }
        None => None,
    };
    let mine = region_entries(
        &v,
        &observed,
        &credential,
        &prev,
        held.as_ref(),
        ctx.serves(),
        &now,
    );
    write_status(md, ctx, &prev, mine).await?;
    Ok(Action::requeue(requeue_after(&observed)))
}

/// Applies and observes each served region. A region whose children's names
/// are held by objects this one does not control is Degraded
/// (`ChildConflict`, with a Warning Event from the status transition) and
/// not routable; the other regions carry on.
async fn apply_and_observe(
    ctx: &Context,
    v: &ValidatedModelDeployment,
    credential: &Credential,
    prev: &ModelDeploymentStatus,
) -> Result<Vec<ObservedRegion>, Error> {
    let mut observed = Vec::new();
    for (index, region) in v.regions.iter().enumerate() {
        let foreign = matches!(credential, Credential::Foreign(_));
        let cache = match &v.model.cache {
            Some(spec) if !foreign => {
                let prev_cache = prev
                    .regions
                    .iter()
                    .find(|e| e.name == region.name)
                    .and_then(|e| e.cache.as_ref());
                Some(weights_cache::ensure(&ctx.client, v, region, spec, prev_cache).await?)
            }
            _ => None,
        };
        let plan = match &cache {
            None => apply::DeploymentPlan::Apply(None),
            Some(c) => match c.ready_claim() {
                Some(claim) => apply::DeploymentPlan::Apply(Some(claim)),
                None => apply::DeploymentPlan::Hold,
            },
        };
        let mut applied = match credential {
            // Never let the pods mount someone else's Secret as their tokens.
            Credential::Foreign(conflict) => apply::AppliedRegion {
                deployment: None,
                conflicts: vec![conflict.clone()],
            },
            _ => apply::apply_region(&ctx.client, &ctx.children, v, region, plan).await?,
        };
        if let Some(conflict) = cache.as_ref().and_then(|c| c.conflict.clone()) {
            applied.conflicts.push(conflict);
        }
        let weights_in_use = weights_in_use(
            cache.as_ref().map(|c| c.status.claim_name.as_str()),
            applied.deployment.as_ref(),
        );
        let conflicts: Vec<String> = applied.conflicts.iter().map(ToString::to_string).collect();
        let observation = match &applied.deployment {
            None if conflicts.is_empty() && cache.is_some() => observe::waiting_for_weights(
                &region.name,
                region.replicas,
                cache.as_ref().map(|c| &c.status),
            ),
            Some(deployment) if conflicts.is_empty() => {
                let (_, complete) = observe::deployment_readiness(deployment);
                let pods = if region.replicas > 0 && !complete {
                    apply::region_pods(&ctx.client, v, &region.name).await?
                } else {
                    Vec::new()
                };
                observe::observe_region(&region.name, region.replicas, deployment, &pods)
            }
            deployment => {
                let ready = deployment
                    .as_ref()
                    .map_or(0, |d| observe::deployment_readiness(d).0);
                tracing::warn!(region = %region.name, conflicts = %conflicts.join("; "), "children not applied");
                observe::child_conflict(&region.name, region.replicas, ready, &conflicts)
            }
        };
        observed.push(ObservedRegion {
            index,
            observation,
            routable: applied.routable(),
            cache: cache.map(|c| c.status),
            weights_in_use,
        });
    }
    Ok(observed)
}

/// The weight cache claims a region still needs: the spec's (filling or
/// served), and the one its Deployment's pods mount until the Deployment
/// has rolled onto the spec's.
fn weights_in_use(desired: Option<&str>, deployment: Option<&Deployment>) -> Vec<String> {
    let mounted = deployment.and_then(|d| {
        d.metadata
            .annotations
            .as_ref()?
            .get(build::WEIGHTS_CLAIM_ANNOTATION)
            .cloned()
    });
    let rolled = deployment.is_some_and(|d| observe::deployment_readiness(d).1);
    let mut claims: Vec<String> = desired.map(str::to_owned).into_iter().collect();
    if let Some(m) = mounted
        && (Some(m.as_str()) != desired || !rolled)
        && !claims.contains(&m)
    {
        claims.push(m);
    }
    claims
}

/// The object's whole desired publication: a route for every ready,
/// routable region while the credential is usable; every served region
/// status says is published may hold a route to withdraw.
pub fn desired_routes(
    v: &ValidatedModelDeployment,
    observed: &[ObservedRegion],
    credential: &Credential,
    prev: &ModelDeploymentStatus,
    serves: impl Fn(&str) -> bool,
    published_at: &str,
) -> DesiredRoutes {
    let live = match credential {
        Credential::Token(token) => observed
            .iter()
            .filter(|o| o.ready(v))
            .map(|o| {
                let region = &v.regions[o.index];
                let route =
                    publish::route(v, region, o.observation.ready_replicas, published_at, token);
                (region.name.clone(), route)
            })
            .collect(),
        Credential::Unusable(_) | Credential::Foreign(_) => BTreeMap::new(),
    };
    let maybe_held = prev
        .regions
        .iter()
        .filter(|e| e.published && serves(&e.name))
        .map(|e| e.name.clone())
        .collect();
    DesiredRoutes { live, maybe_held }
}

/// A region's publication in status, from what route sync holds (`None`:
/// publication is disabled).
pub fn publication(
    held: Option<&BTreeMap<String, RouteState>>,
    region: &str,
    ready: bool,
    credential: &Credential,
) -> Publication {
    let Some(held) = held else {
        return Publication::Disabled;
    };
    let state = held.get(region);
    let published = state.is_some_and(|s| s.published);
    match (credential, state) {
        (Credential::Unusable(message), _) if ready => Publication::Failed {
            message: message.clone(),
            still_published: published,
        },
        (
            _,
            Some(RouteState {
                error: Some(message),
                ..
            }),
        ) => Publication::Failed {
            message: message.clone(),
            still_published: published,
        },
        _ if published => Publication::Published,
        _ => Publication::Unpublished,
    }
}

/// This operator's status entries: one per observed region, and one per
/// served region that left the spec while its withdrawal is outstanding.
pub fn region_entries(
    v: &ValidatedModelDeployment,
    observed: &[ObservedRegion],
    credential: &Credential,
    prev: &ModelDeploymentStatus,
    held: Option<&BTreeMap<String, RouteState>>,
    serves: impl Fn(&str) -> bool,
    now: &str,
) -> Vec<RegionStatus> {
    let mut mine: Vec<RegionStatus> = observed
        .iter()
        .map(|o| {
            let region = &v.regions[o.index];
            let prev_entry = prev.regions.iter().find(|e| e.name == region.name);
            RegionStatus {
                cache: o.cache.clone(),
                ..status::region_status(
                    prev_entry,
                    &o.observation,
                    &region.endpoint,
                    v.generation,
                    &publication(held, &region.name, o.ready(v), credential),
                    now,
                )
            }
        })
        .collect();
    let gone = prev
        .regions
        .iter()
        .filter(|e| serves(&e.name) && !v.spec_regions.contains(&e.name));
    for entry in gone {
        if let Some(state) = held.and_then(|h| h.get(&entry.name))
            && (state.published || state.error.is_some())
        {
            mine.push(RegionStatus {
                published: state.published,
                publish_error: state.error.clone(),
                ..entry.clone()
            });
        }
    }
    mine
}

/// When to look again: soon while a region is not ready (Pending pods do
/// not touch the Deployment), else at the slow resync.
pub fn requeue_after(observed: &[ObservedRegion]) -> Duration {
    let settled = observed.iter().all(|o| {
        (o.observation.phase == observe::phase::READY
            || o.observation.phase == observe::phase::SCALED_TO_ZERO)
            && o.cache
                .as_ref()
                .is_none_or(|c| c.phase == weights_cache::phase::READY)
    });
    if settled { RESYNC } else { NOT_READY_REQUEUE }
}

/// Writes the status `mine` implies, only when it changed, and records the
/// transitions as Events.
async fn write_status(
    md: &ModelDeployment,
    ctx: &Context,
    prev: &ModelDeploymentStatus,
    mine: Vec<RegionStatus>,
) -> Result<(), Error> {
    let (namespace, name) = key(md);
    let serves = ctx.serves();
    let spec_order: Vec<String> = md.spec.regions.iter().map(|r| r.name.clone()).collect();
    let mut desired = status::desired_status(md, &spec_order, mine, &serves, Timestamp::now());
    if let Some(fleet) = &ctx.fleet {
        fleet(md, &mut desired);
    }
    if status::status_changed(md, &desired, &serves) {
        let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
        status::write(&api, md, &desired, &ctx.config.status_field_manager())
            .await
            .map_err(|source| Error::Status {
                namespace,
                name,
                source,
            })?;
        record_transitions(md, prev, &desired, ctx).await;
    }
    Ok(())
}

/// How long a deleted object still waits for its withdrawal: until its
/// routes' TTL has passed since `deleted_at` (by then they have expired on
/// the Worker by themselves). `None`: the wait is over.
pub fn unpublish_wait(
    deleted_at: Option<Timestamp>,
    ttl_seconds: u32,
    now: Timestamp,
) -> Option<Duration> {
    let deleted_at = deleted_at.unwrap_or(now);
    let elapsed = now.duration_since(deleted_at);
    let left = std::time::Duration::from_secs(u64::from(ttl_seconds))
        .checked_sub(elapsed.try_into().unwrap_or_default())?;
    (!left.is_zero()).then_some(left)
}

/// Events for changes worth a human's attention, emitted once per transition.
async fn record_transitions(
    md: &ModelDeployment,
    prev: &ModelDeploymentStatus,
    now: &ModelDeploymentStatus,
    ctx: &Context,
) {
    for entry in &now.regions {
        let before = prev.regions.iter().find(|e| e.name == entry.name);
        if let Some(cache) = &entry.cache {
            let was = before.and_then(|b| b.cache.as_ref());
            for (type_, reason, note) in cache_events(&entry.name, was, cache) {
                ctx.event(md, type_, reason, "WeightsCache", note).await;
            }
        }
        if entry.phase == observe::phase::DEGRADED
            && before.is_none_or(|b| b.phase != entry.phase || b.reason != entry.reason)
        {
            let reason = entry.reason.clone().unwrap_or_else(|| "Degraded".into());
            let note = format!(
                "region {}: {}",
                entry.name,
                entry.message.clone().unwrap_or_default()
            );
            ctx.event(md, EventType::Warning, &reason, "Observe", note)
                .await;
        }
        if let Some(err) = &entry.publish_error
            && before.is_none_or(|b| b.publish_error.as_ref() != Some(err))
        {
            ctx.event(
                md,
                EventType::Warning,
                "PublishFailed",
                "Publish",
                format!("region {}: {err}", entry.name),
            )
            .await;
        }
        let was = before.is_some_and(|b| b.published);
        if entry.published && !was {
            ctx.event(
                md,
                EventType::Normal,
                "Published",
                "Publish",
                format!("route for region {} published", entry.name),
            )
            .await;
        } else if !entry.published && was {
            ctx.event(
                md,
                EventType::Normal,
                "Unpublished",
                "Publish",
                format!("route for region {} withdrawn", entry.name),
            )
            .await;
        }
    }
}

/// The Events a region's weight cache warrants between two statuses: a
/// fill starting, each failed attempt, giving up, and the cache Ready.
pub fn cache_events(
    region: &str,
    was: Option<&CacheStatus>,
    now: &CacheStatus,
) -> Vec<(EventType, &'static str, String)> {
    let was = was.filter(|w| w.claim_name == now.claim_name);
    let phase_was = was.map(|w| w.phase.as_str());
    let what = format!(
        "region {region}: weight cache {} ({})",
        now.claim_name, now.source
    );
    let detail = now.message.clone().unwrap_or_default();
    let mut events = Vec::new();
    if now.failed_attempts > was.map_or(0, |w| w.failed_attempts)
        && now.phase != weights_cache::phase::FAILED
    {
        events.push((
            EventType::Warning,
            "WeightsFillRetrying",
            format!("{what}: {detail}"),
        ));
    }
    if phase_was != Some(now.phase.as_str()) {
        match now.phase.as_str() {
            weights_cache::phase::DOWNLOADING
                if phase_was != Some(weights_cache::phase::DOWNLOADING) =>
            {
                events.push((
                    EventType::Normal,
                    "WeightsFilling",
                    format!("{what}: filling"),
                ))
            }
            weights_cache::phase::READY => {
                events.push((EventType::Normal, "WeightsReady", format!("{what}: ready")))
            }
            weights_cache::phase::FAILED => events.push((
                EventType::Warning,
                "WeightsFillFailed",
                format!("{what}: {detail}"),
            )),
            _ => {}
        }
    }
    events
}

async fn reconcile_invalid(
    md: &ModelDeployment,
    ctx: &Context,
    invalid: &ValidationError,
) -> Result<(), Error> {
    let (namespace, name) = key(md);
    let message = invalid.to_string();
    tracing::warn!(%message, "invalid spec; waiting for a change");
    let prev = md.status.clone().unwrap_or_default();
    let generation = md.meta().generation.unwrap_or_default();
    let serves = ctx.serves();
    let desired = ModelDeploymentStatus {
        observed_generation: Some(generation),
        conditions: status::carry_transition_times(
            status::invalid_conditions(&message, &prev.conditions, generation),
            &prev.conditions,
            Timestamp::now(),
        ),
        ready_regions: prev.ready_regions.clone(),
        regions: prev
            .regions
            .iter()
            .filter(|e| serves(&e.name))
            .cloned()
            .collect(),
        fleet: prev.fleet.clone(),
        fleet_regions: prev.fleet_regions.clone(),
    };
    if status::status_changed(md, &desired, &serves) {
        let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
        status::write(&api, md, &desired, &ctx.config.status_field_manager())
            .await
            .map_err(|source| Error::Status {
                namespace,
                name,
                source,
            })?;
        ctx.event(md, EventType::Warning, "InvalidSpec", "Validate", message)
            .await;
    }
    Ok(())
}

async fn reconcile_cleanup(md: &ModelDeployment, ctx: &Context) -> Result<Action, Error> {
    let object = key(md);
    let (namespace, name) = object.clone();
    let serves = ctx.serves();
    let skip = md
        .annotations()
        .get(SKIP_UNPUBLISH_ANNOTATION)
        .map(String::as_str)
        == Some("true");
    let prev = md.status.clone().unwrap_or_default();
    if let (Some(sync), false) = (&ctx.sync, skip) {
        // Every served region may hold a route (after a restart this process
        // has sent nothing yet); DELETEs of absent routes are harmless.
        let regions: BTreeSet<String> = md
            .spec
            .regions
            .iter()
            .map(|r| r.name.clone())
            .chain(prev.regions.iter().map(|e| e.name.clone()))
            .filter(|r| serves(r))
            .collect();
        sync.desire(
            &object,
            DesiredRoutes {
                live: BTreeMap::new(),
                maybe_held: regions,
            },
        );
        let outstanding: Vec<(String, RouteState)> = sync
            .states(&object)
            .into_iter()
            .filter(|(_, s)| s.published)
            .collect();
        if !outstanding.is_empty() {
            let described = outstanding
                .iter()
                .map(|(region, s)| match &s.error {
                    Some(e) => format!("{region} ({e})"),
                    None => region.clone(),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let deleted_at = md.meta().deletion_timestamp.as_ref().map(|t| t.0);
            let ttl = md.spec.routing.ttl_seconds;
            let wait = unpublish_wait(deleted_at, ttl, Timestamp::now()).or_else(|| {
                // Past the TTL, but the Worker still renews the routes (it
                // accepts the lease and refuses only the DELETE): they are
                // alive, so keep waiting.
                sync.renewed_within(&object, Duration::from_secs(u64::from(ttl)))
                    .then_some(Duration::from_secs(u64::from(ttl)))
            });
            match wait {
                Some(gives_up_in) => {
                    for (region, s) in &outstanding {
                        if let Some(e) = &s.error {
                            ctx.event(
                                md,
                                EventType::Warning,
                                "UnpublishFailed",
                                "Cleanup",
                                format!("region {region}: {e}"),
                            )
                            .await;
                        }
                    }
                    return Err(Error::Unpublishing {
                        namespace,
                        name,
                        regions: described,
                        gives_up_in,
                    });
                }
                None => {
                    tracing::warn!(regions = %described, ttl, "withdrawal not confirmed within the routes' TTL since deletion; letting the object go");
                    ctx.event(
                        md,
                        EventType::Warning,
                        "UnpublishTimedOut",
                        "Cleanup",
                        format!(
                            "the Worker did not confirm the withdrawal of {described} within ttlSeconds ({ttl} s) of the deletion: those routes have expired by themselves; letting the object go"
                        ),
                    )
                    .await;
                    sync.forget(&object);
                }
            }
        }
        // Operators serving other regions share the finalizer: the last one
        // to withdraw its routes lets the object go.
        let peers: Vec<String> = prev
            .regions
            .iter()
            .filter(|e| !serves(&e.name) && e.published)
            .map(|e| e.name.clone())
            .collect();
        if !peers.is_empty() {
            let mine: Vec<RegionStatus> = prev
                .regions
                .iter()
                .filter(|e| serves(&e.name))
                .map(|e| RegionStatus {
                    published: false,
                    published_at: None,
                    publish_error: None,
                    ..e.clone()
                })
                .collect();
            let desired = ModelDeploymentStatus {
                regions: mine,
                ..prev.clone()
            };
            if status::status_changed(md, &desired, &serves) {
                let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
                status::write(&api, md, &desired, &ctx.config.status_field_manager())
                    .await
                    .map_err(|source| Error::Status {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        source,
                    })?;
            }
            return Err(Error::WaitingForPeers {
                regions: peers.join(", "),
            });
        }
    }
    if let Some(sync) = &ctx.sync {
        sync.forget(&object);
    }
    for region in md.spec.regions.iter().map(|r| &r.name) {
        ctx.children
            .forget_all(&namespace, &build::child_name(&name, region));
    }
    ctx.set_managed((namespace, name), false);
    // Children go with the object: they carry owner references.
    Ok(Action::await_change())
}

/// Runs the controller until `shutdown` completes, then stops publishing.
///
/// Reconciles are triggered by the object, by its children (Deployments,
/// Services, PodDisruptionBudgets, through owner references; their watches
/// also fill [`Context::children`]), by its pods (through the model label),
/// so a pod that cannot be scheduled is reported as soon as the scheduler
/// says so rather than at the next requeue, and by route sync when the
/// object's publication changed.
///
/// The objects are watched through [`DeserializeGuard`]: one that does not
/// deserialize is reported and skipped instead of failing the whole list.
/// The objects' store holds trimmed copies ([`cache::trim_owner`]) and pods
/// are watched as metadata only (a trigger needs the labels): together they
/// were most of the operator's memory at 1,000 objects.
pub async fn run_controller(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), kube::Error> {
    let client = ctx.client.clone();
    let namespace = ctx.config.watch_namespace.clone();
    let (mds, pods): (Api<Guarded>, Api<PartialObjectMeta<Pod>>) = match &namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    // Fail fast and clearly when the CRD is missing or RBAC forbids listing.
    mds.list(&ListParams::default().limit(1)).await?;
    let owned = watcher::Config::default()
        .labels(&format!(
            "app.kubernetes.io/managed-by={}",
            build::MANAGED_BY
        ))
        .page_size(LIST_PAGE_SIZE);
    let children = ctx
        .take_writers()
        .expect("run_controller runs once per context")
        .streams(&client, namespace.as_deref(), &owned);
    let (store, writer) = reflector::store::<Guarded>();
    let _ = ctx.objects.set(store.clone());
    let objects = watcher(mds, watcher::Config::default().page_size(LIST_PAGE_SIZE))
        .default_backoff()
        .modify(cache::trim_owner)
        .reflect(writer)
        .applied_objects();
    let pods = watcher(pods, owned).default_backoff().touched_objects();
    let concurrency = ctx.config.max_concurrent_reconciles;
    let triggers: Vec<_> = std::mem::take(&mut *ctx.triggers.lock().expect("not poisoned"));
    let mut controller = Controller::for_stream(objects, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .owns_stream(children.deployments)
        .owns_stream(children.services)
        .owns_stream(children.pdbs)
        .owns_stream(children.secrets)
        .watches_stream(pods, |pod: PartialObjectMeta<Pod>| {
            let model = pod.labels().get(build::MODEL_LABEL)?.clone();
            Some(ObjectRef::new(&model).within(&pod.namespace()?))
        });
    for trigger in triggers {
        controller = controller
            .reconcile_on(trigger.map(|(ns, name)| ObjectRef::<Guarded>::new(&name).within(&ns)));
    }
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    if let Some(sync) = &ctx.sync {
        sync.stop();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::{FIXTURE, validated};
    use crate::observe::phase;

    fn observed(index: usize, ready: i32, phase: &'static str) -> ObservedRegion {
        ObservedRegion {
            index,
            observation: RegionObservation {
                name: ["us-east", "eu-west"][index].into(),
                replicas: [3, 1][index],
                ready_replicas: ready,
                phase,
                reason: None,
                message: None,
            },
            routable: true,
            cache: None,
            weights_in_use: Vec::new(),
        }
    }

    fn entry(name: &str, published: bool) -> RegionStatus {
        RegionStatus {
            name: name.into(),
            published,
            ..Default::default()
        }
    }

    const TOKEN: &str = "tok-0123456789abcdef";

    #[test]
    fn desired_routes_are_the_ready_routable_regions() {
        let v = validated(FIXTURE);
        let token = Credential::Token(TOKEN.into());
        let mut unroutable = observed(1, 1, phase::READY);
        unroutable.routable = false;
        let regions = [observed(0, 2, phase::PROGRESSING), unroutable];
        // Status from an earlier process says both (and a gone region) are published.
        let prev = ModelDeploymentStatus {
            regions: vec![
                entry("us-east", true),
                entry("eu-west", true),
                entry("ap-south", true),
                entry("elsewhere", false),
            ],
            ..Default::default()
        };
        let serves = |r: &str| r != "ap-south";
        let d = desired_routes(&v, &regions, &token, &prev, serves, "t");
        assert_eq!(d.live.keys().collect::<Vec<_>>(), ["us-east"]);
        let route = &d.live["us-east"];
        assert_eq!(
            (route.ready_replicas, route.upstream_token.as_str()),
            (2, TOKEN)
        );
        // What may still be held, among the served regions only.
        assert_eq!(
            d.maybe_held.iter().collect::<Vec<_>>(),
            ["eu-west", "us-east"]
        );
        // No usable credential: nothing live.
        let unusable = Credential::Unusable("no token".into());
        assert!(
            desired_routes(&v, &regions, &unusable, &prev, serves, "t")
                .live
                .is_empty()
        );
        // Not ready: withdrawn.
        let down = [observed(0, 0, phase::PROGRESSING)];
        assert!(
            desired_routes(&v, &down, &token, &prev, serves, "t")
                .live
                .is_empty()
        );
    }

    #[test]
    fn publication_comes_from_what_route_sync_holds() {
        let token = Credential::Token(TOKEN.into());
        let state = |published, error: Option<&str>| RouteState {
            published,
            pending: false,
            error: error.map(str::to_owned),
        };
        let held: BTreeMap<String, RouteState> = [
            ("a".to_owned(), state(true, None)),
            (
                "b".to_owned(),
                state(true, Some("lease: HTTP 401 unknown_key")),
            ),
            ("c".to_owned(), state(false, None)),
        ]
        .into();
        assert_eq!(publication(None, "a", true, &token), Publication::Disabled);
        assert_eq!(
            publication(Some(&held), "a", true, &token),
            Publication::Published
        );
        assert_eq!(
            publication(Some(&held), "b", true, &token),
            Publication::Failed {
                message: "lease: HTTP 401 unknown_key".into(),
                still_published: true
            }
        );
        assert_eq!(
            publication(Some(&held), "c", true, &token),
            Publication::Unpublished
        );
        assert_eq!(
            publication(Some(&held), "missing", false, &token),
            Publication::Unpublished
        );
        assert_eq!(
            publication(Some(&held), "a", true, &Credential::Unusable("bad".into())),
            Publication::Failed {
                message: "bad".into(),
                still_published: true
            }
        );
    }

    #[test]
    fn a_region_that_left_the_spec_stays_in_status_until_withdrawn() {
        let v = validated(FIXTURE);
        let token = Credential::Token(TOKEN.into());
        let regions = [observed(0, 3, phase::READY), observed(1, 1, phase::READY)];
        let prev = ModelDeploymentStatus {
            regions: vec![entry("us-east", true), entry("ap-south", true)],
            ..Default::default()
        };
        let pending = RouteState {
            published: true,
            pending: true,
            error: Some("DELETE x: HTTP 503".into()),
        };
        let held: BTreeMap<String, RouteState> = [("ap-south".to_owned(), pending)].into();
        let mine = region_entries(&v, &regions, &token, &prev, Some(&held), |_| true, "t");
        let names: Vec<&str> = mine.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["us-east", "eu-west", "ap-south"]);
        assert_eq!(mine[2].publish_error.as_deref(), Some("DELETE x: HTTP 503"));
        // Withdrawn: the entry goes.
        let done: BTreeMap<String, RouteState> = [(
            "ap-south".to_owned(),
            RouteState {
                published: false,
                pending: false,
                error: None,
            },
        )]
        .into();
        let mine = region_entries(&v, &regions, &token, &prev, Some(&done), |_| true, "t");
        assert_eq!(mine.len(), 2);
    }

    #[test]
    fn settled_objects_wait_for_the_slow_resync() {
        assert_eq!(
            requeue_after(&[
                observed(0, 3, phase::READY),
                observed(1, 0, phase::SCALED_TO_ZERO)
            ]),
            RESYNC
        );
        assert_eq!(
            requeue_after(&[observed(0, 1, phase::PROGRESSING)]),
            NOT_READY_REQUEUE
        );
    }

    #[test]
    fn the_finalizer_waits_at_most_the_ttl_since_deletion() {
        let deleted = Timestamp::from_second(1_000_000).unwrap();
        let at = |s: i64| Timestamp::from_second(1_000_000 + s).unwrap();
        assert_eq!(
            unpublish_wait(Some(deleted), 120, at(0)),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            unpublish_wait(Some(deleted), 120, at(119)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(unpublish_wait(Some(deleted), 120, at(120)), None);
        assert_eq!(unpublish_wait(Some(deleted), 120, at(4_000)), None);
        // A deletion time ahead of our clock: the whole TTL still.
        assert_eq!(
            unpublish_wait(Some(deleted), 120, at(-30)),
            Some(Duration::from_secs(120))
        );
    }

    fn cache(phase: &str, failed_attempts: i32) -> CacheStatus {
        CacheStatus {
            claim_name: "c".into(),
            source: "hf://a/b@v2".into(),
            phase: phase.into(),
            failed_attempts,
            message: Some("401 Unauthorized".into()),
            ..CacheStatus::default()
        }
    }

    fn reasons(events: Vec<(EventType, &'static str, String)>) -> Vec<&'static str> {
        events.into_iter().map(|(_, r, _)| r).collect()
    }

    #[test]
    fn cache_transitions_are_recorded_once_each() {
        use weights_cache::phase::*;
        let pending = cache(PENDING, 0);
        assert!(cache_events("us", None, &pending).is_empty());
        assert_eq!(
            reasons(cache_events("us", Some(&pending), &cache(DOWNLOADING, 0))),
            ["WeightsFilling"]
        );
        // Progress within Downloading is no event.
        assert!(
            cache_events("us", Some(&cache(DOWNLOADING, 0)), &cache(DOWNLOADING, 0)).is_empty()
        );
        // Each failed attempt is one Warning, naming the cause.
        let retry = cache_events("us", Some(&cache(DOWNLOADING, 0)), &cache(DOWNLOADING, 1));
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].0, EventType::Warning);
        assert!(retry[0].2.contains("401 Unauthorized") && retry[0].2.contains("region us"));
        assert_eq!(
            reasons(cache_events(
                "us",
                Some(&cache(DOWNLOADING, 6)),
                &cache(FAILED, 7)
            )),
            ["WeightsFillFailed"]
        );
        assert_eq!(
            reasons(cache_events(
                "us",
                Some(&cache(DOWNLOADING, 0)),
                &cache(READY, 0)
            )),
            ["WeightsReady"]
        );
        // A new claim (another revision) starts over.
        let other = CacheStatus {
            claim_name: "d".into(),
            ..cache(DOWNLOADING, 0)
        };
        assert_eq!(
            reasons(cache_events("us", Some(&cache(READY, 0)), &other)),
            ["WeightsFilling"]
        );
    }

    fn deployment_on(claim: &str, rolled: bool) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "generation": 2,
                "annotations": {build::WEIGHTS_CLAIM_ANNOTATION: claim}},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": if rolled { 2 } else { 1 },
                "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2},
        }))
        .unwrap()
    }

    #[test]
    fn an_old_cache_is_kept_until_the_deployment_has_rolled_off_it() {
        assert_eq!(weights_in_use(Some("new"), None), ["new"]);
        assert_eq!(
            weights_in_use(Some("new"), Some(&deployment_on("old", true))),
            ["new", "old"],
            "held on the old cache while the new one fills"
        );
        assert_eq!(
            weights_in_use(Some("new"), Some(&deployment_on("new", false))),
            ["new"]
        );
        assert_eq!(
            weights_in_use(Some("new"), Some(&deployment_on("new", true))),
            ["new"]
        );
        // The cache left the spec: kept until the pods stop mounting it.
        assert_eq!(
            weights_in_use(None, Some(&deployment_on("old", false))),
            ["old"]
        );
        let plain: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d"}, "spec": {"selector": {}, "template": {}}}))
        .unwrap();
        assert!(weights_in_use(None, Some(&plain)).is_empty());
    }
}
