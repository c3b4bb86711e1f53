//! Validate: a raw `ModelDeployment` becomes a [`ValidatedModelDeployment`] or a
//! list of field errors. The API server enforces the same rules from the CRD
//! schema; they are checked again here because an older CRD may be installed and
//! because which regions this operator serves depends on its flags.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};
use url::{Host, Url};

use crate::config::OperatorConfig;
use crate::crd::{
    EngineSpec, GGUF_QUANTIZATION_MESSAGE, ModelDeployment, ModelFormat, ModelSpec, Parallelism,
    RegionSpec, ResourcesSpec, RoutingSpec,
};

/// One rejected field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.regions[1].endpoint`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a spec cannot be reconciled; it waits for the next change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid spec: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ValidationError(pub Vec<FieldError>);

/// A spec every later step can rely on: defaults resolved, values in range,
/// `regions` narrowed to the ones this operator serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedModelDeployment {
    /// Namespace of the object and its children.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// Owner reference every child carries.
    pub owner: OwnerReference,
    /// Model settings.
    pub model: ModelSpec,
    /// Engine settings.
    pub engine: EngineSpec,
    /// Per-replica resources.
    pub resources: ResourcesSpec,
    /// Routing settings.
    pub routing: RoutingSpec,
    /// Inference image.
    pub image: String,
    /// The regions this operator serves, in spec order.
    pub regions: Vec<RegionSpec>,
    /// Every region name in the spec (served here or elsewhere).
    pub spec_regions: BTreeSet<String>,
    /// Environment every pod gets from the operator's flags (trace export, Hub endpoint).
    pub pod_env: Vec<(&'static str, String)>,
}

/// Checks `md` and narrows it to what `config` serves.
pub fn validate(
    md: &ModelDeployment,
    config: &OperatorConfig,
) -> Result<ValidatedModelDeployment, ValidationError> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: &str| {
        errors.push(FieldError {
            field,
            message: message.to_owned(),
        })
    };

    let name = md.name_any();
    if !is_dns1035_label(&name) {
        err(
            "metadata.name".into(),
            "must be a DNS-1035 label (at most 63 characters, starting with a letter)",
        );
    }
    let namespace = md.namespace().unwrap_or_default();
    if namespace.is_empty() {
        err("metadata.namespace".into(), "must be set");
    }
    let owner = md.controller_owner_ref(&());
    if owner.is_none() || md.meta().uid.is_none() {
        err(
            "metadata.uid".into(),
            "must be set (read the object from the API server)",
        );
    }

    let spec = &md.spec;
    check_model(&spec.model, &mut err);

    if spec.resources.gpus_per_replica > 64 {
        err(
            "spec.resources.gpusPerReplica".into(),
            "must be between 0 and 64",
        );
    } else if spec.engine.parallelism == Parallelism::Tensor
        && !(spec.resources.gpus_per_replica == 0
            || spec.resources.gpus_per_replica.is_power_of_two())
    {
        err(
            "spec.resources.gpusPerReplica".into(),
            crate::crd::TENSOR_PARALLEL_MESSAGE,
        );
    }
    if spec.engine.drain_timeout_seconds > 3600 {
        err(
            "spec.engine.drainTimeoutSeconds".into(),
            "must be at most 3600",
        );
    }
    if let Some(pa) = &spec.engine.paged_attention
        && let Some(u) = pa.gpu_memory_utilization
        && !(u > 0.0 && u <= 1.0)
    {
        err(
            "spec.engine.pagedAttention.gpuMemoryUtilization".into(),
            "must be in (0, 1]",
        );
    }

    let r = &spec.routing;
    if !(10..=3600).contains(&r.ttl_seconds) {
        err(
            "spec.routing.ttlSeconds".into(),
            "must be between 10 and 3600",
        );
    }
    if r.failover_attempts < 1 {
        err("spec.routing.failoverAttempts".into(), "must be at least 1");
    }
    if r.request_timeout_seconds < 1 {
        err(
            "spec.routing.requestTimeoutSeconds".into(),
            "must be at least 1",
        );
    }
    if r.first_byte_timeout_seconds < 1 {
        err(
            "spec.routing.firstByteTimeoutSeconds".into(),
            "must be at least 1",
        );
    }

    if spec.regions.is_empty() {
        err("spec.regions".into(), "must name at least one region");
    }
    let mut seen = BTreeSet::new();
    for (i, region) in spec.regions.iter().enumerate() {
        let at = |f: &str| format!("spec.regions[{i}].{f}");
        if !is_dns1123_label(&region.name) || region.name.len() > 40 {
            err(
                at("name"),
                "must be a DNS-1123 label of at most 40 characters",
            );
        }
        if !seen.insert(region.name.as_str()) {
            err(at("name"), "duplicate region name");
        }
        if !(0..=1000).contains(&region.replicas) {
            err(at("replicas"), "must be between 0 and 1000");
        }
        let loc = region.location;
        if !(loc.latitude.is_finite() && (-90.0..=90.0).contains(&loc.latitude)) {
            err(at("location.latitude"), "must be in [-90, 90]");
        }
        if !(loc.longitude.is_finite() && (-180.0..=180.0).contains(&loc.longitude)) {
            err(at("location.longitude"), "must be in [-180, 180]");
        }
        if let Err(message) = check_endpoint(&region.endpoint) {
            err(at("endpoint"), message);
        }
    }

    // GPU pods run `--device cuda`, which the CPU build refuses at load.
    let image = spec.image.clone().unwrap_or_else(|| {
        config
            .default_image(spec.resources.gpus_per_replica)
            .to_owned()
    });
    if image.trim().is_empty() {
        err("spec.image".into(), "must not be empty");
    }

    if !errors.is_empty() {
        return Err(ValidationError(errors));
    }
    Ok(ValidatedModelDeployment {
        namespace,
        name,
        generation: md.meta().generation.unwrap_or_default(),
        owner: owner.expect("checked above"),
        model: spec.model.clone(),
        engine: spec.engine.clone(),
        resources: spec.resources.clone(),
        routing: spec.routing.clone(),
        image,
        regions: spec
            .regions
            .iter()
            .filter(|r| config.serves(&r.name))
            .cloned()
            .collect(),
        spec_regions: spec.regions.iter().map(|r| r.name.clone()).collect(),
        pod_env: config.pod_env.clone(),
    })
}

fn check_model(model: &ModelSpec, err: &mut impl FnMut(String, &str)) {
    if !is_model_source(&model.source) {
        err(
            "spec.model.source".into(),
            "must be an absolute path or hf://org/repo[@revision]",
        );
    }
    match model.format {
        ModelFormat::Gguf if model.gguf_files.is_empty() => err(
            "spec.model.ggufFiles".into(),
            "must name at least one file when format is gguf",
        ),
        ModelFormat::Plain if !model.gguf_files.is_empty() => err(
            "spec.model.ggufFiles".into(),
            "is only valid with format gguf",
        ),
        _ => {}
    }
    for (i, f) in model.gguf_files.iter().enumerate() {
        if f.is_empty() || f.len() > 255 || f.split('/').any(|p| p == "..") {
            err(
                format!("spec.model.ggufFiles[{i}]"),
                "must be a file name inside source",
            );
        }
    }
    if !is_model_id(&model.served_name) {
        err(
            "spec.model.servedName".into(),
            "must be 1-128 characters of [A-Za-z0-9._:/-]",
        );
    }
    if model.format == ModelFormat::Gguf && model.quantization.is_some() {
        // The inference server refuses `--isq` for GGUF weights at load.
        err("spec.model.quantization".into(), GGUF_QUANTIZATION_MESSAGE);
    }
    if let Some(q) = &model.quantization
        && (q.is_empty()
            || q.len() > 16
            || !q.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        err(
            "spec.model.quantization".into(),
            "must be an ISQ type such as Q4K or Q8_0",
        );
    }
}

/// `https://...`, or `http://` to a loopback host (local development and tests).
pub fn check_endpoint(endpoint: &str) -> Result<(), &'static str> {
    let url = Url::parse(endpoint).map_err(|_| "must be an absolute URL")?;
    let host = url.host().ok_or("must have a host")?;
    match url.scheme() {
        "https" => Ok(()),
        "http" => {
            let loopback = match host {
                Host::Domain(d) => d == "localhost",
                Host::Ipv4(ip) => ip == std::net::Ipv4Addr::LOCALHOST,
                Host::Ipv6(ip) => ip == std::net::Ipv6Addr::LOCALHOST,
            };
            if loopback {
                Ok(())
            } else {
                Err("http is only allowed for 127.0.0.1, localhost or [::1]; use https")
            }
        }
        _ => Err("must be an https URL"),
    }
}

/// The served model id the Worker accepts (docs/publication.md).
pub fn is_model_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '/' | '-'))
}

fn is_model_source(s: &str) -> bool {
    if s.starts_with('/') {
        return s.len() <= 1024;
    }
    let Some(rest) = s.strip_prefix("hf://") else {
        return false;
    };
    let (repo, rev) = match rest.split_once('@') {
        Some((repo, rev)) => (repo, Some(rev)),
        None => (rest, None),
    };
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    let repo_ok =
        matches!(repo.split_once('/'), Some((org, name)) if part_ok(org) && part_ok(name));
    let rev_ok = rev.is_none_or(|r| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
    });
    repo_ok && rev_ok
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn config() -> OperatorConfig {
        OperatorConfig {
            inference_image: "backhaul-inference:test".into(),
            inference_image_cuda: "backhaul-inference:test-cuda".into(),
            regions: None,
            publish: None,
            watch_namespace: None,
            identity: "test".into(),
            max_concurrent_reconciles: 16,
            pod_env: Vec::new(),
        }
    }

    fn md(yaml: &str) -> ModelDeployment {
        serde_yaml::from_str(yaml).unwrap()
    }

    const VALID: &str = r#"
apiVersion: backhaul.dev/v1alpha1
kind: ModelDeployment
metadata: {name: smollm2, namespace: ml, uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427, generation: 3}
spec:
  model: {source: /models/smollm2, format: gguf, ggufFiles: [model.gguf], servedName: smollm2-135m}
  regions:
  - {name: us-east, replicas: 2, location: {latitude: 39.04, longitude: -77.49}, endpoint: "https://us-east.example.com"}
  - {name: eu-west, location: {latitude: 53.3, longitude: -6.2}, endpoint: "http://127.0.0.1:8000"}
"#;

    #[test]
    fn valid_spec_gets_defaults_and_image() {
        let v = validate(&md(VALID), &config()).unwrap();
        // One GPU per replica by default, so the CUDA build.
        assert_eq!(v.image, "backhaul-inference:test-cuda");
        assert_eq!(v.generation, 3);
        assert_eq!(v.regions.len(), 2);
        assert_eq!(v.regions[1].replicas, 1);
        assert_eq!(v.routing.ttl_seconds, 60);
        assert_eq!(v.resources.gpus_per_replica, 1);
        assert_eq!(v.engine.drain_timeout_seconds, 30);
        assert_eq!(v.owner.kind, "ModelDeployment");
        assert_eq!(v.owner.controller, Some(true));
    }

    #[test]
    fn regions_narrow_to_served() {
        let mut c = config();
        c.regions = Some(["eu-west".to_owned()].into());
        let v = validate(&md(VALID), &c).unwrap();
        assert_eq!(v.regions.len(), 1);
        assert_eq!(v.regions[0].name, "eu-west");
        assert_eq!(v.spec_regions.len(), 2);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = VALID
            .replace("https://us-east.example.com", "http://us-east.example.com")
            .replace("latitude: 53.3", "latitude: 93.3")
            .replace("servedName: smollm2-135m", "servedName: 'bad name'")
            .replace("name: eu-west", "name: us-east");
        let e = validate(&md(&bad), &config()).unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.model.servedName",
                "spec.regions[0].endpoint",
                "spec.regions[1].name",
                "spec.regions[1].location.latitude",
            ]
        );
        assert!(
            e.to_string()
                .contains("spec.regions[0].endpoint: http is only allowed")
        );
    }

    #[test]
    fn gguf_needs_files_and_sources_are_checked() {
        let bad = VALID
            .replace("ggufFiles: [model.gguf], ", "")
            .replace("/models/smollm2", "s3://bucket/model");
        let e = validate(&md(&bad), &config()).unwrap_err();
        let fields: Vec<_> = e.0.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["spec.model.source", "spec.model.ggufFiles"]);
    }

    #[test]
    fn gpu_pods_get_the_cuda_image_cpu_pods_the_cpu_image_unless_the_spec_names_one() {
        let with = |extra: &str| {
            validate(&md(&format!("{VALID}{extra}")), &config())
                .unwrap()
                .image
        };
        assert_eq!(
            with("  resources: {gpusPerReplica: 2}\n"),
            "backhaul-inference:test-cuda"
        );
        assert_eq!(
            with("  resources: {gpusPerReplica: 0}\n"),
            "backhaul-inference:test"
        );
        for gpus in [0, 1] {
            assert_eq!(
                with(&format!(
                    "  resources: {{gpusPerReplica: {gpus}}}\n  image: mine/inference:1\n"
                )),
                "mine/inference:1"
            );
        }
    }

    #[test]
    fn tensor_parallelism_needs_a_power_of_two_gpu_count() {
        let with = |resources: &str| {
            validate(&md(&format!("{VALID}{resources}")), &config()).map(|v| v.engine.parallelism)
        };
        for gpus in [0, 1, 2, 4, 8, 64] {
            assert_eq!(
                with(&format!("  resources: {{gpusPerReplica: {gpus}}}\n")),
                Ok(Parallelism::Tensor),
                "{gpus}"
            );
        }
        for gpus in [3, 6, 12] {
            let e = with(&format!("  resources: {{gpusPerReplica: {gpus}}}\n")).unwrap_err();
            assert_eq!(
                e.0,
                [FieldError {
                    field: "spec.resources.gpusPerReplica".into(),
                    message: crate::crd::TENSOR_PARALLEL_MESSAGE.into(),
                }],
                "{gpus}"
            );
            // Layers take any count.
            assert_eq!(
                with(&format!(
                    "  resources: {{gpusPerReplica: {gpus}}}\n  engine: {{parallelism: layers}}\n"
                )),
                Ok(Parallelism::Layers)
            );
        }
    }

    #[test]
    fn gguf_with_quantization_is_refused_as_the_server_would() {
        let bad = VALID.replace(
            "servedName: smollm2-135m}",
            "servedName: smollm2-135m, quantization: Q4K}",
        );
        let e = validate(&md(&bad), &config()).unwrap_err();
        assert_eq!(
            e.0,
            [FieldError {
                field: "spec.model.quantization".into(),
                message: GGUF_QUANTIZATION_MESSAGE.into(),
            }]
        );
        assert!(e.to_string().contains("GGUF weights are already quantized"));
        // In-situ quantization of plain weights is what it is for.
        let plain = bad.replace("format: gguf, ggufFiles: [model.gguf], ", "format: plain, ");
        let v = validate(&md(&plain), &config()).unwrap();
        assert_eq!(v.model.quantization.as_deref(), Some("Q4K"));
    }

    #[test]
    fn endpoints() {
        assert!(check_endpoint("https://a.example.com/base").is_ok());
        assert!(check_endpoint("http://localhost:8000").is_ok());
        assert!(check_endpoint("http://[::1]:8000").is_ok());
        assert!(check_endpoint("http://10.0.0.1:8000").is_err());
        assert!(check_endpoint("ftp://a.example.com").is_err());
        assert!(check_endpoint("not a url").is_err());
    }

    #[test]
    fn model_sources() {
        assert!(is_model_source("hf://HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(is_model_source("hf://org/repo@main"));
        assert!(!is_model_source("hf://org"));
        assert!(!is_model_source("relative/path"));
    }
}
