//! Build: the Kubernetes objects for one region, as pure functions of a
//! [`ValidatedModelDeployment`]. No I/O here, so every field is unit tested
//! against inline fixtures.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::crd::{ModelFormat, Parallelism, RegionSpec};
use crate::validate::ValidatedModelDeployment;

/// Label naming the ModelDeployment a child belongs to.
pub const MODEL_LABEL: &str = "backhaul.dev/model";
/// Label naming the region a child serves.
pub const REGION_LABEL: &str = "backhaul.dev/region";
/// Node label matched against the region name.
pub const NODE_REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label matched against `spec.resources.gpuProduct`.
pub const NODE_GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Extended resource of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Value of `app.kubernetes.io/managed-by` on every child.
pub const MANAGED_BY: &str = "backhaul-operator";
/// gRPC port of the inference server (health, inference).
pub const GRPC_PORT: i32 = 50051;
/// HTTP port of the inference server (OpenAI API, /ready, /health).
pub const HTTP_PORT: i32 = 8000;
/// Port of the inference server's /metrics: its own, off the Service, so the
/// API port carries nothing that answers without the Worker's credential.
pub const METRICS_PORT: i32 = 9090;
/// Where the cache volume (downloads, Hugging Face state) is mounted.
pub const CACHE_DIR: &str = "/var/cache/backhaul";
/// `--model-cache`: `hf://` downloads, on the cache volume.
pub const MODEL_CACHE_DIR: &str = "/var/cache/backhaul/models";
/// `HF_HOME`: the root filesystem is read-only, so it lives on the cache volume.
pub const HF_HOME: &str = "/var/cache/backhaul/huggingface";
/// Where a region's weight cache (`spec.model.cache`) is mounted: read-only
/// in replicas, read-write in its fill.
pub const WEIGHTS_DIR: &str = "/var/lib/backhaul/weights";
/// Annotation on a region's Deployment naming the weight cache claim its
/// pods mount, so the operator knows which caches are still in use.
pub const WEIGHTS_CLAIM_ANNOTATION: &str = "backhaul.dev/weights-claim";
/// Where `spec.model.volume` is mounted.
pub const MODEL_VOLUME_DIR: &str = "/models";
/// Non-root user the inference server runs as.
pub const RUN_AS_USER: i64 = 65532;
/// Seconds the startup probe allows for loading a model (large ones take minutes).
pub const STARTUP_BUDGET_SECONDS: i32 = 1800;
/// Seconds between startup probes: a small model is Ready this soon after it
/// has loaded (a gRPC health check is cheap).
pub const STARTUP_PROBE_PERIOD_SECONDS: i32 = 2;
/// Seconds a stopping pod keeps serving before it is sent SIGTERM (a preStop
/// sleep): the pod is already out of its Services' ready endpoints then, and
/// this is how long kube-proxies and ingresses get to stop sending it new
/// connections before it refuses them and drains.
pub const PRE_STOP_SECONDS: i64 = 5;

/// First 8 hex digits of SHA-256, to keep truncated names unique.
pub fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..4])
}

/// Name of one region's Deployment, Service and PodDisruptionBudget:
/// `<name>-<region>-<hash>`, the hash being the first 8 hex digits of
/// SHA-256 of `<name>/<region>`.
///
/// `<name>-<region>` alone is ambiguous (`a-b` in region `c` and `a` in
/// region `b-c` would share children); neither part may contain `/`, so the
/// hash tells every pair apart. When longer than 63 characters the readable
/// part is cut and the hash kept, so the name is a valid Service name (a
/// DNS-1035 label, given a valid `metadata.name`) for any valid input.
pub fn child_name(name: &str, region: &str) -> String {
    let hash = short_hash(&format!("{name}/{region}"));
    let readable = format!("{name}-{region}");
    let room = 63 - hash.len() - 1;
    let end = readable
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|end| *end <= room)
        .last()
        .unwrap_or(0);
    let prefix = readable[..end].trim_end_matches('-');
    format!("{prefix}-{hash}")
}

/// Labels selecting one region's pods (immutable once a Deployment exists).
pub fn selector_labels(v: &ValidatedModelDeployment, region: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MODEL_LABEL.to_owned(), v.name.clone()),
        (REGION_LABEL.to_owned(), region.to_owned()),
    ])
}

/// Every label a child carries.
pub fn labels(v: &ValidatedModelDeployment, region: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(v, region);
    labels.extend([
        (
            "app.kubernetes.io/name".to_owned(),
            "backhaul-inference".to_owned(),
        ),
        (
            "app.kubernetes.io/instance".to_owned(),
            child_name(&v.name, region),
        ),
        (
            "app.kubernetes.io/component".to_owned(),
            "inference".to_owned(),
        ),
        (
            "app.kubernetes.io/part-of".to_owned(),
            "backhaul".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGED_BY.to_owned(),
        ),
    ]);
    labels
}

fn metadata(v: &ValidatedModelDeployment, region: &str) -> Value {
    json!({
        "name": child_name(&v.name, region),
        "namespace": v.namespace,
        "labels": labels(v, region),
        "ownerReferences": [v.owner],
    })
}

/// The flags naming the model's files: the same for a replica and for a
/// weight cache's fill, which must fetch exactly what the replica loads.
pub fn model_args(v: &ValidatedModelDeployment) -> Vec<String> {
    let m = &v.model;
    let mut args: Vec<String> = vec![
        "--model".into(),
        m.source.clone(),
        "--format".into(),
        match m.format {
            ModelFormat::Gguf => "gguf",
            ModelFormat::Plain => "plain",
        }
        .into(),
    ];
    for f in &m.gguf_files {
        args.extend(["--gguf-file".into(), f.clone()]);
    }
    args
}

/// Flags of `backhaul-inference` for this spec; `weights`: the ready weight
/// cache the replicas load from (mounted at [`WEIGHTS_DIR`]).
pub fn inference_args(v: &ValidatedModelDeployment, weights: Option<&str>) -> Vec<String> {
    let m = &v.model;
    let e = &v.engine;
    let mut args = model_args(v);
    args.extend(["--served-name".into(), m.served_name.clone()]);
    if let Some(t) = &m.chat_template {
        args.extend(["--chat-template".into(), t.clone()]);
    }
    if let Some(q) = &m.quantization {
        args.extend(["--isq".into(), q.clone()]);
    }
    match weights {
        Some(_) => args.extend([
            "--model-cache".into(),
            WEIGHTS_DIR.into(),
            "--hub-offline".into(),
        ]),
        None => args.extend(["--model-cache".into(), MODEL_CACHE_DIR.into()]),
    }
    args.extend([
        "--device".into(),
        if v.resources.gpus_per_replica > 0 {
            "cuda"
        } else {
            "cpu"
        }
        .into(),
        "--dtype".into(),
        e.dtype.as_flag().into(),
    ]);
    if v.resources.gpus_per_replica > 1 {
        args.extend(["--parallelism".into(), e.parallelism.as_flag().into()]);
    }
    if let Some(n) = e.max_num_seqs {
        args.extend(["--max-num-seqs".into(), n.to_string()]);
    }
    if let Some(n) = e.max_seq_len {
        args.extend(["--max-seq-len".into(), n.to_string()]);
    }
    if let Some(pa) = e.paged_attention.as_ref().filter(|pa| pa.enabled) {
        args.push("--paged-attn".into());
        if let Some(u) = pa.gpu_memory_utilization {
            args.extend(["--paged-attn-gpu-mem-util".into(), u.to_string()]);
        }
    }
    args.extend([
        "--grpc-addr".into(),
        format!("0.0.0.0:{GRPC_PORT}"),
        "--http-addr".into(),
        format!("0.0.0.0:{HTTP_PORT}"),
        "--metrics-addr".into(),
        format!("0.0.0.0:{METRICS_PORT}"),
        "--api-key-file".into(),
        crate::upstream_auth::key_file(),
    ]);
    if let Some(n) = e.max_in_flight {
        args.extend(["--max-in-flight".into(), n.to_string()]);
    }
    if let Some(n) = e.max_queue {
        args.extend(["--max-queue".into(), n.to_string()]);
    }
    args.extend([
        "--drain-timeout".into(),
        format!("{}s", e.drain_timeout_seconds),
        "--log-format".into(),
        "json".into(),
    ]);
    args
}

/// The environment of every pod that reads the model: JSON logs, where
/// Hugging Face state goes, the Hub token, and the operator's own (trace
/// export, Hub endpoint).
pub fn pod_env(v: &ValidatedModelDeployment) -> Vec<Value> {
    let mut env = vec![
        json!({"name": "BACKHAUL_LOG_FORMAT", "value": "json"}),
        json!({"name": "HF_HOME", "value": HF_HOME}),
    ];
    env.extend(
        v.pod_env
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value})),
    );
    if let Some(secret) = &v.model.hub_token_secret {
        env.push(json!({
            "name": "HF_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key}},
        }));
    }
    env
}

/// What the engine reads from the environment for a multi-GPU split:
/// layers turn mistral.rs's NCCL path off (it is read before the engine
/// starts, so it cannot be a flag); tensor parallelism logs NCCL's
/// warnings, which name a broken interconnect.
fn parallelism_env(parallelism: Parallelism) -> Vec<serde_json::Value> {
    match parallelism {
        Parallelism::Tensor => vec![json!({"name": "NCCL_DEBUG", "value": "WARN"})],
        Parallelism::Layers => vec![json!({"name": "MISTRALRS_NO_NCCL", "value": "1"})],
    }
}

pub fn node_selector(
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
) -> BTreeMap<String, String> {
    let mut sel = BTreeMap::from([(NODE_REGION_LABEL.to_owned(), region.name.clone())]);
    if let Some(p) = &v.resources.gpu_product {
        sel.insert(NODE_GPU_PRODUCT_LABEL.to_owned(), p.clone());
    }
    // The region's own selector wins, so a cluster labelling regions
    // differently can still match its nodes.
    sel.extend(region.node_selector.clone());
    sel
}

/// The region's Deployment; `weights`: the claim of its ready weight cache.
pub fn deployment(
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
    weights: Option<&str>,
) -> Deployment {
    let gpus = v.resources.gpus_per_replica;
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = &v.resources.cpu {
        requests.insert("cpu".into(), json!(cpu));
    }
    if let Some(mem) = &v.resources.memory {
        requests.insert("memory".into(), json!(mem));
        limits.insert("memory".into(), json!(mem));
    }
    if gpus > 0 {
        requests.insert(GPU_RESOURCE.into(), json!(gpus.to_string()));
        limits.insert(GPU_RESOURCE.into(), json!(gpus.to_string()));
    }

    let mut env = pod_env(v);
    if gpus > 1 {
        env.extend(parallelism_env(v.engine.parallelism));
    }

    let mut volumes = vec![
        json!({"name": "dshm", "emptyDir": {"medium": "Memory"}}),
        json!({"name": "model-cache", "emptyDir": {}}),
        json!({"name": "tmp", "emptyDir": {}}),
        // The Worker's credential; the kubelet updates the files in place
        // when the Secret changes, and the server re-reads them.
        json!({"name": "upstream-auth", "secret": {
            "secretName": crate::upstream_auth::secret_name(&v.name),
            "items": [{"key": crate::upstream_auth::SECRET_KEY, "path": crate::upstream_auth::SECRET_KEY}],
            "defaultMode": 0o440,
        }}),
    ];
    let mut mounts = vec![
        json!({"name": "dshm", "mountPath": "/dev/shm"}),
        json!({"name": "model-cache", "mountPath": CACHE_DIR}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
        json!({"name": "upstream-auth", "mountPath": crate::upstream_auth::MOUNT_DIR, "readOnly": true}),
    ];
    if let Some(claim) = weights {
        volumes.push(json!({
            "name": "weights",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": true},
        }));
        mounts.push(json!({"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": true}));
    }
    if let Some(vol) = &v.model.volume {
        volumes.push(json!({
            "name": "models",
            "persistentVolumeClaim": {"claimName": vol.claim_name, "readOnly": true},
        }));
        mounts.push(json!({"name": "models", "mountPath": MODEL_VOLUME_DIR, "readOnly": true}));
    }

    let mut tolerations = vec![json!({
        "key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule",
    })];
    tolerations.extend(region.tolerations.iter().map(|t| json!(t)));

    let grpc_probe = |period: i32, failures: i32| {
        json!({
            "grpc": {"port": GRPC_PORT, "service": ""},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        })
    };
    let drain = i64::from(v.engine.drain_timeout_seconds);

    let mut meta = metadata(v, &region.name);
    if let Some(claim) = weights {
        meta["annotations"] = json!({WEIGHTS_CLAIM_ANNOTATION: claim});
    }
    let value = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": region.replicas,
            "revisionHistoryLimit": 3,
            // Loading a large model takes minutes; do not call a rollout stuck early.
            "progressDeadlineSeconds": STARTUP_BUDGET_SECONDS + 600,
            "selector": {"matchLabels": selector_labels(v, &region.name)},
            "strategy": {
                "type": "RollingUpdate",
                // Never drop below the desired count of ready replicas while rolling.
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels(v, &region.name)},
                "spec": {
                    // The preStop delay, then the server's drain, before SIGKILL.
                    "terminationGracePeriodSeconds": PRE_STOP_SECONDS + drain + 15,
                    "enableServiceLinks": false,
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": RUN_AS_USER,
                        "runAsGroup": RUN_AS_USER,
                        "fsGroup": RUN_AS_USER,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "nodeSelector": node_selector(v, region),
                    "tolerations": tolerations,
                    "containers": [{
                        "name": "inference",
                        "image": v.image,
                        "args": inference_args(v, weights),
                        "env": env,
                        "ports": [
                            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                        ],
                        "resources": {"requests": requests, "limits": limits},
                        "startupProbe": grpc_probe(
                            STARTUP_PROBE_PERIOD_SECONDS,
                            STARTUP_BUDGET_SECONDS / STARTUP_PROBE_PERIOD_SECONDS,
                        ),
                        "readinessProbe": grpc_probe(5, 3),
                        "livenessProbe": grpc_probe(10, 6),
                        // Keep serving while endpoints converge; SIGTERM (drain) after.
                        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
                        "volumeMounts": mounts,
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                    }],
                    "volumes": volumes,
                },
            },
        },
    });
    serde_json::from_value(value).expect("the built Deployment matches k8s-openapi's type")
}

/// The region's Service (gRPC and HTTP).
pub fn service(v: &ValidatedModelDeployment, region: &RegionSpec) -> Service {
    let value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(v, &region.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(v, &region.name),
            "ports": [
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
            ],
        },
    });
    serde_json::from_value(value).expect("the built Service matches k8s-openapi's type")
}

/// The region's PodDisruptionBudget: only with more than one replica, since
/// with one it would block node drains forever.
pub fn pod_disruption_budget(
    v: &ValidatedModelDeployment,
    region: &RegionSpec,
) -> Option<PodDisruptionBudget> {
    (region.replicas > 1).then(|| {
        let value = json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(v, &region.name),
            "spec": {
                "maxUnavailable": 1,
                "selector": {"matchLabels": selector_labels(v, &region.name)},
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        });
        serde_json::from_value(value).expect("the built PDB matches k8s-openapi's type")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::ModelDeployment;
    use crate::validate::validate;

    pub(crate) fn validated(yaml: &str) -> ValidatedModelDeployment {
        let md: ModelDeployment = serde_yaml::from_str(yaml).unwrap();
        let config = crate::config::OperatorConfig {
            inference_image: "backhaul-inference:test".into(),
            inference_image_cuda: "backhaul-inference:test-cuda".into(),
            regions: None,
            publish: None,
            watch_namespace: None,
            identity: "test".into(),
            max_concurrent_reconciles: 16,
            pod_env: Vec::new(),
        };
        validate(&md, &config).unwrap()
    }

    pub(crate) const FIXTURE: &str = r#"
apiVersion: backhaul.dev/v1alpha1
kind: ModelDeployment
metadata: {name: smollm2, namespace: ml, uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427, generation: 2}
spec:
  model:
    source: hf://HuggingFaceTB/SmolLM2-135M-Instruct@main
    format: plain
    servedName: smollm2-135m
    chatTemplate: /models/chat.jinja
    quantization: Q8_0
    hubTokenSecret: {name: hf}
    volume: {claimName: models}
  engine:
    maxNumSeqs: 16
    maxSeqLen: 4096
    pagedAttention: {gpuMemoryUtilization: 0.8}
    dtype: bf16
    maxInFlight: 32
    maxQueue: 64
  resources: {gpusPerReplica: 2, gpuProduct: NVIDIA-H100-80GB-HBM3, cpu: "4", memory: 16Gi}
  regions:
  - name: us-east
    replicas: 3
    location: {latitude: 39.04, longitude: -77.49}
    endpoint: https://us-east.example.com
    nodeSelector: {pool: gpu}
    tolerations: [{key: dedicated, operator: Equal, value: inference, effect: NoSchedule}]
  - name: eu-west
    replicas: 1
    location: {latitude: 53.3, longitude: -6.2}
    endpoint: https://eu-west.example.com
    nodeSelector: {topology.kubernetes.io/region: europe-west1}
"#;

    /// A built object as YAML-comparable JSON.
    fn j<T: serde::Serialize>(t: &T) -> Value {
        serde_json::to_value(t).unwrap()
    }

    #[test]
    fn deployment_requests_gpus_and_selects_region_nodes() {
        let v = validated(FIXTURE);
        let d = j(&deployment(&v, &v.regions[0], None));
        let expected: Value = serde_yaml::from_str(
            r#"
name: smollm2-us-east-27a0dbd6
namespace: ml
labels:
  app.kubernetes.io/component: inference
  app.kubernetes.io/instance: smollm2-us-east-27a0dbd6
  app.kubernetes.io/managed-by: backhaul-operator
  app.kubernetes.io/name: backhaul-inference
  app.kubernetes.io/part-of: backhaul
  backhaul.dev/model: smollm2
  backhaul.dev/region: us-east
ownerReferences:
- {apiVersion: backhaul.dev/v1alpha1, kind: ModelDeployment, name: smollm2, uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427, controller: true}
"#,
        )
        .unwrap();
        assert_eq!(d["metadata"], expected);
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(
            d["spec"]["selector"]["matchLabels"],
            json!({"backhaul.dev/model": "smollm2", "backhaul.dev/region": "us-east"})
        );
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["nodeSelector"],
            json!({
                "topology.kubernetes.io/region": "us-east",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "pool": "gpu",
            })
        );
        assert_eq!(
            pod["tolerations"],
            json!([
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"},
            ])
        );
        assert_eq!(pod["terminationGracePeriodSeconds"], 50);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let c = &pod["containers"][0];
        assert_eq!(
            c["resources"],
            json!({
                "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "2"},
                "limits": {"memory": "16Gi", "nvidia.com/gpu": "2"},
            })
        );
        assert_eq!(
            c["readinessProbe"]["grpc"],
            json!({"port": 50051, "service": ""})
        );
        assert_eq!(c["livenessProbe"]["grpc"]["port"], 50051);
        assert_eq!(c["startupProbe"]["periodSeconds"], 2);
        assert_eq!(c["startupProbe"]["failureThreshold"], 900);
        assert_eq!(c["lifecycle"]["preStop"], json!({"sleep": {"seconds": 5}}));
        assert_eq!(
            c["env"][2],
            json!({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}})
        );
        let mounts: Vec<_> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(
            mounts,
            [
                "/dev/shm",
                CACHE_DIR,
                "/tmp",
                crate::upstream_auth::MOUNT_DIR,
                "/models"
            ]
        );
        assert_eq!(
            pod["volumes"][0],
            json!({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        );
        // The Worker's credential, read-only, readable by the pod's group only.
        assert_eq!(
            pod["volumes"][3]["secret"],
            json!({"secretName": "smollm2-upstream-auth", "defaultMode": 0o440,
                   "items": [{"key": "tokens", "path": "tokens"}]})
        );
        assert_eq!(c["volumeMounts"][3]["readOnly"], true);
        assert_eq!(
            pod["volumes"][4]["persistentVolumeClaim"],
            json!({"claimName": "models", "readOnly": true})
        );
        // /metrics on its own port, not on the Service.
        assert_eq!(
            c["ports"][2],
            json!({"name": "metrics", "containerPort": 9090, "protocol": "TCP"})
        );
    }

    #[test]
    fn pods_export_traces_where_the_operator_does() {
        let off = deployment(&validated(FIXTURE), &validated(FIXTURE).regions[0], None);
        let off = serde_json::to_value(off).unwrap();
        let env = &off["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(!env.to_string().contains("OTEL_"), "{env}");

        let mut v = validated(FIXTURE);
        v.pod_env = backhaul_telemetry::OtlpArgs {
            endpoint: Some("http://otel-collector.observability:4318".into()),
            sample_ratio: 0.1,
            service_name: Some("backhaul-operator".into()),
        }
        .child_env();
        let on = serde_json::to_value(deployment(&v, &v.regions[0], None)).unwrap();
        let env = on["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .clone();
        for (name, value) in [
            (
                backhaul_telemetry::ENDPOINT_ENV,
                "http://otel-collector.observability:4318",
            ),
            (backhaul_telemetry::SAMPLE_RATIO_ENV, "0.1"),
        ] {
            assert!(
                env.contains(&json!({"name": name, "value": value})),
                "{env:?}"
            );
        }
        // The pods keep their own service name (the inference server's).
        assert!(!json!(env).to_string().contains("OTEL_SERVICE_NAME"));
    }

    #[test]
    fn inference_flags_follow_the_spec() {
        let v = validated(FIXTURE);
        assert_eq!(
            inference_args(&v, None).join(" "),
            "--model hf://HuggingFaceTB/SmolLM2-135M-Instruct@main --format plain \
             --served-name smollm2-135m --chat-template /models/chat.jinja --isq Q8_0 \
             --model-cache /var/cache/backhaul/models --device cuda --dtype bf16 --parallelism tensor \
             --max-num-seqs 16 --max-seq-len 4096 --paged-attn --paged-attn-gpu-mem-util 0.8 \
             --grpc-addr 0.0.0.0:50051 --http-addr 0.0.0.0:8000 --metrics-addr 0.0.0.0:9090 \
             --api-key-file /var/run/backhaul/upstream-auth/tokens --max-in-flight 32 --max-queue 64 \
             --drain-timeout 30s --log-format json"
        );
    }

    #[test]
    fn region_node_selector_overrides_region_label() {
        let v = validated(FIXTURE);
        let d = j(&deployment(&v, &v.regions[1], None));
        assert_eq!(
            d["spec"]["template"]["spec"]["nodeSelector"]["topology.kubernetes.io/region"],
            "europe-west1"
        );
    }

    #[test]
    fn service_exposes_grpc_and_http() {
        let v = validated(FIXTURE);
        let s = j(&service(&v, &v.regions[0]));
        assert_eq!(s["metadata"]["name"], child_name("smollm2", "us-east"));
        assert_eq!(
            s["spec"]["selector"],
            json!({"backhaul.dev/model": "smollm2", "backhaul.dev/region": "us-east"})
        );
        assert_eq!(s["spec"]["ports"][0]["port"], 50051);
        assert_eq!(s["spec"]["ports"][1]["port"], 8000);
    }

    #[test]
    fn pdb_only_with_more_than_one_replica() {
        let v = validated(FIXTURE);
        let pdb = j(&pod_disruption_budget(&v, &v.regions[0]).unwrap());
        assert_eq!(pdb["spec"]["maxUnavailable"], 1);
        assert!(pod_disruption_budget(&v, &v.regions[1]).is_none());
    }

    #[test]
    fn cpu_only_spec_requests_no_gpu() {
        let v = validated(
            &FIXTURE
                .replace("gpusPerReplica: 2", "gpusPerReplica: 0")
                .replace("pagedAttention: {gpuMemoryUtilization: 0.8}", ""),
        );
        let d = j(&deployment(&v, &v.regions[0], None));
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"], json!({"memory": "16Gi"}));
        assert!(inference_args(&v, None).join(" ").contains("--device cpu"));
        assert_eq!(c["image"], "backhaul-inference:test");
    }

    #[test]
    fn cpu_pods_run_the_cpu_image_and_gpu_pods_the_cuda_image() {
        let image = |yaml: &str| {
            let v = validated(yaml);
            j(&deployment(&v, &v.regions[0], None))["spec"]["template"]["spec"]["containers"][0]["image"]
                .clone()
        };
        assert_eq!(image(FIXTURE), "backhaul-inference:test-cuda");
        let cpu = FIXTURE.replace("gpusPerReplica: 2", "gpusPerReplica: 0");
        assert_eq!(image(&cpu), "backhaul-inference:test");
        let own = format!("{cpu}  image: registry.example.com/inference:mine\n");
        assert_eq!(image(&own), "registry.example.com/inference:mine");
    }

    #[test]
    fn child_names_are_the_name_region_and_a_hash() {
        // Pinned: users point ingresses at these Services by name.
        assert_eq!(child_name("smollm2", "us-east"), "smollm2-us-east-27a0dbd6");
        // `<name>-<region>` alone would give both `a-b-c`.
        let (left, right) = (child_name("a-b", "c"), child_name("a", "b-c"));
        assert_ne!(left, right);
        assert_eq!(
            (left.as_str(), right.as_str()),
            ("a-b-c-4e84717d", "a-b-c-b88f83c8")
        );
    }

    #[test]
    fn long_names_are_cut_keeping_the_hash() {
        let name = format!("m{}", "a".repeat(62));
        let region = "r".repeat(40);
        let child = child_name(&name, &region);
        assert_eq!(child.len(), 63);
        assert!(child.starts_with("maaaa"), "{child}");
        assert!(
            child.ends_with(&format!("-{}", short_hash(&format!("{name}/{region}")))),
            "{child}"
        );
        assert_ne!(child, child_name(&name, "eu-west"));
        // Cut at a dash: the dash is dropped, never doubled before the hash.
        let child = child_name(&format!("m{}", "a".repeat(52)), "us-east");
        assert!(child.len() <= 63 && !child.contains("--"), "{child}");
        for child in [child, child_name(&name, &region), child_name("a", "b")] {
            assert!(
                crate::validate::is_dns1123_label(&child)
                    && child.starts_with(|c: char| c.is_ascii_lowercase()),
                "{child} is not a DNS-1035 label"
            );
        }
    }

    /// `inference_args` parsed by the inference server's own parser, as the
    /// container's entrypoint would: a renamed or retyped flag fails here
    /// instead of crash-looping every pod.
    /// With a weight cache, the replicas' flags on a ready cache and the
    /// fill's flags too.
    pub(crate) fn parse_as_the_server(v: &ValidatedModelDeployment) -> backhaul_inference::Config {
        use clap::Parser;
        let parse = |args: Vec<String>| {
            backhaul_inference::Config::try_parse_from(
                std::iter::once("backhaul-inference".to_owned()).chain(args.iter().cloned()),
            )
            .unwrap_or_else(|e| panic!("backhaul-inference refuses {args:?}:\n{e}"))
        };
        if v.model.cache.is_some() {
            let replica = parse(inference_args(v, Some("claim")));
            assert!(replica.model.hub_offline && !replica.download_only);
            let fill = parse(crate::weights_cache::fill_args(v));
            assert!(fill.download_only && !fill.model.hub_offline);
            assert_eq!(
                (
                    fill.model.model,
                    fill.model.gguf_files,
                    fill.model.model_cache
                ),
                (
                    replica.model.model,
                    replica.model.gguf_files,
                    replica.model.model_cache
                ),
                "the fill fetches what the replicas load, where they load it from"
            );
        }
        parse(inference_args(v, None))
    }

    #[test]
    fn the_examples_render_flags_the_inference_server_accepts() {
        let mut seen = Vec::new();
        for (file, value) in backhaul_testkit::examples::model_deployments() {
            let mut md: ModelDeployment =
                serde_json::from_value(value).unwrap_or_else(|e| panic!("{file}: {e}"));
            // As the API server would have it.
            md.metadata.uid = Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into());
            let v = validate(&md, &crate::validate::tests::config())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            parse_as_the_server(&v);
            seen.push((file, v));
        }
        assert_eq!(seen.len(), 3, "every ModelDeployment in examples/");
        let (_, llama) = seen
            .iter()
            .find(|(name, _)| name == "llama-3.1-70b.yaml")
            .expect("the 70B example");
        let server = parse_as_the_server(llama);
        assert_eq!(
            server.model.parallelism,
            Some(backhaul_inference::config::ParallelismChoice::Tensor)
        );
        assert_eq!(server.model.isq.as_deref(), Some("FP8"));
        assert_eq!(llama.resources.gpus_per_replica, 4);
        assert_eq!(llama.regions.len(), 3);
        let pod = serde_json::to_value(deployment(llama, &llama.regions[0], None)).unwrap();
        let c = &pod["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], "4");
        assert!(
            c["env"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "NCCL_DEBUG", "value": "WARN"}))
        );
    }

    #[test]
    fn layer_parallelism_turns_nccl_off_in_the_pod() {
        let mut v = validated(FIXTURE);
        v.engine.parallelism = Parallelism::Layers;
        let pod = serde_json::to_value(deployment(&v, &v.regions[0], None)).unwrap();
        let env = &pod["spec"]["template"]["spec"]["containers"][0]["env"];
        assert!(
            env.as_array()
                .unwrap()
                .contains(&json!({"name": "MISTRALRS_NO_NCCL", "value": "1"})),
            "{env}"
        );
        assert!(
            inference_args(&v, None)
                .join(" ")
                .contains("--parallelism layers")
        );
        // One GPU: nothing to split, nothing rendered.
        v.resources.gpus_per_replica = 1;
        assert!(!inference_args(&v, None).join(" ").contains("--parallelism"));
        let pod = serde_json::to_value(deployment(&v, &v.regions[0], None)).unwrap();
        assert!(!pod.to_string().contains("MISTRALRS_NO_NCCL"));
    }

    #[test]
    fn the_inference_server_accepts_the_flags_it_is_given() {
        use backhaul_inference::config::{DeviceChoice, DtypeChoice, LogFormat, ModelFormat};
        use std::time::Duration;

        // The full fixture: plain weights from the Hub with in-situ
        // quantization, a chat template, every engine setting, PagedAttention.
        let full = parse_as_the_server(&validated(FIXTURE));
        let m = &full.model;
        assert_eq!(m.model, "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main");
        assert_eq!(m.format, ModelFormat::Plain);
        assert!(m.gguf_files.is_empty());
        assert_eq!(m.served_name.as_deref(), Some("smollm2-135m"));
        assert_eq!(
            m.chat_template.as_deref(),
            Some(std::path::Path::new("/models/chat.jinja"))
        );
        assert_eq!(m.isq.as_deref(), Some("Q8_0"));
        assert_eq!(m.model_cache, std::path::Path::new(MODEL_CACHE_DIR));
        assert_eq!(m.device, DeviceChoice::Cuda);
        assert_eq!(m.dtype, DtypeChoice::Bf16);
        assert_eq!((m.max_num_seqs, m.max_seq_len), (16, Some(4096)));
        assert!(m.paged_attn);
        assert!((m.paged_attn_gpu_mem_util - 0.8).abs() < 1e-6);
        let s = &full.serve;
        assert_eq!(s.grpc_addr.to_string(), format!("0.0.0.0:{GRPC_PORT}"));
        assert_eq!(s.http_addr.to_string(), format!("0.0.0.0:{HTTP_PORT}"));
        assert_eq!(s.metrics_addr.port(), METRICS_PORT as u16);
        // The pods refuse every request without the Worker's credential.
        assert_eq!(
            s.api_key_file.as_deref(),
            Some(std::path::Path::new(&crate::upstream_auth::key_file()))
        );
        assert!(!s.allow_unauthenticated);
        assert_eq!((s.max_in_flight, s.max_queue), (32, 64));
        assert_eq!(s.drain_timeout, Duration::from_secs(30));
        assert_eq!(full.log_format, LogFormat::Json);

        // CPU: `--device cpu`, PagedAttention off, another drain timeout.
        let cpu = parse_as_the_server(&validated(
            &FIXTURE
                .replace("gpusPerReplica: 2", "gpusPerReplica: 0")
                .replace(
                    "pagedAttention: {gpuMemoryUtilization: 0.8}",
                    "pagedAttention: {enabled: false}",
                )
                .replace("maxQueue: 64", "maxQueue: 0\n    drainTimeoutSeconds: 5"),
        ));
        assert_eq!(cpu.model.device, DeviceChoice::Cpu);
        assert!(!cpu.model.paged_attn);
        assert_eq!(cpu.serve.max_queue, 0);
        assert_eq!(cpu.serve.drain_timeout, Duration::from_secs(5));

        // Minimal: GGUF files, everything else the defaults of both sides.
        let minimal = parse_as_the_server(&validated(
            r#"
apiVersion: backhaul.dev/v1alpha1
kind: ModelDeployment
metadata: {name: m, namespace: ml, uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427}
spec:
  model: {source: /models/smollm2, format: gguf, ggufFiles: [a.gguf, b.gguf], servedName: smollm2-135m}
  regions: [{name: us-east, location: {latitude: 1, longitude: 2}, endpoint: "https://us-east.example.com"}]
"#,
        ));
        let m = &minimal.model;
        assert_eq!(m.model, "/models/smollm2");
        assert_eq!(m.format, ModelFormat::Gguf);
        assert_eq!(m.gguf_files, ["a.gguf", "b.gguf"]);
        assert_eq!(m.served_name.as_deref(), Some("smollm2-135m"));
        assert_eq!((m.isq.as_deref(), m.chat_template.as_deref()), (None, None));
        // One GPU per replica by default.
        assert_eq!(m.device, DeviceChoice::Cuda);
        assert_eq!(m.dtype, DtypeChoice::Auto);
        assert!(!m.paged_attn);
        assert_eq!(minimal.serve.grpc_addr.port(), GRPC_PORT as u16);
        assert_eq!(minimal.serve.http_addr.port(), HTTP_PORT as u16);
        assert_eq!(minimal.serve.drain_timeout, Duration::from_secs(30));

        // PagedAttention enabled without a memory fraction: the server's default.
        let paged = parse_as_the_server(&validated(&FIXTURE.replace(
            "pagedAttention: {gpuMemoryUtilization: 0.8}",
            "pagedAttention: {}",
        )));
        assert!(paged.model.paged_attn);
        assert!((paged.model.paged_attn_gpu_mem_util - 0.9).abs() < 1e-6);
    }
}
