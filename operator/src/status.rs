//! Status: computed from what was applied and observed, and written with
//! server-side apply only when it differs from what the object already says.
//!
//! Operators serving different regions may share one object (one cluster,
//! several operators). Each writes only its own `status.regions` entries (a
//! list-map keyed by `name`, field manager per region set, see
//! [`crate::config::OperatorConfig::status_field_manager`]); the top-level
//! conditions aggregate the regions this operator serves *and* those whose
//! entries another operator wrote on the same object ([`counted_regions`]),
//! so operators sharing an object compute the same conditions and their
//! writes converge instead of fighting. With one cluster per region the
//! object in each cluster has only its own operator's entries, so its
//! conditions are about the regions that cluster serves; the rest of the
//! fleet is shown from the Worker's fleet view (`status.fleet`), never as
//! "not observed yet".

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::crd::{ModelDeployment, ModelDeploymentStatus, RegionStatus};
use crate::observe::{RegionObservation, phase};

/// Condition types, in the order they are written.
pub mod condition {
    /// Every region is ready.
    pub const READY: &str = "Ready";
    /// Some region is starting or rolling.
    pub const PROGRESSING: &str = "Progressing";
    /// Some region cannot become ready without a change, or the spec is invalid.
    pub const DEGRADED: &str = "Degraded";
    /// Routes of ready regions are on the Worker.
    pub const PUBLISHED: &str = "Published";
}

/// The publication side of one region after a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication {
    /// No Worker configured.
    Disabled,
    /// The Worker holds the route (sent now or earlier and still fresh).
    Published,
    /// No route (never sent, or withdrawn).
    Unpublished,
    /// The last request failed; `still_published` says whether a route may remain.
    Failed {
        /// Error text (stable: it lands in status).
        message: String,
        /// Whether the Worker may still hold an earlier route.
        still_published: bool,
    },
}

/// Builds one region's status entry, keeping `publishedAt` while the published
/// content is unchanged so heartbeats do not rewrite status.
pub fn region_status(
    prev: Option<&RegionStatus>,
    obs: &RegionObservation,
    endpoint: &str,
    generation: i64,
    publication: &Publication,
    now: &str,
) -> RegionStatus {
    let (published, publish_error, disabled) = match publication {
        Publication::Disabled => (false, None, true),
        Publication::Published => (true, None, false),
        Publication::Unpublished => (false, None, false),
        Publication::Failed {
            message,
            still_published,
        } => (*still_published, Some(message.clone()), false),
    };
    let mut entry = RegionStatus {
        name: obs.name.clone(),
        observed_generation: generation,
        replicas: obs.replicas,
        ready_replicas: obs.ready_replicas,
        endpoint: endpoint.to_owned(),
        phase: obs.phase.to_owned(),
        reason: obs.reason.clone(),
        message: obs.message.clone(),
        published,
        published_at: None,
        publish_error,
        publication_disabled: disabled,
        cache: None,
    };
    if published {
        let same_content = prev.is_some_and(|p| {
            p.published
                && p.replicas == entry.replicas
                && p.ready_replicas == entry.ready_replicas
                && p.endpoint == entry.endpoint
                && p.observed_generation == entry.observed_generation
        });
        entry.published_at = match prev {
            Some(p) if same_content => p.published_at.clone(),
            // A failed heartbeat leaves the earlier route (and its time) in place.
            Some(p) if matches!(publication, Publication::Failed { .. }) => p.published_at.clone(),
            _ => Some(now.to_owned()),
        };
    }
    entry
}

fn cond(type_: &str, ok: bool, reason: &str, message: String, generation: i64) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: Some(generation),
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// Keeps `lastTransitionTime` of conditions whose status did not change.
pub fn carry_transition_times(
    mut conds: Vec<Condition>,
    prev: &[Condition],
    now: Timestamp,
) -> Vec<Condition> {
    for c in &mut conds {
        c.last_transition_time = match prev.iter().find(|p| p.type_ == c.type_) {
            Some(p) if p.status == c.status => p.last_transition_time.clone(),
            _ => Time(now),
        };
    }
    conds
}

/// Aggregate conditions over every region in the spec, from all entries
/// (this operator's fresh ones and other operators' as read).
pub fn aggregate_conditions(
    spec_regions: &[String],
    entries: &[RegionStatus],
    generation: i64,
) -> Vec<Condition> {
    let entry = |name: &String| entries.iter().find(|e| &e.name == name);
    let mut not_ready = Vec::new();
    let mut progressing = Vec::new();
    let mut degraded: Vec<&RegionStatus> = Vec::new();
    for name in spec_regions {
        match entry(name) {
            None => {
                not_ready.push(format!("{name}: not observed yet"));
                progressing.push(name.clone());
            }
            Some(e) => match e.phase.as_str() {
                phase::READY | phase::SCALED_TO_ZERO => {}
                phase::DEGRADED => {
                    not_ready.push(format!("{name}: {}/{} ready", e.ready_replicas, e.replicas));
                    degraded.push(e);
                }
                _ => {
                    not_ready.push(format!("{name}: {}/{} ready", e.ready_replicas, e.replicas));
                    progressing.push(name.clone());
                }
            },
        }
    }
    let ready = if not_ready.is_empty() {
        cond(
            condition::READY,
            true,
            "AllRegionsReady",
            "every region is ready".into(),
            generation,
        )
    } else {
        cond(
            condition::READY,
            false,
            "RegionsNotReady",
            not_ready.join("; "),
            generation,
        )
    };
    let progressing = if progressing.is_empty() {
        cond(
            condition::PROGRESSING,
            false,
            "Stable",
            "no rollout in progress".into(),
            generation,
        )
    } else {
        cond(
            condition::PROGRESSING,
            true,
            "RollingOut",
            format!("rolling out in {}", progressing.join(", ")),
            generation,
        )
    };
    let degraded = match degraded.first() {
        None => cond(
            condition::DEGRADED,
            false,
            "AsExpected",
            "no region is degraded".into(),
            generation,
        ),
        Some(first) => cond(
            condition::DEGRADED,
            true,
            first.reason.as_deref().unwrap_or("Degraded"),
            degraded
                .iter()
                .map(|e| {
                    format!(
                        "{}: {}: {}",
                        e.name,
                        e.reason.as_deref().unwrap_or("Degraded"),
                        e.message.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            generation,
        ),
    };
    let in_spec: Vec<&RegionStatus> = spec_regions.iter().filter_map(entry).collect();
    let failed: Vec<String> = in_spec
        .iter()
        .filter_map(|e| e.publish_error.as_ref().map(|m| format!("{}: {m}", e.name)))
        .collect();
    let published: Vec<&str> = in_spec
        .iter()
        .filter(|e| e.published)
        .map(|e| e.name.as_str())
        .collect();
    let published = if !failed.is_empty() {
        cond(
            condition::PUBLISHED,
            false,
            "PublishFailed",
            failed.join("; "),
            generation,
        )
    } else if !in_spec.is_empty() && in_spec.iter().all(|e| e.publication_disabled) {
        cond(
            condition::PUBLISHED,
            false,
            "PublicationDisabled",
            "the operator has no --worker-url".into(),
            generation,
        )
    } else if published.is_empty() {
        cond(
            condition::PUBLISHED,
            false,
            "NoReadyRegions",
            "no region has ready replicas".into(),
            generation,
        )
    } else {
        cond(
            condition::PUBLISHED,
            true,
            "Published",
            format!("routes published for {}", published.join(", ")),
            generation,
        )
    };
    vec![ready, progressing, degraded, published]
}

/// Conditions for a spec that cannot be reconciled.
pub fn invalid_conditions(message: &str, prev: &[Condition], generation: i64) -> Vec<Condition> {
    let mut conds = vec![
        cond(
            condition::READY,
            false,
            "InvalidSpec",
            message.to_owned(),
            generation,
        ),
        cond(
            condition::PROGRESSING,
            false,
            "InvalidSpec",
            "waiting for the spec to be fixed".into(),
            generation,
        ),
        cond(
            condition::DEGRADED,
            true,
            "InvalidSpec",
            message.to_owned(),
            generation,
        ),
    ];
    // Publication is unchanged by an invalid spec; keep what was said.
    if let Some(p) = prev.iter().find(|c| c.type_ == condition::PUBLISHED) {
        conds.push(p.clone());
    }
    conds
}

/// `ready/total` over the spec's regions.
pub fn ready_regions(spec_regions: &[String], entries: &[RegionStatus]) -> String {
    let ready = spec_regions
        .iter()
        .filter(|n| {
            entries
                .iter()
                .any(|e| &e.name == *n && e.ready_replicas > 0 && e.replicas > 0)
        })
        .count();
    format!("{ready}/{}", spec_regions.len())
}

/// The spec's regions the conditions speak for: those `served`, and those
/// with an entry in `entries` (written by another operator on this object).
/// When that leaves nothing (an operator serving none of the regions, before
/// any peer wrote), every region of the spec.
pub fn counted_regions(
    spec_order: &[String],
    entries: &[RegionStatus],
    served: impl Fn(&str) -> bool,
) -> Vec<String> {
    let counted: Vec<String> = spec_order
        .iter()
        .filter(|r| served(r) || entries.iter().any(|e| &e.name == *r))
        .cloned()
        .collect();
    if counted.is_empty() {
        spec_order.to_vec()
    } else {
        counted
    }
}

/// The status this operator wants, given its own fresh `mine` entries.
pub fn desired_status(
    md: &ModelDeployment,
    spec_order: &[String],
    mine: Vec<RegionStatus>,
    served: impl Fn(&str) -> bool,
    now: Timestamp,
) -> ModelDeploymentStatus {
    let prev = md.status.clone().unwrap_or_default();
    let generation = md.meta().generation.unwrap_or_default();
    let mine_names: BTreeSet<&str> = mine.iter().map(|e| e.name.as_str()).collect();
    // Other operators' entries, as they wrote them.
    let mut all: Vec<RegionStatus> = prev
        .regions
        .iter()
        .filter(|e| !served(&e.name) && !mine_names.contains(e.name.as_str()))
        .cloned()
        .collect();
    all.extend(mine.iter().cloned());
    let counted = counted_regions(spec_order, &all, &served);
    let conditions = carry_transition_times(
        aggregate_conditions(&counted, &all, generation),
        &prev.conditions,
        now,
    );
    ModelDeploymentStatus {
        observed_generation: Some(generation),
        conditions,
        ready_regions: Some(ready_regions(&counted, &all)),
        regions: mine,
        // The fleet hook (crate::fleet) fills these from the Worker's view.
        fleet: Vec::new(),
        fleet_regions: None,
    }
}

/// Whether writing `desired` would change `md`'s status (comparing only the
/// entries this operator owns).
pub fn status_changed(
    md: &ModelDeployment,
    desired: &ModelDeploymentStatus,
    served: impl Fn(&str) -> bool,
) -> bool {
    let prev = md.status.clone().unwrap_or_default();
    let mut prev_mine: Vec<&RegionStatus> =
        prev.regions.iter().filter(|e| served(&e.name)).collect();
    let mut want_mine: Vec<&RegionStatus> = desired.regions.iter().collect();
    prev_mine.sort_by(|a, b| a.name.cmp(&b.name));
    want_mine.sort_by(|a, b| a.name.cmp(&b.name));
    prev.observed_generation != desired.observed_generation
        || prev.conditions != desired.conditions
        || prev.ready_regions != desired.ready_regions
        || prev_mine != want_mine
        || prev.fleet != desired.fleet
        || prev.fleet_regions != desired.fleet_regions
}

/// Server-side applies `status` as `field_manager`.
pub async fn write(
    api: &Api<ModelDeployment>,
    md: &ModelDeployment,
    status: &ModelDeploymentStatus,
    field_manager: &str,
) -> Result<ModelDeployment, kube::Error> {
    let patch = json!({
        "apiVersion": ModelDeployment::api_version(&()),
        "kind": ModelDeployment::kind(&()),
        "status": status,
    });
    api.patch_status(
        &md.name_any(),
        &PatchParams::apply(field_manager).force(),
        &Patch::Apply(&patch),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(name: &str, replicas: i32, ready: i32, phase: &'static str) -> RegionObservation {
        RegionObservation {
            name: name.into(),
            replicas,
            ready_replicas: ready,
            phase,
            reason: None,
            message: None,
        }
    }

    #[test]
    fn published_at_survives_heartbeats_and_moves_on_change() {
        let o = obs("us-east", 2, 2, phase::READY);
        let first = region_status(None, &o, "https://e", 1, &Publication::Published, "t0");
        assert_eq!(first.published_at.as_deref(), Some("t0"));
        let again = region_status(
            Some(&first),
            &o,
            "https://e",
            1,
            &Publication::Published,
            "t1",
        );
        assert_eq!(again, first);
        let scaled = obs("us-east", 2, 1, phase::PROGRESSING);
        let changed = region_status(
            Some(&first),
            &scaled,
            "https://e",
            1,
            &Publication::Published,
            "t2",
        );
        assert_eq!(changed.published_at.as_deref(), Some("t2"));
        let gone = region_status(
            Some(&changed),
            &obs("us-east", 0, 0, phase::SCALED_TO_ZERO),
            "https://e",
            1,
            &Publication::Unpublished,
            "t3",
        );
        assert!(!gone.published && gone.published_at.is_none());
    }

    #[test]
    fn aggregate_names_degraded_regions_and_reasons() {
        let mut bad = region_status(
            None,
            &obs("eu-west", 2, 0, phase::DEGRADED),
            "https://e",
            3,
            &Publication::Unpublished,
            "t",
        );
        bad.reason = Some("InsufficientGPU".into());
        bad.message = Some("0/3 nodes are available: 3 Insufficient nvidia.com/gpu".into());
        let good = region_status(
            None,
            &obs("us-east", 1, 1, phase::READY),
            "https://u",
            3,
            &Publication::Published,
            "t",
        );
        let regions = vec![
            "us-east".to_owned(),
            "eu-west".to_owned(),
            "ap-south".to_owned(),
        ];
        let c = aggregate_conditions(&regions, &[good, bad], 3);
        let by = |t: &str| c.iter().find(|c| c.type_ == t).unwrap();
        assert_eq!(by("Ready").status, "False");
        assert_eq!(
            by("Ready").message,
            "eu-west: 0/2 ready; ap-south: not observed yet"
        );
        assert_eq!(by("Degraded").status, "True");
        assert_eq!(by("Degraded").reason, "InsufficientGPU");
        assert!(
            by("Degraded")
                .message
                .starts_with("eu-west: InsufficientGPU: 0/3 nodes")
        );
        assert_eq!(by("Progressing").status, "True");
        assert_eq!(by("Published").status, "True");
        assert_eq!(by("Published").message, "routes published for us-east");
    }

    #[test]
    fn publication_failures_and_disabled() {
        let regions = vec!["us-east".to_owned()];
        let failed = region_status(
            None,
            &obs("us-east", 1, 1, phase::READY),
            "https://u",
            1,
            &Publication::Failed {
                message: "PUT x: HTTP 401: bad signature".into(),
                still_published: false,
            },
            "t",
        );
        let c = aggregate_conditions(&regions, &[failed], 1);
        assert_eq!(
            (c[3].status.as_str(), c[3].reason.as_str()),
            ("False", "PublishFailed")
        );
        let disabled = region_status(
            None,
            &obs("us-east", 1, 1, phase::READY),
            "https://u",
            1,
            &Publication::Disabled,
            "t",
        );
        let c = aggregate_conditions(&regions, &[disabled], 1);
        assert_eq!(c[3].reason, "PublicationDisabled");
    }

    #[test]
    fn transition_times_carry_over_when_status_is_unchanged() {
        let regions = vec!["us-east".to_owned()];
        let e = region_status(
            None,
            &obs("us-east", 1, 1, phase::READY),
            "https://u",
            1,
            &Publication::Published,
            "t",
        );
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = carry_transition_times(
            aggregate_conditions(&regions, std::slice::from_ref(&e), 1),
            &[],
            t0,
        );
        let second = carry_transition_times(aggregate_conditions(&regions, &[e], 1), &first, t1);
        assert_eq!(first, second);
    }

    /// One cluster per region: each operator serves its own region, the
    /// object in its cluster holds only its own entry. Ready is about that
    /// region, not "not observed yet" for the others.
    #[test]
    fn conditions_count_the_served_regions_and_peers_entries() {
        let spec = vec!["us-east".to_owned(), "eu-west".to_owned()];
        let east = region_status(
            None,
            &obs("us-east", 1, 1, phase::READY),
            "https://u",
            1,
            &Publication::Published,
            "t",
        );
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "backhaul.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ns", "generation": 1},
            "spec": {"model": {"source": "/models/m", "format": "gguf", "ggufFiles": ["m.gguf"], "servedName": "m"},
                "regions": [
                    {"name": "us-east", "replicas": 1, "endpoint": "https://u", "location": {"latitude": 1.0, "longitude": 2.0}},
                    {"name": "eu-west", "replicas": 1, "endpoint": "https://e", "location": {"latitude": 1.0, "longitude": 2.0}}]},
        }))
        .unwrap();
        let only_east = |r: &str| r == "us-east";
        let s = desired_status(
            &md,
            &spec,
            vec![east.clone()],
            only_east,
            Timestamp::UNIX_EPOCH,
        );
        let by = |s: &ModelDeploymentStatus, t: &str| {
            s.conditions.iter().find(|c| c.type_ == t).unwrap().clone()
        };
        assert_eq!(by(&s, "Ready").status, "True", "{:?}", by(&s, "Ready"));
        assert_eq!(by(&s, "Progressing").status, "False");
        assert_eq!(s.ready_regions.as_deref(), Some("1/1"));
        // Sharing the object with eu-west's operator, whose entry is there:
        // counted, so both operators compute the same conditions.
        let mut shared = md.clone();
        let west = region_status(
            None,
            &obs("eu-west", 1, 0, phase::PROGRESSING),
            "https://e",
            1,
            &Publication::Unpublished,
            "t",
        );
        shared.status = Some(ModelDeploymentStatus {
            regions: vec![west.clone()],
            ..Default::default()
        });
        let s = desired_status(
            &shared,
            &spec,
            vec![east.clone()],
            only_east,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(by(&s, "Ready").status, "False");
        assert_eq!(by(&s, "Ready").message, "eu-west: 0/1 ready");
        assert_eq!(s.ready_regions.as_deref(), Some("1/2"));
        // An operator that serves none of the regions speaks for all of them.
        assert_eq!(counted_regions(&spec, &[], |_| false), spec);
    }
}
