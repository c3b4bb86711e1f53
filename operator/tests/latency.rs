//! Measures the time from creating ModelDeployments to their routes reaching
//! the Worker (a local receiver), on the local control plane where kwok makes
//! pods ready at once, so the figure is the operator's and the API server's
//! share of the path. Ignored by default; run with
//! `cargo test -p backhaul-operator --test latency -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use backhaul_operator::crd::ModelDeployment;
use backhaul_testkit::{TestNamespace, client, wait_for};
use common::{Operator, Receiver, config, delete_all, install_crd, model_deployment};
use kube::api::{Api, PostParams};

async fn measure(count: usize) -> Vec<Duration> {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, &format!("op-latency-{count}")).await;
    let receiver = Receiver::start().await;
    let operator = Operator::start(config(ns.name(), Some(&receiver), None));
    let mds: Api<ModelDeployment> = ns.api();
    let regions = ["us-east", "eu-west", "ap-south"];
    let mut created = Vec::new();
    for i in 0..count {
        // CPU replicas: 100 objects would not fit on the fake nodes' 40 GPUs.
        let md = model_deployment(&format!("m{i}"), &[(regions[i % 3], 1)], 0);
        let at = Instant::now();
        mds.create(&PostParams::default(), &md).await.unwrap();
        created.push((format!("{}/m{i}/{}", ns.name(), regions[i % 3]), at));
    }
    wait_for(Duration::from_secs(300), || async {
        (receiver.first_puts().len() == count).then_some(())
    })
    .await
    .expect("every route published");
    let puts = receiver.first_puts();
    let latencies = created
        .iter()
        .map(|(route, at)| puts[route].duration_since(*at))
        .collect();
    delete_all(&mds).await;
    operator.stop().await;
    receiver.stop();
    ns.cleanup().await;
    latencies
}

fn report(label: &str, mut l: Vec<Duration>) {
    l.sort();
    let pct = |p: f64| l[((l.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "{label}: n={} p50={:?} p95={:?} max={:?}",
        l.len(),
        pct(0.5),
        pct(0.95),
        l[l.len() - 1]
    );
}

#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn one_object_apply_to_published() {
    report("1 object", measure(1).await);
}

#[tokio::test]
#[ignore = "measurement; run explicitly"]
async fn hundred_objects_apply_to_published() {
    report("100 objects", measure(100).await);
}
