//! The operator against the real local control plane (etcd, kube-apiserver,
//! controller-manager with its garbage collector, scheduler, kwok GPU nodes),
//! each test in its own namespace with its own in-process operator and route
//! receiver.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use backhaul_operator::build::child_name;
use backhaul_operator::crd::ModelDeployment;
use backhaul_testkit::{TestNamespace, client, wait_for};
use common::{
    Operator, Receiver, apply_crd, condition, config, delete_all, install_crd,
    install_crd_exclusive, model_deployment, region_status,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};
use serde_json::json;

// Generous: the shared control plane may be busy with other suites.
const CONVERGE: Duration = Duration::from_secs(180);

async fn wait_condition(
    api: &Api<ModelDeployment>,
    name: &str,
    type_: &str,
    status: &str,
) -> ModelDeployment {
    wait_for(CONVERGE, || async {
        let md = api.get(name).await.ok()?;
        let observed = md.status.as_ref()?.observed_generation == md.meta().generation;
        (observed && condition(&md, type_)?.0 == status).then_some(md)
    })
    .await
    .unwrap_or_else(|e| {
        panic!("{name}: condition {type_}={status}: {e}");
    })
}

/// The first Event in the test namespace with this reason, once the
/// operator has recorded it.
async fn wait_event(ns: &TestNamespace, reason: &str) -> k8s_openapi::api::events::v1::Event {
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    wait_for(CONVERGE, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some(reason))
    })
    .await
    .unwrap_or_else(|e| panic!("a {reason} event: {e}"))
}

#[tokio::test]
async fn apply_runs_regions_and_publishes_them() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-apply").await;
    let receiver = Receiver::start().await;
    let operator = Operator::start(config(ns.name(), Some(&receiver), None));
    let mds: Api<ModelDeployment> = ns.api();

    let started = Instant::now();
    mds.create(
        &PostParams::default(),
        &model_deployment(
            "smollm2",
            &[("us-east", 2), ("eu-west", 1), ("ap-south", 1)],
            1,
        ),
    )
    .await
    .unwrap();
    let md = wait_condition(&mds, "smollm2", "Published", "True").await;
    let md = if condition(&md, "Ready").unwrap().0 == "True" {
        md
    } else {
        wait_condition(&mds, "smollm2", "Ready", "True").await
    };
    println!("apply → Ready and Published: {:?}", started.elapsed());

    // One Deployment and Service per region, a PDB only where replicas > 1.
    let deployments: Api<Deployment> = ns.api();
    for (region, replicas) in [("us-east", 2), ("eu-west", 1), ("ap-south", 1)] {
        let d = deployments
            .get(&child_name("smollm2", region))
            .await
            .unwrap();
        let spec = d.spec;
        assert_eq!(spec.replicas, Some(replicas));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.node_selector.unwrap()["topology.kubernetes.io/region"],
            region
        );
        let c = &pod.containers[0];
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["nvidia.com/gpu"].0, "1");
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .unwrap()
                .grpc
                .as_ref()
                .unwrap()
                .port,
            50051
        );
        assert!(c.startup_probe.is_some() && c.liveness_probe.is_some());
        assert_eq!(
            d.metadata.owner_references.unwrap()[0].uid,
            md.uid().unwrap()
        );
        // The scheduler put the pods on nodes of the right region.
        let services: Api<Service> = ns.api();
        services.get(&child_name("smollm2", region)).await.unwrap();
    }
    let pdbs: Api<PodDisruptionBudget> = ns.api();
    let pdb_names: Vec<String> = pdbs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(pdb_names, [child_name("smollm2", "us-east")]);

    // Status per region and routes on the receiver.
    let status = md.status.clone().unwrap();
    assert_eq!(status.ready_regions.as_deref(), Some("3/3"));
    let us = status.regions.iter().find(|r| r.name == "us-east").unwrap();
    assert_eq!((us.replicas, us.ready_replicas, us.published), (2, 2, true));
    assert!(us.published_at.is_some());
    let routes = receiver.routes();
    assert_eq!(routes.len(), 3, "{routes:?}");
    let route = &routes[&format!("{}/smollm2/us-east", ns.name())];
    assert_eq!(route["model"], "smollm2-135m");
    assert_eq!(route["readyReplicas"], 2);
    assert_eq!(route["endpoint"], "https://us-east.gpu.example.com");
    assert_eq!(route["ttlSeconds"], 30);
    assert_eq!(route["generation"], md.meta().generation.unwrap());
    assert_eq!(receiver.rejected(), 0);

    delete_all(&mds).await;
    operator.stop().await;
    receiver.stop();
    ns.cleanup().await;
}

#[tokio::test]
async fn a_region_without_enough_gpus_is_degraded() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-gpu").await;
    let operator = Operator::start(config(ns.name(), None, None));
    let mds: Api<ModelDeployment> = ns.api();
    // The fake nodes have 8 GPUs each: 16 per replica never fits.
    mds.create(
        &PostParams::default(),
        &model_deployment("big", &[("ap-south", 1)], 16),
    )
    .await
    .unwrap();
    let md = wait_condition(&mds, "big", "Degraded", "True").await;
    let (_, reason, message) = condition(&md, "Degraded").unwrap();
    assert_eq!(reason, "InsufficientGPU");
    assert!(
        message.contains("ap-south") && message.contains("nvidia.com/gpu"),
        "{message}"
    );
    assert_eq!(condition(&md, "Ready").unwrap().0, "False");
    // Without a Worker, publication is reported as disabled.
    assert_eq!(
        condition(&md, "Published").unwrap().1,
        "PublicationDisabled"
    );
    let event = wait_event(&ns, "InsufficientGPU").await;
    assert!(event.note.unwrap().contains("ap-south"));
    delete_all(&mds).await;
    operator.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn scaling_a_region_to_zero_withdraws_its_route() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-scale").await;
    let receiver = Receiver::start().await;
    let operator = Operator::start(config(ns.name(), Some(&receiver), None));
    let mds: Api<ModelDeployment> = ns.api();
    mds.create(
        &PostParams::default(),
        &model_deployment("m", &[("us-east", 1), ("eu-west", 1)], 1),
    )
    .await
    .unwrap();
    wait_for(CONVERGE, || async {
        (receiver.routes().len() == 2).then_some(())
    })
    .await
    .expect("two routes");

    let patch = json!({"spec": {"regions": [
        {"name": "us-east", "replicas": 0, "location": {"latitude": 39.04, "longitude": -77.49}, "endpoint": "https://us-east.gpu.example.com"},
        {"name": "eu-west", "replicas": 1, "location": {"latitude": 53.35, "longitude": -6.26}, "endpoint": "https://eu-west.gpu.example.com"},
    ]}});
    mds.patch("m", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let us_east = format!("{}/m/us-east", ns.name());
    wait_for(CONVERGE, || async {
        (!receiver.routes().contains_key(&us_east)).then_some(())
    })
    .await
    .expect("us-east withdrawn");
    assert!(
        receiver
            .log()
            .iter()
            .any(|l| l.method == "DELETE" && l.route == us_east)
    );
    assert!(
        receiver
            .routes()
            .contains_key(&format!("{}/m/eu-west", ns.name()))
    );
    let md = wait_for(CONVERGE, || async {
        let md = mds.get("m").await.ok()?;
        let r = region_status(&md, "us-east")?;
        (r.phase == "ScaledToZero" && !r.published).then_some(md)
    })
    .await
    .expect("us-east scaled to zero in status");
    assert_eq!(condition(&md, "Published").unwrap().0, "True");
    // The PDB-less region keeps its Deployment at 0 replicas.
    let d: Deployment = ns
        .api::<Deployment>()
        .get(&child_name("m", "us-east"))
        .await
        .unwrap();
    assert_eq!(d.spec.replicas, Some(0));

    delete_all(&mds).await;
    operator.stop().await;
    receiver.stop();
    ns.cleanup().await;
}

#[tokio::test]
async fn deleting_withdraws_routes_and_children_go() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-delete").await;
    let receiver = Receiver::start().await;
    let operator = Operator::start(config(ns.name(), Some(&receiver), None));
    let mds: Api<ModelDeployment> = ns.api();
    mds.create(
        &PostParams::default(),
        &model_deployment("gone", &[("us-east", 2), ("eu-west", 1)], 1),
    )
    .await
    .unwrap();
    wait_for(CONVERGE, || async {
        (receiver.routes().len() == 2).then_some(())
    })
    .await
    .expect("two routes");
    let md = mds.get("gone").await.unwrap();
    assert_eq!(md.finalizers(), ["backhaul.dev/unpublish"]);

    mds.delete("gone", &DeleteParams::default()).await.unwrap();
    wait_for(CONVERGE, || async {
        mds.get_opt("gone").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("finalizer removed and object gone");
    assert!(receiver.routes().is_empty(), "{:?}", receiver.routes());
    let deletes = receiver
        .log()
        .iter()
        .filter(|l| l.method == "DELETE")
        .count();
    assert_eq!(deletes, 2);
    // The garbage collector removes the children (owner references).
    let deployments: Api<Deployment> = ns.api();
    let services: Api<Service> = ns.api();
    wait_for(CONVERGE, || async {
        let d = deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        let s = services
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len();
        (d == 0 && s == 0).then_some(())
    })
    .await
    .expect("children garbage collected");

    delete_all(&mds).await;
    operator.stop().await;
    receiver.stop();
    ns.cleanup().await;
}

/// Every ModelDeployment in examples/ is one the API server (schema and
/// CEL rules) accepts as written.
#[tokio::test]
async fn the_examples_are_accepted_by_the_api_server() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-examples").await;
    let ar = ApiResource::erase::<ModelDeployment>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
    let mut accepted = Vec::new();
    for (file, mut value) in backhaul_testkit::examples::model_deployments() {
        value["metadata"]["namespace"] = json!(ns.name());
        let object: DynamicObject = serde_json::from_value(value).unwrap();
        // Dry run: the server validates and admits, and stores nothing
        // (local-demo.yaml and smollm2.yaml share a name).
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let created = api
            .create(&dry_run, &object)
            .await
            .unwrap_or_else(|e| panic!("{file}: refused: {e}"));
        accepted.push(created.name_any());
    }
    accepted.sort();
    assert_eq!(accepted, ["llama-3-1-70b", "smollm2", "smollm2"]);
    ns.cleanup().await;
}

/// Creating `v` is refused with a message containing `message` (`what`
/// names the case in a failure).
async fn refused_saying(
    api: &Api<DynamicObject>,
    v: &serde_json::Value,
    message: &str,
    what: &str,
) {
    match api
        .create(
            &PostParams::default(),
            &serde_json::from_value(v.clone()).unwrap(),
        )
        .await
    {
        Err(kube::Error::Api(s)) => assert!(s.message.contains(message), "{what}: {:?}", s.message),
        other => panic!("{what}: expected a 422, got {other:?}"),
    }
}

/// Breaks a valid object in one way.
type Mutation = Box<dyn Fn(&mut serde_json::Value)>;

#[tokio::test]
async fn bad_objects_are_rejected_naming_the_field() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-reject").await;
    let ar = ApiResource::erase::<ModelDeployment>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
    let good =
        serde_json::to_value(model_deployment("m", &[("us-east", 1), ("eu-west", 1)], 1)).unwrap();

    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "no regions",
            Box::new(|v| v["spec"]["regions"] = json!([])),
            "spec.regions",
        ),
        (
            "duplicate region",
            Box::new(|v| v["spec"]["regions"][1]["name"] = json!("us-east")),
            "spec.regions[1]",
        ),
        (
            "negative replicas",
            Box::new(|v| v["spec"]["regions"][0]["replicas"] = json!(-1)),
            "spec.regions[0].replicas",
        ),
        (
            "latitude",
            Box::new(|v| v["spec"]["regions"][0]["location"]["latitude"] = json!(91)),
            "spec.regions[0].location.latitude",
        ),
        (
            "longitude",
            Box::new(|v| v["spec"]["regions"][1]["location"]["longitude"] = json!(-181)),
            "spec.regions[1].location.longitude",
        ),
        (
            "http endpoint",
            Box::new(|v| v["spec"]["regions"][0]["endpoint"] = json!("http://gpu.example.com")),
            "spec.regions[0].endpoint",
        ),
        (
            "not a url",
            Box::new(|v| v["spec"]["regions"][0]["endpoint"] = json!("gpu.example.com")),
            "spec.regions[0].endpoint",
        ),
        (
            "negative gpus",
            Box::new(|v| v["spec"]["resources"]["gpusPerReplica"] = json!(-1)),
            "spec.resources.gpusPerReplica",
        ),
        (
            "served name",
            Box::new(|v| v["spec"]["model"]["servedName"] = json!("bad name!")),
            "spec.model.servedName",
        ),
        (
            "gguf without files",
            Box::new(|v| v["spec"]["model"]["ggufFiles"] = json!([])),
            "spec.model.ggufFiles",
        ),
        (
            "name",
            Box::new(|v| v["metadata"]["name"] = json!("9lives")),
            "metadata.name",
        ),
        (
            // The inference server refuses --isq for GGUF weights.
            "gguf with quantization",
            Box::new(|v| v["spec"]["model"]["quantization"] = json!("Q4K")),
            "spec.model.quantization",
        ),
        (
            // A cache holds what its fill downloads from the Hub.
            "cache of a local path",
            Box::new(|v| v["spec"]["model"]["cache"] = json!({"size": "10Gi"})),
            "spec.model.cache",
        ),
        (
            "cache access mode",
            Box::new(|v| {
                v["spec"]["model"]["source"] = json!("hf://org/repo");
                v["spec"]["model"]["cache"] = json!({"size": "10Gi", "accessMode": "ReadOnlyMany"});
            }),
            "spec.model.cache.accessMode",
        ),
    ];
    for (what, mutate, field) in cases {
        let mut v = good.clone();
        mutate(&mut v);
        let obj: DynamicObject = serde_json::from_value(v).unwrap();
        match api.create(&PostParams::default(), &obj).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{what}: {s:?}");
                assert!(
                    s.message.contains(field),
                    "{what}: {:?} does not name {field}",
                    s.message
                );
            }
            other => panic!("{what}: expected a 422, got {other:?}"),
        }
    }
    // The gguf + quantization refusal says why, in the server's terms.
    let mut v = good.clone();
    v["spec"]["model"]["quantization"] = json!("Q4K");
    refused_saying(
        &api,
        &v,
        backhaul_operator::crd::GGUF_QUANTIZATION_MESSAGE,
        "gguf with quantization",
    )
    .await;
    // A cache of a local path is refused saying why; of an hf:// source it
    // is taken.
    let mut v = good.clone();
    v["spec"]["model"]["cache"] = json!({"size": "10Gi"});
    refused_saying(
        &api,
        &v,
        backhaul_operator::crd::CACHE_SOURCE_MESSAGE,
        "a cache of a local path",
    )
    .await;
    v["metadata"]["name"] = json!("cached");
    v["spec"]["model"]["source"] = json!("hf://org/repo@v1");
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .expect("a cache of an hf:// source accepted");
    // Tensor parallelism over 3 GPUs is refused saying why; layers take it.
    let mut v = good.clone();
    v["spec"]["resources"] = json!({"gpusPerReplica": 3});
    refused_saying(
        &api,
        &v,
        backhaul_operator::crd::TENSOR_PARALLEL_MESSAGE,
        "3 GPUs with tensor parallelism",
    )
    .await;
    v["metadata"]["name"] = json!("three-gpus-layers");
    v["spec"]["engine"] = json!({"parallelism": "layers"});
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .expect("3 GPUs with layer parallelism accepted");
    // http to loopback is allowed (local development).
    let mut v = good.clone();
    v["spec"]["regions"][0]["endpoint"] = json!("http://127.0.0.1:8000");
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .expect("loopback http accepted");
    ns.cleanup().await;
}

fn versions<K: Resource>(items: &[K]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|o| {
            (
                o.meta().name.clone().unwrap(),
                o.meta().resource_version.clone().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_restarted_operator_converges_without_writes() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-restart").await;
    let receiver = Receiver::start().await;
    let mds: Api<ModelDeployment> = ns.api();
    let deployments: Api<Deployment> = ns.api();
    let services: Api<Service> = ns.api();
    let pdbs: Api<PodDisruptionBudget> = ns.api();
    mds.create(
        &PostParams::default(),
        &model_deployment("m", &[("us-east", 2), ("eu-west", 1)], 1),
    )
    .await
    .unwrap();

    // The first operator stops half way: after the children exist, before Ready.
    let first = Operator::start(config(ns.name(), Some(&receiver), None));
    wait_for(CONVERGE, || async {
        (deployments
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .len()
            == 2)
            .then_some(())
    })
    .await
    .expect("children created");
    first.stop().await;

    let second = Operator::start(config(ns.name(), Some(&receiver), None));
    wait_condition(&mds, "m", "Ready", "True").await;
    wait_condition(&mds, "m", "Published", "True").await;
    second.stop().await;

    let snapshot = || async {
        (
            mds.get("m").await.unwrap().resource_version().unwrap(),
            versions(
                &deployments
                    .list(&ListParams::default())
                    .await
                    .unwrap()
                    .items,
            ),
            versions(&services.list(&ListParams::default()).await.unwrap().items),
            versions(&pdbs.list(&ListParams::default()).await.unwrap().items),
        )
    };
    let before = snapshot().await;
    assert_eq!(before.1.len(), 2, "no duplicate Deployments");
    assert_eq!(before.2.len(), 2, "no duplicate Services");
    assert_eq!(before.3.len(), 1, "one PDB");

    // A third start reconciles a converged object: nothing is written.
    let third = Operator::start(config(ns.name(), Some(&receiver), None));
    wait_for(CONVERGE, || async {
        (third.successes() >= 1).then_some(())
    })
    .await
    .expect("reconciled");
    assert_eq!(
        snapshot().await,
        before,
        "a no-op reconcile changed resourceVersions"
    );
    // Nor asked to: it adopted the children with reads.
    assert_eq!(third.writes(), 0, "requests: {:?}", third.requests());
    third.stop().await;
    assert!(receiver.routes().len() == 2);
    receiver.stop();
    ns.cleanup().await;
}

#[tokio::test]
async fn operators_serving_different_regions_share_an_object() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-split").await;
    let receiver = Receiver::start().await;
    let east = Operator::start(config(ns.name(), Some(&receiver), Some(&["us-east"])));
    let west = Operator::start(config(ns.name(), Some(&receiver), Some(&["eu-west"])));
    let mds: Api<ModelDeployment> = ns.api();
    mds.create(
        &PostParams::default(),
        &model_deployment("m", &[("us-east", 1), ("eu-west", 1)], 1),
    )
    .await
    .unwrap();

    let md = wait_for(CONVERGE, || async {
        let md = mds.get("m").await.ok()?;
        let s = md.status.as_ref()?;
        (s.regions.len() == 2
            && s.regions.iter().all(|r| r.published)
            && condition(&md, "Ready")?.0 == "True")
            .then_some(md)
    })
    .await
    .expect("both regions ready and published");
    assert_eq!(receiver.routes().len(), 2);
    let managers: Vec<String> = md
        .managed_fields()
        .iter()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"backhaul-operator/us-east".to_owned()),
        "{managers:?}"
    );
    assert!(
        managers.contains(&"backhaul-operator/eu-west".to_owned()),
        "{managers:?}"
    );

    // Each operator may still act once on a view from before the other's last
    // status write (a catch-up, not a fight): let both reconcile once more on
    // the converged object before taking the reference version.
    let (e0, w0) = (east.successes(), west.successes());
    wait_for(CONVERGE, || async {
        (east.successes() > e0 && west.successes() > w0).then_some(())
    })
    .await
    .expect("both reconciled the converged object");
    // Converged: further reconciles of both (heartbeats every 10 s) write nothing.
    let rv = mds.get("m").await.unwrap().resource_version();
    let (e0, w0) = (east.successes(), west.successes());
    wait_for(CONVERGE, || async {
        (east.successes() >= e0 + 2 && west.successes() >= w0 + 2).then_some(())
    })
    .await
    .expect("both reconciled again");
    assert_eq!(
        mds.get("m").await.unwrap().resource_version(),
        rv,
        "the operators fight over status"
    );

    // Deleting: each withdraws its own route; the last lets the object go.
    mds.delete("m", &DeleteParams::default()).await.unwrap();
    wait_for(CONVERGE, || async {
        mds.get_opt("m").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("object gone");
    assert!(receiver.routes().is_empty(), "{:?}", receiver.routes());
    east.stop().await;
    west.stop().await;
    receiver.stop();
    ns.cleanup().await;
}

#[tokio::test]
async fn an_unrelated_object_of_a_childs_name_is_not_taken_over() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-foreign").await;
    let receiver = Receiver::start().await;
    let services: Api<Service> = ns.api();
    // Someone's own Service, named as the operator would name us-east's.
    let name = child_name("m", "us-east");
    let foreign: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": {"app": "someone-elses"}},
        "spec": {"selector": {"app": "someone-elses"}, "ports": [{"name": "web", "port": 80}]},
    }))
    .unwrap();
    let created = services
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();

    let operator = Operator::start(config(ns.name(), Some(&receiver), None));
    let mds: Api<ModelDeployment> = ns.api();
    mds.create(
        &PostParams::default(),
        &model_deployment("m", &[("us-east", 1), ("eu-west", 1)], 1),
    )
    .await
    .unwrap();

    // us-east is Degraded naming the Service; eu-west carries on and is published.
    let us_east = format!("{}/m/us-east", ns.name());
    let eu_west = format!("{}/m/eu-west", ns.name());
    let md = wait_for(CONVERGE, || async {
        let md = mds.get("m").await.ok()?;
        let us = region_status(&md, "us-east")?;
        (us.reason.as_deref() == Some("ChildConflict") && receiver.routes().contains_key(&eu_west))
            .then_some(md)
    })
    .await
    .expect("us-east reports the conflict, eu-west is published");
    let us = region_status(&md, "us-east").unwrap();
    assert_eq!(us.phase, "Degraded");
    assert!(!us.published);
    let message = us.message.clone().unwrap();
    assert!(
        message.contains(&format!("Service {}/{name}", ns.name()))
            && message.contains("not owned by this ModelDeployment"),
        "{message}"
    );
    let (status, reason, _) = condition(&md, "Degraded").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ChildConflict")
    );
    assert!(!receiver.routes().contains_key(&us_east));
    let event = wait_event(&ns, "ChildConflict").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.unwrap().contains(&name));

    // Reconciles keep coming (the region is not ready) and leave it untouched.
    let reconciled = operator.successes();
    wait_for(CONVERGE, || async {
        (operator.successes() >= reconciled + 2).then_some(())
    })
    .await
    .expect("reconciled again");
    let now = services.get(&name).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(now.metadata.owner_references, None);
    assert!(
        now.managed_fields()
            .iter()
            .all(|m| m.manager.as_deref() != Some("backhaul-operator")),
        "{:?}",
        now.managed_fields()
    );
    // The region's own Deployment was still applied.
    ns.api::<Deployment>().get(&name).await.unwrap();

    // Once the object is gone the region gets its own Service and its route.
    services
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for(CONVERGE, || async {
        receiver.routes().contains_key(&us_east).then_some(())
    })
    .await
    .expect("us-east published once the name is free");
    let ours = services.get(&name).await.unwrap();
    assert_eq!(ours.owner_references()[0].uid, md.uid().unwrap());
    wait_condition(&mds, "m", "Degraded", "False").await;

    delete_all(&mds).await;
    operator.stop().await;
    receiver.stop();
    ns.cleanup().await;
}

#[tokio::test]
async fn only_one_candidate_leads() {
    use backhaul_operator::leader::{LeaderElector, Timing};
    let client = client().await;
    let ns = TestNamespace::new(&client, "op-lease").await;
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
    };
    let a = LeaderElector::new(client.clone(), ns.name(), "backhaul-operator", "a", timing);
    let b = LeaderElector::new(client.clone(), ns.name(), "backhaul-operator", "b", timing);
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    // A holder that stops renewing loses the lease after its duration.
    let taken = wait_for(Duration::from_secs(20), || async {
        b.try_acquire_or_renew().await.ok()?.then_some(())
    })
    .await;
    assert!(taken.is_ok(), "b takes over an expired lease");
    assert!(
        !a.try_acquire_or_renew().await.unwrap(),
        "a no longer leads"
    );
    // A clean release hands over at once.
    b.release().await.unwrap();
    assert!(a.try_acquire_or_renew().await.unwrap());
    ns.cleanup().await;
}

/// A ModelDeployment with `ttlSeconds` of `ttl`.
fn with_ttl(mut md: ModelDeployment, ttl: u32) -> ModelDeployment {
    md.spec.routing.ttl_seconds = ttl;
    md
}

#[tokio::test]
async fn an_edit_to_a_childs_label_is_restored() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-drift").await;
    let operator = Operator::start(config(ns.name(), None, None));
    let mds: Api<ModelDeployment> = ns.api();
    mds.create(
        &PostParams::default(),
        &model_deployment("m", &[("us-east", 1)], 1),
    )
    .await
    .unwrap();
    wait_condition(&mds, "m", "Ready", "True").await;
    let services: Api<Service> = ns.api();
    let name = child_name("m", "us-east");
    let label = "app.kubernetes.io/name";
    let ours = services.get(&name).await.unwrap();
    let want_label = ours.labels()[label].clone();

    // Someone else edits a label (no new generation: Services have none,
    // and a Deployment's would not move either). The cache's digest covers
    // labels, annotations and owner references alike; an owner-reference
    // edit is not tested here because server-side apply cannot restore it
    // (the operator does not own blockOwnerDeletion, and clearing the
    // controller flag is a conflict by design).
    services
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {label: "tampered"}}})),
        )
        .await
        .unwrap();
    wait_for(CONVERGE, || async {
        let s = services.get(&name).await.ok()?;
        (s.labels().get(label) == Some(&want_label)).then_some(())
    })
    .await
    .expect("the operator restores its label");

    delete_all(&mds).await;
    operator.stop().await;
    ns.cleanup().await;
}

/// The CRD with `spec.routing.edgeModel` an integer: an older (or someone's
/// hand-edited) schema under which stored objects no longer deserialize.
fn edited_crd() -> serde_json::Value {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(ModelDeployment::crd()).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["routing"]
        ["properties"]["edgeModel"] = json!({"type": "integer", "nullable": true});
    crd
}

#[tokio::test]
async fn an_object_that_does_not_deserialize_is_reported_and_the_others_carry_on() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let client = client().await;
    let _crd = install_crd_exclusive(&client).await;
    let ns = TestNamespace::new(&client, "op-undecodable").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ar = ApiResource::erase::<ModelDeployment>(&());
    let dynamic: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &ar);
    let mut bad = serde_json::to_value(model_deployment("bad", &[("us-east", 1)], 1)).unwrap();
    bad["spec"]["routing"]["edgeModel"] = json!(5);
    let bad: DynamicObject = serde_json::from_value(bad).unwrap();
    // Store it under the edited schema (the API server takes a moment to
    // serve a new one; another suite may reinstall the CRD meanwhile).
    wait_for(CONVERGE, || async {
        crds.patch(
            "modeldeployments.backhaul.dev",
            &PatchParams::apply("backhaul-operator-tests").force(),
            &Patch::Apply(edited_crd()),
        )
        .await
        .ok()?;
        dynamic.create(&PostParams::default(), &bad).await.ok()
    })
    .await
    .expect("the object stored under the edited schema");
    // The current schema again; the stored object stays as it is.
    apply_crd(&client).await;

    let receiver = Receiver::start_with_leases().await;
    let operator = Operator::start(config(ns.name(), Some(&receiver), None));
    let mds: Api<ModelDeployment> = ns.api();
    mds.create(
        &PostParams::default(),
        &model_deployment("good", &[("us-east", 1)], 1),
    )
    .await
    .unwrap();
    wait_condition(&mds, "good", "Published", "True").await;
    assert!(
        receiver
            .routes()
            .contains_key(&format!("{}/good/us-east", ns.name()))
    );
    let event = wait_event(&ns, "InvalidObject").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("bad")
    );
    // The note is the deserializer's own words (kube's InvalidObject): the
    // wrong type, so whoever reads the Event knows what to fix.
    let note = event.note.unwrap();
    assert!(note.to_lowercase().contains("invalid type"), "{note}");
    // Nothing was published or applied for it.
    assert!(!receiver.routes().keys().any(|k| k.contains("/bad/")));
    assert!(
        ns.api::<Deployment>()
            .get_opt(&child_name("bad", "us-east"))
            .await
            .unwrap()
            .is_none()
    );

    // The typed list would fail on it: delete it as what it is.
    dynamic
        .delete("bad", &DeleteParams::default())
        .await
        .unwrap();
    delete_all(&mds).await;
    operator.stop().await;
    receiver.stop();
    ns.cleanup().await;
}

#[tokio::test]
async fn a_settled_operator_renews_its_routes_with_one_lease_per_interval() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-lease-renew").await;
    let receiver = Receiver::start_with_leases().await;
    let operator = Operator::start(config(ns.name(), Some(&receiver), None));
    let mds: Api<ModelDeployment> = ns.api();
    for name in ["a", "b", "c"] {
        mds.create(
            &PostParams::default(),
            // ttlSeconds 12: a lease every 4 s.
            &with_ttl(
                model_deployment(name, &[("us-east", 1), ("eu-west", 1)], 1),
                12,
            ),
        )
        .await
        .unwrap();
    }
    for name in ["a", "b", "c"] {
        wait_condition(&mds, name, "Ready", "True").await;
        wait_condition(&mds, name, "Published", "True").await;
    }
    assert_eq!(receiver.routes().len(), 6);
    let puts = |r: &Receiver| r.log().iter().filter(|l| l.method == "PUT").count();
    // Settled: the next 20 s renew all six routes with leases alone.
    let (puts0, leases0, requests0) = (puts(&receiver), receiver.leases(), operator.requests());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let leases = receiver.leases() - leases0;
    assert!((3..=7).contains(&leases), "{leases} leases in 20 s");
    assert_eq!(
        puts(&receiver),
        puts0,
        "no route body re-sent: {:?}",
        receiver.log()
    );
    // Nor any reconcile traffic: no heartbeat requeues any more.
    let requests = operator.requests();
    let writes = |r: &BTreeMap<String, u64>| {
        r.iter()
            .filter(|(m, _)| m.as_str() != "GET")
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    assert_eq!(
        writes(&requests),
        writes(&requests0),
        "{requests:?} vs {requests0:?}"
    );
    assert_eq!(receiver.rejected(), 0);

    delete_all(&mds).await;
    assert!(receiver.routes().is_empty());
    operator.stop().await;
    receiver.stop();
    ns.cleanup().await;
}

#[tokio::test]
async fn deletion_stops_waiting_for_an_unreachable_worker_after_the_ttl() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-unreachable").await;
    let receiver = Receiver::start_with_leases().await;
    let operator = Operator::start(config(ns.name(), Some(&receiver), None));
    let mds: Api<ModelDeployment> = ns.api();
    mds.create(
        &PostParams::default(),
        &with_ttl(model_deployment("m", &[("us-east", 1)], 1), 10),
    )
    .await
    .unwrap();
    wait_condition(&mds, "m", "Published", "True").await;
    // The Worker goes away: its port refuses connections.
    receiver.stop();
    let deleted = Instant::now();
    mds.delete("m", &DeleteParams::default()).await.unwrap();
    let event = wait_event(&ns, "UnpublishTimedOut").await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.note.unwrap().contains("us-east"));
    wait_for(CONVERGE, || async {
        mds.get_opt("m").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("the object goes once its routes have expired");
    let waited = deleted.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "let go after {waited:?}, before the route's 10 s TTL"
    );
    operator.stop().await;
    ns.cleanup().await;
}

#[tokio::test]
async fn the_skip_annotation_lets_deletion_proceed_without_the_worker() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-skip").await;
    let receiver = Receiver::start_with_leases().await;
    let operator = Operator::start(config(ns.name(), Some(&receiver), None));
    let mds: Api<ModelDeployment> = ns.api();
    mds.create(
        &PostParams::default(),
        &with_ttl(model_deployment("m", &[("us-east", 1)], 1), 600),
    )
    .await
    .unwrap();
    wait_condition(&mds, "m", "Published", "True").await;
    receiver.stop();
    mds.patch(
        "m",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"backhaul.dev/skip-unpublish": "true"}}}),
        ),
    )
    .await
    .unwrap();
    let deleted = Instant::now();
    mds.delete("m", &DeleteParams::default()).await.unwrap();
    wait_for(CONVERGE, || async {
        mds.get_opt("m").await.ok()?.is_none().then_some(())
    })
    .await
    .expect("the object goes without its withdrawal");
    // Long before the 600 s TTL would have let it go.
    assert!(
        deleted.elapsed() < Duration::from_secs(120),
        "{:?}",
        deleted.elapsed()
    );
    assert!(
        !receiver.log().iter().any(|l| l.method == "DELETE"),
        "{:?}",
        receiver.log()
    );
    operator.stop().await;
    ns.cleanup().await;
}

/// What the children cache saves: API requests of one no-op resync of 10
/// settled objects, with the cache and with it bypassed.
#[tokio::test]
async fn the_children_cache_makes_a_no_op_resync_free() {
    let client = client().await;
    let _crd = install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-cache").await;
    let mds: Api<ModelDeployment> = ns.api();
    // 4 objects × 2 replicas fit us-east's 16 fake GPUs beside the other tests.
    let names: Vec<String> = (0..4).map(|i| format!("m{i}")).collect();
    for name in &names {
        mds.create(
            &PostParams::default(),
            &model_deployment(name, &[("us-east", 2), ("eu-west", 1)], 1),
        )
        .await
        .unwrap();
    }
    let mut measured = Vec::new();
    for bypass in [false, true] {
        let operator = Operator::start_with(config(ns.name(), None, None), |ctx| {
            ctx.children.bypass(bypass)
        });
        for name in &names {
            wait_condition(&mds, name, "Ready", "True").await;
        }
        // Settle: the reconciles the start caused are over.
        let mut last = operator.requests();
        loop {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let now = operator.requests();
            if now == last {
                break;
            }
            last = now;
        }
        let before = (operator.successes(), operator.requests());
        // A resync: every object reconciled once more, nothing changed.
        for name in &names {
            mds.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"annotations": {"resync": format!("{bypass}")}}}),
                ),
            )
            .await
            .unwrap();
        }
        wait_for(CONVERGE, || async {
            (operator.successes() >= before.0 + names.len() as u64).then_some(())
        })
        .await
        .expect("every object reconciled");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let after = operator.requests();
        let delta: BTreeMap<String, u64> = after
            .iter()
            .map(|(m, n)| (m.clone(), n - before.1.get(m).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .collect();
        println!(
            "no-op resync of {} objects × 2 regions, cache {}: {delta:?}",
            names.len(),
            if bypass { "bypassed" } else { "on" }
        );
        measured.push(delta.values().sum::<u64>());
        operator.stop().await;
    }
    assert_eq!(
        measured[0], 0,
        "with the cache a no-op resync sends nothing"
    );
    // Without: a PATCH per child (2 Deployments, 2 Services, 1 PDB) and the
    // prune's lists, per object.
    assert!(measured[1] >= 5 * names.len() as u64, "{measured:?}");
    // The finalizers need an operator to go.
    let cleanup = Operator::start(config(ns.name(), None, None));
    delete_all(&mds).await;
    cleanup.stop().await;
    ns.cleanup().await;
}
