//! One cluster per region, as a fleet runs, on one machine: the main local
//! cluster (whose real node runs region A's pods) and a peer control plane
//! (`BACKHAUL_CLUSTER_NAME=<name> tests/cluster/up.sh`: its own etcd,
//! kube-apiserver, controller-manager, scheduler and kwok, on other ports),
//! each with its own operator, both publishing to one Worker.
//!
//! The peer has no real node, so its pods are kwok's fakes: two real kubelets
//! on one machine would share one containerd and one CNI configuration (the
//! main cluster's node owns the machine's, see tests/cluster/node.sh). So
//! that the Worker really routes to the peer's region as well,
//! [`LocalRegion`] runs `backhaul-inference` on 127.0.0.1, holding the
//! credential the peer's operator made, and the region's `endpoint` points
//! there: what answers is a real server, only not scheduled by the peer.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use backhaul_operator::crd::ModelDeployment;
use backhaul_operator::publish::{
    Route, RouteLocation, RouteRouting, rfc3339_seconds, unix_millis,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::{Proc, binary, free_port, logs_dir, model_file, repo_root, wait_http};

/// A peer control plane, stopped (`down.sh`: by PID, its state removed) when
/// dropped.
#[derive(Debug)]
pub struct PeerCluster {
    /// Its `BACKHAUL_CLUSTER_NAME`.
    pub name: String,
    /// Its kubeconfig, for the processes a test starts against it.
    pub kubeconfig: PathBuf,
    config: Config,
    up: bool,
}

impl PeerCluster {
    /// Starts (or, when it already runs, reuses) the peer `name`; its
    /// progress goes to `logs_dir()/cluster-<name>.log`.
    pub async fn up(name: &str) -> Result<Self> {
        let log = logs_dir().join(format!("cluster-{name}.log"));
        let stderr = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)?;
        let output = tokio::process::Command::new(repo_root().join("tests/cluster/up.sh"))
            .env("BACKHAUL_CLUSTER_NAME", name)
            .stdin(Stdio::null())
            .stderr(stderr)
            .output()
            .await
            .context("run tests/cluster/up.sh")?;
        if !output.status.success() {
            bail!(
                "BACKHAUL_CLUSTER_NAME={name} tests/cluster/up.sh failed ({}); log {}",
                output.status,
                log.display()
            );
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let kubeconfig = stdout
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("export KUBECONFIG="))
            .map(PathBuf::from)
            .with_context(|| format!("up.sh printed no `export KUBECONFIG=` line: {stdout:?}"))?;
        backhaul_testkit::install_crypto_provider();
        let file = Kubeconfig::read_from(&kubeconfig)?;
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await?;
        Ok(Self {
            name: name.to_owned(),
            kubeconfig,
            config,
            up: true,
        })
    }

    /// A client for the peer.
    pub fn client(&self) -> Client {
        Client::try_from(self.config.clone()).expect("a client from the peer's kubeconfig")
    }

    /// Stops the peer and removes its state; a no-op the second time.
    pub fn down(&mut self) {
        if !std::mem::take(&mut self.up) {
            return;
        }
        let log = logs_dir().join(format!("cluster-{}.log", self.name));
        let stderr = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_or_else(|_| Stdio::null(), Stdio::from);
        let status = Command::new(repo_root().join("tests/cluster/down.sh"))
            .env("BACKHAUL_CLUSTER_NAME", &self.name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!(
                "e2e: BACKHAUL_CLUSTER_NAME={} tests/cluster/down.sh failed: {status:?}",
                self.name
            );
        }
    }
}

impl Drop for PeerCluster {
    fn drop(&mut self) {
        self.down();
    }
}

/// `kubectl apply --server-side` of the committed CRDs (`crds/`) to the
/// cluster of `kubeconfig`.
pub fn install_crds(kubeconfig: &Path) -> Result<()> {
    let status = Command::new(crate::cache_dir().join("bin/kubectl"))
        .env("KUBECONFIG", kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(repo_root().join("crds"))
        .stdout(Stdio::null())
        .status()
        .context("run kubectl apply -f crds/")?;
    if !status.success() {
        bail!(
            "kubectl apply -f crds/ to {} failed ({status})",
            kubeconfig.display()
        );
    }
    Ok(())
}

/// Creates namespace `name` (the same name as in the other cluster: a model
/// belongs to one `{group}/{namespace}`, so every cluster publishing it uses
/// one namespace name).
pub async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {backhaul_testkit::TEST_NAMESPACE_LABEL: "true"}},
    }))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .with_context(|| format!("create namespace {name}"))?;
    Ok(())
}

/// Creates the ModelDeployment `md` (whole, as JSON) through `client`.
pub async fn create_model(client: &Client, md: &serde_json::Value) -> Result<()> {
    let object: ModelDeployment = serde_json::from_value(md.clone())?;
    let namespace = object.metadata.namespace.clone().unwrap_or_default();
    Api::<ModelDeployment>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &object)
        .await
        .context("the API server refused the ModelDeployment")?;
    Ok(())
}

/// Drops the finalizer of a ModelDeployment whose operator is gone, so that
/// its namespace can go.
pub async fn release(client: &Client, namespace: &str, name: &str) {
    let patch = serde_json::json!({"metadata": {"finalizers": null}});
    let _ = Api::<ModelDeployment>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
}

/// A region served by `backhaul-inference` on 127.0.0.1 (SmolLM2 from
/// `make model`), accepting the tokens its cluster's operator made: the
/// endpoint of a region whose pods are kwok's fakes.
#[derive(Debug)]
pub struct LocalRegion {
    /// Region name.
    pub name: String,
    /// Its HTTP port.
    pub port: u16,
    /// Its Prometheus port (`/metrics`), the same across restarts.
    pub metrics_port: u16,
    /// The server.
    pub proc: Proc,
    /// What it was started with, so that [`LocalRegion::restart`] starts it
    /// the same way.
    served: String,
    key_file: PathBuf,
    extra: Vec<String>,
}

impl LocalRegion {
    /// A port for the region's endpoint, to put in the ModelDeployment
    /// before the server (which needs the operator's credential) starts.
    pub fn reserve_port() -> u16 {
        free_port()
    }

    /// `http://127.0.0.1:{port}`.
    pub fn endpoint_at(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    /// Starts the server for region `name` on `port`, serving `served`,
    /// accepting `tokens` (`--api-key-file`); waits until `/ready`.
    pub async fn start(name: &str, port: u16, served: &str, tokens: &[String]) -> Result<Self> {
        Self::start_with(name, port, served, tokens, &[]).await
    }

    /// [`LocalRegion::start`] with more server flags (`extra`, e.g. a small
    /// `--max-in-flight`).
    pub async fn start_with(
        name: &str,
        port: u16,
        served: &str,
        tokens: &[String],
        extra: &[&str],
    ) -> Result<Self> {
        let key_file = logs_dir().join(format!("region-{name}.tokens"));
        std::fs::write(&key_file, format!("{}\n", tokens.join("\n")))?;
        let served = served.to_owned();
        let extra: Vec<String> = extra.iter().map(|&a| a.to_owned()).collect();
        let metrics_port = free_port();
        let ports = (port, metrics_port);
        let proc = Self::spawn(name, ports, &served, &key_file, &extra).await?;
        Ok(Self {
            name: name.to_owned(),
            port,
            metrics_port,
            proc,
            served,
            key_file,
            extra,
        })
    }

    /// `ports`: HTTP and metrics.
    async fn spawn(
        name: &str,
        (port, metrics_port): (u16, u16),
        served: &str,
        key_file: &Path,
        extra: &[String],
    ) -> Result<Proc> {
        let model = model_file();
        let mut command = Command::new(binary("backhaul-inference"));
        command
            .env("RUST_LOG", "info")
            .arg("--model")
            .arg(&model)
            .args(["--served-name", served, "--device", "cpu"])
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .arg("--api-key-file")
            .arg(key_file)
            .args(extra);
        let mut proc = Proc::spawn(
            &format!("backhaul-inference (region {name})"),
            &format!("region-{name}"),
            command,
        )?;
        wait_http(
            &mut proc,
            &format!("{}/ready", Self::endpoint_at(port)),
            Duration::from_secs(120),
        )
        .await?;
        Ok(proc)
    }

    /// The route an operator publishes for this region (docs/publication.md):
    /// its served model at its endpoint, one ready replica at `location`
    /// (latitude, longitude), live an hour, `upstream_token` as the Worker's
    /// credential for it.
    pub fn route(
        &self,
        namespace: &str,
        name: &str,
        location: (f64, f64),
        routing: RouteRouting,
        upstream_token: &str,
    ) -> Route {
        Route {
            namespace: namespace.into(),
            name: name.into(),
            region: self.name.clone(),
            model: self.served.clone(),
            endpoint: Self::endpoint_at(self.port),
            location: RouteLocation {
                latitude: location.0,
                longitude: location.1,
            },
            replicas: 1,
            ready_replicas: 1,
            routing,
            edge_model: None,
            generation: 1,
            sequence: unix_millis(),
            published_at: rfc3339_seconds(SystemTime::now()),
            ttl_seconds: 3600,
            upstream_token: upstream_token.into(),
        }
    }

    /// The server's Prometheus text (`GET /metrics`).
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let response = reqwest::Client::new()
            .get(&url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("region {}: GET {url}", self.name))?;
        Ok(response.text().await?)
    }

    /// The sum of every sample of the metric `name` (all label sets), 0
    /// when it has none yet; e.g. `backhaul_inference_requests_total`, which
    /// counts each request the server answered or refused once.
    pub async fn metric_sum(&self, name: &str) -> Result<f64> {
        Ok(metric_sum(&self.metrics().await?, name))
    }

    /// The server's process id (0 once it is stopped).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGKILL, no grace: the region crashes.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the server again on the same port with the same flags and
    /// tokens (its log goes on in the same file); waits until `/ready`.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc.kill();
        self.proc = Self::spawn(
            &self.name,
            (self.port, self.metrics_port),
            &self.served,
            &self.key_file,
            &self.extra,
        )
        .await?;
        Ok(())
    }
}

/// The sum of every sample of `name` in Prometheus text (`name` or
/// `name{labels}`, not `name_suffix`); 0 when there is none.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sum_adds_every_label_set_of_one_name_only() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"}\"} 2\nx_total{a=\"2\"} 3\nx_total_bucket{le=\"1\"} 9\nx_totalish 4\ny 1\n";
        assert_eq!(metric_sum(text, "x_total"), 5.0);
        assert_eq!(metric_sum("z 7\n", "z"), 7.0);
        assert_eq!(metric_sum(text, "absent"), 0.0);
    }
}
