//! Apply: server-side apply of the built children (field manager
//! `backhaul-operator`, forced so the operator's fields always win), and
//! removal of children that no longer belong to the spec.
//!
//! A child whose desired form and cached copy are unchanged since the last
//! apply is not applied again (see [`crate::cache`]): a resync of an
//! unchanged object sends no request. Server-side apply of an unchanged
//! object would be a no-op on the API server anyway (no new resourceVersion),
//! but it is still a PATCH per child per resync.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
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

/// Applies `object` unless its child is unchanged since its last apply (or,
/// first seen since this process started, the live child already holds it).
/// Returns the child as the API server answered (the apply's answer, or the
/// live child it read), `None` when it sent nothing (the cache holds it).
///
/// The cache answers when it has the child or has finished listing; until
/// then (just after a start) the child is read instead, so a restart costs
/// reads, not writes.
async fn ensure<K>(
    client: &Client,
    cache: &ChildCache,
    namespace: &str,
    object: K,
) -> Result<Option<K>, ApplyError>
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
        None if !cache.ready() => {
            live = api.get_opt(&name).await.map_err(|e| failed("get", e))?;
            live.as_ref().map(|l| l.meta().clone())
        }
        None => None,
    };
    if cache.unchanged(&object, namespace, cached.as_ref()) {
        return Ok(live);
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
                    return Ok(Some(live));
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
    Ok(Some(applied))
}

/// Applies one region's Deployment, Service and PodDisruptionBudget where
/// they changed; returns the Deployment as the API server holds it (with its
/// status; from the cache when it was not applied).
pub async fn apply_region(
    client: &Client,
    cache: &ChildCache,
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
) -> Result<Deployment, ApplyError> {
    let desired = build::deployment(v, region);
    let name = desired.name_any();
    let deployment = match ensure(client, cache, &v.namespace, desired.clone()).await? {
        Some(applied) => applied,
        None => cache
            .deployment(&v.namespace, &name)
            .map(|d| (*d).clone())
            .unwrap_or(desired),
    };
    ensure(client, cache, &v.namespace, build::service(v, region)).await?;
    if let Some(pdb) = build::pod_disruption_budget(v, region) {
        ensure(client, cache, &v.namespace, pdb).await?;
    }
    Ok(deployment)
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

fn owned_by(meta: &ObjectMeta, v: &ValidatedModelDeployment) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == v.owner.uid)
}

/// Deletes children of regions that left the spec (among those `serves`), and
/// PodDisruptionBudgets of regions scaled to one replica or fewer. Reads the
/// children from the cache once it is ready, else lists them.
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
    let mut removed = Vec::new();
    for d in deployments {
        let region = region_of(&d);
        if owned_by(&d, v) && serves(&region) && !v.spec_regions.contains(&region) {
            let name = d.name.clone().unwrap_or_default();
            delete::<Deployment>(client, cache, &v.namespace, &name).await?;
            delete::<Service>(client, cache, &v.namespace, &name).await?;
            delete::<PodDisruptionBudget>(client, cache, &v.namespace, &name).await?;
            removed.push(region);
        }
    }
    for pdb in pdbs {
        let region = region_of(&pdb);
        let wanted = v
            .regions
            .iter()
            .any(|r| r.name == region && build::pod_disruption_budget(v, r).is_some());
        if owned_by(&pdb, v) && serves(&region) && !wanted {
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
