//! Weight caches (`spec.model.cache`): per region, a PersistentVolumeClaim
//! filled once by a download Job, which every replica then mounts
//! read-only.
//!
//! - The fill runs the inference binary itself (`--download-only`, with the
//!   replica's own model flags), so it fetches exactly the files a replica
//!   loads, resumes a cut download, and checks every file against the Hub's
//!   listing. It saves that listing as its completion record, and a
//!   replica (`--hub-offline`) loads from the claim only when that record
//!   is there, so a half-filled cache is never served.
//! - A claim is named for its source (repo, revision, format, files): a new
//!   revision gets a new claim and fill, while the Deployment is held as it
//!   is (still serving the old revision) until the fill is Ready. Then the
//!   Deployment rolls (`maxUnavailable: 0`) and, once it has, the old cache
//!   is deleted.
//! - Progress is the fill's own: it prints
//!   [`backhaul_telemetry::DownloadProgress`] lines, read back from the tail
//!   of its pod's log (the fill's pod gets no API credentials to report
//!   anything itself).
//! - A failed attempt is retried by the Job with the Job controller's
//!   exponential backoff (10 s, doubling, up to [`FILL_BACKOFF_LIMIT`]
//!   retries); a Job that gives up is reported `Failed` and deleted after
//!   [`RETRY_FAILED_AFTER`], so the next reconcile starts a fresh one, which
//!   resumes from what is on the claim.

use std::collections::BTreeSet;
use std::time::Duration;

use backhaul_telemetry::DownloadProgress;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::apply::{ApplyError, ChildConflict, controlled_by, holder};
use crate::build::{self, WEIGHTS_DIR};
use crate::cache::kind_of;
use crate::crd::{CacheAccessMode, CacheStatus, ModelCacheSpec, ModelSpec, RegionSpec};
use crate::validate::ValidatedModelDeployment;

/// `app.kubernetes.io/component` of a cache's claim, Job and pods.
pub const COMPONENT: &str = "weights-cache";
/// Retries of a failed fill before its Job gives up (the Job controller
/// waits 10 s, 20 s, 40 s ... between them, up to 6 minutes).
pub const FILL_BACKOFF_LIMIT: i32 = 6;
/// How long a Job that gave up stays before a fresh one is started.
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(15 * 60);
/// Lines of the fill's log read for its progress.
const LOG_TAIL_LINES: i64 = 40;

/// Cache phases, as written to `status.regions[].cache.phase`.
pub mod phase {
    /// The fill has not started (its pod is waiting: scheduling, the
    /// claim's binding, a backoff).
    pub const PENDING: &str = "Pending";
    /// The fill is fetching files.
    pub const DOWNLOADING: &str = "Downloading";
    /// Every file is on the claim and verified.
    pub const READY: &str = "Ready";
    /// The fill gave up; `message` says why.
    pub const FAILED: &str = "Failed";
}

/// What identifies a cache's content: the source with its revision, the
/// format and the files.
pub fn key(model: &ModelSpec) -> String {
    let format = serde_json::to_string(&model.format).unwrap_or_default();
    build::short_hash(&format!(
        "{}\n{format}\n{}",
        model.source,
        model.gguf_files.join("\n")
    ))
}

/// Name of the region's cache claim and of its fill Job.
pub fn claim_name(v: &ValidatedModelDeployment, region: &str) -> String {
    build::child_name(&v.name, &format!("{region}-weights-{}", key(&v.model)))
}

/// Label naming the ModelDeployment a cache belongs to. Not
/// [`build::MODEL_LABEL`]: the region's Service and Deployment select pods by
/// that one, and a fill's pod must never receive a request.
pub const MODEL_LABEL: &str = "backhaul.dev/weights-of";
/// Label naming the region a cache serves.
pub const REGION_LABEL: &str = "backhaul.dev/weights-region";

fn metadata(v: &ValidatedModelDeployment, region: &str) -> serde_json::Value {
    let name = claim_name(v, region);
    let labels = json!({
        MODEL_LABEL: v.name,
        REGION_LABEL: region,
        "app.kubernetes.io/name": "backhaul-inference",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/part-of": "backhaul",
        "app.kubernetes.io/managed-by": build::MANAGED_BY,
    });
    json!({
        "name": name,
        "namespace": v.namespace,
        "labels": labels,
        "annotations": {"backhaul.dev/weights-source": v.model.source},
        "ownerReferences": [v.owner],
    })
}

/// The region's cache claim.
pub fn claim(
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
    spec: &ModelCacheSpec,
) -> PersistentVolumeClaim {
    let mode = match spec.access_mode {
        CacheAccessMode::ReadWriteMany => "ReadWriteMany",
        CacheAccessMode::ReadWriteOnce => "ReadWriteOnce",
    };
    let mut value = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(v, &region.name),
        "spec": {
            "accessModes": [mode],
            "resources": {"requests": {"storage": spec.size}},
        },
    });
    if let Some(class) = &spec.storage_class_name {
        value["spec"]["storageClassName"] = json!(class);
    }
    serde_json::from_value(value).expect("the built claim matches k8s-openapi's type")
}

/// Flags of the fill: the replicas' model flags, into the claim.
pub fn fill_args(v: &ValidatedModelDeployment) -> Vec<String> {
    let mut args = vec!["--download-only".to_owned()];
    args.extend(build::model_args(v));
    args.extend([
        "--model-cache".into(),
        WEIGHTS_DIR.into(),
        "--log-format".into(),
        "json".into(),
    ]);
    args
}

/// The region's fill Job: on the region's nodes (so a zonal volume binds
/// where the replicas run), without a GPU.
pub fn fill_job(v: &ValidatedModelDeployment, region: &RegionSpec) -> Job {
    let mut tolerations = vec![json!({
        "key": build::GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule",
    })];
    tolerations.extend(region.tolerations.iter().map(|t| json!(t)));
    let meta = metadata(v, &region.name);
    let value = json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": FILL_BACKOFF_LIMIT,
            "template": {
                "metadata": {"labels": meta["labels"]},
                "spec": {
                    "restartPolicy": "Never",
                    "enableServiceLinks": false,
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": build::RUN_AS_USER,
                        "runAsGroup": build::RUN_AS_USER,
                        "fsGroup": build::RUN_AS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "nodeSelector": build::node_selector(v, region),
                    "tolerations": tolerations,
                    "containers": [{
                        "name": "fill",
                        "image": v.image,
                        "args": fill_args(v),
                        "env": build::pod_env(v),
                        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                        // The error a failed attempt ended with, for status.
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "volumeMounts": [
                            {"name": "weights", "mountPath": WEIGHTS_DIR},
                            {"name": "cache", "mountPath": build::CACHE_DIR},
                            {"name": "tmp", "mountPath": "/tmp"},
                        ],
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                    "volumes": [
                        {"name": "weights", "persistentVolumeClaim": {"claimName": claim_name(v, &region.name)}},
                        {"name": "cache", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    });
    serde_json::from_value(value).expect("the built Job matches k8s-openapi's type")
}

/// `bytes` in binary units, for messages.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The last line of what a failed attempt printed (the error's root cause).
fn failure_of(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| c.state.as_ref()?.terminated.as_ref())?;
    let text = terminated.message.as_deref().unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .or_else(|| terminated.reason.clone())?;
    Some(line.chars().take(400).collect())
}

/// Why a pod that has not started is waiting, if Kubernetes says.
fn waiting_of(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .find_map(|c| {
            let w = c.state.as_ref()?.waiting.as_ref()?;
            Some(format!(
                "{}: {}",
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            ))
        })
        .or_else(|| {
            status.conditions.iter().flatten().find_map(|c| {
                (c.type_ == "PodScheduled" && c.status == "False")
                    .then(|| c.message.clone().unwrap_or_default())
            })
        })
}

fn created(pod: &Pod) -> Option<Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// The cache's status from its Job, the Job's pods and the tail of the
/// running pod's log. Totals seen earlier (`prev`, same claim) stay once
/// the fill is done.
pub fn observe(
    claim: &str,
    source: &str,
    job: &Job,
    pods: &[Pod],
    log: Option<&str>,
    prev: Option<&CacheStatus>,
) -> CacheStatus {
    let status = job.status.clone().unwrap_or_default();
    let failed_attempts = status.failed.unwrap_or(0);
    let progress = log.and_then(DownloadProgress::last_in);
    let prev = prev.filter(|p| p.claim_name == claim);
    let mut out = CacheStatus {
        claim_name: claim.to_owned(),
        source: source.to_owned(),
        phase: phase::PENDING.into(),
        // int64, as Kubernetes API conventions ask of integer fields.
        downloaded_bytes: progress
            .map(|p| i64::try_from(p.bytes_done).unwrap_or(i64::MAX))
            .or(prev.and_then(|p| p.downloaded_bytes)),
        total_bytes: progress
            .map(|p| i64::try_from(p.bytes_total).unwrap_or(i64::MAX))
            .or(prev.and_then(|p| p.total_bytes)),
        failed_attempts,
        message: None,
    };
    let mut by_age: Vec<&Pod> = pods.iter().collect();
    by_age.sort_by_key(|p| created(p));
    let last_failure = by_age
        .iter()
        .rev()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed"))
        .find_map(|p| failure_of(p));
    if status.succeeded.unwrap_or(0) > 0 {
        out.phase = phase::READY.into();
        out.downloaded_bytes = out.total_bytes.or(out.downloaded_bytes);
        return out;
    }
    let gave_up = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True");
    if let Some(c) = gave_up {
        out.phase = phase::FAILED.into();
        out.message = Some(format!(
            "{} after {failed_attempts} attempts{}",
            c.message
                .clone()
                .unwrap_or_else(|| "the fill failed".into()),
            last_failure
                .map(|f| format!("; the last one: {f}"))
                .unwrap_or_default()
        ));
        return out;
    }
    let current = by_age.iter().rev().find(|p| {
        matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Pending" | "Running")
        )
    });
    let retrying = last_failure
        .filter(|_| failed_attempts > 0)
        .map(|f| format!("retrying after {failed_attempts} failed attempts; the last one: {f}"));
    match current {
        Some(pod) if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") => {
            out.phase = phase::DOWNLOADING.into();
            let done = match progress {
                Some(p) => format!(
                    "{} of {} ({}/{} files)",
                    human(p.bytes_done),
                    human(p.bytes_total),
                    p.files_done,
                    p.files_total
                ),
                None => "listing the files".into(),
            };
            out.message = Some(match retrying {
                Some(r) => format!("{done}; {r}"),
                None => done,
            });
        }
        Some(pod) => {
            out.message = retrying.or_else(|| waiting_of(pod));
        }
        None => out.message = retrying,
    }
    out
}

/// One region's cache after [`ensure`].
#[derive(Debug, Clone)]
pub struct RegionCache {
    /// What status says of it.
    pub status: CacheStatus,
    /// An object this ModelDeployment does not control holds the claim's or
    /// the Job's name.
    pub conflict: Option<ChildConflict>,
}

impl RegionCache {
    /// The claim replicas may mount, once the fill is complete.
    pub fn ready_claim(&self) -> Option<&str> {
        (self.conflict.is_none() && self.status.phase == phase::READY)
            .then_some(self.status.claim_name.as_str())
    }
}

/// Creates `object` unless an object of its name exists; the live object,
/// or the conflict when `v` does not control it. Claims and Jobs are never
/// updated: their specs are immutable in the fields that matter, and a new
/// source gets new names.
async fn create_if_absent<K>(
    client: &Client,
    v: &ValidatedModelDeployment,
    object: K,
) -> Result<Result<K, ChildConflict>, ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), &v.namespace);
    let failed = |verb, source| ApplyError {
        verb,
        kind: kind_of::<K>(),
        namespace: v.namespace.clone(),
        name: name.clone(),
        source,
    };
    let live = match api.get_opt(&name).await.map_err(|e| failed("get", e))? {
        Some(live) => live,
        None => match api.create(&PostParams::default(), &object).await {
            Ok(created) => created,
            // Created meanwhile (another reconcile of a restarted operator).
            Err(kube::Error::Api(s)) if s.code == 409 => {
                api.get(&name).await.map_err(|e| failed("get", e))?
            }
            Err(e) => return Err(failed("create", e)),
        },
    };
    if !controlled_by(live.meta(), &v.owner.uid) {
        return Ok(Err(ChildConflict {
            kind: kind_of::<K>(),
            object: format!("{}/{name}", v.namespace),
            holder: holder(live.meta(), &v.owner),
        }));
    }
    Ok(Ok(live))
}

/// Makes sure the region's cache claim and fill exist, and observes the
/// fill. A Job that gave up more than [`RETRY_FAILED_AFTER`] ago is deleted
/// (the next reconcile starts a fresh one).
pub async fn ensure(
    client: &Client,
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
    spec: &ModelCacheSpec,
    prev: Option<&CacheStatus>,
) -> Result<RegionCache, ApplyError> {
    let name = claim_name(v, &region.name);
    let conflicted = |conflict: ChildConflict| RegionCache {
        status: CacheStatus {
            claim_name: name.clone(),
            source: v.model.source.clone(),
            phase: phase::FAILED.into(),
            message: Some(conflict.to_string()),
            ..CacheStatus::default()
        },
        conflict: Some(conflict),
    };
    if let Err(conflict) = create_if_absent(client, v, claim(v, region, spec)).await? {
        return Ok(conflicted(conflict));
    }
    let job = match create_if_absent(client, v, fill_job(v, region)).await? {
        Ok(job) => job,
        Err(conflict) => return Ok(conflicted(conflict)),
    };
    let done = job
        .status
        .as_ref()
        .is_some_and(|s| s.succeeded.unwrap_or(0) > 0);
    let (pods, log) = if done {
        (Vec::new(), None)
    } else {
        fill_pods_and_log(client, &v.namespace, &name).await?
    };
    let status = observe(&name, &v.model.source, &job, &pods, log.as_deref(), prev);
    if status.phase == phase::FAILED && gave_up_long_ago(&job) {
        tracing::info!(job = %name, "restarting a weight cache fill that gave up");
        let jobs: Api<Job> = Api::namespaced(client.clone(), &v.namespace);
        jobs.delete(&name, &DeleteParams::background())
            .await
            .map_err(|source| ApplyError {
                verb: "delete",
                kind: "Job",
                namespace: v.namespace.clone(),
                name: name.clone(),
                source,
            })?;
    }
    Ok(RegionCache {
        status,
        conflict: None,
    })
}

fn gave_up_long_ago(job: &Job) -> bool {
    job.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .filter(|c| c.type_ == "Failed" && c.status == "True")
        .filter_map(|c| c.last_transition_time.as_ref())
        .any(|t| {
            Timestamp::now().duration_since(t.0).as_secs() as u64 > RETRY_FAILED_AFTER.as_secs()
        })
}

/// The fill's pods, and the tail of the running one's log.
async fn fill_pods_and_log(
    client: &Client,
    namespace: &str,
    job: &str,
) -> Result<(Vec<Pod>, Option<String>), ApplyError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let failed = |verb, source| ApplyError {
        verb,
        kind: "Pod",
        namespace: namespace.to_owned(),
        name: job.to_owned(),
        source,
    };
    let pods = api
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await
        .map_err(|e| failed("list", e))?
        .items;
    let running = pods
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .max_by_key(|p| created(p));
    let log = match running {
        Some(pod) => {
            let params = LogParams {
                tail_lines: Some(LOG_TAIL_LINES),
                ..LogParams::default()
            };
            // A log that cannot be read (the container just started or
            // ended) only costs this round's progress figure.
            api.logs(&pod.name_any(), &params).await.ok()
        }
        None => None,
    };
    Ok((pods, log))
}

/// Deletes this ModelDeployment's cache claims and Jobs in the regions
/// `serves` whose names are not in `keep` (caches of an earlier source once
/// the Deployment has rolled off them, of regions gone from the spec, or of
/// a spec that no longer asks for a cache).
pub async fn prune(
    client: &Client,
    v: &ValidatedModelDeployment,
    keep: &BTreeSet<String>,
    serves: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ApplyError> {
    let selector = format!(
        "app.kubernetes.io/managed-by={},{MODEL_LABEL}={},app.kubernetes.io/component={COMPONENT}",
        build::MANAGED_BY,
        v.name
    );
    let mut removed = Vec::new();
    removed.extend(prune_kind::<Job>(client, v, &selector, keep, &serves).await?);
    removed.extend(prune_kind::<PersistentVolumeClaim>(client, v, &selector, keep, &serves).await?);
    Ok(removed)
}

async fn prune_kind<K>(
    client: &Client,
    v: &ValidatedModelDeployment,
    selector: &str,
    keep: &BTreeSet<String>,
    serves: &impl Fn(&str) -> bool,
) -> Result<Vec<String>, ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &v.namespace);
    let failed = |verb, name: &str, source| ApplyError {
        verb,
        kind: kind_of::<K>(),
        namespace: v.namespace.clone(),
        name: name.to_owned(),
        source,
    };
    let items = api
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| failed("list", selector, e))?
        .items;
    let mut removed = Vec::new();
    for item in items {
        let name = item.name_any();
        let region = item.labels().get(REGION_LABEL).cloned().unwrap_or_default();
        if keep.contains(&name) || !serves(&region) || !controlled_by(item.meta(), &v.owner.uid) {
            continue;
        }
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => removed.push(format!("{} {name}", kind_of::<K>())),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(failed("delete", &name, e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::tests::{FIXTURE, validated};
    use serde_json::Value;

    fn cached(extra: &str) -> ValidatedModelDeployment {
        let yaml = FIXTURE.replace(
            "    volume: {claimName: models}\n",
            &format!("    volume: {{claimName: models}}\n    cache: {{size: 200Gi{extra}}}\n"),
        );
        validated(&yaml)
    }

    fn j<T: Serialize>(t: &T) -> Value {
        serde_json::to_value(t).unwrap()
    }

    fn pod(name: &str, created: &str, status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": created},
            "status": status,
        }))
        .unwrap()
    }

    fn job(status: Value) -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j"}, "status": status})).unwrap()
    }

    #[test]
    fn a_claim_per_region_named_for_its_source() {
        let v = cached(", storageClassName: fast, accessMode: ReadWriteOnce");
        let c = j(&claim(&v, &v.regions[0], v.model.cache.as_ref().unwrap()));
        assert_eq!(c["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(c["spec"]["storageClassName"], "fast");
        assert_eq!(c["spec"]["resources"]["requests"]["storage"], "200Gi");
        assert_eq!(
            c["metadata"]["labels"]["app.kubernetes.io/component"],
            COMPONENT
        );
        assert_eq!(c["metadata"]["labels"][REGION_LABEL], "us-east");
        // Not the labels the region's Service selects: a fill's pod would
        // get requests.
        let job = j(&fill_job(&v, &v.regions[0]));
        for selected in build::selector_labels(&v, "us-east").keys() {
            assert!(
                job["spec"]["template"]["metadata"]["labels"]
                    .get(selected)
                    .is_none()
            );
        }
        assert_eq!(c["metadata"]["ownerReferences"][0]["uid"], v.owner.uid);
        let name = claim_name(&v, "us-east");
        assert!(
            name.len() <= 63 && name.starts_with("smollm2-us-east-weights-"),
            "{name}"
        );
        assert_ne!(name, claim_name(&v, "eu-west"));

        // Defaults: shared by every node, the cluster's StorageClass.
        let v = cached("");
        let c = j(&claim(&v, &v.regions[0], v.model.cache.as_ref().unwrap()));
        assert_eq!(c["spec"]["accessModes"], json!(["ReadWriteMany"]));
        assert!(c["spec"].get("storageClassName").is_none());

        // Another revision is another cache; other settings are not.
        let other = validated(&FIXTURE.replace("@main", "@v2").replace(
            "    volume: {claimName: models}\n",
            "    volume: {claimName: models}\n    cache: {size: 200Gi}\n",
        ));
        assert_ne!(claim_name(&other, "us-east"), claim_name(&v, "us-east"));
        let resized = cached("").model.clone();
        assert_eq!(key(&resized), key(&v.model));
    }

    #[test]
    fn the_fill_runs_on_the_regions_nodes_without_a_gpu_or_credentials() {
        let v = cached("");
        let job = j(&fill_job(&v, &v.regions[0]));
        let pod = &job["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(job["spec"]["backoffLimit"], FILL_BACKOFF_LIMIT);
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(
            pod["nodeSelector"]["topology.kubernetes.io/region"],
            "us-east"
        );
        assert_eq!(pod["nodeSelector"]["pool"], "gpu");
        assert!(c["resources"]["limits"].get(build::GPU_RESOURCE).is_none());
        assert!(
            c["resources"]["requests"]
                .get(build::GPU_RESOURCE)
                .is_none()
        );
        assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            claim_name(&v, "us-east")
        );
        assert_eq!(c["volumeMounts"][0]["mountPath"], WEIGHTS_DIR);
        assert!(c["volumeMounts"][0].get("readOnly").is_none());
        assert!(
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == "HF_TOKEN")
        );
        crate::build::tests::parse_as_the_server(&v);
    }

    #[test]
    fn replicas_mount_a_ready_cache_read_only_and_load_offline() {
        let v = cached("");
        let d = j(&build::deployment(&v, &v.regions[0], Some("weights-claim")));
        let pod = &d["spec"]["template"]["spec"];
        let volume = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "weights")
            .unwrap();
        assert_eq!(
            volume["persistentVolumeClaim"],
            json!({"claimName": "weights-claim", "readOnly": true})
        );
        let args = pod["containers"][0]["args"].as_array().unwrap().clone();
        let args: Vec<&str> = args.iter().map(|a| a.as_str().unwrap()).collect();
        assert!(args.windows(2).any(|w| w == ["--model-cache", WEIGHTS_DIR]));
        assert!(args.contains(&"--hub-offline"));
        assert_eq!(
            d["metadata"]["annotations"][build::WEIGHTS_CLAIM_ANNOTATION],
            "weights-claim"
        );
    }

    const T0: &str = "2026-12-06T10:00:00Z";
    const T1: &str = "2026-12-06T10:01:00Z";

    fn progress(done: u64, total: u64) -> String {
        DownloadProgress {
            bytes_done: done,
            bytes_total: total,
            files_done: 0,
            files_total: 2,
        }
        .line()
    }

    #[test]
    fn a_running_fill_reports_its_bytes() {
        let running = pod("p", T0, json!({"phase": "Running"}));
        let log = format!("starting\n{}\n", progress(3 << 30, 140 << 30));
        let s = observe(
            "c",
            "hf://a/b",
            &job(json!({"active": 1})),
            &[running],
            Some(&log),
            None,
        );
        assert_eq!(s.phase, phase::DOWNLOADING);
        assert_eq!(
            (s.downloaded_bytes, s.total_bytes),
            (Some(3 << 30), Some(140 << 30))
        );
        assert_eq!(
            s.message.as_deref(),
            Some("3.0 GiB of 140.0 GiB (0/2 files)")
        );
    }

    #[test]
    fn a_fill_waiting_to_start_says_why() {
        let waiting = pod(
            "p",
            T0,
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable", "message": "pod has unbound immediate PersistentVolumeClaims"}]}),
        );
        let s = observe(
            "c",
            "hf://a/b",
            &job(json!({"active": 1})),
            &[waiting],
            None,
            None,
        );
        assert_eq!(s.phase, phase::PENDING);
        assert_eq!(
            s.message.as_deref(),
            Some("pod has unbound immediate PersistentVolumeClaims")
        );
    }

    #[test]
    fn a_failed_attempt_is_retried_and_named_and_giving_up_is_failed() {
        let failed = pod(
            "p1",
            T0,
            json!({"phase": "Failed", "containerStatuses": [{"name": "fill", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 1,
                "message": "Error: downloading the model\n\nCaused by:\n    401 Unauthorized\n"}}}]}),
        );
        let retry = pod("p2", T1, json!({"phase": "Running"}));
        let s = observe(
            "c",
            "hf://a/b",
            &job(json!({"active": 1, "failed": 1})),
            &[failed.clone(), retry],
            None,
            None,
        );
        assert_eq!(s.phase, phase::DOWNLOADING);
        assert_eq!(s.failed_attempts, 1);
        assert_eq!(
            s.message.as_deref(),
            Some(
                "listing the files; retrying after 1 failed attempts; the last one: 401 Unauthorized"
            )
        );

        let gave_up = job(
            json!({"failed": 7, "conditions": [{"type": "Failed", "status": "True",
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}),
        );
        let s = observe("c", "hf://a/b", &gave_up, &[failed], None, None);
        assert_eq!(s.phase, phase::FAILED);
        assert_eq!(
            s.message.as_deref(),
            Some(
                "Job has reached the specified backoff limit after 7 attempts; the last one: 401 Unauthorized"
            )
        );
    }

    #[test]
    fn a_complete_fill_is_ready_with_the_totals_it_reported() {
        let before = CacheStatus {
            claim_name: "c".into(),
            source: "hf://a/b".into(),
            phase: phase::DOWNLOADING.into(),
            downloaded_bytes: Some(50),
            total_bytes: Some(100),
            ..CacheStatus::default()
        };
        let s = observe(
            "c",
            "hf://a/b",
            &job(json!({"succeeded": 1})),
            &[],
            None,
            Some(&before),
        );
        assert_eq!(s.phase, phase::READY);
        assert_eq!((s.downloaded_bytes, s.total_bytes), (Some(100), Some(100)));
        assert_eq!(s.message, None);
        // Another claim's figures are not this one's.
        let s = observe(
            "d",
            "hf://a/b",
            &job(json!({"succeeded": 1})),
            &[],
            None,
            Some(&before),
        );
        assert_eq!((s.downloaded_bytes, s.total_bytes), (None, None));
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(140 << 30), "140.0 GiB");
    }
}
