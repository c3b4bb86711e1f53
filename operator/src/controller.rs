//! The reconciler: wires look up → validate → build/apply → observe → publish
//! → status for one `ModelDeployment`, and runs it under kube's `Controller`.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PartialObjectMeta};
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
    FINALIZER, ModelDeployment, ModelDeploymentStatus, RegionStatus, SKIP_UNPUBLISH_ANNOTATION,
};
use crate::metrics::Metrics;
use crate::observe::{self, RegionObservation};
use crate::publish::{self, Due, PublishError, Publisher, RouteKey, RouteTracker};
use crate::status::{self, Publication};
use crate::upstream_auth::{self, Credential};
use crate::validate::{ValidationError, validate};

/// Requeue while a region is not ready, to notice pods that stay Pending
/// (their changes do not touch the Deployment).
const NOT_READY_REQUEUE: Duration = Duration::from_secs(10);
/// Requeue of a steady object with nothing published (drift correction).
const STEADY_REQUEUE: Duration = Duration::from_secs(300);
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
    /// Withdrawing routes of a deleted object failed; the finalizer stays.
    #[error("withdrawing routes of {namespace}/{name}: {source}")]
    Unpublish {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Cause.
        #[source]
        source: PublishError,
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
            Error::Unpublish { .. } => "unpublish",
            Error::WaitingForPeers { .. } => "waiting_for_peers",
            Error::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => {
                    inner.category()
                }
                _ => "finalizer",
            },
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Operator settings.
    pub config: OperatorConfig,
    /// Worker client, `None` when publication is disabled.
    pub publisher: Option<Publisher>,
    /// What was published when.
    pub tracker: RouteTracker,
    /// Metrics.
    pub metrics: Metrics,
    /// The operator's children as the API server holds them.
    pub children: ChildCache,
    /// The controller's store of ModelDeployments, once [`run_controller`] made it.
    objects: std::sync::OnceLock<reflector::Store<ModelDeployment>>,
    writers: Mutex<Option<ChildWriters>>,
    recorder: Recorder,
    failures: Mutex<HashMap<(String, String), u32>>,
    managed: Mutex<BTreeSet<(String, String)>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context for `config`.
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Metrics,
    ) -> Result<Self, reqwest::Error> {
        let publisher = config.publish.clone().map(Publisher::new).transpose()?;
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
            publisher,
            children,
            objects: std::sync::OnceLock::new(),
            writers: Mutex::new(Some(writers)),
            tracker: RouteTracker::default(),
            metrics,
            recorder,
            failures: Mutex::default(),
            managed: Mutex::default(),
        })
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
        let ev = KubeEvent {
            type_,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &md.object_ref(&())).await {
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

fn key(md: &ModelDeployment) -> (String, String) {
    (md.namespace().unwrap_or_default(), md.name_any())
}

/// Reconciles one object (the `Controller`'s reconciler).
#[tracing::instrument(skip_all, fields(namespace = md.namespace(), name = md.name_any()))]
pub async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let api: Api<ModelDeployment> =
        Api::namespaced(ctx.client.clone(), &md.namespace().unwrap_or_default());
    let k = key(&md);
    let result = finalizer::finalizer(&api, FINALIZER, md, |event| async {
        match event {
            Finalizer::Apply(md) => reconcile_apply(&md, &ctx).await,
            Finalizer::Cleanup(md) => reconcile_cleanup(&md, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
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

/// Requeues failed reconciles with exponential backoff (1 s doubling to 5 min).
pub fn error_policy(md: Arc<ModelDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().expect("not poisoned");
    let n = failures.entry(key(&md)).or_insert(0);
    *n = n.saturating_add(1);
    let delay = Duration::from_secs(1u64 << (*n - 1).min(9)).min(Duration::from_secs(300));
    tracing::warn!(
        namespace = md.namespace(), name = md.name_any(), error = %error,
        category = error.category(), retry_in_s = delay.as_secs(), "reconcile failed"
    );
    Action::requeue(delay)
}

async fn reconcile_apply(md: &ModelDeployment, ctx: &Context) -> Result<Action, Error> {
    let (namespace, name) = key(md);
    ctx.set_managed((namespace.clone(), name.clone()), true);
    let v = match validate(md, &ctx.config) {
        Ok(v) => v,
        Err(invalid) => {
            reconcile_invalid(md, ctx, &invalid).await?;
            // Nothing to do until the spec changes.
            return Ok(Action::await_change());
        }
    };
    let serves = ctx.serves();

    // The Worker's credential first: the pods mount it.
    let credential = upstream_auth::ensure(&ctx.client, &ctx.children, &v).await?;

    // Apply and observe each served region.
    // A region whose children's names are held by objects this one does not
    // control is Degraded (`ChildConflict`, with a Warning Event from the
    // status transition) and not published; the other regions carry on.
    let mut observed: Vec<(usize, RegionObservation)> = Vec::new();
    let mut routable: Vec<bool> = Vec::new();
    for (i, region) in v.regions.iter().enumerate() {
        let applied = match &credential {
            // Never let the pods mount someone else's Secret as their tokens.
            Credential::Foreign(conflict) => apply::AppliedRegion {
                deployment: None,
                conflicts: vec![conflict.clone()],
            },
            _ => apply::apply_region(&ctx.client, &ctx.children, &v, region).await?,
        };
        routable.push(applied.routable());
        let conflicts: Vec<String> = applied.conflicts.iter().map(ToString::to_string).collect();
        let observation = match &applied.deployment {
            Some(deployment) if conflicts.is_empty() => {
                let (_, complete) = observe::deployment_readiness(deployment);
                let pods = if region.replicas > 0 && !complete {
                    apply::region_pods(&ctx.client, &v, &region.name).await?
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
        observed.push((i, observation));
    }
    apply::prune(&ctx.client, &ctx.children, &v, &serves).await?;

    // Publish: never blocks the children above; failures land in status.
    let prev = md.status.clone().unwrap_or_default();
    let now = SystemTime::now();
    let now_s = publish::rfc3339_seconds(now);
    let now_i = Instant::now();
    let mut next: Option<Instant> = None;
    let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
    let mut mine: Vec<RegionStatus> = Vec::new();
    for (i, obs) in &observed {
        let region = &v.regions[*i];
        let route_key = RouteKey {
            namespace: namespace.clone(),
            name: name.clone(),
            region: region.name.clone(),
        };
        let prev_entry = prev.regions.iter().find(|e| e.name == region.name);
        let was_published =
            prev_entry.is_some_and(|e| e.published) || ctx.tracker.is_sent(&route_key);
        let prev_error = || {
            prev_entry
                .and_then(|e| e.publish_error.clone())
                .unwrap_or_else(|| "retrying".into())
        };
        // A foreign Secret makes every region unroutable, so a ready region
        // has this ModelDeployment's own credential.
        let ready = region.replicas > 0 && obs.ready_replicas > 0 && routable[*i];
        let publication = match (&ctx.publisher, &credential) {
            (None, _) => Publication::Disabled,
            (Some(_), Credential::Unusable(message)) if ready => Publication::Failed {
                message: message.clone(),
                still_published: was_published,
            },
            (Some(publisher), Credential::Token(token)) if ready => {
                let mut route = publish::route(&v, region, obs.ready_replicas, &now_s, token);
                match ctx.tracker.put_due(&route_key, &route, now_i) {
                    Due::At(at) => {
                        soonest(at);
                        match prev_entry.and_then(|e| e.publish_error.clone()) {
                            Some(message) => Publication::Failed {
                                message,
                                still_published: was_published,
                            },
                            None => Publication::Published,
                        }
                    }
                    Due::Now => {
                        match publish::put_route(publisher, &ctx.tracker, &route_key, &mut route)
                            .await
                        {
                            Ok(()) => {
                                ctx.metrics.published("put", "success");
                                ctx.tracker.put_ok(&route_key, &route, now_i);
                                soonest(now_i + heartbeat(v.routing.ttl_seconds));
                                Publication::Published
                            }
                            Err(e) => {
                                ctx.metrics.published("put", e.category());
                                soonest(ctx.tracker.failed(&route_key, now_i));
                                tracing::warn!(region = %region.name, error = %e, "publishing a route failed");
                                Publication::Failed {
                                    message: e.to_string(),
                                    still_published: was_published,
                                }
                            }
                        }
                    }
                }
            }
            (Some(publisher), _) if was_published => {
                match ctx.tracker.delete_due(&route_key, now_i) {
                    Due::At(at) => {
                        soonest(at);
                        Publication::Failed {
                            message: prev_error(),
                            still_published: true,
                        }
                    }
                    Due::Now => {
                        match publish::delete_route(publisher, &ctx.tracker, &route_key).await {
                            Ok(()) => {
                                ctx.metrics.published("delete", "success");
                                ctx.tracker.delete_ok(&route_key);
                                Publication::Unpublished
                            }
                            Err(e) => {
                                ctx.metrics.published("delete", e.category());
                                soonest(ctx.tracker.failed(&route_key, now_i));
                                tracing::warn!(region = %region.name, error = %e, "withdrawing a route failed");
                                Publication::Failed {
                                    message: e.to_string(),
                                    still_published: true,
                                }
                            }
                        }
                    }
                }
            }
            (Some(_), _) => Publication::Unpublished,
        };
        mine.push(status::region_status(
            prev_entry,
            obs,
            &region.endpoint,
            v.generation,
            &publication,
            &now_s,
        ));
    }

    // Regions this operator served that left the spec: withdraw their routes.
    let gone: Vec<&RegionStatus> = prev
        .regions
        .iter()
        .filter(|e| e.published && serves(&e.name) && !v.spec_regions.contains(&e.name))
        .collect();
    if let Some(publisher) = &ctx.publisher {
        for entry in gone {
            let route_key = RouteKey {
                namespace: namespace.clone(),
                name: name.clone(),
                region: entry.name.clone(),
            };
            let result = match ctx.tracker.delete_due(&route_key, now_i) {
                Due::At(at) => {
                    soonest(at);
                    // Still published: keep the entry until the withdrawal succeeds.
                    mine.push(entry.clone());
                    continue;
                }
                Due::Now => publish::delete_route(publisher, &ctx.tracker, &route_key).await,
            };
            match result {
                Ok(()) => {
                    ctx.metrics.published("delete", "success");
                    ctx.tracker.delete_ok(&route_key);
                }
                Err(e) => {
                    ctx.metrics.published("delete", e.category());
                    soonest(ctx.tracker.failed(&route_key, now_i));
                    mine.push(RegionStatus {
                        publish_error: Some(e.to_string()),
                        ..entry.clone()
                    });
                }
            }
        }
    }

    // Status, only when it changed.
    let spec_order: Vec<String> = md.spec.regions.iter().map(|r| r.name.clone()).collect();
    let desired = status::desired_status(md, &spec_order, mine, &serves, Timestamp::now());
    if status::status_changed(md, &desired, &serves) {
        let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
        status::write(&api, md, &desired, &ctx.config.status_field_manager())
            .await
            .map_err(|source| Error::Status {
                namespace: namespace.clone(),
                name: name.clone(),
                source,
            })?;
        record_transitions(md, &prev, &desired, ctx).await;
    }

    let all_ready = observed.iter().all(|(_, o)| {
        o.phase == observe::phase::READY || o.phase == observe::phase::SCALED_TO_ZERO
    });
    let mut requeue = if all_ready {
        STEADY_REQUEUE
    } else {
        NOT_READY_REQUEUE
    };
    if let Some(at) = next {
        requeue = requeue.min(
            at.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(100)),
        );
    }
    Ok(Action::requeue(requeue))
}

fn heartbeat(ttl_seconds: u32) -> Duration {
    Duration::from_secs(u64::from(ttl_seconds / 3).max(1))
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
    let (namespace, name) = key(md);
    let serves = ctx.serves();
    let skip = md
        .annotations()
        .get(SKIP_UNPUBLISH_ANNOTATION)
        .map(String::as_str)
        == Some("true");
    let prev = md.status.clone().unwrap_or_default();
    if let (Some(publisher), false) = (&ctx.publisher, skip) {
        let regions: BTreeSet<String> = md
            .spec
            .regions
            .iter()
            .map(|r| r.name.clone())
            .chain(prev.regions.iter().map(|e| e.name.clone()))
            .filter(|r| serves(r))
            .collect();
        for region in &regions {
            let route_key = RouteKey {
                namespace: namespace.clone(),
                name: name.clone(),
                region: region.clone(),
            };
            match publish::delete_route(publisher, &ctx.tracker, &route_key).await {
                Ok(()) => ctx.metrics.published("delete", "success"),
                Err(source) => {
                    ctx.metrics.published("delete", source.category());
                    ctx.event(
                        md,
                        EventType::Warning,
                        "UnpublishFailed",
                        "Cleanup",
                        format!("region {region}: {source}"),
                    )
                    .await;
                    return Err(Error::Unpublish {
                        namespace,
                        name,
                        source,
                    });
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
    ctx.tracker.forget(&namespace, &name);
    for region in md.spec.regions.iter().map(|r| &r.name) {
        ctx.children
            .forget_all(&namespace, &build::child_name(&name, region));
    }
    ctx.set_managed((namespace, name), false);
    // Children go with the object: they carry owner references.
    Ok(Action::await_change())
}

/// Runs the controller until `shutdown` completes.
///
/// Reconciles are triggered by the object, by its children (Deployments,
/// Services, PodDisruptionBudgets, through owner references; their watches
/// also fill [`Context::children`]) and by its pods (through the model label),
/// so a pod that cannot be scheduled is reported as soon as the scheduler
/// says so rather than at the next requeue.
///
/// The objects' store holds trimmed copies ([`cache::trim_owner`]) and pods
/// are watched as metadata only (a trigger needs the labels): together they
/// were most of the operator's memory at 1,000 objects.
pub async fn run_controller(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), kube::Error> {
    let client = ctx.client.clone();
    let namespace = ctx.config.watch_namespace.clone();
    let (mds, pods): (Api<ModelDeployment>, Api<PartialObjectMeta<Pod>>) = match &namespace {
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
    let (store, writer) = reflector::store();
    let _ = ctx.objects.set(store.clone());
    let objects = watcher(mds, watcher::Config::default().page_size(LIST_PAGE_SIZE))
        .default_backoff()
        .modify(cache::trim_owner)
        .reflect(writer)
        .applied_objects();
    let pods = watcher(pods, owned).default_backoff().touched_objects();
    let concurrency = ctx.config.max_concurrent_reconciles;
    Controller::for_stream(objects, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .owns_stream(children.deployments)
        .owns_stream(children.services)
        .owns_stream(children.pdbs)
        .owns_stream(children.secrets)
        .watches_stream(pods, |pod: PartialObjectMeta<Pod>| {
            let model = pod.labels().get(build::MODEL_LABEL)?.clone();
            Some(ObjectRef::new(&model).within(&pod.namespace()?))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    Ok(())
}
