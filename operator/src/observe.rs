//! Observe: what a region's Deployment and pods say, reduced to a
//! [`RegionObservation`]. Pure functions; the controller fetches the objects.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;

use crate::build::GPU_RESOURCE;

/// Region phases, as written to `status.regions[].phase`.
pub mod phase {
    /// Every desired replica is ready and up to date.
    pub const READY: &str = "Ready";
    /// Replicas are starting or rolling.
    pub const PROGRESSING: &str = "Progressing";
    /// Replicas cannot become ready without a change (see `reason`).
    pub const DEGRADED: &str = "Degraded";
    /// `replicas: 0`.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
}

/// Why pods of a region are not becoming ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnosis {
    /// `InsufficientGPU`, `Unschedulable`, `ImagePullBackOff`, `CrashLoopBackOff`,
    /// `CreateContainerConfigError` or `ProbeFailure`.
    pub reason: &'static str,
    /// The detail Kubernetes gave.
    pub message: String,
}

/// One region as observed after apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionObservation {
    /// Region name.
    pub name: String,
    /// Desired replicas.
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// One of [`phase`].
    pub phase: &'static str,
    /// Why, when not ready.
    pub reason: Option<String>,
    /// Detail.
    pub message: Option<String>,
}

/// Ready replicas of an applied Deployment, and whether the rollout of the
/// current spec is complete.
pub fn deployment_readiness(d: &Deployment) -> (i32, bool) {
    let desired = d.spec.replicas.unwrap_or(1);
    let generation = d.metadata.generation.unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let complete = status.observed_generation.unwrap_or(-1) >= generation
        && status.updated_replicas.unwrap_or(0) >= desired
        && ready >= desired
        && status.replicas.unwrap_or(0) <= desired;
    (ready, complete)
}

/// The most severe reason among `pods` for not being ready, if any.
pub fn diagnose(pods: &[Pod]) -> Option<Diagnosis> {
    let mut found: Vec<(u8, Diagnosis)> = Vec::new();
    for pod in pods {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(status) = &pod.status else { continue };
        for c in status.conditions.iter().flatten() {
            if c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
            {
                let message = c.message.clone().unwrap_or_default();
                if message.contains(GPU_RESOURCE) {
                    found.push((
                        0,
                        Diagnosis {
                            reason: "InsufficientGPU",
                            message,
                        },
                    ));
                } else {
                    found.push((
                        1,
                        Diagnosis {
                            reason: "Unschedulable",
                            message,
                        },
                    ));
                }
            }
        }
        for cs in status.container_statuses.iter().flatten() {
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
            let waiting_reason = waiting.and_then(|w| w.reason.as_deref());
            let message = || {
                let detail = waiting.and_then(|w| w.message.clone()).unwrap_or_default();
                format!("container {}: {detail}", cs.name)
                    .trim_end_matches(": ")
                    .to_owned()
            };
            match waiting_reason {
                Some("ErrImagePull" | "ImagePullBackOff" | "InvalidImageName") => found.push((
                    2,
                    Diagnosis {
                        reason: "ImagePullBackOff",
                        message: message(),
                    },
                )),
                Some("CrashLoopBackOff") => found.push((
                    3,
                    Diagnosis {
                        reason: "CrashLoopBackOff",
                        message: message(),
                    },
                )),
                Some("CreateContainerConfigError" | "CreateContainerError") => found.push((
                    4,
                    Diagnosis {
                        reason: "CreateContainerConfigError",
                        message: message(),
                    },
                )),
                _ => {}
            }
            let running = cs.state.as_ref().is_some_and(|s| s.running.is_some());
            if running && cs.started == Some(true) && !cs.ready && cs.restart_count > 0 {
                found.push((
                    5,
                    Diagnosis {
                        reason: "ProbeFailure",
                        message: format!(
                            "container {} restarted {} times and is not ready (gRPC health probe failing)",
                            cs.name, cs.restart_count
                        ),
                    },
                ));
            }
        }
    }
    found.sort_by_key(|(rank, _)| *rank);
    found.into_iter().next().map(|(_, d)| d)
}

/// Reduces one region's Deployment (as applied) and, when it is not ready, its
/// pods to a phase.
pub fn observe_region(
    name: &str,
    replicas: i32,
    deployment: &Deployment,
    pods: &[Pod],
) -> RegionObservation {
    let (ready, complete) = deployment_readiness(deployment);
    let (phase, reason, message) = if replicas == 0 {
        (phase::SCALED_TO_ZERO, None, None)
    } else if complete {
        (phase::READY, None, None)
    } else if let Some(d) = diagnose(pods) {
        (phase::DEGRADED, Some(d.reason.to_owned()), Some(d.message))
    } else {
        (
            phase::PROGRESSING,
            Some("RollingOut".to_owned()),
            Some(format!("{ready}/{replicas} replicas ready")),
        )
    };
    RegionObservation {
        name: name.to_owned(),
        replicas,
        ready_replicas: ready,
        phase,
        reason,
        message,
    }
}

/// Reason of a region whose replicas wait for their weight cache's fill.
pub const WAITING_FOR_WEIGHTS: &str = "WaitingForWeights";
/// Reason of a region whose weight cache's fill gave up.
pub const WEIGHTS_FILL_FAILED: &str = "WeightsFillFailed";

/// A region with no Deployment yet because its weight cache is not Ready:
/// Progressing while the fill runs, Degraded once it gave up.
pub fn waiting_for_weights(
    name: &str,
    replicas: i32,
    cache: Option<&crate::crd::CacheStatus>,
) -> RegionObservation {
    let failed = cache.is_some_and(|c| c.phase == crate::weights_cache::phase::FAILED);
    let message = cache.map(|c| {
        format!(
            "weight cache {} is {}{}",
            c.claim_name,
            c.phase,
            c.message
                .as_ref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )
    });
    let (phase, reason) = match (replicas, failed) {
        (0, _) => (phase::SCALED_TO_ZERO, None),
        (_, true) => (phase::DEGRADED, Some(WEIGHTS_FILL_FAILED.to_owned())),
        (_, false) => (phase::PROGRESSING, Some(WAITING_FOR_WEIGHTS.to_owned())),
    };
    RegionObservation {
        name: name.to_owned(),
        replicas,
        ready_replicas: 0,
        phase,
        reason,
        message: message.filter(|_| replicas > 0),
    }
}

/// Reason of a region where an object the ModelDeployment does not control
/// holds the name of one of its children.
pub const CHILD_CONFLICT: &str = "ChildConflict";

/// A region some of whose children were not applied because other objects
/// hold their names (`conflicts` says which): Degraded until they are gone,
/// whatever its pods say. `ready_replicas` are those of its own Deployment
/// (0 when that is the one blocked).
pub fn child_conflict(
    name: &str,
    replicas: i32,
    ready_replicas: i32,
    conflicts: &[String],
) -> RegionObservation {
    RegionObservation {
        name: name.to_owned(),
        replicas,
        ready_replicas,
        phase: phase::DEGRADED,
        reason: Some(CHILD_CONFLICT.to_owned()),
        message: Some(conflicts.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(yaml: &str) -> Vec<Pod> {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn pending_for_gpus_is_insufficient_gpu() {
        let p = pods(
            r#"
- metadata: {name: a}
  status:
    phase: Pending
    conditions:
    - {type: PodScheduled, status: "False", reason: Unschedulable,
       message: "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available."}
"#,
        );
        let d = diagnose(&p).unwrap();
        assert_eq!(d.reason, "InsufficientGPU");
        assert!(d.message.contains("Insufficient nvidia.com/gpu"));
    }

    #[test]
    fn gpu_shortage_outranks_image_pull() {
        let p = pods(
            r#"
- metadata: {name: a}
  status:
    containerStatuses:
    - {name: inference, image: x, imageID: "", ready: false, restartCount: 0,
       state: {waiting: {reason: ImagePullBackOff, message: "Back-off pulling image x"}}}
- metadata: {name: b}
  status:
    conditions:
    - {type: PodScheduled, status: "False", reason: Unschedulable, message: "0/3 nodes: 3 Insufficient nvidia.com/gpu"}
"#,
        );
        assert_eq!(diagnose(&p).unwrap().reason, "InsufficientGPU");
        assert_eq!(diagnose(&p[..1]).unwrap().reason, "ImagePullBackOff");
        assert_eq!(
            diagnose(&p[..1]).unwrap().message,
            "container inference: Back-off pulling image x"
        );
    }

    #[test]
    fn restarting_unready_container_is_probe_failure() {
        let p = pods(
            r#"
- metadata: {name: a}
  status:
    containerStatuses:
    - {name: inference, image: x, imageID: "", ready: false, started: true, restartCount: 2,
       state: {running: {startedAt: "2026-11-23T07:00:00Z"}}}
"#,
        );
        assert_eq!(diagnose(&p).unwrap().reason, "ProbeFailure");
        assert!(diagnose(&[]).is_none());
    }

    #[test]
    fn phases() {
        let d: Deployment = serde_yaml::from_str(
            r#"
metadata: {name: m-us-east-25df04df, generation: 2}
spec: {replicas: 2, selector: {}, template: {}}
status: {observedGeneration: 2, replicas: 2, updatedReplicas: 2, readyReplicas: 1}
"#,
        )
        .unwrap();
        let o = observe_region("us-east", 2, &d, &[]);
        assert_eq!((o.phase, o.ready_replicas), (phase::PROGRESSING, 1));
        assert_eq!(o.message.as_deref(), Some("1/2 replicas ready"));
        let mut ready = d.clone();
        ready.status.as_mut().unwrap().ready_replicas = Some(2);
        assert_eq!(
            observe_region("us-east", 2, &ready, &[]).phase,
            phase::READY
        );
        assert_eq!(
            observe_region("us-east", 0, &d, &[]).phase,
            phase::SCALED_TO_ZERO
        );
    }
}
