//! Reconcile against a fake API server (tower-test): each scenario checks the
//! method, path, query and body of every call the reconciler makes, and that it
//! makes no others.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use crate::config::OperatorConfig;
use crate::controller::{Context, reconcile};
use crate::crd::ModelDeployment;
use crate::metrics::Metrics;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const MD: &str = r#"
apiVersion: backhaul.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: smollm2
  namespace: ml
  uid: 1b4e28ba-2fa1-11d2-883f-0016d3cca427
  generation: 1
  resourceVersion: "100"
spec:
  model: {source: /models/smollm2, format: gguf, ggufFiles: [model.gguf], servedName: smollm2-135m}
  resources: {gpusPerReplica: 1}
  regions:
  - {name: us-east, replicas: 2, location: {latitude: 39.04, longitude: -77.49}, endpoint: "https://us-east.example.com"}
"#;

fn md(finalizer: bool, status: Option<Value>, deleting: bool) -> ModelDeployment {
    let mut v: Value = serde_yaml::from_str(MD).unwrap();
    if finalizer {
        v["metadata"]["finalizers"] = json!(["backhaul.dev/unpublish"]);
    }
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2026-11-23T07:00:00Z");
    }
    if let Some(s) = status {
        v["status"] = s;
    }
    serde_json::from_value(v).unwrap()
}

fn context(client: Client) -> Arc<Context> {
    Arc::new(Context::new(client, context_config(), Metrics::new()).unwrap())
}

/// One expected call: method, path, and a check of query and body.
struct Call {
    method: &'static str,
    path: String,
    query_contains: Vec<&'static str>,
    check_body: Box<dyn Fn(&Value) + Send>,
    respond: Value,
    status: u16,
}

fn call(method: &'static str, path: &str, respond: Value) -> Call {
    Call {
        method,
        path: path.into(),
        query_contains: vec![],
        check_body: Box::new(|_| {}),
        respond,
        status: 200,
    }
}

/// A GET of `path` answered 404 Not Found.
fn not_found(path: &str) -> Call {
    let mut c = call(
        "GET",
        path,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    );
    c.status = 404;
    c
}

impl Call {
    fn query(mut self, q: &'static str) -> Self {
        self.query_contains.push(q);
        self
    }
    fn body(mut self, f: impl Fn(&Value) + Send + 'static) -> Self {
        self.check_body = Box::new(f);
        self
    }
}

/// Serves `calls` in order, asserting each; returns the request bodies.
async fn serve(handle: &mut Handle, calls: Vec<Call>) -> Vec<Value> {
    let mut bodies = Vec::new();
    for c in calls {
        let (request, send) = handle
            .next_request()
            .await
            .expect("the reconciler made the call");
        let uri = request.uri().clone();
        assert_eq!(
            (request.method().as_str(), uri.path()),
            (c.method, c.path.as_str()),
            "unexpected call {} {uri}",
            request.method()
        );
        let query = uri.query().unwrap_or_default().to_owned();
        for q in &c.query_contains {
            assert!(query.contains(q), "{} {uri}: query lacks {q}", c.method);
        }
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        (c.check_body)(&body);
        // `null` answers with the request body (a created object echoes back).
        let respond = if c.respond.is_null() {
            body.clone()
        } else {
            c.respond
        };
        bodies.push(body);
        send.send_response(
            Response::builder()
                .status(c.status)
                .body(Body::from(serde_json::to_vec(&respond).unwrap()))
                .unwrap(),
        );
    }
    bodies
}

/// Runs one reconcile of `object` against `calls`; fails if it makes any other call.
async fn scenario(object: ModelDeployment, calls: Vec<Call>) -> Vec<Value> {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    scenario_on(&ctx, handle, object, calls).await.0
}

/// [`scenario`] on a context that outlives it (its caches and what it applied
/// carry over); returns the bodies and the fake API server's handle.
async fn scenario_on(
    ctx: &Arc<Context>,
    mut handle: Handle,
    object: ModelDeployment,
    calls: Vec<Call>,
) -> (Vec<Value>, Handle) {
    let verifier = tokio::spawn(async move {
        let bodies = serve(&mut handle, calls).await;
        (bodies, handle)
    });
    // A reconcile making an unexpected call waits forever for its answer:
    // the deadline turns that into a failure.
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        reconcile(
            Arc::new(kube::core::DeserializeGuard(Ok(object))),
            ctx.clone(),
        ),
    )
    .await
    .expect("reconcile finished (no unexpected API calls)");
    result.expect("reconcile succeeded");
    verifier.await.unwrap()
}

const MDS: &str = "/apis/backhaul.dev/v1alpha1/namespaces/ml/modeldeployments/smollm2";
/// Name of the region's children.
static CHILD: LazyLock<String> = LazyLock::new(|| crate::build::child_name("smollm2", "us-east"));
static DEPLOY: LazyLock<String> =
    LazyLock::new(|| format!("/apis/apps/v1/namespaces/ml/deployments/{}", *CHILD));
static SVC: LazyLock<String> =
    LazyLock::new(|| format!("/api/v1/namespaces/ml/services/{}", *CHILD));
static PDB: LazyLock<String> = LazyLock::new(|| {
    format!(
        "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/{}",
        *CHILD
    )
});

static SECRET: LazyLock<String> =
    LazyLock::new(|| "/api/v1/namespaces/ml/secrets/smollm2-upstream-auth".into());

/// The upstream-credential Secret as the API server holds it.
fn upstream_secret() -> Value {
    let v = crate::validate::validate(&md(true, None, false), &context_config()).unwrap();
    let mut s = serde_json::to_value(crate::upstream_auth::secret(
        &v,
        "fake-api-token-0123456789",
    ))
    .unwrap();
    s["metadata"]["resourceVersion"] = json!("3");
    s
}

fn upstream_secret_object() -> k8s_openapi::api::core::v1::Secret {
    serde_json::from_value(upstream_secret()).unwrap()
}

fn deployment(ready: i32) -> Value {
    let v = crate::validate::validate(&md(true, None, false), &context_config()).unwrap();
    let mut d =
        serde_json::to_value::<Deployment>(crate::build::deployment(&v, &v.regions[0], None))
            .unwrap();
    d["metadata"]["generation"] = json!(1);
    d["status"] = json!({"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": ready});
    d
}

fn context_config() -> OperatorConfig {
    OperatorConfig {
        inference_image: "backhaul-inference:test".into(),
        inference_image_cuda: "backhaul-inference:test-cuda".into(),
        regions: None,
        publish: None,
        watch_namespace: None,
        identity: "test".into(),
        max_concurrent_reconciles: 16,
        pod_env: Vec::new(),
    }
}

/// The controller owner reference every child of [`MD`] carries.
fn owner() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
    crate::validate::validate(&md(true, None, false), &context_config())
        .unwrap()
        .owner
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "1"}, "items": items})
}

/// The calls of a reconcile whose children exist and are all ready (before any status write).
fn apply_calls(ready: i32) -> Vec<Call> {
    let selector = "labelSelector=app.kubernetes.io%2Fmanaged-by%3Dbackhaul-operator%2Cbackhaul.dev%2Fmodel%3Dsmollm2";
    // A just-started operator whose caches are still listing reads each
    // child first (to adopt it), here finding none; the credential Secret
    // exists already.
    let mut calls = vec![
        call("GET", &SECRET, upstream_secret()),
        not_found(&DEPLOY),
        call("PATCH", &DEPLOY, deployment(ready))
            .query("fieldManager=backhaul-operator")
            .query("force=true")
            .body(|b| {
                let pod = &b["spec"]["template"]["spec"];
                assert_eq!(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "1");
                assert_eq!(pod["nodeSelector"]["topology.kubernetes.io/region"], "us-east");
                assert_eq!(pod["containers"][0]["readinessProbe"]["grpc"]["port"], 50051);
                // The pods mount the Worker's credential and refuse requests without it.
                assert_eq!(pod["volumes"][3]["secret"]["secretName"], "smollm2-upstream-auth");
                let args = pod["containers"][0]["args"].as_array().unwrap();
                let key_file = args.iter().position(|a| a == "--api-key-file").unwrap();
                assert_eq!(args[key_file + 1], "/var/run/backhaul/upstream-auth/tokens");
                assert_eq!(b["metadata"]["ownerReferences"][0]["kind"], "ModelDeployment");
            }),
        not_found(&SVC),
        // Answered as the API server would: the child carries its owner
        // reference (the cache compares it with what the watch reports).
        call("PATCH", &SVC, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": *CHILD, "ownerReferences": [owner()]}}))
            .query("fieldManager=backhaul-operator")
            .body(|b| assert_eq!(b["spec"]["ports"][0]["port"], 50051)),
        not_found(&PDB),
        call("PATCH", &PDB, json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": *CHILD, "ownerReferences": [owner()]}}))
            .query("fieldManager=backhaul-operator")
            .body(|b| assert_eq!(b["spec"]["maxUnavailable"], 1)),
    ];
    if ready < 2 {
        calls.push(
            call("GET", "/api/v1/namespaces/ml/pods", list("PodList", vec![])).query(
                "labelSelector=backhaul.dev%2Fmodel%3Dsmollm2%2Cbackhaul.dev%2Fregion%3Dus-east",
            ),
        );
    }
    calls.push(
        call(
            "GET",
            "/apis/apps/v1/namespaces/ml/deployments",
            list("DeploymentList", vec![deployment(ready)]),
        )
        .query(selector),
    );
    calls.push(
        call(
            "GET",
            "/apis/policy/v1/namespaces/ml/poddisruptionbudgets",
            list("PodDisruptionBudgetList", vec![]),
        )
        .query(selector),
    );
    calls
}

#[tokio::test]
async fn new_object_gets_the_finalizer_first() {
    scenario(
        md(false, None, false),
        vec![call("PATCH", MDS, serde_json::to_value(md(true, None, false)).unwrap()).body(|b| {
            // A JSON patch that tests the finalizer list is empty, then adds ours.
            assert_eq!(b[1], json!({"op": "add", "path": "/metadata/finalizers", "value": ["backhaul.dev/unpublish"]}));
        })],
    )
    .await;
}

#[tokio::test]
async fn create_applies_children_then_writes_status_and_a_noop_writes_nothing() {
    // First reconcile: the credential Secret made (one random token, owned by
    // the ModelDeployment), children applied, pods not ready yet, status written.
    let mut calls = apply_calls(0);
    calls.splice(
        0..1,
        [
            not_found(&SECRET),
            call("POST", "/api/v1/namespaces/ml/secrets", Value::Null)
                .query("fieldManager=backhaul-operator")
                .body(|b| {
                    assert_eq!(b["metadata"]["name"], "smollm2-upstream-auth");
                    assert_eq!(
                        b["metadata"]["ownerReferences"][0]["kind"],
                        "ModelDeployment"
                    );
                    use base64::Engine as _;
                    let tokens = base64::engine::general_purpose::STANDARD
                        .decode(b["data"]["tokens"].as_str().unwrap())
                        .unwrap();
                    // 32 random bytes, base64url: 43 characters and a newline.
                    assert_eq!(tokens.len(), 44, "{tokens:?}");
                }),
        ],
    );
    calls.push(
        call(
            "PATCH",
            &format!("{MDS}/status"),
            serde_json::to_value(md(true, None, false)).unwrap(),
        )
        .query("fieldManager=backhaul-operator")
        .query("force=true")
        .body(|b| {
            let s = &b["status"];
            assert_eq!(s["observedGeneration"], 1);
            assert_eq!(s["readyRegions"], "0/1");
            assert_eq!(s["regions"][0]["name"], "us-east");
            assert_eq!(s["regions"][0]["phase"], "Progressing");
            assert_eq!(s["regions"][0]["publicationDisabled"], true);
            let types: Vec<_> = s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["type"].as_str().unwrap())
                .collect();
            assert_eq!(types, ["Ready", "Progressing", "Degraded", "Published"]);
            assert_eq!(s["conditions"][3]["reason"], "PublicationDisabled");
        }),
    );
    let bodies = scenario(md(true, None, false), calls).await;
    let written = bodies.last().unwrap()["status"].clone();

    // Same object with that status and the same observations: no writes
    // beyond the (no-op) server-side applies.
    scenario(md(true, Some(written.clone()), false), apply_calls(0)).await;

    // Pods became ready: status is written once more.
    let mut calls = apply_calls(2);
    calls.push(
        call(
            "PATCH",
            &format!("{MDS}/status"),
            serde_json::to_value(md(true, None, false)).unwrap(),
        )
        .body(|b| {
            assert_eq!(b["status"]["regions"][0]["phase"], "Ready");
            assert_eq!(b["status"]["conditions"][0]["status"], "True");
            assert_eq!(b["status"]["readyRegions"], "1/1");
        }),
    );
    scenario(md(true, Some(written), false), calls).await;
}

#[tokio::test]
async fn a_resync_of_an_unchanged_object_sends_no_request() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    // First reconcile: the caches are empty, so every child is applied.
    let mut calls = apply_calls(2);
    calls.push(call(
        "PATCH",
        &format!("{MDS}/status"),
        serde_json::to_value(md(true, None, false)).unwrap(),
    ));
    let (bodies, handle) = scenario_on(&ctx, handle, md(true, None, false), calls).await;
    let written = bodies.last().unwrap()["status"].clone();

    // The watches report the children as the API server answered.
    let meta = |name: &str| kube::api::ObjectMeta {
        name: Some(name.into()),
        namespace: Some("ml".into()),
        owner_references: Some(vec![owner()]),
        ..Default::default()
    };
    let applied: Deployment = serde_json::from_value(deployment(2)).unwrap();
    let mut writers = ctx.take_writers().unwrap();
    writers.fill(
        vec![applied.clone()],
        vec![meta(&CHILD)],
        vec![meta(&CHILD)],
        vec![upstream_secret_object()],
    );

    // Resync with nothing changed: not one request (no apply, list or status).
    let (_, handle) =
        scenario_on(&ctx, handle, md(true, Some(written.clone()), false), vec![]).await;

    // Someone edits the Deployment's spec (a new generation): the operator
    // applies that one child again, and nothing else.
    let mut edited = applied.clone();
    edited.metadata.generation = Some(2);
    writers.fill(
        vec![edited],
        vec![meta(&CHILD)],
        vec![meta(&CHILD)],
        vec![upstream_secret_object()],
    );
    let calls = vec![call("PATCH", &DEPLOY, deployment(2)).query("force=true")];
    let (_, handle) =
        scenario_on(&ctx, handle, md(true, Some(written.clone()), false), calls).await;

    // A deleted Service is recreated, after a read: the watches see only
    // children, so a name missing from them may still be someone else's.
    writers.fill(
        vec![applied],
        vec![],
        vec![meta(&CHILD)],
        vec![upstream_secret_object()],
    );
    let calls = vec![
        not_found(&SVC),
        call(
            "PATCH",
            &SVC,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": *CHILD}}),
        ),
    ];
    let (_, handle) =
        scenario_on(&ctx, handle, md(true, Some(written.clone()), false), calls).await;
    drop(handle);

    // A restarted operator has applied nothing yet. Children that carry the
    // digest of what it would apply and still hold every desired value are
    // adopted with one read each and no write; the next resync sends nothing.
    let v = crate::validate::validate(&md(true, None, false), &context_config()).unwrap();
    let region = &v.regions[0];
    let mut live_deployment = crate::cache::with_digest(crate::build::deployment(&v, region, None));
    live_deployment.metadata.generation = Some(1);
    live_deployment.metadata.resource_version = Some("7".into());
    let mut live = serde_json::to_value(&live_deployment).unwrap();
    // Defaults the API server fills in do not count as changes.
    live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] =
        json!("/dev/termination-log");
    live["status"] = deployment(2)["status"].clone();
    let live_service = crate::cache::with_digest(crate::build::service(&v, region));
    let mut live_svc = serde_json::to_value(&live_service).unwrap();
    live_svc["spec"]["clusterIP"] = json!("10.96.0.17");
    let live_pdb =
        crate::cache::with_digest(crate::build::pod_disruption_budget(&v, region).unwrap());
    let restart = |live_deployment: Value| {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let ctx = context(Client::new(service, "default"));
        ctx.take_writers().unwrap().fill(
            vec![serde_json::from_value(live_deployment).unwrap()],
            vec![live_service.metadata.clone()],
            vec![live_pdb.metadata.clone()],
            vec![upstream_secret_object()],
        );
        (ctx, handle)
    };
    let (ctx, handle) = restart(live.clone());
    let calls = vec![
        call("GET", &DEPLOY, live.clone()),
        call("GET", &SVC, live_svc.clone()),
        call("GET", &PDB, serde_json::to_value(&live_pdb).unwrap()),
    ];
    let (_, handle) =
        scenario_on(&ctx, handle, md(true, Some(written.clone()), false), calls).await;
    let (_, handle) =
        scenario_on(&ctx, handle, md(true, Some(written.clone()), false), vec![]).await;
    drop(handle);

    // Restarted, with the Deployment's image changed by hand meanwhile (the
    // digest still matches: only a value differs): read, then applied.
    let mut edited = live.clone();
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("someone/else:1");
    let (ctx, handle) = restart(edited.clone());
    let calls = vec![
        call("GET", &DEPLOY, edited),
        call("PATCH", &DEPLOY, live.clone())
            .query("force=true")
            .body(|b| {
                assert_eq!(
                    b["spec"]["template"]["spec"]["containers"][0]["image"],
                    "backhaul-inference:test-cuda"
                )
            }),
        call("GET", &SVC, live_svc),
        call("GET", &PDB, serde_json::to_value(&live_pdb).unwrap()),
    ];
    let (_, handle) = scenario_on(&ctx, handle, md(true, Some(written), false), calls).await;
    drop(handle);
}

#[tokio::test]
async fn delete_removes_the_finalizer() {
    scenario(
        md(true, None, true),
        vec![call("PATCH", MDS, serde_json::to_value(md(false, None, true)).unwrap()).body(|b| {
            assert_eq!(
                b,
                &json!([
                    {"op": "test", "path": "/metadata/finalizers/0", "value": "backhaul.dev/unpublish"},
                    {"op": "remove", "path": "/metadata/finalizers/0"},
                ])
            );
        })],
    )
    .await;
}

#[tokio::test]
async fn invalid_spec_sets_a_condition_and_an_event_then_waits() {
    let mut bad = md(true, None, false);
    bad.spec.regions[0].endpoint = "http://gpu.example.com".into();
    scenario(
        bad,
        vec![
            call(
                "PATCH",
                &format!("{MDS}/status"),
                serde_json::to_value(md(true, None, false)).unwrap(),
            )
            .body(|b| {
                let ready = &b["status"]["conditions"][0];
                assert_eq!(ready["reason"], "InvalidSpec");
                assert!(
                    ready["message"]
                        .as_str()
                        .unwrap()
                        .contains("spec.regions[0].endpoint")
                );
            }),
            call(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/ml/events",
                Value::Null,
            )
            .body(|b| {
                assert_eq!(b["reason"], "InvalidSpec");
                assert_eq!(b["type"], "Warning");
                assert_eq!(b["regarding"]["name"], "smollm2");
            }),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_object_of_a_childs_name_that_is_not_ours_is_left_alone_and_reported() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    // The watches have listed and hold none of this object's children: they
    // select the operator's label, which someone's own Service lacks.
    let mut writers = ctx.take_writers().unwrap();
    writers.fill(vec![], vec![], vec![], vec![upstream_secret_object()]);
    let foreign = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": *CHILD, "namespace": "ml", "resourceVersion": "42",
                     "labels": {"app": "someone-elses"}},
        "spec": {"selector": {"app": "someone-elses"}, "ports": [{"port": 80}]},
    });
    let calls = vec![
        not_found(&DEPLOY),
        call("PATCH", &DEPLOY, deployment(2)).query("force=true"),
        // Read, found, and not patched: the next call is the PDB's.
        call("GET", &SVC, foreign),
        not_found(&PDB),
        call(
            "PATCH",
            &PDB,
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": *CHILD}}),
        ),
        call(
            "PATCH",
            &format!("{MDS}/status"),
            serde_json::to_value(md(true, None, false)).unwrap(),
        )
        .body(|b| {
            let region = &b["status"]["regions"][0];
            assert_eq!(region["phase"], "Degraded");
            assert_eq!(region["reason"], "ChildConflict");
            // Its own pods are ready; the region is still not published.
            assert_eq!(region["readyReplicas"], 2);
            assert_eq!(region["published"], false);
            let message = region["message"].as_str().unwrap();
            assert!(
                message.contains(&format!("Service ml/{}", *CHILD))
                    && message.contains("not owned by this ModelDeployment")
                    && message.contains("no controller owner reference"),
                "{message}"
            );
            let degraded = &b["status"]["conditions"][2];
            assert_eq!(
                (&degraded["type"], &degraded["status"], &degraded["reason"]),
                (&json!("Degraded"), &json!("True"), &json!("ChildConflict"))
            );
        }),
        call(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/ml/events",
            Value::Null,
        )
        .body(|b| {
            assert_eq!(b["type"], "Warning");
            assert_eq!(b["reason"], "ChildConflict");
            let note = b["note"].as_str().unwrap();
            assert!(
                note.contains("region us-east") && note.contains(&format!("Service ml/{}", *CHILD)),
                "{note}"
            );
        }),
    ];
    let (_, handle) = scenario_on(&ctx, handle, md(true, None, false), calls).await;
    drop(handle);

    // The children of an earlier ModelDeployment of the same name (another
    // uid), still in the caches while the garbage collector removes them:
    // nothing at all is sent for them, not even a read.
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    let mut earlier = owner();
    earlier.uid = "00000000-0000-0000-0000-000000000001".into();
    let mut deployment: Deployment = serde_json::from_value(deployment(2)).unwrap();
    deployment.metadata.owner_references = Some(vec![earlier.clone()]);
    let meta = kube::api::ObjectMeta {
        owner_references: Some(vec![earlier]),
        ..deployment.metadata.clone()
    };
    ctx.take_writers()
        .unwrap()
        .fill(vec![deployment], vec![meta.clone()], vec![meta], vec![]);
    let calls = vec![
        // Not in the cache (the earlier one's went with it): read, ours.
        call("GET", &SECRET, upstream_secret()),
        call(
            "PATCH",
            &format!("{MDS}/status"),
            serde_json::to_value(md(true, None, false)).unwrap(),
        )
        .body(|b| {
            let region = &b["status"]["regions"][0];
            assert_eq!(region["reason"], "ChildConflict");
            assert_eq!(region["readyReplicas"], 0);
            let message = region["message"].as_str().unwrap();
            for kind in ["Deployment", "Service", "PodDisruptionBudget"] {
                assert!(
                    message.contains(&format!("{kind} ml/{} exists", *CHILD)),
                    "{message}"
                );
            }
            assert!(
                message.contains(
                    "controlled by an earlier ModelDeployment smollm2 with uid 00000000-"
                ),
                "{message}"
            );
        }),
        call(
            "POST",
            "/apis/events.k8s.io/v1/namespaces/ml/events",
            Value::Null,
        )
        .body(|b| assert_eq!(b["reason"], "ChildConflict")),
    ];
    let (_, handle) = scenario_on(&ctx, handle, md(true, None, false), calls).await;
    drop(handle);
}

#[tokio::test]
async fn children_under_the_names_of_an_older_operator_are_replaced_and_deleted() {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(Client::new(service, "default"));
    // An operator from before hashed names left `smollm2-us-east`: ours (the
    // controller owner reference), labelled for us-east.
    let mut old: Deployment = serde_json::from_value(deployment(2)).unwrap();
    old.metadata.name = Some("smollm2-us-east".into());
    let old_meta = old.metadata.clone();
    ctx.take_writers().unwrap().fill(
        vec![old],
        vec![old_meta.clone()],
        vec![old_meta],
        vec![upstream_secret_object()],
    );
    let deleted = json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200});
    let calls = vec![
        not_found(&DEPLOY),
        call("PATCH", &DEPLOY, deployment(2)),
        not_found(&SVC),
        call(
            "PATCH",
            &SVC,
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": *CHILD}}),
        ),
        not_found(&PDB),
        call(
            "PATCH",
            &PDB,
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": *CHILD}}),
        ),
        // Then the old children go, after the new ones were applied.
        call(
            "DELETE",
            "/apis/apps/v1/namespaces/ml/deployments/smollm2-us-east",
            deleted.clone(),
        ),
        call(
            "DELETE",
            "/api/v1/namespaces/ml/services/smollm2-us-east",
            deleted.clone(),
        ),
        call(
            "DELETE",
            "/apis/policy/v1/namespaces/ml/poddisruptionbudgets/smollm2-us-east",
            deleted,
        ),
        call(
            "PATCH",
            &format!("{MDS}/status"),
            serde_json::to_value(md(true, None, false)).unwrap(),
        )
        .body(|b| assert_eq!(b["status"]["regions"][0]["phase"], "Ready")),
    ];
    let (_, handle) = scenario_on(&ctx, handle, md(true, None, false), calls).await;
    drop(handle);
}
