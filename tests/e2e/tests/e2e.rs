//! End-to-end and fault tests over the whole path: a ModelDeployment on the
//! local control plane, the operator binary publishing to the Worker under
//! `wrangler dev`, and `backhaul-inference` servers on loopback as the regions'
//! public endpoints (kwok marks the regional pods ready; the endpoints are real).
//!
//! One Worker serves every test (started once, stopped at the end); each test
//! has its own namespace, served model name, inference servers and operator.
//! Run with `scripts/e2e.sh` (`make e2e`); names given as arguments select tests
//! by substring. Logs: `$BACKHAUL_CACHE/e2e/logs` (each failure names its file).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backhaul_e2e::{Operator, Region, Worker, chat, check, now, sign, wait_for};
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
        ("happy_path_nearest_region_streams", |c| {
            Box::pin(happy_path(c))
        }),
        ("nearest_region_down_fails_over", |c| {
            Box::pin(nearest_region_down(c))
        }),
        ("saturated_region_fails_over", |c| {
            Box::pin(saturated_region(c))
        }),
        ("region_killed_mid_stream_sends_an_error_event", |c| {
            Box::pin(killed_mid_stream(c))
        }),
        ("operator_killed_during_reconcile_converges", |c| {
            Box::pin(operator_killed(c))
        }),
        ("worker_restart_keeps_the_route_table", |c| {
            Box::pin(worker_restart(c))
        }),
        ("silent_operator_region_leaves_after_ttl", |c| {
            Box::pin(silent_operator(c))
        }),
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
            match outcome {
                Ok(Ok(Ok(()))) => eprintln!("test {name} ... ok ({secs:.1}s)"),
                Ok(Ok(Err(error))) => {
                    eprintln!("test {name} ... FAILED ({secs:.1}s): {error:#}");
                    failed.push(*name);
                }
                Ok(Err(_)) => {
                    eprintln!("test {name} ... FAILED: did not finish within 240 s");
                    failed.push(*name);
                }
                Err(_) => {
                    eprintln!("test {name} ... FAILED ({secs:.1}s): panicked (see above)");
                    failed.push(*name);
                }
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
    for bin in ["backhaul-operator", "backhaul-inference"] {
        let path = backhaul_e2e::binary(bin);
        if !path.exists() {
            eprintln!(
                "e2e: {} is missing (cargo build -p {bin} --bins; scripts/e2e.sh does): tests that start it will fail",
                path.display()
            );
        }
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
    let state = backhaul_e2e::cache_dir().join("e2e/worker-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let worker = Worker::start(&state).await?;
    Ok(Ctx {
        kubeconfig: cluster.kubeconfig.clone(),
        client: cluster.client(),
        worker,
    })
}

fn md_api(client: &Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("backhaul.dev", "v1alpha1", "ModelDeployment");
    let resource = ApiResource::from_gvk_with_plural(&gvk, "modeldeployments");
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// A test's ModelDeployment: its namespace, API and served model name.
struct Model {
    ns: Option<TestNamespace>,
    api: Api<DynamicObject>,
    namespace: String,
    name: String,
    served: String,
}

impl Model {
    async fn new(ctx: &Ctx, prefix: &str) -> Model {
        let ns = TestNamespace::new(&ctx.client, &format!("e2e-{prefix}")).await;
        let namespace = ns.name().to_owned();
        let served = format!("smollm2-{}", &namespace[namespace.len() - 8..]);
        Model {
            api: md_api(&ctx.client, &namespace),
            ns: Some(ns),
            namespace,
            name: "smollm2".into(),
            served,
        }
    }

    /// Creates the ModelDeployment with these regions (name, location, endpoint).
    async fn apply(&self, regions: &[(&str, (f64, f64), String)], ttl: u32) -> Result<()> {
        let regions: Vec<_> = regions
            .iter()
            .map(|(name, (lat, lon), endpoint)| {
                serde_json::json!({"name": name, "replicas": 1, "location": {"latitude": lat, "longitude": lon}, "endpoint": endpoint})
            })
            .collect();
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "backhaul.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "model": {"source": "/models/smollm2", "format": "gguf",
                          "ggufFiles": ["SmolLM2-135M-Instruct.Q4_1.gguf"], "servedName": self.served},
                "resources": {"gpusPerReplica": 1},
                "regions": regions,
                "routing": {"heavyPromptTokens": 0, "heavyMaxTokens": 0, "failoverAttempts": 3,
                            "firstByteTimeoutSeconds": 10, "requestTimeoutSeconds": 60, "ttlSeconds": ttl},
            },
        }))?;
        self.api
            .create(&PostParams::default(), &object)
            .await
            .context("the API server refused the ModelDeployment")?;
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
        let published = wait_for(Duration::from_secs(90), || async {
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
                "backhaul-operator: ModelDeployment {}/{} not Published within 90 s (status: {}); operator log {operator_log}",
                self.namespace,
                self.name,
                object
                    .map(|o| o.data["status"].to_string())
                    .unwrap_or_default()
            );
        }
        let routes = wait_for(Duration::from_secs(30), || async {
            let routes = worker.routes_of(&self.namespace, &self.name).await.ok()?;
            let live: Vec<_> = routes
                .iter()
                .filter(|r| r["expired"] != true)
                .filter_map(|r| r["region"].as_str())
                .collect();
            regions.iter().all(|r| live.contains(r)).then_some(())
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

    /// Deletes the object (the operator, if still running, withdraws its
    /// routes and releases its finalizer; otherwise the finalizer is removed
    /// here), then the namespace.
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
    }
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
    check(chat.status == 200, "the Worker", || {
        format!(
            "answered {} ({}); log {}",
            chat.status,
            chat.body,
            worker.log().display()
        )
    })?;
    check(
        chat.region.as_deref() == Some(region) && chat.attempts == Some(attempts),
        "the Worker",
        || {
            format!(
                "expected region {region} after {attempts} attempt(s), got region {:?} after {:?}; log {}",
                chat.region,
                chat.attempts,
                worker.log().display()
            )
        },
    )?;
    check(chat.tier.as_deref() == Some("region"), "the Worker", || {
        format!("x-backhaul-tier {:?}, expected region", chat.tier)
    })?;
    check(
        chat.content_events > 0 && chat.done && chat.error_event.is_none(),
        region,
        || {
            format!(
                "the stream was not a complete answer: {} content events, [DONE] {}, error event {:?}",
                chat.content_events, chat.done, chat.error_event
            )
        },
    )
}

// ---------------------------------------------------------------------------

async fn happy_path(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "happy").await;
    let us = Region::start("us-east", &model.served, &[]).await?;
    let eu = Region::start("eu-west", &model.served, &[]).await?;
    let op = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &format!("operator-{}", model.namespace),
    )
    .await?;
    model
        .apply(
            &[
                ("us-east", US_EAST, us.endpoint()),
                ("eu-west", EU_WEST, eu.endpoint()),
            ],
            60,
        )
        .await?;
    model
        .wait_published(&ctx.worker, &["us-east", "eu-west"], &operator_log(&op))
        .await?;

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
        "backhaul-inference (us-east)",
        || {
            format!(
                "usage {usage} is not 1..={max_tokens} completion tokens with a prompt; log {}",
                us.proc.log.display()
            )
        },
    )?;
    check(answer.reason.is_some(), "the Worker", || {
        "no x-backhaul-reason header".into()
    })?;
    let from_london = chat(&ctx.worker.url(), &model.served, LONDON, max_tokens, || {}).await?;
    expect_region(&from_london, "eu-west", 1, &ctx.worker)?;
    model.teardown().await;
    drop(op);
    Ok(())
}

async fn nearest_region_down(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "down").await;
    let mut us = Region::start("us-east", &model.served, &[]).await?;
    let eu = Region::start("eu-west", &model.served, &[]).await?;
    let op = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &format!("operator-{}", model.namespace),
    )
    .await?;
    model
        .apply(
            &[
                ("us-east", US_EAST, us.endpoint()),
                ("eu-west", EU_WEST, eu.endpoint()),
            ],
            60,
        )
        .await?;
    model
        .wait_published(&ctx.worker, &["us-east", "eu-west"], &operator_log(&op))
        .await?;
    us.proc.kill();
    for _ in 0..2 {
        let answer = chat(&ctx.worker.url(), &model.served, NEW_YORK, 8, || {}).await?;
        expect_region(&answer, "eu-west", 2, &ctx.worker)?;
    }
    model.teardown().await;
    drop(op);
    Ok(())
}

async fn saturated_region(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "busy").await;
    let us = Region::start(
        "us-east",
        &model.served,
        &["--max-in-flight", "1", "--max-queue", "0"],
    )
    .await?;
    let eu = Region::start("eu-west", &model.served, &[]).await?;
    let op = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &format!("operator-{}", model.namespace),
    )
    .await?;
    model
        .apply(
            &[
                ("us-east", US_EAST, us.endpoint()),
                ("eu-west", EU_WEST, eu.endpoint()),
            ],
            60,
        )
        .await?;
    model
        .wait_published(&ctx.worker, &["us-east", "eu-west"], &operator_log(&op))
        .await?;

    // Hold us-east's only slot with a long request straight to it.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let us_url = us.endpoint();
    let served = model.served.clone();
    let mut first_tx = Some(first_tx);
    let holder = tokio::spawn(async move {
        let body = serde_json::json!({"model": served, "stream": true, "max_tokens": 200, "temperature": 0,
            "messages": [{"role": "user", "content": "Count from one to two hundred in words, one number per line."}]});
        let response = reqwest::Client::new()
            .post(format!("{us_url}/v1/chat/completions"))
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
    let model = Model::new(ctx, "midstream").await;
    let mut us = Region::start("us-east", &model.served, &[]).await?;
    let eu = Region::start("eu-west", &model.served, &[]).await?;
    let op = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &format!("operator-{}", model.namespace),
    )
    .await?;
    model
        .apply(
            &[
                ("us-east", US_EAST, us.endpoint()),
                ("eu-west", EU_WEST, eu.endpoint()),
            ],
            60,
        )
        .await?;
    model
        .wait_published(&ctx.worker, &["us-east", "eu-west"], &operator_log(&op))
        .await?;

    let pid = us.proc.pid();
    let answer = chat(&ctx.worker.url(), &model.served, NEW_YORK, 400, || {
        // The region crashes once its answer has started.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .status();
    })
    .await?;
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
    let error = answer.error_event.clone();
    check(error.is_some(), "the Worker", || {
        format!(
            "the stream broke off mid-answer but carried no error event ([DONE] {}, {} content events); log {}",
            answer.done,
            answer.content_events,
            ctx.worker.log().display()
        )
    })?;
    us.proc.kill();
    let next = chat(&ctx.worker.url(), &model.served, NEW_YORK, 8, || {}).await?;
    expect_region(&next, "eu-west", 2, &ctx.worker)?;
    model.teardown().await;
    drop(op);
    Ok(())
}

async fn operator_killed(ctx: &mut Ctx) -> Result<()> {
    let model = Model::new(ctx, "opkill").await;
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
    model.apply(&endpoints, 60).await?;
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

    let mut names: Vec<String> = deployments
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    names.sort();
    check(
        names == ["smollm2-ap-south", "smollm2-eu-west", "smollm2-us-east"],
        "backhaul-operator",
        || {
            format!(
                "after a crash and restart the Deployments are {names:?}; log {}",
                op.proc.log.display()
            )
        },
    )?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &model.namespace);
    let mut svc: Vec<String> = services
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    svc.sort();
    check(
        svc == ["smollm2-ap-south", "smollm2-eu-west", "smollm2-us-east"],
        "backhaul-operator",
        || format!("after a crash and restart the Services are {svc:?}"),
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
    let model = Model::new(ctx, "restart").await;
    let eu = Region::start("eu-west", &model.served, &[]).await?;
    let mut op = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        None,
        &format!("operator-{}", model.namespace),
    )
    .await?;
    model
        .apply(&[("eu-west", EU_WEST, eu.endpoint())], 60)
        .await?;
    model
        .wait_published(&ctx.worker, &["eu-west"], &operator_log(&op))
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
    let model = Model::new(ctx, "ttl").await;
    let us = Region::start("us-east", &model.served, &[]).await?;
    let eu = Region::start("eu-west", &model.served, &[]).await?;
    // One operator per region, as with one cluster per region.
    let mut op_us = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        Some("us-east"),
        &format!("operator-{}-us", model.namespace),
    )
    .await?;
    let op_eu = Operator::start(
        &ctx.kubeconfig,
        &model.namespace,
        &ctx.worker,
        Some("eu-west"),
        &format!("operator-{}-eu", model.namespace),
    )
    .await?;
    let ttl = 10;
    model
        .apply(
            &[
                ("us-east", US_EAST, us.endpoint()),
                ("eu-west", EU_WEST, eu.endpoint()),
            ],
            ttl,
        )
        .await?;
    model
        .wait_published(&ctx.worker, &["us-east", "eu-west"], &operator_log(&op_us))
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
    // us-east's server is still up, but no request goes there any more.
    let answer = chat(&ctx.worker.url(), &model.served, NEW_YORK, 8, || {}).await?;
    expect_region(&answer, "eu-west", 1, &ctx.worker)?;
    model.teardown().await;
    drop(op_eu);
    Ok(())
}

async fn bad_publications(ctx: &mut Ctx) -> Result<()> {
    let worker = &ctx.worker;
    let snapshot = |routes: Vec<serde_json::Value>| {
        let mut v: Vec<String> = routes
            .iter()
            .map(|r| {
                format!(
                    "{}/{}/{}@{}",
                    r["namespace"], r["name"], r["region"], r["publishedAt"]
                )
            })
            .collect();
        v.sort();
        v
    };
    let namespace = format!(
        "e2e-bad-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let path = format!("/admin/v1/routes/{namespace}/smollm2/us-east");
    let route = |published_at: &str| {
        serde_json::json!({
            "namespace": namespace, "name": "smollm2", "region": "us-east", "model": "smollm2-bad",
            "endpoint": "http://127.0.0.1:9", "location": {"latitude": 39.04, "longitude": -77.49},
            "replicas": 1, "readyReplicas": 1,
            "routing": {"heavyPromptTokens": 0, "heavyMaxTokens": 0, "requestTimeoutMs": 1000, "firstByteTimeoutMs": 1000, "failoverAttempts": 1},
            "edgeModel": null, "generation": 1, "publishedAt": published_at, "ttlSeconds": 60,
        })
        .to_string()
    };
    let before = snapshot(worker.routes().await?);
    let body = route("2026-11-23T07:00:00Z");
    // (what, expected status, (timestamp, signature or None to sign properly, path, body))
    type Case = (&'static str, u16, (u64, Option<String>, String, String));
    let bad_cases: Vec<Case> = vec![
        (
            "wrong signature",
            401,
            (
                now(),
                Some(sign(
                    b"not-the-secret",
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
            "no v1= prefix",
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
            "path and body disagree",
            400,
            (
                now(),
                None,
                path.replace("us-east", "eu-west"),
                body.clone(),
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
    // A good write, then an older one replayed: 409 and the newer route stays.
    let newer = route(&rfc3339(now()));
    let (status, text) = worker
        .admin("PUT", &path, newer.as_bytes(), now(), None)
        .await?;
    check(status == 200, "the Worker", || {
        format!("a valid signed PUT answered {status}: {text}")
    })?;
    let with_newer = snapshot(worker.routes().await?);
    let older = route(&rfc3339(now() - 120));
    let (status, text) = worker
        .admin("PUT", &path, older.as_bytes(), now(), None)
        .await?;
    check(status == 409, "the Worker", || {
        format!("an older publishedAt answered {status} ({text}), expected 409")
    })?;
    let after = snapshot(worker.routes().await?);
    check(after == with_newer, "the Worker", || {
        format!("a replayed older route changed the table: {with_newer:?} -> {after:?}")
    })?;
    let (status, _) = worker.admin("DELETE", &path, b"", now(), None).await?;
    check(status == 204, "the Worker", || {
        format!("signed DELETE answered {status}")
    })?;
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
