//! End-to-end harness for Backhaul: real processes on 127.0.0.1 and real pods
//! on the local cluster's real node.
//!
//! - [`Proc`]: a child in a process group of its own, its output in a log file,
//!   stopped (TERM, then KILL, the whole group) when dropped.
//! - [`pods`]: regions served by the pods the operator makes on the real node
//!   (weights on a PersistentVolumeClaim, a NodePort Service on 127.0.0.1 as
//!   each region's public endpoint), and killing their containers.
//! - [`Worker`]: the routing Worker under `wrangler dev --env local`, its route
//!   table persisted in a directory that outlives restarts.
//! - [`Operator`]: the `backhaul-operator` binary against the local control plane,
//!   watching one test namespace.
//! - [`chat`]: one streamed chat completion through the Worker, parsed.
//! - [`clusters`]: a second, separate control plane (one cluster per region)
//!   and a region served by `backhaul-inference` on 127.0.0.1 (its route, its
//!   metrics).
//! - [`openai`]: the official OpenAI Python client (a pinned venv), for
//!   tests that must hold as a user's client sees them.
//!
//! Binaries come from `$CARGO_TARGET_DIR/debug` (`scripts/e2e.sh` builds them);
//! Node from `scripts/node-env.sh`'s location. Every failure names the component
//! and its log file.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
use futures::StreamExt;

pub use backhaul_testkit::{cache_dir, repo_root, wait_for};

pub mod clusters;
pub mod openai;
pub mod pods;

/// A free TCP port on 127.0.0.1.
/// SIGINT or SIGTERM: the harnesses' processes are in process groups of
/// their own, so a terminal's Ctrl-C does not reach them; a runner that
/// returns on this drops (stops) them.
pub async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

/// How one case of a runner ended: it panicked (`Err`), ran past its
/// timeout (`Ok(Err)`), or returned its result.
pub type CaseOutcome = std::thread::Result<Result<anyhow::Result<()>, tokio::time::error::Elapsed>>;

/// Prints how case `name` ended, as every runner does; true when it passed.
pub fn report_case(name: &str, secs: f64, timeout: Duration, outcome: CaseOutcome) -> bool {
    match outcome {
        Ok(Ok(Ok(()))) => {
            eprintln!("test {name} ... ok ({secs:.1}s)");
            return true;
        }
        Ok(Ok(Err(error))) => eprintln!("test {name} ... FAILED ({secs:.1}s): {error:#}"),
        Ok(Err(_)) => eprintln!("test {name} ... FAILED: did not finish within {timeout:?}"),
        Err(_) => eprintln!("test {name} ... FAILED ({secs:.1}s): panicked (see above)"),
    }
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// `$BACKHAUL_OPERATOR_BIN` / `$BACKHAUL_INFERENCE_BIN` when set, else
/// `$CARGO_TARGET_DIR/debug/<name>`.
pub fn binary(name: &str) -> PathBuf {
    let var = format!(
        "BACKHAUL_{}_BIN",
        name.trim_start_matches("backhaul-").to_ascii_uppercase()
    );
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("target"));
    target.join("debug").join(name)
}

/// The Worker's checkout `wrangler dev` runs: `$BACKHAUL_WORKER_DIR`, else
/// this repository's `worker/`. wrangler dev reloads on every change to its
/// sources, so a long run measures a checkout nobody edits meanwhile (a
/// `git worktree`'s, with `node_modules` linked in).
pub fn worker_dir() -> PathBuf {
    std::env::var_os("BACKHAUL_WORKER_DIR")
        .filter(|p| !p.is_empty())
        .map_or_else(|| repo_root().join("worker"), PathBuf::from)
}

/// The SmolLM2 GGUF file `make model` fetches.
pub fn model_file() -> PathBuf {
    std::env::var_os("BACKHAUL_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// Where this run's logs go: `$BACKHAUL_E2E_LOGS`, else `$BACKHAUL_CACHE/e2e/logs`.
pub fn logs_dir() -> PathBuf {
    let dir = std::env::var_os("BACKHAUL_E2E_LOGS")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("e2e/logs"));
    std::fs::create_dir_all(&dir).expect("the e2e log directory");
    dir
}

/// A child process in its own process group; dropping it stops the group.
#[derive(Debug)]
pub struct Proc {
    /// Which component this is, for messages.
    pub name: String,
    /// Its combined stdout and stderr.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `command` in a new process group, output appended to `logs_dir()/<log_name>.log`.
    pub fn spawn(name: &str, log_name: &str, mut command: Command) -> Result<Self> {
        let log = logs_dir().join(format!("{log_name}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {name} ({command:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child: Some(child),
        })
    }

    /// The process (and group) id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to the whole group, then waits up to
    /// `grace` for the leader to exit before KILLing the group.
    pub fn stop_with(&mut self, signal: &str, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = format!("-{}", child.id());
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &group])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The group may hold more than the leader (wrangler's workerd).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL, no grace: a crash.
    pub fn kill(&mut self) {
        self.stop_with("KILL", Duration::from_secs(5));
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop_with("TERM", Duration::from_secs(10));
    }
}

async fn http_ok(client: &reqwest::Client, url: &str) -> bool {
    matches!(client.get(url).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status().is_success())
}

/// Polls `url` until it answers 2xx; fails naming the component and its log.
async fn wait_http(proc: &mut Proc, url: &str, timeout: Duration) -> Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    loop {
        if http_ok(&client, url).await {
            return Ok(());
        }
        if !proc.running() {
            bail!(
                "{} exited before {url} answered; log {}:\n{}",
                proc.name,
                proc.log.display(),
                proc.tail(20)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer {url} within {timeout:?}; log {}:\n{}",
                proc.name,
                proc.log.display(),
                proc.tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The id of the publisher key the tests' operators sign with.
pub const PUBLISHER_KEY_ID: &str = "e2e";

/// A new Ed25519 key.
pub fn new_signing_key() -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    seed[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    SigningKey::from_bytes(&seed)
}

/// One `BACKHAUL_PUBLISHERS` entry (docs/publication.md).
pub fn publisher_entry(
    id: &str,
    key: &SigningKey,
    group: &str,
    namespaces: &[&str],
    regions: &[&str],
) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "publicKey": backhaul_operator::publish::public_key_base64(key),
        "group": group,
        "namespaces": namespaces,
        "regions": regions,
    })
}

/// The routing Worker under `wrangler dev --env local`.
#[derive(Debug)]
pub struct Worker {
    pub port: u16,
    /// The operators' publisher key (id [`PUBLISHER_KEY_ID`], any namespace and region).
    pub key: SigningKey,
    /// `key` as a PKCS#8 PEM file, for `--publish-key-file`.
    pub key_file: PathBuf,
    /// More publishers in `BACKHAUL_PUBLISHERS` (tests of scopes and key
    /// rotation): id, key, and the key as a PEM file.
    pub extra_keys: Vec<(String, SigningKey, PathBuf)>,
    pub state: PathBuf,
    env_file: PathBuf,
    proc: Option<Proc>,
    starts: u32,
}

impl Worker {
    /// Starts a Worker with a fresh persisted route table under `state`.
    ///
    /// Publishers: the operators' key (any namespace, region and host), and
    /// `extra` (id, group, namespaces, regions) for the tests of scopes.
    pub async fn start(state: &Path, extra: &[(&str, &str, &[&str], &[&str])]) -> Result<Self> {
        Self::start_with_vars(state, extra, &[]).await
    }

    /// [`Worker::start`] with more vars in its `.dev.vars` (`vars`: name and
    /// value, e.g. `CACHE_MODELS`), each replacing `wrangler.jsonc`'s.
    pub async fn start_with_vars(
        state: &Path,
        extra: &[(&str, &str, &[&str], &[&str])],
        vars: &[(&str, &str)],
    ) -> Result<Self> {
        let key = new_signing_key();
        let key_file = state.join("publish-key.pem");
        std::fs::write(&key_file, key.to_pkcs8_pem(LineEnding::LF)?.as_bytes())?;
        let mut extra_keys = Vec::new();
        for (id, ..) in extra {
            let k = new_signing_key();
            let file = state.join(format!("publish-key-{id}.pem"));
            std::fs::write(&file, k.to_pkcs8_pem(LineEnding::LF)?.as_bytes())?;
            extra_keys.push(((*id).to_owned(), k, file));
        }
        let mut publishers = vec![publisher_entry(
            PUBLISHER_KEY_ID,
            &key,
            "e2e",
            &["*"],
            &["*"],
        )];
        for ((id, group, namespaces, regions), (_, k, _)) in extra.iter().zip(&extra_keys) {
            publishers.push(publisher_entry(id, k, group, namespaces, regions));
        }
        let env_file = state.join(".dev.vars");
        // dotenv: a single-quoted value is taken literally (the JSON has double quotes).
        let mut dev_vars = format!(
            "BACKHAUL_PUBLISHERS='{}'\nBACKHAUL_API_KEYS=\"\"\nALLOW_ANONYMOUS=\"true\"\nALLOW_ANONYMOUS_ROUTE_HINT=\"true\"\nTRUST_LOCATION_HEADER=\"true\"\n",
            serde_json::Value::Array(publishers)
        );
        for (name, value) in vars {
            if value.contains('\'') || value.contains('\n') {
                bail!(
                    "Worker var {name}: a .dev.vars value cannot hold a single quote or a newline"
                );
            }
            dev_vars.push_str(&format!("{name}='{value}'\n"));
        }
        std::fs::write(&env_file, dev_vars)?;
        let mut worker = Self {
            port: free_port(),
            key,
            key_file,
            extra_keys,
            state: state.join("wrangler"),
            env_file,
            proc: None,
            starts: 0,
        };
        worker.spawn().await?;
        Ok(worker)
    }

    async fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let node_bin = cache_dir().join("node/bin");
        let path = format!(
            "{}:{}",
            node_bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut command = Command::new(node_bin.join("npx"));
        command
            .current_dir(worker_dir())
            .env("PATH", path)
            .env("WRANGLER_SEND_METRICS", "false")
            .args(["wrangler", "dev", "--env", "local", "--ip", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .args(["--inspector-port", &free_port().to_string()])
            .arg("--persist-to")
            .arg(&self.state)
            .arg("--env-file")
            .arg(&self.env_file)
            .args([
                "--show-interactive-dev-session=false",
                "--log-level",
                "info",
            ]);
        let mut proc = Proc::spawn("the Worker (wrangler dev)", "worker", command)?;
        wait_http(
            &mut proc,
            &format!("{}/health", self.url()),
            Duration::from_secs(90),
        )
        .await?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops the Worker (its whole process group) and starts it again on the
    /// same port with the same persisted state.
    pub async fn restart(&mut self) -> Result<()> {
        if let Some(mut proc) = self.proc.take() {
            proc.stop_with("TERM", Duration::from_secs(10));
        }
        self.spawn().await
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        logs_dir().join("worker.log")
    }

    /// The operators' signature of an admin request (docs/publication.md).
    pub fn sign(&self, ts: u64, method: &str, path: &str, body: &[u8]) -> String {
        backhaul_operator::publish::sign(&self.key, PUBLISHER_KEY_ID, ts, method, path, body)
    }

    /// An admin request signed with the operators' key; returns status and body.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        ts: u64,
        signature: Option<&str>,
    ) -> Result<(u16, String)> {
        let signature = signature.map_or_else(|| self.sign(ts, method, path, body), str::to_owned);
        self.admin_as(PUBLISHER_KEY_ID, method, path, body, ts, &signature)
            .await
    }

    /// An admin request signed by the extra publisher `id`.
    pub async fn admin_with(
        &self,
        id: &str,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, String)> {
        let (_, key, _) = self
            .extra_keys
            .iter()
            .find(|(k, ..)| k == id)
            .ok_or_else(|| anyhow!("no publisher {id}"))?;
        let ts = now();
        let signature = backhaul_operator::publish::sign(key, id, ts, method, path, body);
        self.admin_as(id, method, path, body, ts, &signature).await
    }

    async fn admin_as(
        &self,
        key_id: &str,
        method: &str,
        path: &str,
        body: &[u8],
        ts: u64,
        signature: &str,
    ) -> Result<(u16, String)> {
        let client = reqwest::Client::new();
        let response = client
            .request(method.parse()?, format!("{}{path}", self.url()))
            .header("x-backhaul-key-id", key_id)
            .header("x-backhaul-timestamp", ts.to_string())
            .header("x-backhaul-signature", signature)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .with_context(|| {
                format!(
                    "the Worker did not answer {method} {path} (log {})",
                    self.log().display()
                )
            })?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// The route table (signed GET /admin/v1/routes).
    pub async fn routes(&self) -> Result<Vec<serde_json::Value>> {
        let (status, body) = self
            .admin("GET", "/admin/v1/routes", b"", now(), None)
            .await?;
        if status != 200 {
            bail!("the Worker answered GET /admin/v1/routes with {status}: {body}");
        }
        let value: serde_json::Value = serde_json::from_str(&body)?;
        Ok(value["routes"].as_array().cloned().unwrap_or_default())
    }

    /// Publishes `route` as an operator does (a signed `PUT`,
    /// docs/publication.md); fails unless the Worker stores it.
    pub async fn put_route(&self, route: &backhaul_operator::publish::Route) -> Result<()> {
        let path = format!(
            "/admin/v1/routes/{}/{}/{}",
            route.namespace, route.name, route.region
        );
        let body = serde_json::to_vec(route)?;
        let (status, answer) = self.admin("PUT", &path, &body, now(), None).await?;
        if status != 200 {
            bail!(
                "the Worker answered PUT {path} with {status}: {answer} (log {})",
                self.log().display()
            );
        }
        Ok(())
    }

    /// Polls `GET /v1/models` until it lists `model` (a route just published
    /// is served once the Worker lists its model).
    pub async fn wait_for_model(&self, model: &str, timeout: Duration) -> Result<()> {
        let http = reqwest::Client::new();
        let url = format!("{}/v1/models", self.url());
        let deadline = Instant::now() + timeout;
        loop {
            let listed = match http.get(&url).timeout(Duration::from_secs(5)).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            if listed.contains(&format!("\"{model}\"")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the Worker did not list {model} within {timeout:?} (last answer {listed:?}); log {}",
                    self.log().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The routes of one namespace/name, by region.
    pub async fn routes_of(&self, namespace: &str, name: &str) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .routes()
            .await?
            .into_iter()
            .filter(|r| r["namespace"] == namespace && r["name"] == name)
            .collect())
    }
}

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The `backhaul-operator` binary watching one namespace.
#[derive(Debug)]
pub struct Operator {
    pub proc: Proc,
    pub metrics_port: u16,
}

impl Operator {
    /// Starts the operator for `namespace` (and only `regions`, if given),
    /// publishing to `worker`; waits until `/readyz`.
    pub async fn start(
        kubeconfig: &Path,
        namespace: &str,
        worker: &Worker,
        regions: Option<&str>,
        log_name: &str,
    ) -> Result<Self> {
        Self::start_signing_as(
            kubeconfig,
            namespace,
            worker,
            regions,
            log_name,
            PUBLISHER_KEY_ID,
        )
        .await
    }

    /// [`Operator::start`], signing with the Worker's publisher `key_id`
    /// (the operators' key, or one of its extra keys).
    pub async fn start_signing_as(
        kubeconfig: &Path,
        namespace: &str,
        worker: &Worker,
        regions: Option<&str>,
        log_name: &str,
        key_id: &str,
    ) -> Result<Self> {
        Self::start_with_args(
            kubeconfig,
            namespace,
            worker,
            regions,
            log_name,
            key_id,
            &[],
        )
        .await
    }

    /// [`Operator::start_signing_as`] with more flags (`extra`, e.g. a short
    /// `--fleet-poll-interval`).
    pub async fn start_with_args(
        kubeconfig: &Path,
        namespace: &str,
        worker: &Worker,
        regions: Option<&str>,
        log_name: &str,
        key_id: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let key_file = if key_id == PUBLISHER_KEY_ID {
            worker.key_file.clone()
        } else {
            worker
                .extra_keys
                .iter()
                .find(|(id, ..)| id == key_id)
                .map(|(.., file)| file.clone())
                .ok_or_else(|| anyhow!("the Worker has no publisher {key_id}"))?
        };
        let metrics_port = free_port();
        let mut command = Command::new(binary("backhaul-operator"));
        command
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,backhaul_operator=debug")
            .env("BACKHAUL_PUBLISH_KEY_FILE", &key_file)
            .env("BACKHAUL_PUBLISH_KEY_ID", key_id)
            .args(["--watch-namespace", namespace])
            .args(["--worker-url", &worker.url()])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--identity", log_name]);
        if let Some(regions) = regions {
            command.args(["--regions", regions]);
        }
        command.args(extra);
        let mut proc = Proc::spawn(
            &format!("backhaul-operator ({log_name})"),
            log_name,
            command,
        )?;
        wait_http(
            &mut proc,
            &format!("http://127.0.0.1:{metrics_port}/readyz"),
            Duration::from_secs(60),
        )
        .await?;
        Ok(Self { proc, metrics_port })
    }
}

/// What one streamed chat completion through the Worker gave.
#[derive(Debug, Default)]
pub struct Chat {
    pub status: u16,
    pub region: Option<String>,
    pub tier: Option<String>,
    pub attempts: Option<u32>,
    pub reason: Option<String>,
    /// The content deltas, joined.
    pub text: String,
    /// How many `data:` events carried content.
    pub content_events: usize,
    /// `usage` of the final chunk (`stream_options.include_usage`).
    pub usage: Option<serde_json::Value>,
    /// An error event's `error` object, if the stream carried one.
    pub error_event: Option<serde_json::Value>,
    pub done: bool,
    /// The body, when the answer was not a stream.
    pub body: String,
    /// From sending the request to its first content delta (time to first token).
    pub first_content_after: Option<Duration>,
}

/// A streamed chat completion through the Worker, from a client at `location`
/// ("lat,lon"). `on_first_content` runs once, when the first content delta arrives.
pub async fn chat(
    worker_url: &str,
    model: &str,
    location: &str,
    max_tokens: u32,
    mut on_first_content: impl FnMut(),
) -> Result<Chat> {
    let body = serde_json::json!({
        "model": model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": max_tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}],
    });
    let sent = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("{worker_url}/v1/chat/completions"))
        .header("x-backhaul-client-location", location)
        .json(&body)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .context("the Worker did not answer POST /v1/chat/completions")?;
    let header = |name: &str| header_text(&response, name);
    let mut chat = Chat {
        status: response.status().as_u16(),
        region: header("x-backhaul-region"),
        tier: header("x-backhaul-tier"),
        attempts: header("x-backhaul-attempts").and_then(|v| v.parse().ok()),
        reason: header("x-backhaul-reason"),
        ..Chat::default()
    };
    let is_sse = header("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        chat.body = response.text().await.unwrap_or_default();
        return Ok(chat);
    }
    let mut stream = response.bytes_stream();
    let mut events = SseParser::default();
    let mut fired = false;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { break };
        for data in events.push(&chunk) {
            let SseData::Json(value) = data else {
                chat.done |= data == SseData::Done;
                continue;
            };
            if let Some(error) = value.get("error") {
                chat.error_event = Some(error.clone());
            }
            if let Some(usage) = value.get("usage").filter(|u| !u.is_null()) {
                chat.usage = Some(usage.clone());
            }
            if let Some(content) = SseData::content_of(&value) {
                chat.text.push_str(content);
                chat.content_events += 1;
                if !fired {
                    fired = true;
                    chat.first_content_after = Some(sent.elapsed());
                    on_first_content();
                }
            }
        }
    }
    Ok(chat)
}

/// One `data:` payload of a server-sent event stream.
#[derive(Debug, PartialEq)]
pub enum SseData {
    /// `data: [DONE]`: the stream's last event.
    Done,
    /// A JSON payload: a chunk, or an `{"error": ...}` event.
    Json(serde_json::Value),
    /// Anything else.
    Other(String),
}

impl SseData {
    /// The non-empty content delta of a chat completion chunk.
    pub fn content_of(value: &serde_json::Value) -> Option<&str> {
        value["choices"][0]["delta"]["content"]
            .as_str()
            .filter(|c| !c.is_empty())
    }
}

/// Splits an SSE body into its events' `data:` payloads, however the bytes
/// were chunked on the way (an event, or a UTF-8 character, may span reads).
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    /// Takes the next bytes of the body; returns the payloads of the events
    /// they completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseData> {
        self.buffer.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
            for line in String::from_utf8_lossy(&event).lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim();
                out.push(if data == "[DONE]" {
                    SseData::Done
                } else {
                    serde_json::from_str(data)
                        .map_or_else(|_| SseData::Other(data.to_owned()), SseData::Json)
                });
            }
        }
        out
    }
}

/// A response header as text, if present and visible ASCII.
pub fn header_text(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Fails unless `cond`, with a message naming the component.
pub fn check(cond: bool, component: &str, message: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(anyhow!("{component}: {}", message()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_parser_joins_events_split_across_reads() {
        let mut events = SseParser::default();
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"é\"}}]}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\n: comment\n\ndata: [DONE]\n\n";
        let bytes = body.as_bytes();
        // Split inside the two-byte "é" and inside the blank line.
        let cut = body.find('é').unwrap() + 1;
        let mut got = events.push(&bytes[..cut]);
        assert!(got.is_empty());
        got.extend(events.push(&bytes[cut..cut + 20]));
        got.extend(events.push(&bytes[cut + 20..]));
        assert_eq!(got.len(), 3);
        let SseData::Json(first) = &got[0] else {
            panic!("not JSON: {:?}", got[0])
        };
        assert_eq!(SseData::content_of(first), Some("é"));
        assert!(matches!(&got[1], SseData::Json(v) if v.get("error").is_some()));
        assert_eq!(got[2], SseData::Done);
    }
}
