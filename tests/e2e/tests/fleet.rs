//! One cluster per region (issue 15, part 4): two separate control planes,
//! one operator each, one Worker.
//!
//! - Cluster A is the main local cluster: its operator serves `us-east`, whose
//!   pod runs on the real node (`backhaul-inference` in a container, reached
//!   through a NodePort Service on 127.0.0.1).
//! - Cluster B is a peer control plane (`BACKHAUL_CLUSTER_NAME`, kwok nodes
//!   only: two real kubelets on one machine would share one containerd and
//!   CNI); its operator serves `eu-west`, whose pod is a kwok fake. The
//!   region's `endpoint` is a real `backhaul-inference` the test runs on
//!   127.0.0.1 with the credential B's operator made (the Secret
//!   `{name}-upstream-auth` in B, given with `--api-key-file`), so the Worker
//!   really routes to both regions.
//! - The Worker holds both publisher keys, each scoped to its region, in one
//!   group (so both may publish the model, owned by `{group}/{namespace}`:
//!   both clusters use one namespace name).
//!
//! The same ModelDeployment is applied in both clusters. Both must turn
//! Ready, both regions must be in the Worker's table and answer a chat through
//! it, and each cluster's `status.fleet` must show the other's region. Then B's
//! operator is killed: its route leaves the table within its TTL, and A's
//! `status.fleet` shows it expired (or gone) within the poll interval plus TTL.
//!
//! Its own binary with its own runner (`harness = false`): the peer control
//! plane and the Worker are started only when the test is selected, and
//! stopped at the end whatever happened. `scripts/e2e.sh` runs it after the
//! main suite; names given as arguments select by substring. Logs:
//! `$BACKHAUL_CACHE/e2e/logs` (`fleet-*`; each failure names its file).

use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backhaul_e2e::clusters::{self, LocalRegion, PeerCluster};
use backhaul_e2e::pods::{self, ModelVolume, PodRegion};
use backhaul_e2e::{Operator, Worker, chat, check, wait_for};
use backhaul_operator::crd::{FleetRegionStatus, ModelDeployment};
use backhaul_testkit::TestNamespace;
use futures::FutureExt;
use kube::Client;
use kube::api::{Api, DeleteParams};

const NAME: &str = "fleet-test";
/// New York: nearer us-east (Ashburn) than eu-west (Dublin).
const NEW_YORK: &str = "40.71,-74.01";
/// London: nearer eu-west.
const LONDON: &str = "51.51,-0.13";
const US_EAST: (f64, f64) = (39.04, -77.49);
const EU_WEST: (f64, f64) = (53.35, -6.26);
/// The routes' `ttlSeconds` (the CRD's minimum is 10).
const TTL: u64 = 15;
/// The operators' `--fleet-poll-interval`, in seconds.
const POLL: u64 = 2;
/// The peer control plane's name (`BACKHAUL_CLUSTER_NAME`).
const PEER: &str = "e2e-fleet-b";
const TEST: &str = "two_clusters_one_region_each_show_the_fleet";

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| TEST.contains(f.as_str())) {
        // Another test was asked for: start nothing.
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    runtime.block_on(async {
        let started = Instant::now();
        eprintln!("test {TEST} ...");
        let outcome = AssertUnwindSafe(tokio::time::timeout(
            Duration::from_secs(420),
            two_clusters(),
        ))
        .catch_unwind()
        .await;
        let secs = started.elapsed().as_secs_f64();
        let logs = backhaul_e2e::logs_dir();
        match outcome {
            Ok(Ok(Ok(()))) => {
                eprintln!("test {TEST} ... ok ({secs:.1}s)");
                ExitCode::SUCCESS
            }
            Ok(Ok(Err(error))) => {
                eprintln!(
                    "test {TEST} ... FAILED ({secs:.1}s): {error:#} (logs in {})",
                    logs.display()
                );
                ExitCode::FAILURE
            }
            Ok(Err(_)) => {
                eprintln!("test {TEST} ... FAILED: did not finish within 420 s");
                ExitCode::FAILURE
            }
            Err(_) => {
                eprintln!("test {TEST} ... FAILED ({secs:.1}s): panicked (see above)");
                ExitCode::FAILURE
            }
        }
    })
}

/// Everything the test made, removed whatever happened (its drop order:
/// operators and servers first, the peer control plane last).
struct Fleet {
    client_a: Client,
    client_b: Client,
    namespace: String,
    ns_a: Option<TestNamespace>,
    volume_a: Option<ModelVolume>,
    operator_a: Option<Operator>,
    operator_b: Option<Operator>,
    region_b: Option<LocalRegion>,
    worker: Option<Worker>,
    peer: PeerCluster,
}

impl Fleet {
    async fn teardown(mut self) {
        // A's operator withdraws its route and lets the object go.
        let api_a = Api::<ModelDeployment>::namespaced(self.client_a.clone(), &self.namespace);
        let _ = api_a.delete(NAME, &DeleteParams::default()).await;
        let gone = wait_for(Duration::from_secs(20), || async {
            matches!(api_a.get_opt(NAME).await, Ok(None)).then_some(())
        })
        .await;
        if gone.is_err() {
            clusters::release(&self.client_a, &self.namespace, NAME).await;
        }
        // B's operator is gone; B itself is about to be.
        clusters::release(&self.client_b, &self.namespace, NAME).await;
        self.operator_a.take();
        self.operator_b.take();
        self.region_b.take();
        self.worker.take();
        if let Some(ns) = self.ns_a.take() {
            ns.cleanup().await;
        }
        if let Some(volume) = self.volume_a.take() {
            volume.remove().await;
        }
        self.peer.down();
    }
}

async fn md(client: &Client, namespace: &str) -> Option<ModelDeployment> {
    Api::<ModelDeployment>::namespaced(client.clone(), namespace)
        .get(NAME)
        .await
        .ok()
}

fn ready(md: &ModelDeployment) -> bool {
    md.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn fleet_entry<'a>(md: &'a ModelDeployment, region: &str) -> Option<&'a FleetRegionStatus> {
    md.status
        .as_ref()?
        .fleet
        .iter()
        .find(|e| e.region == region)
}

fn status_of(md: Option<&ModelDeployment>) -> String {
    md.and_then(|m| serde_json::to_string(&m.status).ok())
        .unwrap_or_else(|| "(no object)".into())
}

/// The regions the Worker holds a live (unexpired) route of for this object.
async fn live_regions(worker: &Worker, namespace: &str) -> Option<Vec<String>> {
    let routes = worker.routes_of(namespace, NAME).await.ok()?;
    Some(
        routes
            .iter()
            .filter(|r| r["expired"] != true)
            .filter_map(|r| r["region"].as_str().map(str::to_owned))
            .collect(),
    )
}

async fn two_clusters() -> Result<()> {
    let cluster_a = backhaul_testkit::cluster().await;
    let client_a = cluster_a.client();
    let operator_bin = backhaul_e2e::binary("backhaul-operator");
    let inference_bin = backhaul_e2e::binary("backhaul-inference");
    for bin in [&operator_bin, &inference_bin] {
        if !bin.exists() {
            bail!("{} is missing (scripts/e2e.sh builds it)", bin.display());
        }
    }
    if !backhaul_e2e::model_file().exists() {
        bail!(
            "{} is missing: make model",
            backhaul_e2e::model_file().display()
        );
    }
    pods::require_image(&pods::inference_image())?;
    let t = Instant::now();
    let peer = PeerCluster::up(PEER).await?;
    eprintln!(
        "  cluster B ({PEER}, kwok nodes only) up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let client_b = peer.client();
    clusters::install_crds(&cluster_a.kubeconfig)?;
    clusters::install_crds(&peer.kubeconfig)?;

    let state = backhaul_e2e::cache_dir().join("e2e/fleet-worker-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    // One key per cluster, each scoped to its region, in one group.
    let worker = Worker::start(
        &state,
        &[
            ("fleet-a", "e2e", &["*"], &["us-east"]),
            ("fleet-b", "e2e", &["*"], &["eu-west"]),
        ],
    )
    .await?;

    let ns_a = TestNamespace::new(&client_a, "e2e-fleet").await;
    let namespace = ns_a.name().to_owned();
    let mut fleet = Fleet {
        client_a: client_a.clone(),
        client_b: client_b.clone(),
        namespace: namespace.clone(),
        ns_a: Some(ns_a),
        volume_a: None,
        operator_a: None,
        operator_b: None,
        region_b: None,
        worker: Some(worker),
        peer,
    };
    let result = run(&mut fleet).await;
    fleet.teardown().await;
    result
}

async fn run(fleet: &mut Fleet) -> Result<()> {
    let namespace = fleet.namespace.clone();
    let (client_a, client_b) = (fleet.client_a.clone(), fleet.client_b.clone());
    let cluster_a = backhaul_testkit::cluster().await;
    let kubeconfig_b = fleet.peer.kubeconfig.clone();
    clusters::create_namespace(&client_b, &namespace).await?;
    fleet.volume_a = Some(ModelVolume::create(&client_a, &namespace).await?);
    // B's (fake) pods mount the claim too: without it they are not scheduled.
    // The volume goes with cluster B.
    let _volume_b = ModelVolume::create(&client_b, &namespace).await?;
    let served = format!("smollm2-{}", &namespace[namespace.len() - 8..]);

    // us-east: the real node's pod, behind a NodePort Service in A.
    let us_east = PodRegion::expose(&client_a, &namespace, NAME, "us-east").await?;
    // eu-west: kwok's fake pod in B; its endpoint is the server started below.
    let eu_port = LocalRegion::reserve_port();
    let (node_selector, tolerations) = pods::on_real_node();
    let object = serde_json::json!({
        "apiVersion": "backhaul.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": {"source": pods::MODELS_DIR, "format": "gguf", "ggufFiles": [pods::MODEL_FILE],
                      "servedName": served, "volume": {"claimName": pods::MODELS_CLAIM}},
            "engine": {"drainTimeoutSeconds": 5},
            "resources": {"gpusPerReplica": 0},
            "regions": [
                {"name": "us-east", "replicas": 1, "location": {"latitude": US_EAST.0, "longitude": US_EAST.1},
                 "endpoint": us_east.endpoint(), "nodeSelector": node_selector, "tolerations": tolerations},
                {"name": "eu-west", "replicas": 1, "location": {"latitude": EU_WEST.0, "longitude": EU_WEST.1},
                 "endpoint": LocalRegion::endpoint_at(eu_port)},
            ],
            "routing": {"heavyPromptTokens": 0, "heavyMaxTokens": 0, "failoverAttempts": 3,
                        "firstByteTimeoutSeconds": 10, "requestTimeoutSeconds": 60, "ttlSeconds": TTL},
        },
    });
    let poll = POLL.to_string();
    let worker = fleet.worker.as_ref().context("the Worker")?;
    fleet.operator_a = Some(
        Operator::start_with_args(
            &cluster_a.kubeconfig,
            &namespace,
            worker,
            Some("us-east"),
            "fleet-operator-a",
            "fleet-a",
            &["--fleet-poll-interval", &poll],
        )
        .await?,
    );
    fleet.operator_b = Some(
        Operator::start_with_args(
            &kubeconfig_b,
            &namespace,
            worker,
            Some("eu-west"),
            "fleet-operator-b",
            "fleet-b",
            &["--fleet-poll-interval", &poll],
        )
        .await?,
    );
    let log = |name: &str| backhaul_e2e::logs_dir().join(format!("{name}.log"));
    let (log_a, log_b) = (log("fleet-operator-a"), log("fleet-operator-b"));
    let applied = Instant::now();
    clusters::create_model(&client_a, &object).await?;
    clusters::create_model(&client_b, &object).await?;

    // B's operator made the region's credential: the eu-west server takes it.
    let tokens = wait_for(Duration::from_secs(60), || async {
        PodRegion::upstream_tokens(&client_b, &namespace, NAME)
            .await
            .ok()
            .filter(|t| !t.is_empty())
    })
    .await
    .with_context(|| {
        format!(
            "cluster B: no Secret {namespace}/{NAME}-upstream-auth within 60 s; operator log {}",
            log_b.display()
        )
    })?;
    fleet.region_b = Some(LocalRegion::start("eu-west", eu_port, &served, &tokens).await?);

    // Both objects Ready, each over the region its cluster serves.
    for (cluster, client, log) in [("A", &client_a, &log_a), ("B", &client_b, &log_b)] {
        let ok = wait_for(Duration::from_secs(180), || async {
            md(client, &namespace).await.filter(ready).map(|_| ())
        })
        .await;
        if ok.is_err() {
            bail!(
                "cluster {cluster}: {namespace}/{NAME} not Ready within 180 s (status: {}); operator log {}",
                status_of(md(client, &namespace).await.as_ref()),
                log.display()
            );
        }
    }
    eprintln!(
        "  apply -> Ready in both clusters: {:.1} s",
        applied.elapsed().as_secs_f64()
    );

    // Both regions in the Worker's table, and each answers through it.
    let both = wait_for(Duration::from_secs(60), || async {
        let live = live_regions(worker, &namespace).await?;
        (live.iter().any(|r| r == "us-east") && live.iter().any(|r| r == "eu-west")).then_some(())
    })
    .await;
    if both.is_err() {
        bail!(
            "the Worker: not both regions live (GET /admin/v1/routes: {:?}); Worker log {}",
            worker.routes_of(&namespace, NAME).await.ok(),
            worker.log().display()
        );
    }
    let routes = worker.routes_of(&namespace, NAME).await?;
    for (region, key) in [("us-east", "fleet-a"), ("eu-west", "fleet-b")] {
        let route = routes
            .iter()
            .find(|r| r["region"] == region)
            .context("a live route")?;
        check(route["keyId"] == key, "the Worker", || {
            format!(
                "route {region} was written by {}, not {key}",
                route["keyId"]
            )
        })?;
    }
    us_east.wait_reachable(Duration::from_secs(30)).await?;
    for (from, region) in [(NEW_YORK, "us-east"), (LONDON, "eu-west")] {
        let answer = chat(&worker.url(), &served, from, 8, || {}).await?;
        check(
            answer.status == 200
                && answer.region.as_deref() == Some(region)
                && answer.done
                && !answer.text.is_empty(),
            "the Worker",
            || {
                format!(
                    "a chat from {from} was not answered by {region}: status {}, region {:?}, reason {:?}, text {:?}, body {}",
                    answer.status, answer.region, answer.reason, answer.text, answer.body
                )
            },
        )?;
        eprintln!(
            "  a chat from {from} answered by {region} ({} content events)",
            answer.content_events
        );
    }

    // Each cluster's status.fleet shows the other's region.
    for (cluster, client, other, key, log) in [
        ("A", &client_a, "eu-west", "fleet-b", &log_a),
        ("B", &client_b, "us-east", "fleet-a", &log_b),
    ] {
        let shown = wait_for(Duration::from_secs(POLL * 5 + 10), || async {
            let object = md(client, &namespace).await?;
            let entry = fleet_entry(&object, other)?;
            (entry.key_id == key && !entry.expired && entry.ready_replicas >= 1).then_some(())
        })
        .await;
        if shown.is_err() {
            bail!(
                "cluster {cluster}: status.fleet does not show {other} live from {key} (status: {}); operator log {}",
                status_of(md(client, &namespace).await.as_ref()),
                log.display()
            );
        }
    }
    let a = md(&client_a, &namespace).await.context("A's object")?;
    let status = a.status.clone().unwrap_or_default();
    eprintln!(
        "  cluster A: status.fleetRegions {:?}, status.fleet {}",
        status.fleet_regions,
        serde_json::to_string(&status.fleet)?
    );

    // B's operator dies (SIGKILL: nothing withdrawn, no more renewals).
    fleet
        .operator_b
        .as_mut()
        .context("B's operator")?
        .proc
        .kill();
    let killed = Instant::now();
    let left = wait_for(Duration::from_secs(TTL + 10), || async {
        let live = live_regions(worker, &namespace).await?;
        (!live.iter().any(|r| r == "eu-west")).then_some(())
    })
    .await;
    if left.is_err() {
        bail!(
            "the Worker: eu-west still live {:.0} s after its operator was killed (ttl {TTL} s): {:?}",
            killed.elapsed().as_secs_f64(),
            worker.routes_of(&namespace, NAME).await.ok()
        );
    }
    let left_after = killed.elapsed();
    check(
        left_after <= Duration::from_secs(TTL + 2),
        "the Worker",
        || {
            format!(
                "eu-west left the table {:.1} s after its operator was killed, more than its ttl ({TTL} s)",
                left_after.as_secs_f64()
            )
        },
    )?;
    let seen = wait_for(Duration::from_secs(TTL + POLL + 10), || async {
        let object = md(&client_a, &namespace).await?;
        fleet_entry(&object, "eu-west")
            .is_none_or(|e| e.expired)
            .then_some(())
    })
    .await;
    if seen.is_err() {
        bail!(
            "cluster A: status.fleet still shows eu-west live {:.0} s after B's operator was killed (status: {}); operator log {}",
            killed.elapsed().as_secs_f64(),
            status_of(md(&client_a, &namespace).await.as_ref()),
            log_a.display()
        );
    }
    let seen_after = killed.elapsed();
    check(
        seen_after <= Duration::from_secs(TTL + POLL + 2),
        "backhaul-operator (A)",
        || {
            format!(
                "status.fleet showed eu-west expired {:.1} s after B's operator was killed, more than ttl + poll interval ({} s)",
                seen_after.as_secs_f64(),
                TTL + POLL
            )
        },
    )?;
    let a = md(&client_a, &namespace).await.context("A's object")?;
    eprintln!(
        "  B's operator killed: eu-west left the Worker's table after {:.1} s, cluster A's status.fleet showed it after {:.1} s (ttl {TTL} s, poll {POLL} s); fleetRegions {:?}",
        left_after.as_secs_f64(),
        seen_after.as_secs_f64(),
        a.status.and_then(|s| s.fleet_regions)
    );
    // And London is served from us-east now.
    let answer = chat(&worker.url(), &served, LONDON, 8, || {}).await?;
    check(
        answer.status == 200 && answer.region.as_deref() == Some("us-east"),
        "the Worker",
        || {
            format!(
                "a chat from London after eu-west left: status {}, region {:?}, body {}",
                answer.status, answer.region, answer.body
            )
        },
    )?;
    Ok(())
}
