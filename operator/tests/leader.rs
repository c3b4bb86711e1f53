//! Leader election of the real `backhaul-operator` binary against the local
//! control plane: each candidate is a process of its own, watching only its
//! test's namespace, so that how it exits is tested as it happens in a pod.
//!
//! A leader whose API server stops answering is simulated with a TCP proxy
//! of the test's own between it and the shared API server: frozen, it keeps
//! every connection open and passes no byte either way, which is what a
//! client sees of a SIGSTOPped server (the shared one must never be paused).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use backhaul_operator::LOST_LEADERSHIP_EXIT_CODE;
use backhaul_testkit::{TestNamespace, client, cluster, wait_for};
use common::install_crd;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const LEASE: &str = "backhaul-operator-test";
/// The binary's election timing (`leader::Timing::default()`).
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// Starting a process, reaching the API server, taking a free Lease.
const START: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------

/// A TCP proxy to the API server that can be frozen.
struct Proxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    /// When each chunk of bytes from the client arrived (TLS hides the
    /// requests; a client that sends nothing makes no request).
    sent: Arc<Mutex<Vec<SystemTime>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (frozen_tx, sent_log) = (frozen.clone(), sent.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(
                    client_read,
                    server_write,
                    frozen_tx.subscribe(),
                    Some(sent_log.clone()),
                ));
                tokio::spawn(pump(server_read, client_write, frozen_tx.subscribe(), None));
            }
        });
        Self { addr, frozen, sent }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }

    /// Arrival times of the client's bytes at or after `t`.
    fn sent_since(&self, t: SystemTime) -> Vec<SystemTime> {
        let sent = self.sent.lock().unwrap();
        sent.iter().copied().filter(|s| *s >= t).collect()
    }
}

/// Copies `from` to `to`, holding every byte (and the end of the stream)
/// while frozen; logs when the bytes arrived.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    log: Option<Arc<Mutex<Vec<SystemTime>>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await.unwrap_or(0);
        if n > 0
            && let Some(log) = &log
        {
            log.lock().unwrap().push(SystemTime::now());
        }
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            let _ = to.shutdown().await;
            return;
        }
    }
}

/// The API server's address in `kubeconfig`.
fn api_server(kubeconfig: &Path) -> SocketAddr {
    let config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let server: url::Url = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a server")
        .parse()
        .unwrap();
    let host = server.host_str().expect("a host");
    format!("{host}:{}", server.port_or_known_default().unwrap())
        .parse()
        .expect("the local cluster's server is an IP address")
}

/// A copy of `kubeconfig` (same CA and credentials) with `edit` applied to it.
fn kubeconfig_with(
    kubeconfig: &Path,
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut Value),
) -> PathBuf {
    let mut config: Value =
        serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    edit(&mut config);
    let path = dir.join(name);
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// `kubeconfig` through `proxy`: the API server's certificate names
/// 127.0.0.1, so TLS still verifies.
fn through(kubeconfig: &Path, dir: &Path, proxy: &Proxy) -> PathBuf {
    kubeconfig_with(kubeconfig, dir, "through-proxy", |config| {
        for cluster in config["clusters"].as_array_mut().unwrap() {
            cluster["cluster"]["server"] = json!(format!("https://{}", proxy.addr));
        }
    })
}

// ---------------------------------------------------------------------------
// Candidates
// ---------------------------------------------------------------------------

/// One `backhaul-operator run --leader-election` process.
struct Candidate {
    name: &'static str,
    pid: u32,
    /// Its JSON log lines.
    logs: Arc<Mutex<Vec<Value>>>,
    /// When it exited, and how.
    exited: watch::Receiver<Option<(SystemTime, ExitStatus)>>,
    http: reqwest::Client,
}

impl Candidate {
    /// Starts a candidate for [`LEASE`] in `namespace` (which it also
    /// watches) with `POD_NAME` set to `pod_name`, or unset.
    fn start(
        name: &'static str,
        kubeconfig: &Path,
        namespace: &str,
        pod_name: Option<&str>,
    ) -> Self {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_backhaul-operator"));
        command
            .args(["run", "--leader-election", "--lease-name", LEASE])
            .args([
                "--lease-namespace",
                namespace,
                "--watch-namespace",
                namespace,
            ])
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // Nothing of the test's environment configures it.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("BACKHAUL_") || key.starts_with("POD_") {
                command.env_remove(&*key);
            }
        }
        if let Some(pod_name) = pod_name {
            command.env("POD_NAME", pod_name);
        }
        let mut child = command.spawn().expect("start backhaul-operator");
        let pid = child.id().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = logs.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                // Shown with --nocapture, and when a test fails.
                eprintln!("[{name}] {line}");
                if let Ok(value) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(value);
                }
            }
        });
        let (exit_tx, exited) = watch::channel(None);
        tokio::spawn(async move {
            // kill_on_drop: the child dies with this task when the test ends.
            let status = child.wait().await.unwrap();
            let at = SystemTime::now();
            // Its last words are read before anyone learns it exited.
            let _ = reader.await;
            exit_tx.send_replace(Some((at, status)));
        });
        Self {
            name,
            pid,
            logs,
            exited,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    /// The `fields` of its first log line with this message.
    fn logged(&self, message: &str) -> Option<Value> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .map(|l| l["fields"].clone())
    }

    /// Its identity, once it said it.
    fn identity(&self) -> Option<String> {
        Some(
            self.logged("standing by for leadership")?["identity"]
                .as_str()?
                .to_owned(),
        )
    }

    fn metrics_addr(&self) -> Option<String> {
        Some(
            self.logged("serving /metrics, /healthz, /readyz")?["addr"]
                .as_str()?
                .to_owned(),
        )
    }

    /// `backhaul_operator_leader{lease=LEASE}`, once it serves metrics.
    async fn leader(&self) -> Option<i64> {
        let url = format!("http://{}/metrics", self.metrics_addr()?);
        let text = self.http.get(url).send().await.ok()?.text().await.ok()?;
        let prefix = format!("backhaul_operator_leader{{lease=\"{LEASE}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
    }

    /// Whether `/readyz` answers 200, once it serves it.
    async fn ready(&self) -> Option<bool> {
        let url = format!("http://{}/readyz", self.metrics_addr()?);
        Some(self.http.get(url).send().await.ok()?.status().is_success())
    }

    /// Waits until it leads (or stands by) and is ready.
    async fn wait_ready(&self, leading: bool) {
        wait_for(START, || async {
            (self.leader().await? == i64::from(leading) && self.ready().await?).then_some(())
        })
        .await
        .unwrap_or_else(|e| panic!("{}: ready with leader={leading}: {e}", self.name));
    }

    fn exit(&self) -> Option<(SystemTime, ExitStatus)> {
        *self.exited.borrow()
    }

    async fn wait_exit(&mut self, timeout: Duration) -> (SystemTime, ExitStatus) {
        let name = self.name;
        let exited = tokio::time::timeout(timeout, self.exited.wait_for(Option::is_some))
            .await
            .unwrap_or_else(|_| panic!("{name} did not exit within {timeout:?}"))
            .unwrap();
        exited.unwrap()
    }

    /// SIGTERM, as the kubelet sends: a clean shutdown.
    fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.pid);
    }
}

/// The Lease's holder, as the API server has it.
async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt(LEASE).await.ok()??.spec?.holder_identity
}

fn system_time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime) -> SystemTime {
    SystemTime::from(t.0)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_exits_before_a_standby_takes_over() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-leader-cut").await;
    let leases: Api<Lease> = ns.api();
    let kubeconfig = &cluster().await.kubeconfig;
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start(api_server(kubeconfig)).await;

    let mut a = Candidate::start(
        "a",
        &through(kubeconfig, dir.path(), &proxy),
        ns.name(),
        Some("leader-a"),
    );
    a.wait_ready(true).await;
    assert_eq!(holder(&leases).await.as_deref(), Some("leader-a"));
    let mut b = Candidate::start("b", kubeconfig, ns.name(), Some("leader-b"));
    // A standby is ready, and says it does not lead.
    b.wait_ready(false).await;

    // a's API server stops answering. What the API server holds now is a's
    // last renewal: its deadline is at most 10 s after that began.
    proxy.freeze(true);
    let frozen_at = SystemTime::now();
    let last = leases.get(LEASE).await.unwrap().spec.unwrap();
    assert_eq!(last.holder_identity.as_deref(), Some("leader-a"));
    let deadline = system_time(last.renew_time.as_ref().unwrap()) + RENEW_DEADLINE;

    let (exited_at, status) = a.wait_exit(RENEW_DEADLINE + Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(LOST_LEADERSHIP_EXIT_CODE),
        "a exits with the lost-leadership code: {status}"
    );
    let lost = a
        .logged("lost leadership; exiting now, without waiting for in-flight reconciles or publications")
        .expect("a says why it exits");
    assert_eq!(lost["lease"], LEASE);
    assert!(
        lost["reason"].as_str().unwrap().contains("renew deadline"),
        "{lost}"
    );
    assert!(
        // Slack for a loaded machine: the margin that matters, before b can
        // acquire, is 5 s (lease duration less renew deadline).
        exited_at <= deadline + Duration::from_secs(2),
        "a exited {:?} after its renew deadline",
        exited_at.duration_since(deadline).unwrap_or_default()
    );
    assert!(exited_at > frozen_at);

    // b takes over only once the Lease expired: after a was gone.
    let taken = wait_for(Duration::from_secs(30), || async {
        let spec = leases.get(LEASE).await.ok()?.spec?;
        (spec.holder_identity.as_deref() == Some("leader-b")).then_some(spec)
    })
    .await
    .expect("b takes over");
    let acquired_at = system_time(taken.acquire_time.as_ref().unwrap());
    assert!(
        exited_at < acquired_at,
        "a exited at {exited_at:?}, {:?} after b acquired",
        exited_at.duration_since(acquired_at).unwrap_or_default()
    );
    let signed = |t: SystemTime, from: SystemTime| match t.duration_since(from) {
        Ok(d) => format!("+{d:?}"),
        Err(e) => format!("-{:?}", e.duration()),
    };
    eprintln!(
        "a exited {} after the freeze, {} from the renew deadline of the record on the server; b acquired {} after a exited",
        signed(exited_at, frozen_at),
        signed(exited_at, deadline),
        signed(acquired_at, exited_at),
    );
    // a sent no byte (so made no request) after its deadline: it was not
    // still trying to write while b could lead.
    // (Its last renewal attempt began a retry period, 2 s, before the
    // deadline; the slack covers the proxy reading late on a loaded machine.)
    let late = proxy.sent_since(deadline + Duration::from_millis(500));
    assert!(
        late.is_empty(),
        "a sent {} chunks after its deadline",
        late.len()
    );
    b.wait_ready(true).await;

    // The API server answers again: whatever a left in flight changes
    // nothing. b keeps the Lease over several renewals.
    proxy.freeze(false);
    let transitions = taken.lease_transitions;
    let watch_until = Instant::now() + 3 * RETRY_PERIOD;
    while Instant::now() < watch_until {
        let spec = leases.get(LEASE).await.unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("leader-b"));
        assert_eq!(spec.lease_transitions, transitions);
        assert_eq!(b.leader().await, Some(1));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A clean shutdown releases the Lease, and exits 0.
    b.terminate();
    let (_, status) = b.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "b: {status}");
    assert_eq!(holder(&leases).await, None, "b released the Lease");
    ns.cleanup().await;
}

#[tokio::test]
async fn candidates_without_a_pod_name_get_distinct_identities_and_one_leads() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-leader-noname").await;
    let leases: Api<Lease> = ns.api();
    let kubeconfig = &cluster().await.kubeconfig;

    let mut candidates = [
        Candidate::start("x", kubeconfig, ns.name(), None),
        Candidate::start("y", kubeconfig, ns.name(), None),
    ];
    let identities = wait_for(START, || async {
        Some([candidates[0].identity()?, candidates[1].identity()?])
    })
    .await
    .expect("both say who they are");
    assert_ne!(identities[0], identities[1]);
    for id in &identities {
        let (host, suffix) = id.rsplit_once('_').unwrap_or_else(|| panic!("{id}"));
        assert!(
            !host.is_empty() && suffix.len() == 8,
            "{id}: <host name>_<8 hex digits>"
        );
    }
    let leading = wait_for(START, || async {
        let holder = holder(&leases).await?;
        identities.iter().position(|id| *id == holder)
    })
    .await
    .expect("one of them holds the Lease");
    let standby = 1 - leading;
    candidates[leading].wait_ready(true).await;
    candidates[standby].wait_ready(false).await;
    // And it stays so over several renewals: the standby never reads the
    // Lease as its own.
    let watch_until = Instant::now() + 3 * RETRY_PERIOD;
    while Instant::now() < watch_until {
        assert_eq!(holder(&leases).await.as_ref(), Some(&identities[leading]));
        assert_eq!(candidates[leading].leader().await, Some(1));
        assert_eq!(candidates[standby].leader().await, Some(0));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The leader stops cleanly: it releases the Lease, and the standby
    // takes over without waiting for it to expire.
    candidates[leading].terminate();
    let released = Instant::now();
    let (_, status) = candidates[leading].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    candidates[standby].wait_ready(true).await;
    assert_eq!(holder(&leases).await.as_ref(), Some(&identities[standby]));
    assert!(
        released.elapsed() < Duration::from_secs(15),
        "taken over in {:?}, before the Lease would have expired",
        released.elapsed()
    );
    candidates[standby].terminate();
    let (_, status) = candidates[standby].wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    ns.cleanup().await;
}

/// A Role with what the operator needs in its namespace, less the Secrets
/// unless `secrets`.
fn operator_role(secrets: bool) -> Role {
    let mut rules = vec![
        json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}),
        json!({"apiGroups": ["backhaul.dev"], "resources": ["modeldeployments"], "verbs": ["get", "list", "watch", "patch"]}),
        json!({"apiGroups": ["backhaul.dev"], "resources": ["modeldeployments/status"], "verbs": ["get", "patch"]}),
        json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]}),
        json!({"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]}),
        json!({"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": ["get", "list", "watch", "create", "patch", "delete"]}),
        json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}),
        json!({"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}),
    ];
    if secrets {
        rules.push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch", "create"]}));
    }
    serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "backhaul-operator"},
        "rules": rules,
    }))
    .unwrap()
}

#[tokio::test]
async fn a_new_leader_is_ready_only_once_its_watches_have_synced() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-leader-sync").await;
    let kubeconfig = &cluster().await.kubeconfig;
    let dir = tempfile::tempdir().unwrap();
    // The operator runs as a user of its own, who at first may not list
    // Secrets: the Secrets' watch cannot sync.
    let user = format!("backhaul-operator-{}", ns.name());
    let roles: Api<Role> = ns.api();
    roles
        .create(&PostParams::default(), &operator_role(false))
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "backhaul-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "backhaul-operator"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }))
    .unwrap();
    ns.api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    // The test's (admin) credentials, impersonating that user.
    let as_user = kubeconfig_with(kubeconfig, dir.path(), "as-user", |config| {
        for u in config["users"].as_array_mut().unwrap() {
            u["user"]["as"] = json!(user);
        }
    });

    let mut candidate = Candidate::start("s", &as_user, ns.name(), Some("leader-s"));
    wait_for(START, || async {
        (candidate.leader().await? == 1).then_some(())
    })
    .await
    .expect("it leads");
    // Leading, but not ready while a watch has not synced.
    let watch_until = Instant::now() + 2 * RETRY_PERIOD;
    while Instant::now() < watch_until {
        assert_eq!(
            candidate.ready().await,
            Some(false),
            "ready before its caches synced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(candidate.logged("caches synced: ready").is_none());

    // Allowed to list Secrets, the watch syncs at its next retry (backoff
    // of at most 30 s), and then it is ready.
    roles
        .patch(
            "backhaul-operator",
            &PatchParams::apply("backhaul-operator-tests").force(),
            &Patch::Apply(&operator_role(true)),
        )
        .await
        .unwrap();
    wait_for(Duration::from_secs(60), || async {
        candidate.ready().await?.then_some(())
    })
    .await
    .expect("ready once synced");
    assert!(candidate.logged("caches synced: ready").is_some());
    assert_eq!(candidate.leader().await, Some(1));
    assert!(candidate.exit().is_none());

    candidate.terminate();
    let (_, status) = candidate.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    ns.cleanup().await;
}
