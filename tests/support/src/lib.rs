//! Test support for Backhaul: the local Kubernetes control plane, per-test
//! namespaces and deadline-bound polling.
//!
//! Tests talk to a real API server (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler; kwok fakes the nodes) started by
//! `tests/cluster/up.sh`. [`client`] connects to it and starts it first when
//! it is not running; it never skips a test silently: if the cluster cannot be
//! reached or started, it panics naming the log directory.
//!
//! ```no_run
//! use std::time::Duration;
//! use backhaul_testkit::{client, wait_for, TestNamespace};
//!
//! # async fn demo() {
//! let client = client().await;
//! let ns = TestNamespace::new(&client, "my-test").await;
//! // ... create objects in ns.name() ...
//! let done = wait_for(Duration::from_secs(30), || async { Some(()) }).await;
//! done.expect("it happened in time");
//! ns.cleanup().await;
//! # }
//! ```
//!
//! The fake nodes (see `tests/cluster/up.sh`): `gpu-us-east-{0,1}`,
//! `gpu-eu-west-{0,1}` (`NVIDIA-H100-80GB-HBM3`) and `gpu-ap-south-0`
//! (`NVIDIA-A100-SXM4-80GB`), each with `nvidia.com/gpu: 8`, labelled
//! `topology.kubernetes.io/region=<region>` and `type=kwok`, without taints.

pub mod examples;
pub mod hub;
pub mod openai_python;
pub mod otlp;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

/// Regions the local cluster's fake GPU nodes are in.
pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];
/// Label every namespace made by [`TestNamespace`] carries.
pub const TEST_NAMESPACE_LABEL: &str = "backhaul.dev/test-namespace";

/// The repository's root directory: the workspace (the directory with
/// `Cargo.lock`) around the package cargo is testing now.
///
/// Read at run time, not baked in with `env!`: clones share one target
/// directory, and cargo reuses a test binary built in another clone when
/// this clone's sources are older than it, so a compile-time path can name
/// a clone that is gone.
pub fn repo_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or_else(|| panic!("no Cargo.lock above {}", start.display()))
        .canonicalize()
        .expect("the repository root exists")
}

/// `$BACKHAUL_CACHE`, by default `~/.cache/backhaul`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("BACKHAUL_CACHE") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/backhaul")
        }
    }
}

/// Where `tests/cluster/up.sh` writes the control plane's logs.
pub fn logs_dir() -> PathBuf {
    cache_dir().join("cluster/logs")
}

/// The kubeconfig `tests/cluster/up.sh` writes.
pub fn local_kubeconfig() -> PathBuf {
    cache_dir().join("cluster/kubeconfig")
}

/// A reachable cluster: the kubeconfig it was reached through and the
/// client configuration read from it.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// The kubeconfig file; pass it to processes a test starts (`KUBECONFIG`).
    pub kubeconfig: PathBuf,
    /// Client configuration loaded from `kubeconfig`.
    pub config: Config,
}

impl Cluster {
    /// A new client. Clients are cheap; make one per test (a client is bound to
    /// the Tokio runtime it first ran on, and each `#[tokio::test]` has its own).
    pub fn client(&self) -> Client {
        install_crypto_provider();
        Client::try_from(self.config.clone()).expect("a client from the cluster's kubeconfig")
    }
}

static CLUSTER: OnceCell<Result<Cluster, String>> = OnceCell::const_new();

/// The cluster the tests run against, reached once per process.
///
/// With `$KUBECONFIG` unset (or naming the local cluster's kubeconfig,
/// `$BACKHAUL_CACHE/cluster/kubeconfig`), runs `tests/cluster/up.sh` once per
/// process: it returns at once when every component is up, and starts (or
/// restarts) the control plane otherwise; it takes a file lock, so parallel
/// test binaries do not race. With `$KUBECONFIG` naming another cluster, only
/// checks that its API server answers.
///
/// # Panics
/// When the API server cannot be reached or the local control plane cannot
/// be started; the message says why and names the log directory. Every later
/// call in the process panics the same way (it is not retried).
pub async fn cluster() -> &'static Cluster {
    match CLUSTER.get_or_init(connect_or_start).await {
        Ok(cluster) => cluster,
        Err(message) => panic!("{message}"),
    }
}

/// The client configuration of [`cluster`], once a test has reached it
/// (through [`client`] or [`cluster`]).
///
/// # Panics
/// Before the cluster was reached, or when it could not be.
pub fn cluster_config() -> Config {
    match CLUSTER.get() {
        Some(Ok(cluster)) => cluster.config.clone(),
        Some(Err(message)) => panic!("{message}"),
        None => panic!("cluster_config() before client() or cluster()"),
    }
}

/// A client for [`cluster`].
pub async fn client() -> Client {
    cluster().await.client()
}

async fn connect_or_start() -> Result<Cluster, String> {
    let local = local_kubeconfig();
    let kubeconfig = match std::env::var_os("KUBECONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => local.clone(),
    };
    if !same_file(&kubeconfig, &local) {
        return match probe(&kubeconfig).await {
            Ok(config) => Ok(Cluster { kubeconfig, config }),
            Err(error) => Err(format!(
                "the Kubernetes API server in KUBECONFIG={} does not answer: {error}\n\
                 (unset KUBECONFIG to use, and start, the local control plane: tests/cluster/up.sh)",
                kubeconfig.display()
            )),
        };
    }
    start_local_cluster().await?;
    match probe(&local).await {
        Ok(config) => Ok(Cluster {
            kubeconfig: local,
            config,
        }),
        Err(error) => Err(format!(
            "tests/cluster/up.sh succeeded but the API server in {} does not answer: {error}\n\
             logs: {}",
            local.display(),
            logs_dir().display()
        )),
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Chooses rustls' process-wide crypto provider (ring, kube's): the workspace
/// links both ring and aws-lc-rs, and rustls refuses to guess between them.
pub fn install_crypto_provider() {
    // An Err means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Loads a kubeconfig and checks the API server answers.
async fn probe(kubeconfig: &Path) -> Result<Config, String> {
    install_crypto_provider();
    let file = Kubeconfig::read_from(kubeconfig).map_err(|e| e.to_string())?;
    let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut probe_config = config.clone();
    probe_config.connect_timeout = Some(Duration::from_secs(2));
    probe_config.read_timeout = Some(Duration::from_secs(5));
    let client = Client::try_from(probe_config).map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(config),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in 10 s".into()),
    }
}

/// Runs `tests/cluster/up.sh`, passing its progress (stderr) straight to our
/// stderr (not captured by the test harness: a first start may build the
/// binaries, which takes minutes) and keeping its tail for the error.
async fn start_local_cluster() -> Result<(), String> {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;

    let script = repo_root().join("tests/cluster/up.sh");
    let mut child = tokio::process::Command::new(&script)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    let mut tail = std::collections::VecDeque::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let _ = writeln!(std::io::stderr(), "{line}");
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("waiting for {}: {e}", script.display()))?;
    if status.success() {
        return Ok(());
    }
    Err(format!(
        "the local control plane did not start: {} exited with {status}; its last output:\n{}\nlogs: {}",
        script.display(),
        Vec::from(tail).join("\n"),
        logs_dir().display()
    ))
}

/// The deadline passed before the condition held.
#[derive(Debug, thiserror::Error)]
#[error("condition not met within {0:?}")]
pub struct TimedOut(pub Duration);

/// Polls `check` (every 200 ms) until it returns `Some`, or `timeout` passes.
///
/// ```no_run
/// # use std::time::Duration;
/// # async fn demo(pods: kube::Api<k8s_openapi::api::core::v1::Pod>) {
/// let pod = backhaul_testkit::wait_for(Duration::from_secs(30), || async {
///     let pod = pods.get("web").await.ok()?;
///     (pod.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(pod)
/// })
/// .await
/// .expect("pod web running");
/// # }
/// ```
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A check that hangs counts against the deadline too.
        if let Ok(Some(value)) = tokio::time::timeout(remaining, check()).await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(TimedOut(timeout));
        }
        tokio::time::sleep(Duration::from_millis(200).min(deadline - Instant::now())).await;
    }
}

/// A namespace of its own for one test: `<prefix>-<8 hex digits>`, labelled
/// [`TEST_NAMESPACE_LABEL`]. Call [`TestNamespace::cleanup`] at the end; if
/// the test panics first, dropping it deletes the namespace (best effort).
pub struct TestNamespace {
    name: String,
    client: Client,
    cleaned_up: bool,
}

impl std::fmt::Debug for TestNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNamespace")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestNamespace {
    /// Creates the namespace and waits until pods can be admitted into it (its
    /// `default` ServiceAccount exists).
    ///
    /// # Panics
    /// When the namespace cannot be created or is not usable within 30 s.
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = namespace_name(prefix);
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": { TEST_NAMESPACE_LABEL: "true" } },
        }))
        .expect("a valid Namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let service_accounts = Api::<ServiceAccount>::namespaced(client.clone(), &name);
        wait_for(Duration::from_secs(30), || async {
            service_accounts.get_opt("default").await.ok().flatten()
        })
        .await
        .unwrap_or_else(|e| panic!("namespace {name} has no default ServiceAccount: {e}"));
        Self {
            name,
            client: client.clone(),
            cleaned_up: false,
        }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An `Api` for namespaced objects in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace (without waiting for its contents to go).
    ///
    /// # Panics
    /// When the delete request fails for a reason other than "already gone".
    pub async fn cleanup(mut self) {
        self.cleaned_up = true;
        match Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => panic!("delete namespace {}: {e}", self.name),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.cleaned_up {
            return;
        }
        // No await in Drop, and the test's runtime may be unwinding: delete
        // from a thread of our own with a runtime and client of its own.
        let Some(Ok(cluster)) = CLUSTER.get().cloned() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let namespaces = Api::<Namespace>::all(cluster.client());
                tokio::time::timeout(
                    Duration::from_secs(10),
                    namespaces.delete(&name, &DeleteParams::background()),
                )
                .await
                .ok()?
                .ok()
            })
        })
        .join();
        if !matches!(deleted, Ok(Some(_))) {
            tracing::warn!("could not delete a test namespace on drop");
        }
    }
}

/// `<prefix>-<8 hex digits>`, a valid DNS-1123 label.
fn namespace_name(prefix: &str) -> String {
    let mut clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean.truncate(50);
    let clean = clean.trim_matches('-');
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    if clean.is_empty() {
        format!("test-{suffix}")
    } else {
        format!("{clean}-{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_dns_labels() {
        for prefix in ["gpu", "My_Test::case", "", "---", &"x".repeat(80)] {
            let name = namespace_name(prefix);
            assert!(name.len() <= 63, "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
            assert!(!name.starts_with('-') && !name.ends_with('-'), "{name}");
        }
        assert_ne!(namespace_name("a"), namespace_name("a"));
    }

    #[tokio::test]
    async fn wait_for_returns_the_value_or_times_out() {
        let mut calls = 0;
        let value = wait_for(Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { (n >= 3).then_some(n) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
        let never = wait_for(Duration::from_millis(300), || async { None::<()> }).await;
        assert!(never.is_err());
    }
}
