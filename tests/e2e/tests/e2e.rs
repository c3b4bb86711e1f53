//! End-to-end and fault tests over the whole path: a ModelDeployment on the
//! local cluster, the operator binary publishing to the Worker under
//! `wrangler dev`, and the regions served by the pods the operator makes on
//! the cluster's real node (`tests/cluster/node.sh`): `backhaul-inference` in
//! containers from the image `make images` builds, SmolLM2 on a
//! PersistentVolumeClaim, readiness from the kubelet's gRPC probes, each
//! region reached through a NodePort Service on 127.0.0.1. Faults are real
//! too: a container killed through the CRI, a rolling update, a deletion.
//! Only `operator_killed_during_reconcile_converges` uses the kwok GPU nodes
//! (it is about reconciling, and nothing there serves).
//!
//! One Worker serves every test (started once, stopped at the end); each test
//! has its own namespace, served model name, pods and operator. Run with
//! `scripts/e2e.sh` (`make e2e`); names given as arguments select tests by
//! substring. Logs: `$BACKHAUL_CACHE/e2e/logs` (each failure names its file).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backhaul_e2e::pods::{self, ModelVolume, PodRegion};
use backhaul_e2e::{Operator, Worker, chat, check, now, wait_for};
use backhaul_testkit::TestNamespace;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

/// New York: nearer us-east (Ashburn) than eu-west (Dublin).
const NEW_YORK: &str = "40.71,-74.01";
/// London: nearer eu-west.
const LONDON: &str = "51.51,-0.13";
const US_EAST: (f64, f64) = (39.04, -77.49);
const EU_WEST: (f64, f64) = (53.35, -6.26);
const AP_SOUTH: (f64, f64) = (19.08, 72.88);

struct Ctx {
    kubeconfig: PathBuf,
    client: Client,
    worker: Worker,
}

type TestFn = for<'a> fn(&'a mut Ctx) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: Vec<(&str, TestFn)> = vec![
        ("bad_publications_leave_the_table_unchanged", |c| {
            Box::pin(bad_publications(c))
        }),
        ("happy_path_real_pods_serve_the_nearest_region", |c| {
            Box::pin(happy_path(c))
        }),
        ("container_killed_fails_over_and_republishes", |c| {
            Box::pin(container_killed(c))
        }),
        ("saturated_region_fails_over", |c| {
            Box::pin(saturated_region(c))
        }),
        ("container_killed_mid_stream_sends_an_error_event", |c| {
            Box::pin(killed_mid_stream(c))
        }),
        ("rolling_update_under_load_fails_no_request", |c| {
            Box::pin(rolling_update(c))
        }),
        (
            "deleted_during_a_stream_drains_then_routes_elsewhere",
            |c| Box::pin(deleted_during_stream(c)),
        ),
        ("operator_killed_during_reconcile_converges", |c| {
            Box::pin(operator_killed(c))
        }),
        ("worker_restart_keeps_the_route_table", |c| {
            Box::pin(worker_restart(c))
        }),
        ("silent_operator_region_leaves_after_ttl", |c| {
            Box::pin(silent_operator(c))
        }),
        (
            "region_refuses_requests_without_the_workers_credential_and_rotates_it",
            |c| Box::pin(region_credential(c)),
        ),
        ("operator_recovers_from_a_higher_stored_sequence", |c| {
            Box::pin(stale_sequence(c))
        }),
        (
            "weights_cache_fills_once_then_replicas_and_a_new_revision_roll_on_it",
            |c| Box::pin(weights_cache(c)),
        ),
    ];
    let selected: Vec<_> = tests
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    runtime.block_on(async move {
        let started = Instant::now();
        let mut ctx = match setup().await {
            Ok(ctx) => ctx,
            Err(error) => {
                eprintln!("e2e: setup failed: {error:#}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!(
            "e2e: setup (control plane, CRD, Worker) in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let mut failed = Vec::new();
        for (name, test) in &selected {
            let t = Instant::now();
            eprintln!("test {name} ...");
            let outcome = AssertUnwindSafe(tokio::time::timeout(
                Duration::from_secs(240),
                test(&mut ctx),
            ))
            .catch_unwind()
            .await;
            let secs = t.elapsed().as_secs_f64();
            release_abandoned(&ctx.client).await;
            if !backhaul_e2e::report_case(name, secs, Duration::from_secs(240), outcome) {
                failed.push(*name);
            }
        }
        drop(ctx);
        let total = started.elapsed().as_secs_f64();
        let passed = selected.len() - failed.len();
        eprintln!(
            "e2e: {passed} passed, {} failed in {total:.1}s (logs in {})",
            failed.len(),
            backhaul_e2e::logs_dir().display()
        );
        if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            eprintln!("e2e: failed: {}", failed.join(", "));
            ExitCode::FAILURE
        }
    })
}

async fn setup() -> Result<Ctx> {
    let operator = backhaul_e2e::binary("backhaul-operator");
    if !operator.exists() {
        eprintln!(
            "e2e: {} is missing (scripts/e2e.sh builds it): tests that start it will fail",
            operator.display()
        );
    }
    if !backhaul_e2e::model_file().exists() {
        bail!(
            "{} is missing: make model",
            backhaul_e2e::model_file().display()
        );
    }
    let logs = backhaul_e2e::logs_dir();
    for entry in std::fs::read_dir(&logs)?.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
    let cluster = backhaul_testkit::cluster().await;
    let kubectl = backhaul_e2e::cache_dir().join("bin/kubectl");
    let status = std::process::Command::new(&kubectl)
        .env("KUBECONFIG", &cluster.kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(backhaul_e2e::repo_root().join("crds"))
        .stdout(std::process::Stdio::null())
        .status()
        .context("run kubectl apply -f crds/")?;
    if !status.success() {
        bail!("kubectl apply -f crds/ failed ({status})");
    }
    pods::require_image(&pods::inference_image())?;
    ModelVolume::remove_leftovers(&cluster.client()).await?;
    let state = backhaul_e2e::cache_dir().join("e2e/worker-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    // Besides the operators' key: one scoped to eu-west (same group), and
    // another publisher group, for the scope and ownership tests.
    let worker = Worker::start(
        &state,
        &[
            ("e2e-eu-only", "e2e", &["*"], &["eu-west"]),
            ("e2e-other", "other", &["*"], &["*"]),
            // The operators' next key, for the publisher-key rotation.
            ("e2e-next", "e2e", &["*"], &["*"]),
        ],
    )
    .await?;
    Ok(Ctx {
        kubeconfig: cluster.kubeconfig.clone(),
        client: cluster.client(),
        worker,
    })
}

/// A test that failed returned before its teardown: its namespace is being
/// deleted (the namespace guard's drop), and its ModelDeployments wait for
/// an operator that is gone to release their finalizer. Release them, so
/// nothing is left behind.
async fn release_abandoned(client: &Client) {
    let gvk = GroupVersionKind::gvk("backhaul.dev", "v1alpha1", "ModelDeployment");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "modeldeployments");
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let Ok(list) = all.list(&ListParams::default()).await else {
        return;
    };
    for md in list.items {
        let (Some(namespace), Some(name)) =
            (md.metadata.namespace.clone(), md.metadata.name.clone())
        else {
            continue;
        };
        let terminating = namespaces
            .get_opt(&namespace)
            .await
            .ok()
            .flatten()
            .is_none_or(|n| n.metadata.deletion_timestamp.is_some());
        if terminating && namespace.starts_with("e2e-") {
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            let _ = md_api(client, &namespace)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    }
}

fn md_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("backhaul.dev", "v1alpha1", "ModelDeployment");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "modeldeployments");
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// A test's ModelDeployment: its namespace (with the models claim), API and
/// served model name.
struct Model {
    ns: Option<TestNamespace>,
    volume: Option<ModelVolume>,
    client: Client,
    api: Api<DynamicObject>,
    namespace: String,
    name: String,
    served: String,
}

/// Routing settings of every test's ModelDeployment: every request is heavy
/// (goes to a region), a region that sends no headers within 10 s fails over.
fn routing(ttl: u32) -> serde_json::Value {
    serde_json::json!({"heavyPromptTokens": 0, "heavyMaxTokens": 0, "failoverAttempts": 3,
                       "firstByteTimeoutSeconds": 10, "requestTimeoutSeconds": 60, "ttlSeconds": ttl})
}

impl Model {
    async fn new(ctx: &Ctx, prefix: &str) -> Result<Model> {
        let ns = TestNamespace::new(&ctx.client, &format!("e2e-{prefix}")).await;
        let namespace = ns.name().to_owned();
        let served = format!("smollm2-{}", &namespace[namespace.len() - 8..]);
        let volume = ModelVolume::create(&ctx.client, &namespace).await?;
        Ok(Model {
            api: md_api(&ctx.client, &namespace),
            client: ctx.client.clone(),
            ns: Some(ns),
            volume: Some(volume),
            namespace,
            name: "smollm2".into(),
            served,
        })
    }

    /// Another ModelDeployment in the same namespace serving the same model.
    fn sibling(&self, name: &str) -> Model {
        Model {
            ns: None,
            volume: None,
            client: self.client.clone(),
            api: self.api.clone(),
            namespace: self.namespace.clone(),
            name: name.to_owned(),
            served: self.served.clone(),
        }
    }

    /// Exposes each region (name, location) through a NodePort Service and
    /// creates the ModelDeployment whose regions run on the real node, with
    /// these engine settings; returns the regions' endpoints.
    async fn apply_pods(
        &self,
        regions: &[(&str, (f64, f64))],
        engine: serde_json::Value,
        ttl: u32,
    ) -> Result<Vec<PodRegion>> {
        let mut exposed = Vec::new();
        for (region, _) in regions {
            exposed
                .push(PodRegion::expose(&self.client, &self.namespace, &self.name, region).await?);
        }
        let (node_selector, tolerations) = pods::on_real_node();
        let specs: Vec<_> = regions
            .iter()
            .zip(&exposed)
            .map(|((name, (lat, lon)), region)| {
                serde_json::json!({"name": name, "replicas": 1, "location": {"latitude": lat, "longitude": lon},
                                   "endpoint": region.endpoint(), "nodeSelector": node_selector,
                                   "tolerations": tolerations})
            })
            .collect();
        let mut engine = engine;
        if engine.get("drainTimeoutSeconds").is_none() {
            engine["drainTimeoutSeconds"] = 20.into();
        }
        self.create(serde_json::json!({
            "model": {"source": pods::MODELS_DIR, "format": "gguf", "ggufFiles": [pods::MODEL_FILE],
                      "servedName": self.served, "volume": {"claimName": pods::MODELS_CLAIM}},
            "engine": engine,
            "resources": {"gpusPerReplica": 0},
            "regions": specs,
            "routing": routing(ttl),
        }))
        .await?;
        Ok(exposed)
    }

    /// Creates the ModelDeployment with GPU regions (name, location,
    /// endpoint): their pods land on the kwok nodes and run nothing.
    async fn apply_kwok(&self, regions: &[(&str, (f64, f64), String)], ttl: u32) -> Result<()> {
        let regions: Vec<_> = regions
            .iter()
            .map(|(name, (lat, lon), endpoint)| {
                serde_json::json!({"name": name, "replicas": 1, "location": {"latitude": lat, "longitude": lon}, "endpoint": endpoint})
            })
            .collect();
        self.create(serde_json::json!({
            "model": {"source": "/models/smollm2", "format": "gguf",
                      "ggufFiles": [pods::MODEL_FILE], "servedName": self.served},
            "resources": {"gpusPerReplica": 1},
            "regions": regions,
            "routing": routing(ttl),
        }))
        .await
    }

    async fn create(&self, spec: serde_json::Value) -> Result<()> {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "backhaul.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        }))?;
        self.api
            .create(&PostParams::default(), &object)
            .await
            .context("the API server refused the ModelDeployment")?;
        Ok(())
    }

    /// Merges `engine` into `spec.engine` (a change of the pods' template).
    async fn patch_engine(&self, engine: serde_json::Value) -> Result<()> {
        let patch = serde_json::json!({"spec": {"engine": engine}});
        self.api
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .context("patch spec.engine")?;
        Ok(())
    }

    /// Waits until the object says Published=True and the Worker's table has
    /// a live route for each of `regions`.
    async fn wait_published(
        &self,
        worker: &Worker,
        regions: &[&str],
        operator_log: &str,
    ) -> Result<()> {
        let published = wait_for(Duration::from_secs(120), || async {
            let object = self.api.get(&self.name).await.ok()?;
            let conditions = object.data["status"]["conditions"].as_array()?.clone();
            let ok = conditions
                .iter()
                .any(|c| c["type"] == "Published" && c["status"] == "True");
            ok.then_some(())
        })
        .await;
        if published.is_err() {
            let object = self.api.get(&self.name).await.ok();
            bail!(
                "backhaul-operator: ModelDeployment {}/{} not Published within 120 s (status: {}); operator log {operator_log}; pods: {}",
                self.namespace,
                self.name,
                object
                    .map(|o| o.data["status"].to_string())
                    .unwrap_or_default(),
                self.describe_pods().await
            );
        }
        let routes = wait_for(Duration::from_secs(30), || async {
            let live = live_regions(worker, &self.namespace, &self.name).await?;
            regions
                .iter()
                .all(|r| live.iter().any(|l| l == r))
                .then_some(())
        })
        .await;
        if routes.is_err() {
            bail!(
                "the Worker: routes for {}/{} in regions {regions:?} not in its table (GET /admin/v1/routes: {:?}); Worker log {}, operator log {operator_log}",
                self.namespace,
                self.name,
                worker.routes_of(&self.namespace, &self.name).await.ok(),
                worker.log().display()
            );
        }
        Ok(())
    }

    /// [`Model::wait_published`], then until each region's Service answers
    /// `/ready`: a pod is Ready (and its route published) a moment before
    /// kube-proxy sends its Service's traffic to it, as an ingress would be.
    /// Returns how long that moment was.
    async fn wait_serving(
        &self,
        worker: &Worker,
        regions: &[PodRegion],
        operator_log: &str,
    ) -> Result<Duration> {
        let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
        self.wait_published(worker, &names, operator_log).await?;
        let published = Instant::now();
        for region in regions {
            region.wait_reachable(Duration::from_secs(30)).await?;
        }
        Ok(published.elapsed())
    }

    /// One line per pod of the namespace: name, phase, readiness, restarts
    /// and the last state of its container, for failure messages.
    async fn describe_pods(&self) -> String {
        let api: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let Ok(list) = api.list(&ListParams::default()).await else {
            return "(cannot list pods)".into();
        };
        list.items
            .iter()
            .map(|p| {
                let status = p.status.as_ref();
                format!(
                    "{} on {:?}: {:?} ready={} restarts={} state={}",
                    p.metadata.name.as_deref().unwrap_or("?"),
                    p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    status.and_then(|s| s.phase.clone()),
                    pods::pod_ready(p),
                    pods::restarts(p),
                    status
                        .and_then(|s| s.container_statuses.as_ref())
                        .and_then(|c| c.first())
                        .map(|c| serde_json::to_string(&c.state).unwrap_or_default())
                        .unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Deletes the object (the operator, if still running, withdraws its
    /// routes and releases its finalizer; otherwise the finalizer is removed
    /// here), then the namespace and the models volume.
    async fn teardown(mut self) {
        let _ = self.api.delete(&self.name, &DeleteParams::default()).await;
        let gone = wait_for(Duration::from_secs(15), || async {
            matches!(self.api.get_opt(&self.name).await, Ok(None)).then_some(())
        })
        .await;
        if gone.is_err() {
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            let _ = self
                .api
                .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
        if let Some(ns) = self.ns.take() {
            ns.cleanup().await;
        }
        if let Some(volume) = self.volume.take() {
            volume.remove().await;
        }
    }
}

/// Regions with a live (unexpired) route for namespace/name in the Worker.
async fn live_regions(worker: &Worker, namespace: &str, name: &str) -> Option<Vec<String>> {
    let routes = worker.routes_of(namespace, name).await.ok()?;
    Some(
        routes
            .iter()
            .filter(|r| r["expired"] != true)
            .filter_map(|r| r["region"].as_str().map(str::to_owned))
            .collect(),
    )
}

async fn start_operator(ctx: &Ctx, model: &Model) -> Result<Operator> {
    Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &format!("operator-{}", model.namespace),
    )
    .await
}

fn operator_log(op: &Operator) -> String {
    op.proc.log.display().to_string()
}

fn expect_region(
    chat: &backhaul_e2e::Chat,
    region: &str,
    attempts: u32,
    worker: &Worker,
) -> Result<()> {
    expect_region_after(chat, region, &[attempts], worker)
}

/// Like [`expect_region`], with any of these attempt counts.
fn expect_region_after(
    chat: &backhaul_e2e::Chat,
    region: &str,
    attempts: &[u32],
    worker: &Worker,
) -> Result<()> {
    check(chat.status == 200, "the Worker", || {
        format!(
            "answered {} ({}); log {}",
            chat.status,
            chat.body,
            worker.log().display()
        )
    })?;
    check(
        chat.region.as_deref() == Some(region)
            && chat.attempts.is_some_and(|a| attempts.contains(&a)),
        "the Worker",
        || {
            format!(
                "expected region {region} after {attempts:?} attempt(s), got region {:?} after {:?}; log {}",
                chat.region,
                chat.attempts,
                worker.log().display()
            )
        },
    )?;
    check(chat.tier.as_deref() == Some("region"), "the Worker", || {
        format!("x-backhaul-tier {:?}, expected region", chat.tier)
    })?;
    check(complete(chat), region, || {
        format!(
            "the stream was not a complete answer: {} content events, [DONE] {}, error event {:?}",
            chat.content_events, chat.done, chat.error_event
        )
    })
}

/// A 200 stream with content, `[DONE]` and no error event.
fn complete(chat: &backhaul_e2e::Chat) -> bool {
    chat.status == 200 && chat.content_events > 0 && chat.done && chat.error_event.is_none()
}

/// A client asking the model from New York, one request after another,
/// until `stop`; yields every answer.
fn chat_until(
    ctx: &Ctx,
    model: &Model,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Result<backhaul_e2e::Chat>>> {
    let (url, served) = (ctx.worker.url(), model.served.clone());
    tokio::spawn(async move {
        let mut results = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            results.push(chat(&url, &served, NEW_YORK, 4, || {}).await);
        }
        results
    })
}

/// The answers among `results` that did not [`complete`], in words.
fn incomplete(results: &[Result<backhaul_e2e::Chat>]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| match r {
            Ok(c) if complete(c) => None,
            Ok(c) => Some(format!(
                "{} from {:?}: {:?} {}",
                c.status, c.region, c.error_event, c.body
            )),
            Err(e) => Some(format!("{e:#}")),
        })
        .collect()
}

// ---------------------------------------------------------------------------

async fn happy_path(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "happy").await?;
    let op = start_operator(ctx, &model).await?;
    let applied = Instant::now();
    let regions = model
        .apply_pods(
            &[("us-east", US_EAST), ("eu-west", EU_WEST)],
            serde_json::json!({}),
            60,
        )
        .await?;
    model
        .wait_published(&ctx.worker, &["us-east", "eu-west"], &operator_log(&op))
        .await?;
    let published_after = applied.elapsed();
    let mut reachable_after = Duration::ZERO;
    for region in &regions {
        reachable_after =
            reachable_after.max(region.wait_reachable(Duration::from_secs(30)).await?);
    }
    let (us, eu) = (&regions[0], &regions[1]);

    // The kubelet's own account: container started -> Ready (probes passed).
    for region in &regions {
        let pods = region.ready_pods(&ctx.client).await?;
        let pod = pods.first().context("a Published region has a ready pod")?;
        let status = pod.status.clone().unwrap_or_default();
        let started = status.start_time.map(|t| t.0);
        let ready = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_transition_time)
            .map(|t| t.0);
        if let (Some(started), Some(ready)) = (started, ready) {
            eprintln!(
                "  {}: pod {} scheduled -> Ready in {:.0} s (kubelet clock, 1 s resolution)",
                region.name,
                pod.metadata.name.as_deref().unwrap_or("?"),
                ready.duration_since(started).as_secs_f64()
            );
        }
        // What runs is what the spec promised: not root, read-only root
        // filesystem, no capabilities.
        let id = pods::container_id(pod).context("the ready pod has a container id")?;
        let spec = pods::runtime_spec(&id)?;
        check(
            spec["process"]["user"]["uid"] == 65532
                && spec["root"]["readonly"] == true
                && spec["process"]["capabilities"]["effective"]
                    .as_array()
                    .is_none_or(|c| c.is_empty()),
            "the real node",
            || {
                format!(
                    "the inference container runs as {} with root {} and capabilities {}",
                    spec["process"]["user"], spec["root"], spec["process"]["capabilities"]
                )
            },
        )?;
    }
    eprintln!(
        "  apply -> both regions Published in the Worker: {:.1} s; their Services answered {:.1} s after that",
        published_after.as_secs_f64(),
        reachable_after.as_secs_f64()
    );

    let routes = ctx.worker.routes_of(&model.namespace, &model.name).await?;
    let us_route = routes
        .iter()
        .find(|r| r["region"] == "us-east")
        .context("the Worker: no us-east route")?;
    check(
        us_route["endpoint"] == us.endpoint() && us_route["model"] == model.served.as_str(),
        "backhaul-operator",
        || {
            format!(
                "published route {us_route} does not point at {} for {}",
                us.endpoint(),
                model.served
            )
        },
    )?;

    let max_tokens = 12;
    let answer = chat(
        &ctx.worker.url(),
        &model.served,
        NEW_YORK,
        max_tokens,
        || {},
    )
    .await?;
    expect_region(&answer, "us-east", 1, &ctx.worker)?;
    let usage = answer.usage.clone().unwrap_or_default();
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    check(
        usage["prompt_tokens"].as_u64().unwrap_or(0) > 0
            && completion > 0
            && completion <= u64::from(max_tokens),
        "backhaul-inference (us-east pod)",
        || format!("usage {usage} is not 1..={max_tokens} completion tokens with a prompt"),
    )?;
    check(answer.reason.is_some(), "the Worker", || {
        "no x-backhaul-reason header".into()
    })?;
    let from_london = chat(&ctx.worker.url(), &model.served, LONDON, max_tokens, || {}).await?;
    expect_region(&from_london, "eu-west", 1, &ctx.worker)?;
    check(eu.node_port != us.node_port, "the test", || {
        "both regions got one NodePort".into()
    })?;
    model.teardown().await;
    drop(op);
    Ok(())
}

/// Polls the Worker's table until `stop`: when `region` of namespace/name
/// was first missing from it (withdrawn or expired), if ever.
async fn watch_withdrawal(
    worker: &Worker,
    namespace: &str,
    name: &str,
    region: &str,
    stop: &AtomicBool,
) -> Option<Instant> {
    let mut first_missing = None;
    while !stop.load(Ordering::Relaxed) {
        let live = live_regions(worker, namespace, name).await;
        if live.is_some_and(|l| !l.iter().any(|r| r == region)) && first_missing.is_none() {
            first_missing = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first_missing
}

async fn container_killed(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "kill").await?;
    let op = start_operator(ctx, &model).await?;
    let regions = model
        .apply_pods(
            &[("us-east", US_EAST), ("eu-west", EU_WEST)],
            serde_json::json!({}),
            60,
        )
        .await?;
    model
        .wait_serving(&ctx.worker, &regions, &operator_log(&op))
        .await?;
    let us = &regions[0];
    let baseline = chat(&ctx.worker.url(), &model.served, NEW_YORK, 4, || {}).await?;
    expect_region(&baseline, "us-east", 1, &ctx.worker)?;

    let stop = AtomicBool::new(false);
    let watcher = watch_withdrawal(&ctx.worker, &model.namespace, &model.name, "us-east", &stop);
    let killed_at = Instant::now();
    let pod = us.kill_container(&ctx.client).await?;
    // Requests from New York meanwhile: every one must be a complete
    // answer, from eu-west while us-east is down.
    let mut answers = Vec::new();
    let requests = async {
        let back = loop {
            let answer = chat(&ctx.worker.url(), &model.served, NEW_YORK, 4, || {}).await?;
            check(complete(&answer), "the Worker", || {
                format!(
                    "request {} after the kill failed: {} {:?} ({}); log {}",
                    answers.len() + 1,
                    answer.status,
                    answer.error_event,
                    answer.body,
                    ctx.worker.log().display()
                )
            })?;
            let from_us = answer.region.as_deref() == Some("us-east");
            answers.push(answer);
            let republished = live_regions(&ctx.worker, &model.namespace, &model.name)
                .await
                .is_some_and(|l| l.iter().any(|r| r == "us-east"));
            let restarted = us
                .ready_pods(&ctx.client)
                .await?
                .iter()
                .any(|p| pods::restarts(p) >= 1);
            if restarted && republished && from_us {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > Duration::from_secs(120) {
                bail!(
                    "us-east not back 120 s after its container was killed (restarted {restarted}, republished {republished}); pods: {}",
                    model.describe_pods().await
                );
            }
        };
        stop.store(true, Ordering::Relaxed);
        anyhow::Ok(back)
    };
    let (withdrawn, back) = tokio::join!(watcher, requests);
    let back = back?;
    check(withdrawn.is_some(), "backhaul-operator", || {
        format!(
            "us-east's route stayed in the Worker's table while its pod {pod} had no ready container; log {}",
            operator_log(&op)
        )
    })?;
    let failed_over = answers
        .iter()
        .filter(|a| a.region.as_deref() == Some("eu-west"))
        .count();
    check(failed_over > 0, "the Worker", || {
        "no request was served by eu-west while us-east was down".into()
    })?;
    let ttft = |a: &backhaul_e2e::Chat| a.first_content_after.unwrap_or_default().as_secs_f64();
    let worst = answers.iter().map(ttft).fold(0.0_f64, f64::max);
    eprintln!(
        "  container killed: {} requests meanwhile, 0 failed, {failed_over} served by eu-west; \
         first token after {:.2} s at worst (baseline {:.2} s); route withdrawn {:.1} s after the kill; \
         us-east serving again after {:.1} s",
        answers.len(),
        worst,
        ttft(&baseline),
        withdrawn
            .map(|t| t.duration_since(killed_at).as_secs_f64())
            .unwrap_or_default(),
        back.as_secs_f64()
    );
    model.teardown().await;
    drop(op);
    Ok(())
}

async fn saturated_region(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "busy").await?;
    let op = start_operator(ctx, &model).await?;
    let regions = model
        .apply_pods(
            &[("us-east", US_EAST), ("eu-west", EU_WEST)],
            serde_json::json!({"maxInFlight": 1, "maxQueue": 0}),
            60,
        )
        .await?;
    model
        .wait_serving(&ctx.worker, &regions, &operator_log(&op))
        .await?;
    let us = &regions[0];

    // Hold us-east's only slot with a long request straight to it (with the
    // credential the Worker has: the region refuses requests without it).
    let token = PodRegion::upstream_tokens(&ctx.client, &model.namespace, &model.name)
        .await?
        .remove(0);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let us_url = us.endpoint();
    let holder_token = token.clone();
    let served = model.served.clone();
    let mut first_tx = Some(first_tx);
    let holder = tokio::spawn(async move {
        let body = serde_json::json!({"model": served, "stream": true, "max_tokens": 200, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from one to two hundred in words, one number per line."}]});
        let response = reqwest::Client::new()
            .post(format!("{us_url}/v1/chat/completions"))
            .bearer_auth(&holder_token)
            .json(&body)
            .send()
            .await?;
        let mut stream = response.bytes_stream();
        let mut all = String::new();
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            all.push_str(&String::from_utf8_lossy(&chunk?));
            if let Some(tx) = first_tx.take() {
                let _ = tx.send(());
            }
        }
        anyhow::Ok(all)
    });
    tokio::time::timeout(Duration::from_secs(60), first_rx)
        .await
        .context("backhaul-inference (us-east): the long request produced nothing within 60 s")??;
    // us-east is full now: it answers 429 at once.
    let direct = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", us.endpoint()))
        .bearer_auth(&token)
        .json(&serde_json::json!({"model": model.served, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}))
        .send()
        .await?;
    check(
        direct.status() == 429,
        "backhaul-inference (us-east)",
        || {
            format!(
                "with its one slot busy it answered {} instead of 429",
                direct.status()
            )
        },
    )?;
    let answer = chat(&ctx.worker.url(), &model.served, NEW_YORK, 8, || {}).await?;
    let held = holder.await??;
    expect_region(&answer, "eu-west", 2, &ctx.worker)?;
    check(
        held.contains("[DONE]"),
        "backhaul-inference (us-east)",
        || {
            format!(
                "the request holding the slot did not complete: {}",
                &held[held.len().saturating_sub(300)..]
            )
        },
    )?;
    model.teardown().await;
    drop(op);
    Ok(())
}

async fn killed_mid_stream(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "midstream").await?;
    let op = start_operator(ctx, &model).await?;
    let regions = model
        .apply_pods(
            &[("us-east", US_EAST), ("eu-west", EU_WEST)],
            serde_json::json!({}),
            60,
        )
        .await?;
    model
        .wait_serving(&ctx.worker, &regions, &operator_log(&op))
        .await?;
    let us = regions[0].clone();
    let client = ctx.client.clone();
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    // The region's container crashes once its answer has started.
    let killer = tokio::spawn(async move {
        if kill_rx.await.is_ok() {
            us.kill_container(&client).await.map(|_| ())
        } else {
            Ok(())
        }
    });
    let mut kill_tx = Some(kill_tx);
    let answer = chat(&ctx.worker.url(), &model.served, NEW_YORK, 400, move || {
        if let Some(tx) = kill_tx.take() {
            let _ = tx.send(());
        }
    })
    .await?;
    killer.await??;
    check(
        answer.status == 200 && answer.region.as_deref() == Some("us-east"),
        "the Worker",
        || {
            format!(
                "the stream should have started from us-east, got {} from {:?}",
                answer.status, answer.region
            )
        },
    )?;
    check(
        answer.content_events > 0,
        "backhaul-inference (us-east)",
        || "no token before the crash".into(),
    )?;
    check(answer.error_event.is_some(), "the Worker", || {
        format!(
            "the stream broke off mid-answer but carried no error event ([DONE] {}, {} content events); log {}",
            answer.done,
            answer.content_events,
            ctx.worker.log().display()
        )
    })?;
    // us-east is down (2 attempts) or already withdrawn (1).
    let next = chat(&ctx.worker.url(), &model.served, NEW_YORK, 8, || {}).await?;
    expect_region_after(&next, "eu-west", &[1, 2], &ctx.worker)?;
    model.teardown().await;
    drop(op);
    Ok(())
}

/// Whether every region's Deployment has rolled out its current template:
/// observed, all replicas updated and ready, and none of the pods `before`
/// left.
async fn rolled_out(
    ctx: &Ctx,
    model: &Model,
    regions: &[PodRegion],
    before: &[String],
) -> Result<bool> {
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &model.namespace);
    for region in regions {
        let list = deployments
            .list(&ListParams::default().labels(&format!(
                "backhaul.dev/model={},backhaul.dev/region={}",
                model.name, region.name
            )))
            .await?;
        let Some(d) = list.items.first() else {
            return Ok(false);
        };
        let want = d.spec.replicas.unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        let done = status.observed_generation == d.metadata.generation
            && status.updated_replicas == Some(want)
            && status.ready_replicas == Some(want)
            && status.replicas == Some(want);
        let pods = region.pods(&ctx.client).await?;
        let old_left = pods
            .iter()
            .any(|p| p.metadata.name.as_ref().is_some_and(|n| before.contains(n)));
        if !done || old_left || pods.len() != usize::try_from(want)? {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn rolling_update(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "roll").await?;
    let op = start_operator(ctx, &model).await?;
    let regions = model
        .apply_pods(
            &[("us-east", US_EAST), ("eu-west", EU_WEST)],
            serde_json::json!({"maxQueue": 8}),
            60,
        )
        .await?;
    model
        .wait_serving(&ctx.worker, &regions, &operator_log(&op))
        .await?;
    let mut before = Vec::new();
    for region in &regions {
        before.extend(
            region
                .pods(&ctx.client)
                .await?
                .into_iter()
                .filter_map(|p| p.metadata.name),
        );
    }

    // A client asking one request after another from New York: us-east
    // answers, and eu-west when us-east cannot. (One client: on two CPU
    // cores more would queue behind the new pods' model loading until the
    // Worker's first-byte timeout, which measures the machine, not the roll.)
    let stop = Arc::new(AtomicBool::new(false));
    let client = chat_until(ctx, &model, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rolled = Instant::now();
    // An engine setting: a new pod template in every region.
    model
        .patch_engine(serde_json::json!({"maxQueue": 9}))
        .await?;
    let shared: &Ctx = ctx;
    let finished = wait_for(Duration::from_secs(150), || async {
        rolled_out(shared, &model, &regions, &before)
            .await
            .ok()?
            .then_some(())
    })
    .await;
    let roll_secs = rolled.elapsed().as_secs_f64();
    // A few more requests on the new pods, then stop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let results = client.await?;
    if finished.is_err() {
        bail!(
            "the rolling update did not finish within 150 s; pods: {}",
            model.describe_pods().await
        );
    }
    let mut after = Vec::new();
    for region in &regions {
        after.extend(
            region
                .pods(&ctx.client)
                .await?
                .into_iter()
                .filter_map(|p| p.metadata.name),
        );
    }
    check(
        after.iter().all(|p| !before.contains(p)),
        "the rolling update",
        || format!("pods before {before:?}, after {after:?}: nothing was replaced"),
    )?;
    let failed = incomplete(&results);
    let worst_ttft = results
        .iter()
        .filter_map(|r| r.as_ref().ok()?.first_content_after)
        .max()
        .unwrap_or_default();
    let failovers = results
        .iter()
        .filter(|r| r.as_ref().is_ok_and(|c| c.attempts.unwrap_or(1) > 1))
        .count();
    eprintln!(
        "  rolling update of both regions in {roll_secs:.1} s under load: {} requests, {} failed, \
         {failovers} needed a second attempt, longest time to first token {:.2} s",
        results.len(),
        failed.len(),
        worst_ttft.as_secs_f64()
    );
    check(failed.is_empty(), "the rolling update", || {
        format!(
            "{} of {} requests failed: {failed:?}; Worker log {}",
            failed.len(),
            results.len(),
            ctx.worker.log().display()
        )
    })?;
    model.teardown().await;
    drop(op);
    Ok(())
}

async fn deleted_during_stream(ctx: &mut Ctx) -> Result<()> {
    // The same model served from two ModelDeployments (as from two
    // clusters): `smollm2` in us-east, `smollm2-eu` in eu-west.
    let model = Model::new(ctx, "delete").await?;
    let other = model.sibling("smollm2-eu");
    let op = start_operator(ctx, &model).await?;
    let us = model
        .apply_pods(&[("us-east", US_EAST)], serde_json::json!({}), 60)
        .await?;
    let eu = other
        .apply_pods(&[("eu-west", EU_WEST)], serde_json::json!({}), 60)
        .await?;
    model
        .wait_serving(&ctx.worker, &us, &operator_log(&op))
        .await?;
    other
        .wait_serving(&ctx.worker, &eu, &operator_log(&op))
        .await?;

    let api = model.api.clone();
    let name = model.name.clone();
    let (delete_tx, delete_rx) = tokio::sync::oneshot::channel::<()>();
    let deleter = tokio::spawn(async move {
        if delete_rx.await.is_ok() {
            api.delete(&name, &DeleteParams::default()).await?;
        }
        anyhow::Ok(Instant::now())
    });
    let mut delete_tx = Some(delete_tx);
    let max_tokens = 96;
    let answer = chat(
        &ctx.worker.url(),
        &model.served,
        NEW_YORK,
        max_tokens,
        move || {
            if let Some(tx) = delete_tx.take() {
                let _ = tx.send(());
            }
        },
    )
    .await?;
    let deleted_at = deleter.await??;
    let ended = Instant::now();
    expect_region(&answer, "us-east", 1, &ctx.worker)?;
    let completion = answer
        .usage
        .as_ref()
        .map_or(0, |u| u["completion_tokens"].as_u64().unwrap_or(0));
    check(completion > 8, "backhaul-inference (us-east pod)", || {
        format!("the stream ended after {completion} tokens: it was not drained")
    })?;
    eprintln!(
        "  the stream went on for {:.1} s after the delete and completed ({completion} tokens)",
        ended.duration_since(deleted_at).as_secs_f64()
    );
    let gone = wait_for(Duration::from_secs(60), || async {
        matches!(model.api.get_opt(&model.name).await, Ok(None)).then_some(())
    })
    .await;
    check(gone.is_ok(), "backhaul-operator", || {
        format!(
            "the deleted ModelDeployment still exists after 60 s; log {}",
            operator_log(&op)
        )
    })?;
    let next = chat(&ctx.worker.url(), &model.served, NEW_YORK, 8, || {}).await?;
    expect_region(&next, "eu-west", 1, &ctx.worker)?;
    other.teardown().await;
    model.teardown().await;
    drop(op);
    Ok(())
}

async fn operator_killed(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "opkill").await?;
    let log_name = format!("operator-{}", model.namespace);
    let mut op = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &log_name,
    )
    .await?;
    let endpoints = [
        ("us-east", US_EAST, "http://127.0.0.1:9".to_owned()),
        ("eu-west", EU_WEST, "http://127.0.0.1:9".to_owned()),
        ("ap-south", AP_SOUTH, "http://127.0.0.1:9".to_owned()),
    ];
    model.apply_kwok(&endpoints, 60).await?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &model.namespace);
    // Kill it mid-reconcile: as soon as its first Deployment exists.
    wait_for(Duration::from_secs(60), || async {
        let list = deployments.list(&ListParams::default()).await.ok()?;
        (!list.items.is_empty()).then_some(())
    })
    .await
    .with_context(|| {
        format!(
            "backhaul-operator created no Deployment within 60 s; log {}",
            op.proc.log.display()
        )
    })?;
    op.proc.kill();
    let op = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &log_name,
    )
    .await?;
    model
        .wait_published(
            &ctx.worker,
            &["us-east", "eu-west", "ap-south"],
            &operator_log(&op),
        )
        .await?;

    // One of each child per region, however the crash fell.
    let region_of = |labels: Option<&std::collections::BTreeMap<String, String>>| {
        labels
            .and_then(|l| l.get("backhaul.dev/region").cloned())
            .unwrap_or_default()
    };
    let mut regions: Vec<String> = deployments
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|d| region_of(d.metadata.labels.as_ref()))
        .collect();
    regions.sort();
    check(
        regions == ["ap-south", "eu-west", "us-east"],
        "backhaul-operator",
        || {
            format!(
                "after a crash and restart the Deployments serve {regions:?}; log {}",
                op.proc.log.display()
            )
        },
    )?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &model.namespace);
    let mut svc: Vec<String> = services
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=backhaul-operator"))
        .await?
        .items
        .iter()
        .map(|s| region_of(s.metadata.labels.as_ref()))
        .collect();
    svc.sort();
    check(
        svc == ["ap-south", "eu-west", "us-east"],
        "backhaul-operator",
        || format!("after a crash and restart the Services serve {svc:?}"),
    )?;
    let routes = ctx.worker.routes_of(&model.namespace, &model.name).await?;
    check(routes.len() == 3, "backhaul-operator", || {
        format!("expected one route per region, the Worker holds {routes:?}")
    })?;
    let object = model.api.get(&model.name).await?;
    let finalizers = object.metadata.finalizers.clone().unwrap_or_default();
    check(
        finalizers == ["backhaul.dev/unpublish"],
        "backhaul-operator",
        || format!("finalizers {finalizers:?}"),
    )?;
    model.teardown().await;
    drop(op);
    Ok(())
}

async fn worker_restart(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "restart").await?;
    let mut op = start_operator(ctx, &model).await?;
    let regions = model
        .apply_pods(&[("eu-west", EU_WEST)], serde_json::json!({}), 60)
        .await?;
    model
        .wait_serving(&ctx.worker, &regions, &operator_log(&op))
        .await?;
    // No heartbeat may re-create the route behind the restart.
    op.proc.kill();
    let before = ctx.worker.routes_of(&model.namespace, &model.name).await?;
    ctx.worker.restart().await?;
    let after = ctx.worker.routes_of(&model.namespace, &model.name).await?;
    check(before == after && after.len() == 1, "the Worker", || {
        format!(
            "its route table did not survive a restart: before {before:?}, after {after:?}; log {}",
            ctx.worker.log().display()
        )
    })?;
    let answer = chat(&ctx.worker.url(), &model.served, LONDON, 8, || {}).await?;
    expect_region(&answer, "eu-west", 1, &ctx.worker)?;
    let op = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &format!("operator-{}", model.namespace),
    )
    .await?;
    model.teardown().await;
    drop(op);
    Ok(())
}

async fn silent_operator(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "ttl").await?;
    // One operator per region, as with one cluster per region, each with its
    // own publisher key: a lease renews every route its key last wrote, so
    // two operators sharing a key would keep each other's routes alive
    // (docs/publication.md, "Leases").
    let mut op_us = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        Some("us-east"),
        &format!("operator-{}-us", model.namespace),
    )
    .await?;
    let op_eu = Operator::start_signing_as(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        Some("eu-west"),
        &format!("operator-{}-eu", model.namespace),
        "e2e-eu-only",
    )
    .await?;
    let ttl = 10;
    let regions = model
        .apply_pods(
            &[("us-east", US_EAST), ("eu-west", EU_WEST)],
            serde_json::json!({}),
            ttl,
        )
        .await?;
    model
        .wait_serving(&ctx.worker, &regions, &operator_log(&op_us))
        .await?;
    let answer = chat(&ctx.worker.url(), &model.served, NEW_YORK, 8, || {}).await?;
    expect_region(&answer, "us-east", 1, &ctx.worker)?;

    op_us.proc.kill();
    let silenced = Instant::now();
    let expired = wait_for(Duration::from_secs(u64::from(ttl) + 15), || async {
        let routes = ctx
            .worker
            .routes_of(&model.namespace, &model.name)
            .await
            .ok()?;
        routes
            .iter()
            .any(|r| r["region"] == "us-east" && r["expired"] == true)
            .then_some(())
    })
    .await;
    check(expired.is_ok(), "the Worker", || {
        format!("us-east's route not expired {ttl}+15 s after its operator went silent")
    })?;
    let eu_live = ctx.worker.routes_of(&model.namespace, &model.name).await?;
    check(
        eu_live
            .iter()
            .any(|r| r["region"] == "eu-west" && r["expired"] != true),
        "backhaul-operator (eu-west)",
        || {
            format!(
                "eu-west's route should stay live through heartbeats: {eu_live:?}; log {}",
                op_eu.proc.log.display()
            )
        },
    )?;
    eprintln!(
        "  us-east expired {:.1}s after its operator went silent (ttl {ttl}s)",
        silenced.elapsed().as_secs_f64()
    );
    // us-east's pod still serves, but no request goes there any more.
    let answer = chat(&ctx.worker.url(), &model.served, NEW_YORK, 8, || {}).await?;
    expect_region(&answer, "eu-west", 1, &ctx.worker)?;
    model.teardown().await;
    drop(op_eu);
    Ok(())
}

/// Every attack on the admin API of docs/publication.md, against the real
/// Worker under wrangler dev: each is refused with its status and leaves the
/// table as it was.
async fn bad_publications(ctx: &mut Ctx) -> Result<()> {
    let worker = &ctx.worker;
    let snapshot = |routes: Vec<serde_json::Value>| {
        let mut v: Vec<String> = routes
            .iter()
            .map(|r| {
                format!(
                    "{}/{}/{}@{}:{}",
                    r["namespace"], r["name"], r["region"], r["sequence"], r["endpoint"]
                )
            })
            .collect();
        v.sort();
        v
    };
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let namespace = format!("e2e-bad-{suffix}");
    let model = format!("smollm2-bad-{suffix}");
    let path_of = |ns: &str, region: &str| format!("/admin/v1/routes/{ns}/smollm2/{region}");
    let path = path_of(&namespace, "us-east");
    let route = |ns: &str, region: &str, model: &str, sequence: u64, published_at: &str| {
        serde_json::json!({
            "namespace": ns, "name": "smollm2", "region": region, "model": model,
            "endpoint": "http://127.0.0.1:9", "location": {"latitude": 39.04, "longitude": -77.49},
            "replicas": 1, "readyReplicas": 1,
            "routing": {"heavyPromptTokens": 0, "heavyMaxTokens": 0, "requestTimeoutMs": 1000, "firstByteTimeoutMs": 1000, "failoverAttempts": 1},
            "edgeModel": null, "generation": 1, "sequence": sequence, "publishedAt": published_at,
            "ttlSeconds": 60, "upstreamToken": "e2e-bad-publication-token",
        })
        .to_string()
    };
    let before = snapshot(worker.routes().await?);
    let body = route(&namespace, "us-east", &model, 10, &rfc3339(now()));
    let stranger = backhaul_e2e::new_signing_key();
    // (what, expected status, (timestamp, signature or None to sign properly, path, body))
    type Case = (&'static str, u16, (u64, Option<String>, String, String));
    let bad_cases: Vec<Case> = vec![
        (
            "a key the Worker does not list",
            401,
            (
                now(),
                Some(backhaul_operator::publish::sign(
                    &stranger,
                    backhaul_e2e::PUBLISHER_KEY_ID,
                    now(),
                    "PUT",
                    &path,
                    body.as_bytes(),
                )),
                path.clone(),
                body.clone(),
            ),
        ),
        (
            "no ed25519= prefix",
            401,
            (now(), Some("deadbeef".into()), path.clone(), body.clone()),
        ),
        (
            "timestamp 400 s old (replay outside the window)",
            401,
            (now() - 400, None, path.clone(), body.clone()),
        ),
        (
            "timestamp 400 s ahead",
            401,
            (now() + 400, None, path.clone(), body.clone()),
        ),
        (
            "body not JSON",
            400,
            (now(), None, path.clone(), "{not json".into()),
        ),
        (
            "latitude out of range",
            400,
            (now(), None, path.clone(), body.replace("39.04", "200.0")),
        ),
        (
            "failoverAttempts over the CRD's bound",
            400,
            (
                now(),
                None,
                path.clone(),
                body.replace("\"failoverAttempts\":1", "\"failoverAttempts\":33"),
            ),
        ),
        (
            "path and body disagree",
            400,
            (
                now(),
                None,
                path.replace("us-east", "eu-west"),
                body.clone(),
            ),
        ),
        (
            "publishedAt far in the future (a route that would never expire)",
            400,
            (
                now(),
                None,
                path.clone(),
                route(&namespace, "us-east", &model, 10, "9999-12-31T00:00:00Z"),
            ),
        ),
    ];
    for (what, want, (ts, signature, p, b)) in bad_cases {
        let (status, text) = worker
            .admin("PUT", &p, b.as_bytes(), ts, signature.as_deref())
            .await?;
        check(status == want, "the Worker", || {
            format!("PUT with {what}: answered {status} ({text}), expected {want}")
        })?;
        let now_table = snapshot(worker.routes().await?);
        check(now_table == before, "the Worker", || {
            format!("PUT with {what} changed the table: {before:?} -> {now_table:?}")
        })?;
    }
    // A key scoped to eu-west writing us-east: 403, nothing changes.
    let (status, text) = worker
        .admin_with("e2e-eu-only", "PUT", &path, body.as_bytes())
        .await?;
    check(
        status == 403 && text.contains("out_of_scope"),
        "the Worker",
        || {
            format!(
                "an eu-west key writing us-east answered {status} ({text}), expected 403 out_of_scope"
            )
        },
    )?;
    check(
        snapshot(worker.routes().await?) == before,
        "the Worker",
        || "an out-of-scope write changed the table".into(),
    )?;
    // A good write; then a replay of it, and an older one: 409, the route stays.
    let (status, text) = worker
        .admin("PUT", &path, body.as_bytes(), now(), None)
        .await?;
    check(status == 200, "the Worker", || {
        format!("a valid signed PUT answered {status}: {text}")
    })?;
    check(
        !text.contains("e2e-bad-publication-token"),
        "the Worker",
        || format!("the PUT's answer carries the upstream token: {text}"),
    )?;
    let with_route = snapshot(worker.routes().await?);
    for (what, sequence) in [("a replay of the same write", 10), ("an older write", 9)] {
        let replay = route(&namespace, "us-east", &model, sequence, &rfc3339(now()));
        let (status, text) = worker
            .admin("PUT", &path, replay.as_bytes(), now(), None)
            .await?;
        check(
            status == 409 && text.contains("stale_sequence"),
            "the Worker",
            || format!("{what} answered {status} ({text}), expected 409 stale_sequence"),
        )?;
        check(
            snapshot(worker.routes().await?) == with_route,
            "the Worker",
            || format!("{what} changed the table"),
        )?;
    }
    // Another publisher group (its own namespace) taking this model: 409 naming the owner.
    let other_ns = format!("e2e-other-{suffix}");
    let squat = route(&other_ns, "us-east", &model, 1, &rfc3339(now()));
    let (status, text) = worker
        .admin_with(
            "e2e-other",
            "PUT",
            &path_of(&other_ns, "us-east"),
            squat.as_bytes(),
        )
        .await?;
    check(
        status == 409 && text.contains("model_owned") && text.contains(&namespace),
        "the Worker",
        || {
            format!(
                "another namespace publishing {model} answered {status} ({text}), expected 409 model_owned naming {namespace}"
            )
        },
    )?;
    check(
        snapshot(worker.routes().await?) == with_route,
        "the Worker",
        || "a squatting write changed the table".into(),
    )?;
    // DELETE, then the earlier PUT replayed (inside the signature window): refused, the route stays gone.
    let (status, text) = worker
        .admin("DELETE", &path, br#"{"sequence": 11}"#, now(), None)
        .await?;
    check(status == 204, "the Worker", || {
        format!("signed DELETE answered {status} ({text})")
    })?;
    let (status, text) = worker
        .admin("PUT", &path, body.as_bytes(), now(), None)
        .await?;
    check(status == 409, "the Worker", || {
        format!("a PUT replayed after the DELETE answered {status} ({text}), expected 409")
    })?;
    let after = snapshot(worker.routes().await?);
    check(after == before, "the Worker", || {
        format!("a replayed PUT resurrected a deleted route: {before:?} -> {after:?}")
    })?;
    Ok(())
}

/// First 16 hex digits of SHA-256: the fingerprint the Worker shows of a token.
fn fingerprint(token: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))[..16].to_owned()
}

/// A region's pods refuse every API request without the Worker's credential
/// (the operator made and mounted it), and it rotates, in the three steps of
/// docs/publication.md, while requests flow through the Worker: none fails.
async fn region_credential(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "cred").await?;
    let op = start_operator(ctx, &model).await?;
    let regions = model
        .apply_pods(&[("us-east", US_EAST)], serde_json::json!({}), 60)
        .await?;
    model
        .wait_serving(&ctx.worker, &regions, &operator_log(&op))
        .await?;
    let us = &regions[0];
    let tokens = PodRegion::upstream_tokens(&ctx.client, &model.namespace, &model.name).await?;
    check(
        tokens.len() == 1 && tokens[0].len() == 43,
        "backhaul-operator",
        || {
            format!(
                "the credential Secret should hold one 43-character token, holds {}",
                tokens.len()
            )
        },
    )?;
    let old = tokens[0].clone();
    let http = reqwest::Client::new();
    let direct = |token: Option<String>| {
        let request = http
            .post(format!("{}/v1/chat/completions", us.endpoint()))
            .json(&serde_json::json!({"model": model.served, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}))
            .timeout(Duration::from_secs(30));
        let request = match token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        async move {
            let response = request.send().await?;
            anyhow::Ok((response.status().as_u16(), response.text().await?))
        }
    };
    // Straight at the region, as someone who found its address would call it.
    for (what, token, want, code) in [
        ("no credential", None, 401, Some("missing_api_key")),
        (
            "a wrong credential",
            Some("not-the-workers-token-0123".to_owned()),
            401,
            Some("invalid_api_key"),
        ),
        ("the Worker's credential", Some(old.clone()), 200, None),
    ] {
        let (status, text) = direct(token).await?;
        check(
            status == want && code.is_none_or(|c| text.contains(c)),
            "backhaul-inference",
            || {
                format!(
                    "a direct request with {what} answered {status} ({text}), expected {want} {code:?}"
                )
            },
        )?;
    }
    // The kubelet's probes stay open.
    let ready = http
        .get(format!("{}/ready", us.endpoint()))
        .send()
        .await?
        .status();
    check(ready == 200, "backhaul-inference", || {
        format!("/ready without a credential answered {ready}")
    })?;
    // The Worker has the token, and never shows it: only its fingerprint.
    let routes = ctx.worker.routes_of(&model.namespace, &model.name).await?;
    let shown = serde_json::to_string(&routes)?;
    check(
        !shown.contains(&old) && routes[0]["upstreamTokenSha256"] == fingerprint(&old),
        "the Worker",
        || {
            format!(
                "the route should show the token's fingerprint {} and never the token: {shown}",
                fingerprint(&old)
            )
        },
    )?;

    // Rotation, with a client sending requests through the Worker all along.
    let new = format!("rotated-{}", uuid::Uuid::new_v4().simple());
    let stop = Arc::new(AtomicBool::new(false));
    let (url, served) = (ctx.worker.url(), model.served.clone());
    let flow = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match chat(&url, &served, NEW_YORK, 2, || {}).await {
                    Ok(c) if complete(&c) => ok += 1,
                    Ok(c) => failed.push(format!("{} {}{:?}", c.status, c.body, c.error_event)),
                    Err(e) => failed.push(format!("{e:#}")),
                }
            }
            (ok, failed)
        })
    };
    let started = Instant::now();
    // Polled with GET /v1/models: checked like every /v1 request, and it
    // generates nothing, so the polling does not slow the flow's requests.
    let accepted = |token: String, want: u16| {
        let (http, url) = (http.clone(), format!("{}/v1/models", us.endpoint()));
        async move {
            wait_for(Duration::from_secs(120), || async {
                let response = http.get(&url).bearer_auth(&token).send().await.ok()?;
                (response.status().as_u16() == want).then_some(())
            })
            .await
        }
    };
    // 1. The new token as a second line: the pods accept both.
    PodRegion::set_upstream_tokens(&ctx.client, &model.namespace, &model.name, &[&old, &new])
        .await?;
    accepted(new.clone(), 200)
        .await
        .context("the pods did not accept a token added as the second line within 120 s")?;
    let step1 = started.elapsed();
    // 2. Swapped: the operator publishes the new one, the Worker sends it.
    PodRegion::set_upstream_tokens(&ctx.client, &model.namespace, &model.name, &[&new, &old])
        .await?;
    wait_for(Duration::from_secs(60), || async {
        let routes = ctx
            .worker
            .routes_of(&model.namespace, &model.name)
            .await
            .ok()?;
        (routes.first()?["upstreamTokenSha256"] == fingerprint(&new)).then_some(())
    })
    .await
    .context("the Worker's route did not take the new token within 60 s")?;
    let step2 = started.elapsed();
    // 3. The old one removed: the pods refuse it.
    PodRegion::set_upstream_tokens(&ctx.client, &model.namespace, &model.name, &[&new]).await?;
    accepted(old.clone(), 401)
        .await
        .context("the pods still accepted the removed token after 120 s")?;
    let step3 = started.elapsed();
    // The publisher key rotates too, requests still flowing: the operator
    // restarts signing with the next key of its group (both are listed), and
    // its heartbeats keep the route.
    let mut op = op;
    op.proc.stop_with("TERM", Duration::from_secs(10));
    let op = Operator::start_signing_as(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &format!("operator-{}-next", model.namespace),
        "e2e-next",
    )
    .await?;
    wait_for(Duration::from_secs(60), || async {
        let routes = ctx
            .worker
            .routes_of(&model.namespace, &model.name)
            .await
            .ok()?;
        (routes.first()?["keyId"] == "e2e-next").then_some(())
    })
    .await
    .with_context(|| {
        format!(
            "the route was not rewritten with the next publisher key within 60 s; log {}",
            operator_log(&op)
        )
    })?;
    let step4 = started.elapsed();
    // A last request through the Worker after the rotations.
    let after = chat(&ctx.worker.url(), &model.served, NEW_YORK, 2, || {}).await?;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = flow.await?;
    check(
        failed.is_empty() && ok >= 2 && complete(&after),
        "the Worker",
        || {
            format!(
                "during the rotation {ok} requests succeeded and {} failed: {failed:?}; after it: {}",
                failed.len(),
                after.status
            )
        },
    )?;
    eprintln!(
        "  credential rotation: added accepted after {:.1} s, published after {:.1} s, old refused after {:.1} s; publisher key rotated after {:.1} s; {ok} requests meanwhile, 0 failed",
        step1.as_secs_f64(),
        step2.as_secs_f64(),
        step3.as_secs_f64(),
        step4.as_secs_f64()
    );
    model.teardown().await;
    drop(op);
    Ok(())
}

/// A route the Worker holds with a sequence above what this operator's clock
/// gives (written by an operator whose clock ran an hour ahead): the
/// operator's PUT gets 409 stale_sequence, it reads the stored route and
/// publishes above it.
async fn stale_sequence(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "seq").await?;
    let path = format!(
        "/admin/v1/routes/{}/{}/us-east",
        model.namespace, model.name
    );
    let ahead = (now() + 3600) * 1000;
    let body = serde_json::json!({
        "namespace": model.namespace, "name": model.name, "region": "us-east", "model": model.served,
        "endpoint": "http://127.0.0.1:9", "location": {"latitude": 39.04, "longitude": -77.49},
        "replicas": 1, "readyReplicas": 1,
        "routing": {"heavyPromptTokens": 0, "heavyMaxTokens": 0, "requestTimeoutMs": 1000, "firstByteTimeoutMs": 1000, "failoverAttempts": 1},
        "edgeModel": null, "generation": 1, "sequence": ahead, "publishedAt": rfc3339(now()),
        "ttlSeconds": 60, "upstreamToken": "an-operator-from-the-future",
    })
    .to_string();
    let (status, text) = ctx
        .worker
        .admin("PUT", &path, body.as_bytes(), now(), None)
        .await?;
    check(status == 200, "the Worker", || {
        format!("seeding the route answered {status}: {text}")
    })?;
    let op = start_operator(ctx, &model).await?;
    let endpoint = "http://127.0.0.1:19".to_owned();
    model
        .apply_kwok(&[("us-east", US_EAST, endpoint.clone())], 60)
        .await?;
    let route = wait_for(Duration::from_secs(60), || async {
        let routes = ctx
            .worker
            .routes_of(&model.namespace, &model.name)
            .await
            .ok()?;
        let r = routes.into_iter().find(|r| r["region"] == "us-east")?;
        (r["endpoint"] == endpoint.as_str() && r["sequence"].as_u64()? > ahead).then_some(r)
    })
    .await
    .with_context(|| {
        format!(
            "the operator did not publish above sequence {ahead} within 60 s; log {}",
            operator_log(&op)
        )
    })?;
    let log = std::fs::read_to_string(&op.proc.log).unwrap_or_default();
    check(
        log.contains("holds a higher sequence"),
        "backhaul-operator",
        || {
            format!(
                "the operator's log does not say it recovered from 409 stale_sequence ({})",
                operator_log(&op)
            )
        },
    )?;
    eprintln!(
        "  stored sequence {ahead}, the operator published {}",
        route["sequence"]
    );
    model.teardown().await;
    drop(op);
    Ok(())
}

fn rfc3339(unix: u64) -> String {
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// `status.regions[0].cache` of the test's object.
async fn cache_status(model: &Model) -> Option<serde_json::Value> {
    let object = model.api.get(&model.name).await.ok()?;
    let cache = object.data["status"]["regions"][0]["cache"].clone();
    (!cache.is_null()).then_some(cache)
}

/// Waits until the region's cache for `source` is Ready; returns the claim.
async fn wait_cache_ready(model: &Model, source: &str, op: &Operator) -> Result<String> {
    let ready = wait_for(Duration::from_secs(120), || async {
        let c = cache_status(model).await?;
        (c["source"] == source && c["phase"] == "Ready")
            .then(|| c["claimName"].as_str().map(str::to_owned))?
    })
    .await;
    match ready {
        Ok(claim) => Ok(claim),
        Err(_) => bail!(
            "the weight cache of {source} not Ready within 120 s: {:?}; operator log {}; pods: {}",
            cache_status(model).await,
            operator_log(op),
            model.describe_pods().await
        ),
    }
}

/// Ready pods of the region, by name, and when each became Ready.
async fn ready_since(ctx: &Ctx, region: &PodRegion) -> Result<Vec<(String, Duration)>> {
    let now = k8s_openapi::jiff::Timestamp::now();
    Ok(region
        .ready_pods(&ctx.client)
        .await?
        .iter()
        .map(|p| {
            let created = p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(now);
            let ready_at = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0)
                .unwrap_or(now);
            let took = ready_at.duration_since(created);
            (
                p.metadata.name.clone().unwrap_or_default(),
                Duration::from_secs_f64(took.as_secs_f64().max(0.0)),
            )
        })
        .collect())
}

/// Waits for `n` Ready pods of the region, none in `not`; returns how long
/// the new ones took from creation to Ready.
async fn wait_ready_pods(
    ctx: &Ctx,
    model: &Model,
    region: &PodRegion,
    n: usize,
    not: &[String],
) -> Result<Vec<Duration>> {
    let shared: &Ctx = ctx;
    let found = wait_for(Duration::from_secs(120), || async {
        let pods = ready_since(shared, region).await.ok()?;
        let all = region.pods(&shared.client).await.ok()?;
        (pods.len() == n && all.len() == n && pods.iter().all(|(p, _)| !not.contains(p)))
            .then_some(pods)
    })
    .await;
    match found {
        Ok(pods) => Ok(pods.into_iter().map(|(_, took)| took).collect()),
        Err(_) => bail!(
            "{n} Ready pods (none of {not:?}) not there within 120 s: {}",
            model.describe_pods().await
        ),
    }
}

async fn weights_cache(ctx: &mut Ctx) -> Result<()> {
    use backhaul_testkit::hub::{FakeHub, HubFile};
    const REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
    let gguf = std::fs::read(backhaul_e2e::model_file())?;
    let size = gguf.len() as u64;
    // A Hub the pods reach, as a cluster reaches the Hub or its mirror, at
    // 3 MB/s for the first fill, so it lasts long enough to watch (the
    // operator looks every 10 s while a cache fills).
    let hub = FakeHub::start_on(
        pods::NODE_HOST_IP,
        REPO,
        vec![HubFile {
            name: pods::MODEL_FILE.into(),
            content: std::sync::Arc::new(gguf),
        }],
    )
    .await;
    hub.limit_rate(3_000_000);
    let model = Model::new(ctx, "weights").await?;
    let volumes = pods::WeightVolumes::create(&ctx.client, &model.namespace, 2).await?;
    let result = weights_cache_steps(ctx, &model, &hub, &volumes.class, size).await;
    model.teardown().await;
    volumes.remove().await;
    result
}

async fn weights_cache_steps(
    ctx: &mut Ctx,
    model: &Model,
    hub: &backhaul_testkit::hub::FakeHub,
    class: &str,
    size: u64,
) -> Result<()> {
    let op = Operator::start_with_args(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &format!("operator-{}", model.namespace),
        backhaul_e2e::PUBLISHER_KEY_ID,
        &["--hub-endpoint", &hub.url],
    )
    .await?;
    let region = PodRegion::expose(&ctx.client, &model.namespace, &model.name, "us-east").await?;
    let (node_selector, tolerations) = pods::on_real_node();
    let v1 = "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@v1";
    let applied = Instant::now();
    model
        .create(serde_json::json!({
            "model": {"source": v1, "format": "gguf", "ggufFiles": [pods::MODEL_FILE],
                      "servedName": model.served,
                      "cache": {"size": "1Gi", "storageClassName": class}},
            "engine": {"drainTimeoutSeconds": 20},
            "resources": {"gpusPerReplica": 0},
            "regions": [{"name": "us-east", "replicas": 1,
                         "location": {"latitude": US_EAST.0, "longitude": US_EAST.1},
                         "endpoint": region.endpoint(), "nodeSelector": node_selector,
                         "tolerations": tolerations}],
            "routing": routing(60),
        }))
        .await?;

    // The fill reports its bytes while the region has no replica.
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &model.namespace);
    let downloading = wait_for(Duration::from_secs(90), || async {
        let c = cache_status(model).await?;
        let done = c["downloadedBytes"].as_u64()?;
        (c["phase"] == "Downloading" && done > 0 && done < size).then_some(c)
    })
    .await;
    let Ok(downloading) = downloading else {
        bail!(
            "no Downloading status with 0 < downloadedBytes < {size} within 90 s: {:?}; operator log {}; pods: {}",
            cache_status(model).await,
            operator_log(&op),
            model.describe_pods().await
        );
    };
    check(
        downloading["totalBytes"] == size,
        "the fill's progress",
        || format!("totalBytes is not the file's {size} bytes: {downloading}"),
    )?;
    hub.limit_rate(1 << 40);
    let replicas_while_filling = deployments.list(&ListParams::default()).await?.items.len();
    check(replicas_while_filling == 0, "the operator", || {
        format!("a Deployment exists while the cache fills ({downloading})")
    })?;

    // Ready: the first replica starts from the cache and serves.
    let claim_v1 = wait_cache_ready(model, v1, &op).await?;
    let filled = applied.elapsed();
    model
        .wait_serving(
            &ctx.worker,
            std::slice::from_ref(&region),
            &operator_log(&op),
        )
        .await?;
    let first = applied.elapsed();
    let first_pod = wait_ready_pods(ctx, model, &region, 1, &[]).await?;
    check(hub.served_bytes() == size, "the weight cache", || {
        format!(
            "the Hub served {} bytes for one {size}-byte file",
            hub.served_bytes()
        )
    })?;
    let answer = chat(&ctx.worker.url(), &model.served, NEW_YORK, 4, || {}).await?;
    expect_region(&answer, "us-east", 1, &ctx.worker)?;

    // A second replica, and a restarted pod, start without downloading.
    let before: Vec<String> = region
        .pods(&ctx.client)
        .await?
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    let patch = serde_json::json!({"spec": {"regions": [{"name": "us-east", "replicas": 2,
        "location": {"latitude": US_EAST.0, "longitude": US_EAST.1}, "endpoint": region.endpoint(),
        "nodeSelector": pods::on_real_node().0, "tolerations": pods::on_real_node().1}]}});
    model
        .api
        .patch(&model.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let two = wait_ready_pods(ctx, model, &region, 2, &[]).await?;
    let second = two
        .iter()
        .copied()
        .zip(ready_since(ctx, &region).await?)
        .find(|(_, (name, _))| !before.contains(name))
        .map(|(took, _)| took)
        .unwrap_or_default();
    let victim = before.first().cloned().unwrap_or_default();
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(ctx.client.clone(), &model.namespace)
        .delete(&victim, &DeleteParams::default())
        .await?;
    let after_restart =
        wait_ready_pods(ctx, model, &region, 2, std::slice::from_ref(&victim)).await?;
    let restarted = after_restart.iter().copied().min().unwrap_or_default();
    check(hub.served_bytes() == size, "the weight cache", || {
        format!(
            "a second replica or a restarted pod downloaded: the Hub served {} bytes, {size} expected",
            hub.served_bytes()
        )
    })?;

    // A new revision fills a second cache, with its first transfer
    // corrupted (detected and fetched again), while the replicas serve on
    // from the first; then they roll onto it without failing a request,
    // and the first cache is deleted.
    let stop = Arc::new(AtomicBool::new(false));
    let client = chat_until(ctx, model, stop.clone());
    hub.corrupt_next(1);
    let v2 = "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF@v2";
    let patch = serde_json::json!({"spec": {"model": {"source": v2}}});
    model
        .api
        .patch(&model.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let claim_v2 = wait_cache_ready(model, v2, &op).await;
    let shared: &Ctx = ctx;
    let rolled = match &claim_v2 {
        Ok(claim) => wait_for(Duration::from_secs(150), || async {
            let d = deployments
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .pop()?;
            let on = d
                .metadata
                .annotations
                .as_ref()?
                .get("backhaul.dev/weights-claim")?
                .clone();
            let status = d.status.clone()?;
            let pods = region.pods(&shared.client).await.ok()?;
            (on == *claim
                && status.observed_generation == d.metadata.generation
                && status.updated_replicas == Some(2)
                && status.ready_replicas == Some(2)
                && pods.len() == 2)
                .then_some(())
        })
        .await
        .ok(),
        Err(_) => None,
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let results = client.await?;
    let claim_v2 = claim_v2?;
    if rolled.is_none() {
        bail!(
            "the rollout onto the new cache: not done within 150 s: {}",
            model.describe_pods().await
        );
    }
    check(claim_v2 != claim_v1, "the weight cache", || {
        format!("a new revision reused the claim {claim_v1}")
    })?;
    check(
        hub.served_bytes() == 3 * size,
        "the new revision's fill",
        || {
            format!(
                "the Hub served {} bytes; expected {} (the corrupted transfer and its repeat)",
                hub.served_bytes(),
                3 * size
            )
        },
    )?;
    let failed = incomplete(&results);
    check(
        !results.is_empty() && failed.is_empty(),
        "the revision change",
        || {
            format!(
                "{} of {} requests failed: {failed:?}",
                failed.len(),
                results.len()
            )
        },
    )?;
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), &model.namespace);
    let old_gone = wait_for(Duration::from_secs(60), || async {
        claims
            .get_opt(&claim_v1)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    check(old_gone.is_ok(), "the operator", || {
        format!("the first revision's cache {claim_v1} is still there after the roll")
    })?;
    eprintln!(
        "  weights cache: fill of {size} bytes Ready {:.1} s after apply; first replica serving \
         {:.1} s after apply (pod created to Ready {:.1} s); second replica {:.1} s, restarted \
         pod {:.1} s (no download); revision change under load: {} requests, none failed",
        filled.as_secs_f64(),
        first.as_secs_f64(),
        first_pod.first().copied().unwrap_or_default().as_secs_f64(),
        second.as_secs_f64(),
        restarted.as_secs_f64(),
        results.len()
    );
    drop(op);
    Ok(())
}
