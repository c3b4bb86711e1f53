//! Apply: server-side apply of the built children (field manager
//! `backhaul-operator`, forced so the operator's fields always win), and
//! removal of children that no longer belong to the spec.
//!
//! Forcing takes over every field of whatever object holds the name, so a
//! child is applied only when no object of its name exists yet or the one that
//! does carries this ModelDeployment's controller owner reference. Another
//! object of that name (someone's own Service, an earlier ModelDeployment's
//! child still being collected) is left untouched and reported as a
//! [`ChildConflict`].
//!
//! A child whose desired form and cached copy are unchanged since the last
//! apply is not applied again (see [`crate::cache`]): a resync of an
//! unchanged object sends no request. Server-side apply of an unchanged
//! object would be a no-op on the API server anyway (no new resourceVersion),
//! but it is still a PATCH per child per resync.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{self, MODEL_LABEL, REGION_LABEL};
use crate::cache::{self, ChildCache, kind_of};
use crate::crd::RegionSpec;
use crate::validate::ValidatedModelDeployment;

/// Field manager of every object the operator applies.
pub const FIELD_MANAGER: &str = "backhaul-operator";

/// A Kubernetes call on a child failed.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {namespace}/{name}: {source}")]
pub struct ApplyError {
    /// What was attempted (`apply`, `delete`, `list`).
    pub verb: &'static str,
    /// Kind of the child.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name (or selector for lists).
    pub name: String,
    /// Cause.
    #[source]
    pub source: kube::Error,
}

/// An object holds the name of a child but is not controlled by this
/// ModelDeployment, so the child was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildConflict {
    /// Kind of the child (`Deployment`, `Service`, `PodDisruptionBudget`).
    pub kind: &'static str,
    /// `namespace/name` of the object.
    pub object: String,
    /// Who controls it instead, from its owner references.
    pub holder: String,
}

impl std::fmt::Display for ChildConflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} exists and is not owned by this ModelDeployment ({}); it is left \
             untouched: delete or rename it",
            self.kind, self.object, self.holder
        )
    }
}

/// Whether `meta` carries the controller owner reference of `owner_uid`.
pub fn controlled_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == owner_uid && o.controller == Some(true))
}

/// Who controls an object that `owner` does not, in words.
pub fn holder(meta: &ObjectMeta, owner: &OwnerReference) -> String {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    match refs.iter().find(|o| o.controller == Some(true)) {
        Some(o) if o.kind == owner.kind && o.name == owner.name => format!(
            "controlled by an earlier {} {} with uid {}",
            o.kind, o.name, o.uid
        ),
        Some(o) => format!("controlled by {} {}", o.kind, o.name),
        None if refs.iter().any(|o| o.uid == owner.uid) => {
            "its owner reference to this ModelDeployment is not a controller reference".into()
        }
        None => "it has no controller owner reference".into(),
    }
}

/// What [`ensure`] did.
enum Ensured<K> {
    /// Applied, or read: the child as the API server answered.
    Answered(K),
    /// Unchanged since its last apply: nothing sent, the cache holds it.
    Cached,
    /// Another object holds the name: nothing applied.
    Foreign(ChildConflict),
}

/// Applies `object` unless its child is unchanged since its last apply (or,
/// first seen since this process started, the live child already holds it),
/// or an object of its name that `owner` does not control exists.
///
/// The caches only see children (their watches select the operator's
/// label), so a name missing from them is read before it is created: an
/// unrelated object of that name is found and left alone instead of taken
/// over. Children in the caches cost no request; a restart, and each
/// creation, cost one read.
async fn ensure<K>(
    client: &Client,
    cache: &ChildCache,
    namespace: &str,
    owner: &OwnerReference,
    object: K,
) -> Result<Ensured<K>, ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let object = cache::with_digest(object);
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let failed = |verb, source| ApplyError {
        verb,
        kind: kind_of::<K>(),
        namespace: namespace.to_owned(),
        name: name.clone(),
        source,
    };
    let mut live: Option<K> = None;
    let cached = match cache.meta::<K>(namespace, &name) {
        Some(meta) => Some(meta),
        None => {
            live = api.get_opt(&name).await.map_err(|e| failed("get", e))?;
            live.as_ref().map(|l| l.meta().clone())
        }
    };
    if let Some(meta) = &cached
        && !controlled_by(meta, &owner.uid)
    {
        return Ok(Ensured::Foreign(ChildConflict {
            kind: kind_of::<K>(),
            object: format!("{namespace}/{name}"),
            holder: holder(meta, owner),
        }));
    }
    if cache.unchanged(&object, namespace, cached.as_ref()) {
        return Ok(live.map_or(Ensured::Cached, Ensured::Answered));
    }
    // First sight with the same digest: adopt the live child if it still
    // holds every desired value.
    let same_digest = cached
        .as_ref()
        .is_some_and(|m| cache::applied_digest(m) == cache::applied_digest(object.meta()));
    if same_digest && cache.first_sight(&object, namespace) {
        if live.is_none() {
            live = api.get_opt(&name).await.map_err(|e| failed("get", e))?;
        }
        if let Some(live) = live
            && let (Ok(desired), Ok(actual)) =
                (serde_json::to_value(&object), serde_json::to_value(&live))
        {
            match cache::first_difference(&desired, &actual) {
                None => {
                    cache.record(&object, namespace, live.meta());
                    return Ok(Ensured::Answered(live));
                }
                Some(path) => tracing::info!(
                    kind = kind_of::<K>(), %namespace, %name, %path,
                    "live child differs from the desired one; applying"
                ),
            }
        }
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|e| failed("apply", e))?;
    cache.record(&object, namespace, applied.meta());
    Ok(Ensured::Answered(applied))
}

/// One region after [`apply_region`].
#[derive(Debug, Clone)]
pub struct AppliedRegion {
    /// The region's Deployment as the API server holds it (with its status);
    /// `None` when an object this ModelDeployment does not control holds its name.
    pub deployment: Option<Deployment>,
    /// Children not applied because such an object holds their name.
    pub conflicts: Vec<ChildConflict>,
}

impl AppliedRegion {
    /// Whether the region's traffic reaches this ModelDeployment's pods: its
    /// Deployment and Service are its own (a foreign PodDisruptionBudget does
    /// not change where requests go).
    pub fn routable(&self) -> bool {
        self.conflicts
            .iter()
            .all(|c| c.kind == kind_of::<PodDisruptionBudget>())
    }
}

/// What to do with a region's Deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentPlan<'a> {
    /// Apply the spec's Deployment, loading from the weight cache claim
    /// named, if any.
    Apply(Option<&'a str>),
    /// Leave the Deployment as it is, or absent, while the weight cache it
    /// is to load from fills.
    Hold,
}

/// Applies one region's Deployment (as `plan` says), Service and
/// PodDisruptionBudget where they changed, each unless an object `v` does
/// not control holds its name (the others are still applied).
pub async fn apply_region(
    client: &Client,
    cache: &ChildCache,
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
    plan: DeploymentPlan<'_>,
) -> Result<AppliedRegion, ApplyError> {
    let mut conflicts = Vec::new();
    let deployment = match plan {
        DeploymentPlan::Apply(weights) => {
            let desired = build::deployment(v, region, weights);
            let name = desired.name_any();
            match ensure(client, cache, &v.namespace, &v.owner, desired.clone()).await? {
                Ensured::Answered(applied) => Some(applied),
                Ensured::Cached => Some(
                    cache
                        .deployment(&v.namespace, &name)
                        .map(|d| (*d).clone())
                        .unwrap_or(desired),
                ),
                Ensured::Foreign(conflict) => {
                    conflicts.push(conflict);
                    None
                }
            }
        }
        DeploymentPlan::Hold => held_deployment(client, cache, v, &region.name).await?,
    };
    let service = build::service(v, region);
    if let Ensured::Foreign(conflict) =
        ensure(client, cache, &v.namespace, &v.owner, service).await?
    {
        conflicts.push(conflict);
    }
    if let Some(pdb) = build::pod_disruption_budget(v, region)
        && let Ensured::Foreign(conflict) =
            ensure(client, cache, &v.namespace, &v.owner, pdb).await?
    {
        conflicts.push(conflict);
    }
    Ok(AppliedRegion {
        deployment,
        conflicts,
    })
}

/// The region's live Deployment when it is this ModelDeployment's (the
/// cache's copy, else a read).
async fn held_deployment(
    client: &Client,
    cache: &ChildCache,
    v: &ValidatedModelDeployment,
    region: &str,
) -> Result<Option<Deployment>, ApplyError> {
    let name = build::child_name(&v.name, region);
    let live = match cache.deployment(&v.namespace, &name) {
        Some(d) => Some((*d).clone()),
        None => Api::<Deployment>::namespaced(client.clone(), &v.namespace)
            .get_opt(&name)
            .await
            .map_err(|source| ApplyError {
                verb: "get",
                kind: "Deployment",
                namespace: v.namespace.clone(),
                name: name.clone(),
                source,
            })?,
    };
    Ok(live.filter(|d| controlled_by(&d.metadata, &v.owner.uid)))
}

fn model_selector(v: &ValidatedModelDeployment) -> String {
    format!(
        "app.kubernetes.io/managed-by={},{MODEL_LABEL}={}",
        build::MANAGED_BY,
        v.name
    )
}

async fn list<K>(client: &Client, namespace: &str, selector: &str) -> Result<Vec<K>, ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .map_err(|source| ApplyError {
            verb: "list",
            kind: kind_of::<K>(),
            namespace: namespace.to_owned(),
            name: selector.to_owned(),
            source,
        })
}

async fn delete<K>(
    client: &Client,
    cache: &ChildCache,
    namespace: &str,
    name: &str,
) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    cache.forget::<K>(namespace, name);
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(ApplyError {
            verb: "delete",
            kind: kind_of::<K>(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        }),
    }
}

/// Deletes children of regions that left the spec (among those `serves`),
/// children under a name [`build::child_name`] no longer gives (an operator
/// before hashed names called them `<name>-<region>`), and
/// PodDisruptionBudgets of regions scaled to one replica or fewer. Only
/// children `v` controls are touched. Reads the children from the cache once
/// it is ready, else lists them.
pub async fn prune(
    client: &Client,
    cache: &ChildCache,
    v: &ValidatedModelDeployment,
    serves: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ApplyError> {
    let (deployments, pdbs) = match cache.children(
        &v.namespace,
        &[
            ("app.kubernetes.io/managed-by", build::MANAGED_BY),
            (MODEL_LABEL, &v.name),
        ],
    ) {
        Some(children) => children,
        None => {
            let selector = model_selector(v);
            let deployments = list::<Deployment>(client, &v.namespace, &selector).await?;
            let pdbs = list::<PodDisruptionBudget>(client, &v.namespace, &selector).await?;
            (
                deployments.into_iter().map(|d| d.metadata).collect(),
                pdbs.into_iter().map(|p| p.metadata).collect(),
            )
        }
    };
    let region_of = |meta: &ObjectMeta| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(REGION_LABEL))
            .cloned()
            .unwrap_or_default()
    };
    let ours = |meta: &ObjectMeta| controlled_by(meta, &v.owner.uid) && serves(&region_of(meta));
    let current_name = |meta: &ObjectMeta| {
        meta.name.as_deref() == Some(build::child_name(&v.name, &region_of(meta)).as_str())
    };
    let mut removed = Vec::new();
    // Names whose three children were deleted with their Deployment.
    let mut deleted = std::collections::BTreeSet::new();
    for d in deployments {
        let region = region_of(&d);
        let gone = !v.spec_regions.contains(&region);
        if ours(&d) && (gone || !current_name(&d)) {
            let name = d.name.clone().unwrap_or_default();
            delete::<Deployment>(client, cache, &v.namespace, &name).await?;
            delete::<Service>(client, cache, &v.namespace, &name).await?;
            delete::<PodDisruptionBudget>(client, cache, &v.namespace, &name).await?;
            if gone {
                removed.push(region);
            }
            deleted.insert(name);
        }
    }
    for pdb in pdbs {
        let region = region_of(&pdb);
        let wanted = current_name(&pdb)
            && v.regions
                .iter()
                .any(|r| r.name == region && build::pod_disruption_budget(v, r).is_some());
        let already = pdb.name.as_ref().is_some_and(|n| deleted.contains(n));
        if ours(&pdb) && !wanted && !already {
            let name = pdb.name.clone().unwrap_or_default();
            delete::<PodDisruptionBudget>(client, cache, &v.namespace, &name).await?;
        }
    }
    Ok(removed)
}

/// Pods of one region, to explain why it is not ready.
pub async fn region_pods(
    client: &Client,
    v: &ValidatedModelDeployment,
    region: &str,
) -> Result<Vec<Pod>, ApplyError> {
    let selector = format!("{MODEL_LABEL}={},{REGION_LABEL}={region}", v.name);
    list::<Pod>(client, &v.namespace, &selector).await
}
