//! Apply: server-side apply of the built children (field manager
//! `backhaul-operator`, forced so the operator's fields always win), and
//! removal of children that no longer belong to the spec.
//!
//! Server-side apply of an unchanged object is a no-op on the API server (no
//! new resourceVersion), so applying on every reconcile corrects drift without
//! churn.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::{self, MODEL_LABEL, REGION_LABEL};
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

async fn ssa<K>(client: &Client, namespace: &str, object: &K) -> Result<K, ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = object.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
    .map_err(|source| ApplyError {
        verb: "apply",
        kind: kind_of::<K>(),
        namespace: namespace.to_owned(),
        name,
        source,
    })
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Bounded set: the kinds this module touches.
    match K::kind(&()).as_ref() {
        "Deployment" => "Deployment",
        "Service" => "Service",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        "Pod" => "Pod",
        _ => "object",
    }
}

/// Applies one region's Deployment, Service and PodDisruptionBudget; returns
/// the Deployment as the API server holds it (with its status).
pub async fn apply_region(
    client: &Client,
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
) -> Result<Deployment, ApplyError> {
    let deployment = ssa(client, &v.namespace, &build::deployment(v, region)).await?;
    ssa(client, &v.namespace, &build::service(v, region)).await?;
    if let Some(pdb) = build::pod_disruption_budget(v, region) {
        ssa(client, &v.namespace, &pdb).await?;
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

async fn delete<K>(client: &Client, namespace: &str, name: &str) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
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

fn owned_by(meta: &kube::api::ObjectMeta, v: &ValidatedModelDeployment) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == v.owner.uid)
}

/// Deletes children of regions that left the spec (among those `serves`), and
/// PodDisruptionBudgets of regions scaled to one replica or fewer.
pub async fn prune(
    client: &Client,
    v: &ValidatedModelDeployment,
    serves: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ApplyError> {
    let selector = model_selector(v);
    let region_of = |meta: &kube::api::ObjectMeta| {
        meta.labels
            .as_ref()
            .and_then(|l| l.get(REGION_LABEL))
            .cloned()
            .unwrap_or_default()
    };
    let mut removed = Vec::new();
    for d in list::<Deployment>(client, &v.namespace, &selector).await? {
        let region = region_of(&d.metadata);
        if owned_by(&d.metadata, v) && serves(&region) && !v.spec_regions.contains(&region) {
            let name = d.name_any();
            delete::<Deployment>(client, &v.namespace, &name).await?;
            delete::<Service>(client, &v.namespace, &name).await?;
            delete::<PodDisruptionBudget>(client, &v.namespace, &name).await?;
            removed.push(region);
        }
    }
    for pdb in list::<PodDisruptionBudget>(client, &v.namespace, &selector).await? {
        let region = region_of(&pdb.metadata);
        let wanted = v
            .regions
            .iter()
            .any(|r| r.name == region && build::pod_disruption_budget(v, r).is_some());
        if owned_by(&pdb.metadata, v) && serves(&region) && !wanted {
            delete::<PodDisruptionBudget>(client, &v.namespace, &pdb.name_any()).await?;
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
