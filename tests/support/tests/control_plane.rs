//! The local control plane behaves as the other tests assume: the pinned
//! Kubernetes version, GPU nodes in three regions, and the scheduler placing
//! (or refusing) GPU pods by region and capacity.

use std::collections::BTreeSet;
use std::time::Duration;

use backhaul_testkit::{REGIONS, TestNamespace, client, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use kube::api::{Api, ListParams, PostParams};

const GPU: &str = "nvidia.com/gpu";
const REGION: &str = "topology.kubernetes.io/region";

fn gpu_deployment(name: &str, region: &str, gpus: u32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "nodeSelector": { REGION: region },
                    "containers": [{
                        "name": "inference",
                        "image": "backhaul/inference:test",
                        "resources": { "limits": { GPU: gpus.to_string() } },
                    }],
                },
            },
        },
    }))
    .expect("a valid Deployment")
}

async fn pods_of(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .map(|list| list.items)
        .unwrap_or_default()
}

#[tokio::test]
async fn reports_the_pinned_version_and_gpu_nodes_in_three_regions() {
    let client = client().await;
    let version = client.apiserver_version().await.expect("server version");
    assert_eq!(version.git_version, "v1.37.2");

    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .expect("list nodes");
    let mut regions = BTreeSet::new();
    for node in &nodes.items {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let status = node.status.as_ref().expect("node status");
        for resources in [&status.capacity, &status.allocatable] {
            let gpus = resources
                .as_ref()
                .and_then(|r| r.get(GPU))
                .map(|q| q.0.clone());
            assert_eq!(gpus.as_deref(), Some("8"), "{name}: {GPU}");
        }
        assert!(
            labels.contains_key("nvidia.com/gpu.product"),
            "{name} has a GPU product label"
        );
        regions.insert(labels.get(REGION).cloned().unwrap_or_default());
    }
    let expected: BTreeSet<String> = REGIONS.iter().map(|r| r.to_string()).collect();
    assert_eq!(regions, expected);
    assert!(nodes.items.len() >= 5, "{} nodes", nodes.items.len());
}

#[tokio::test]
async fn a_gpu_deployment_runs_in_its_region() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cp-schedule").await;
    let deployments: Api<Deployment> = ns.api();
    deployments
        .create(&PostParams::default(), &gpu_deployment("llm", "eu-west", 1))
        .await
        .expect("create deployment");

    let pods: Api<Pod> = ns.api();
    let pod = wait_for(Duration::from_secs(60), || async {
        pods_of(&pods, "llm").await.into_iter().find(|pod| {
            let Some(status) = &pod.status else {
                return false;
            };
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            status.phase.as_deref() == Some("Running") && ready
        })
    })
    .await
    .expect("a Running and Ready pod within 60 s");

    let node_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("pod is bound to a node");
    let node = Api::<Node>::all(client.clone())
        .get(&node_name)
        .await
        .expect("get node");
    let region = node
        .metadata
        .labels
        .unwrap_or_default()
        .get(REGION)
        .cloned();
    assert_eq!(region.as_deref(), Some("eu-west"), "pod ran on {node_name}");

    let available = wait_for(Duration::from_secs(30), || async {
        let status = deployments.get("llm").await.ok()?.status?;
        (status.available_replicas == Some(1)).then_some(())
    })
    .await;
    assert!(
        available.is_ok(),
        "deployment llm reports 1 available replica"
    );
    ns.cleanup().await;
}

#[tokio::test]
async fn a_deployment_asking_for_too_many_gpus_stays_pending() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cp-pending").await;
    let deployments: Api<Deployment> = ns.api();
    // eu-west has two nodes of 8 GPUs: 16 in all, and no node can take a pod
    // asking for 17.
    deployments
        .create(
            &PostParams::default(),
            &gpu_deployment("too-big", "eu-west", 17),
        )
        .await
        .expect("create deployment");

    let events: Api<Event> = ns.api();
    let message = wait_for(Duration::from_secs(60), || async {
        let list = events
            .list(&ListParams::default().fields("reason=FailedScheduling"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .filter_map(|e| e.message)
            .find(|m| m.contains(GPU))
    })
    .await
    .expect("a FailedScheduling event mentioning nvidia.com/gpu within 60 s");
    assert!(
        message.contains(&format!("Insufficient {GPU}")),
        "{message}"
    );

    let pods: Api<Pod> = ns.api();
    let pending = pods_of(&pods, "too-big").await;
    assert!(!pending.is_empty(), "the ReplicaSet made a pod");
    for pod in pending {
        let spec = pod.spec.expect("pod spec");
        let status = pod.status.expect("pod status");
        assert_eq!(status.phase.as_deref(), Some("Pending"));
        assert_eq!(spec.node_name, None, "the pod is not bound");
        let scheduled = status
            .conditions
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.type_ == "PodScheduled");
        let scheduled = scheduled.expect("a PodScheduled condition");
        assert_eq!(scheduled.status, "False");
        assert_eq!(scheduled.reason.as_deref(), Some("Unschedulable"));
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn test_namespaces_are_deleted_by_cleanup_and_on_drop() {
    let client = client().await;
    let namespaces = Api::<Namespace>::all(client.clone());
    let gone_or_going = |name: String| {
        let namespaces = namespaces.clone();
        async move {
            match namespaces.get_opt(&name).await.ok()? {
                None => Some(()),
                Some(ns) => ns.metadata.deletion_timestamp.map(|_| ()),
            }
        }
    };

    let explicit = TestNamespace::new(&client, "cp-cleanup").await;
    let name = explicit.name().to_owned();
    explicit.cleanup().await;
    wait_for(Duration::from_secs(10), || gone_or_going(name.clone()))
        .await
        .expect("cleanup() deletes the namespace");

    let dropped = TestNamespace::new(&client, "cp-drop").await;
    let name = dropped.name().to_owned();
    drop(dropped);
    wait_for(Duration::from_secs(10), || gone_or_going(name.clone()))
        .await
        .expect("dropping deletes the namespace");
}
