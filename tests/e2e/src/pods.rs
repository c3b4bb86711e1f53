//! Regions served by real pods on the local cluster's real node
//! (`tests/cluster/node.sh`): the weights reach the pods the way a user's
//! would, on a PersistentVolumeClaim, and the Worker reaches each region
//! through a NodePort Service on 127.0.0.1, which stands where a real
//! cluster has its ingress or tunnel.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod, Service};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::{cache_dir, wait_for};

/// Region label of the real node (`BACKHAUL_NODE_REGION`, `local` by default).
pub const NODE_REGION: &str = "local";
/// Taint that keeps every other pod off the real node.
pub const NODE_TAINT: &str = "backhaul.dev/real-node";
/// The claim, in each test namespace, holding the models.
pub const MODELS_CLAIM: &str = "models";
/// Inside the pods: where the operator mounts `spec.model.volume`.
pub const MODELS_DIR: &str = "/models";
/// The SmolLM2 file in the models volume.
pub const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The real node's containerd socket (`node_run` in tests/cluster/lib.sh).
pub fn cri_socket() -> PathBuf {
    std::env::var_os("BACKHAUL_NODE_CRI_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/backhaul-node/containerd.sock"))
}

/// `nodeSelector` and `tolerations` a ModelDeployment region needs to run
/// on the real node.
pub fn on_real_node() -> (serde_json::Value, serde_json::Value) {
    (
        serde_json::json!({"topology.kubernetes.io/region": NODE_REGION}),
        serde_json::json!([{"key": NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}]),
    )
}

/// The models directory of the cache (`make model`) offered to one
/// namespace as the claim [`MODELS_CLAIM`]: a hostPath PersistentVolume
/// bound to it ahead of time. [`ModelVolume::remove`] deletes the volume,
/// which outlives the namespace.
pub struct ModelVolume {
    client: Client,
    name: String,
}

impl std::fmt::Debug for ModelVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelVolume")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ModelVolume {
    /// Creates the volume and the claim, and waits until they are bound.
    pub async fn create(client: &Client, namespace: &str) -> Result<Self> {
        let name = format!("models-{namespace}");
        let dir = cache_dir().join("models");
        let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"backhaul.dev/e2e": "true"}},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadOnlyMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "hostPath": {"path": dir, "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": MODELS_CLAIM},
            },
        }))?;
        Api::<PersistentVolume>::all(client.clone())
            .create(&PostParams::default(), &pv)
            .await
            .with_context(|| format!("create PersistentVolume {name}"))?;
        let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": MODELS_CLAIM, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadOnlyMany"],
                "storageClassName": "",
                "volumeName": name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        }))?;
        let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), namespace);
        claims
            .create(&PostParams::default(), &pvc)
            .await
            .context("create the models PersistentVolumeClaim")?;
        wait_for(Duration::from_secs(30), || async {
            let claim = claims.get(MODELS_CLAIM).await.ok()?;
            (claim.status?.phase.as_deref() == Some("Bound")).then_some(())
        })
        .await
        .with_context(|| {
            format!("claim {namespace}/{MODELS_CLAIM} not Bound to {name} within 30 s")
        })?;
        Ok(Self {
            client: client.clone(),
            name,
        })
    }

    /// Deletes the volumes earlier runs left (a test that timed out drops its
    /// [`ModelVolume`] without removing it).
    pub async fn remove_leftovers(client: &Client) -> Result<()> {
        Api::<PersistentVolume>::all(client.clone())
            .delete_collection(
                &DeleteParams::background(),
                &ListParams::default().labels("backhaul.dev/e2e=true"),
            )
            .await
            .context("delete earlier runs' model volumes")?;
        Ok(())
    }

    /// Deletes the PersistentVolume.
    pub async fn remove(self) {
        let _ = Api::<PersistentVolume>::all(self.client)
            .delete(&self.name, &DeleteParams::background())
            .await;
    }
}

/// The real node's address on its pods' bridge (`node_host_ip` in
/// tests/cluster/lib.sh): a server the tests start here on it is reachable
/// from the pods, as a Hub mirror would be.
pub const NODE_HOST_IP: &str = "10.201.0.1";

/// Empty hostPath PersistentVolumes of one StorageClass name, for the claims
/// the operator makes (weight caches) to bind to: one per claim, each a
/// fresh directory under the cache, writable by the pods' user. Removed
/// with [`WeightVolumes::remove`] (the volumes outlive the namespace).
pub struct WeightVolumes {
    client: Client,
    /// `storageClassName` of the volumes: give it to the claims.
    pub class: String,
    names: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl WeightVolumes {
    /// Creates `count` volumes of 1 GiB for `namespace`.
    pub async fn create(client: &Client, namespace: &str, count: usize) -> Result<Self> {
        let class = format!("weights-{namespace}");
        let mut this = Self {
            client: client.clone(),
            class: class.clone(),
            names: Vec::new(),
            dirs: Vec::new(),
        };
        for i in 0..count {
            let name = format!("{class}-{i}");
            let dir = cache_dir().join("e2e").join("weights").join(&name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            // The pods run as a non-root user, and hostPath ignores fsGroup.
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
            this.dirs.push(dir.clone());
            let pv: PersistentVolume = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": name, "labels": {"backhaul.dev/e2e": "true"}},
                "spec": {
                    "capacity": {"storage": "1Gi"},
                    "accessModes": ["ReadWriteMany", "ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": class,
                    "hostPath": {"path": dir, "type": "Directory"},
                },
            }))?;
            Api::<PersistentVolume>::all(client.clone())
                .create(&PostParams::default(), &pv)
                .await
                .with_context(|| format!("create PersistentVolume {name}"))?;
            this.names.push(name);
        }
        Ok(this)
    }

    /// Deletes the volumes and their directories.
    pub async fn remove(self) {
        for name in &self.names {
            let _ = Api::<PersistentVolume>::all(self.client.clone())
                .delete(name, &DeleteParams::background())
                .await;
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One region's public endpoint: a NodePort Service, answering on
/// 127.0.0.1, in front of the pods the operator makes for that region
/// (selected by the labels it puts on them).
#[derive(Debug, Clone)]
pub struct PodRegion {
    pub name: String,
    pub node_port: u16,
    namespace: String,
    selector: String,
}

impl PodRegion {
    /// Creates the Service for region `region` of ModelDeployment `md`.
    pub async fn expose(client: &Client, namespace: &str, md: &str, region: &str) -> Result<Self> {
        let services = Api::<Service>::namespaced(client.clone(), namespace);
        let service: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("ingress-{region}"), "namespace": namespace},
            "spec": {
                "type": "NodePort",
                "selector": {"backhaul.dev/model": md, "backhaul.dev/region": region},
                "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}],
            },
        }))?;
        let created = services
            .create(&PostParams::default(), &service)
            .await
            .with_context(|| format!("create the NodePort Service for {region}"))?;
        let node_port = created
            .spec
            .and_then(|s| s.ports)
            .and_then(|p| p.first().and_then(|p| p.node_port))
            .context("the API server allocated no nodePort")?;
        Ok(Self {
            name: region.to_owned(),
            node_port: u16::try_from(node_port)?,
            namespace: namespace.to_owned(),
            selector: format!("backhaul.dev/model={md},backhaul.dev/region={region}"),
        })
    }

    /// The tokens the region's pods accept (the ModelDeployment's
    /// `{name}-upstream-auth` Secret, made by the operator), first the one
    /// the Worker is given.
    pub async fn upstream_tokens(
        client: &Client,
        namespace: &str,
        md: &str,
    ) -> Result<Vec<String>> {
        let secrets =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace);
        let name = format!("{md}-upstream-auth");
        let secret = secrets
            .get(&name)
            .await
            .with_context(|| format!("read the Secret {namespace}/{name}"))?;
        let tokens = secret
            .data
            .and_then(|d| d.get("tokens").cloned())
            .with_context(|| format!("the Secret {namespace}/{name} has no tokens"))?;
        Ok(String::from_utf8(tokens.0)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect())
    }

    /// Replaces the tokens of the ModelDeployment's credential Secret.
    pub async fn set_upstream_tokens(
        client: &Client,
        namespace: &str,
        md: &str,
        tokens: &[&str],
    ) -> Result<()> {
        let secrets =
            Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), namespace);
        let name = format!("{md}-upstream-auth");
        let text = format!("{}\n", tokens.join("\n"));
        secrets
            .patch(
                &name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"stringData": {"tokens": text}})),
            )
            .await
            .with_context(|| format!("patch the Secret {namespace}/{name}"))?;
        Ok(())
    }

    /// The endpoint the ModelDeployment publishes.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.node_port)
    }

    /// Polls the endpoint's `/ready` until it answers 200 (through the
    /// Service, as the Worker would reach it); returns how long it took.
    pub async fn wait_reachable(&self, timeout: Duration) -> Result<Duration> {
        let started = std::time::Instant::now();
        let client = reqwest::Client::new();
        let url = format!("{}/ready", self.endpoint());
        wait_for(timeout, || async {
            let response = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            response.status().is_success().then_some(())
        })
        .await
        .with_context(|| {
            format!(
                "region {}: {url} did not answer 200 within {timeout:?}",
                self.name
            )
        })?;
        Ok(started.elapsed())
    }

    /// The region's pods.
    pub async fn pods(&self, client: &Client) -> Result<Vec<Pod>> {
        Ok(Api::<Pod>::namespaced(client.clone(), &self.namespace)
            .list(&ListParams::default().labels(&self.selector))
            .await?
            .items)
    }

    /// The region's pods that are Ready and not terminating.
    pub async fn ready_pods(&self, client: &Client) -> Result<Vec<Pod>> {
        Ok(self
            .pods(client)
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && pod_ready(p))
            .collect())
    }

    /// Kills the inference container of the region's first ready pod with
    /// SIGKILL, as a crash would; returns the pod's name.
    pub async fn kill_container(&self, client: &Client) -> Result<String> {
        let pod = self
            .ready_pods(client)
            .await?
            .into_iter()
            .next()
            .with_context(|| format!("region {} has no ready pod to kill", self.name))?;
        let id = container_id(&pod).context("the pod reports no container id")?;
        crictl(&["stop", "--timeout", "0", &id])?;
        Ok(pod.metadata.name.unwrap_or_default())
    }
}

/// What the container runtime really runs for a container: the OCI runtime
/// spec of `crictl inspect` (user, root filesystem, mounts, capabilities).
pub fn runtime_spec(container_id: &str) -> Result<serde_json::Value> {
    let out = crictl(&["inspect", "--output", "json", container_id])?;
    let value: serde_json::Value = serde_json::from_slice(&out)?;
    Ok(value["info"]["runtimeSpec"].clone())
}

/// The inference image the operator gives CPU pods by default (the
/// workspace's version), as `make images` tags it.
pub fn inference_image() -> String {
    format!(
        "ghcr.io/backhaul-dev/backhaul-inference:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Fails unless the real node holds `image` (`scripts/images.sh --load`):
/// without it every pod would try a registry this machine cannot reach.
pub fn require_image(image: &str) -> Result<()> {
    crictl(&["inspecti", "--quiet", image])
        .map(|_| ())
        .with_context(|| {
            format!("the real node has no image {image}: run scripts/images.sh --load inference (scripts/e2e.sh does)")
        })
}

/// Runs crictl (`make tools` builds it) against the real node's runtime;
/// returns its standard output.
fn crictl(args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(cache_dir().join("bin/crictl"))
        .args(["--config", "/dev/null", "--runtime-endpoint"])
        .arg(format!("unix://{}", cri_socket().display()))
        .args(args)
        .output()
        .context("run crictl")?;
    if !out.status.success() {
        bail!(
            "crictl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Whether the pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The runtime's id of the pod's first container (without `containerd://`).
pub fn container_id(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?.container_statuses.as_ref()?.first()?;
    let id = status.container_id.as_deref()?;
    Some(id.split_once("://").map_or(id, |(_, id)| id).to_owned())
}

/// How many times the pod's first container restarted.
pub fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|s| s.first())
        .map_or(0, |s| s.restart_count)
}
