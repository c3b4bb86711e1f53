//! The Worker → region credential on a real server with SmolLM2: `/v1/*`
//! and the Inference gRPC service refuse requests without a current bearer
//! token from `--api-key-file`; probes, gRPC health and reflection stay
//! open; `/metrics` is on its own port; the key file is re-read when it
//! changes (rewritten in place or swapped by symlink, as the kubelet does),
//! and a rotation with requests flowing refuses none that carry a token
//! valid throughout.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use backhaul_inference::{ModelSource, ServerHandle, config::Config, start};
use backhaul_proto::inference::v1::ListModelsRequest;
use clap::Parser;
use common::*;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

const OLD: &str = "old-token-5mXb0rZQ2kYpV7dH1sNwA9eL";
const NEW: &str = "new-token-Jc4tR8uGq1zWmE6fK3yBn0xP";
/// How long a key file change may take to be honoured: the 1 s poll, on a
/// busy machine.
const RELOAD: Duration = Duration::from_secs(15);

/// A key file in its own directory, removed with it.
struct KeyDir {
    dir: tempfile::TempDir,
}

impl KeyDir {
    fn new(lines: &[&str]) -> Self {
        let keys = Self {
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        write_key_file(&keys.path(), lines);
        keys
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    fn write(&self, lines: &[&str]) {
        write_key_file(&self.path(), lines);
    }
}

async fn server_with_keys(keys: &Path) -> ServerHandle {
    server(&["--api-key-file", keys.to_str().expect("utf-8 path")]).await
}

/// `GET /v1/models` with this token (or none): status, `WWW-Authenticate`,
/// body.
async fn models_as(handle: &ServerHandle, token: Option<&str>) -> (u16, Option<String>, Value) {
    let response = http_with(token)
        .get(http_url(handle, "/v1/models"))
        .send()
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().expect("ASCII").to_string());
    let body = response.json().await.expect("a JSON body");
    (status, challenge, body)
}

async fn accepted(handle: &ServerHandle, token: &str) -> bool {
    models_as(handle, Some(token)).await.0 == 200
}

/// Asserts an OpenAI-shaped 401 with this code.
fn assert_refused(answer: &(u16, Option<String>, Value), code: &str) {
    let (status, challenge, body) = answer;
    assert_eq!(*status, 401, "{body}");
    assert_eq!(body["error"]["type"], "authentication_error", "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["param"].is_null(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    let challenge = challenge.as_deref().expect("a WWW-Authenticate challenge");
    assert!(
        challenge.starts_with("Bearer realm=\"backhaul-inference\""),
        "{challenge}"
    );
}

/// Requests sent back to back with one token while a test changes the key
/// file; [`Flow::finish`] stops them and reports what they met.
struct Flow {
    stop: CancellationToken,
    task: JoinHandle<FlowReport>,
}

#[derive(Debug)]
struct FlowReport {
    ok: usize,
    failures: Vec<String>,
}

impl Flow {
    /// `GET /v1/models` over HTTP.
    fn http(handle: &ServerHandle, token: &'static str) -> Self {
        let client = http_with(Some(token));
        let url = http_url(handle, "/v1/models");
        Self::run(move || {
            let request = client.get(&url).send();
            async move {
                match request.await {
                    Ok(r) if r.status() == 200 => Ok(()),
                    Ok(r) => Err(format!(
                        "{}: {}",
                        r.status(),
                        r.text().await.unwrap_or_default()
                    )),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
    }

    /// `ListModels` over gRPC.
    async fn grpc(handle: &ServerHandle, token: &'static str) -> Self {
        let client = grpc_with(handle, Bearer::token(token)).await;
        Self::run(move || {
            let mut client = client.clone();
            async move {
                client
                    .list_models(ListModelsRequest {})
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            }
        })
    }

    fn run<F, Fut>(mut send: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut report = FlowReport {
                    ok: 0,
                    failures: Vec::new(),
                };
                while !stop.is_cancelled() {
                    match send().await {
                        Ok(()) => report.ok += 1,
                        Err(failure) => report.failures.push(failure),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                report
            }
        });
        Self { stop, task }
    }

    /// Stops the flow; asserts it sent requests and none failed.
    async fn finish_without_failures(self, what: &str) -> usize {
        self.stop.cancel();
        let report = self.task.await.expect("the flow task");
        assert!(
            report.failures.is_empty(),
            "{what}: {} of {} requests failed, first: {:?}",
            report.failures.len(),
            report.ok + report.failures.len(),
            report.failures.first()
        );
        assert!(report.ok > 0, "{what}: no request completed");
        report.ok
    }
}

#[tokio::test]
async fn http_requests_need_a_current_bearer_token() {
    let _turn = SERIAL.lock().await;
    let keys = KeyDir::new(&["# two valid at once", OLD, NEW]);
    let handle = server_with_keys(&keys.path()).await;

    // Without a token, whatever the /v1 path or method.
    let none = models_as(&handle, None).await;
    assert_refused(&none, "missing_api_key");
    assert_eq!(
        none.1.as_deref(),
        Some("Bearer realm=\"backhaul-inference\"")
    );
    assert!(
        none.2["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{}",
        none.2
    );
    let response = http_with(None)
        .post(http_url(&handle, "/v1/chat/completions"))
        .body("{not even json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "refused before the body is read");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key");
    let unknown = http_with(None)
        .get(http_url(&handle, "/v1/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 401);
    let unknown = http_with(Some(OLD))
        .get(http_url(&handle, "/v1/nope"))
        .send()
        .await;
    assert_eq!(
        unknown.unwrap().status(),
        404,
        "with a credential: no such path"
    );
    let basic = reqwest::Client::new()
        .get(http_url(&handle, "/v1/models"))
        .basic_auth("user", Some(OLD))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401, "only bearer tokens count");

    // A wrong token.
    let wrong = models_as(&handle, Some("guessed-token-0000000000000000")).await;
    assert_refused(&wrong, "invalid_api_key");

    // Both lines of the file are accepted, for real generation too.
    for token in [OLD, NEW] {
        let (status, _, body) = models_as(&handle, Some(token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["data"][0]["id"], "smollm2");
    }
    let response = http_with(Some(NEW))
        .post(http_url(&handle, "/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 2, "{body}");

    // Rotated out: refused once the file no longer holds it.
    keys.write(&[NEW]);
    eventually(RELOAD, "the removed token to be refused", || async {
        !accepted(&handle, OLD).await
    })
    .await;
    assert_refused(&models_as(&handle, Some(OLD)).await, "invalid_api_key");
    assert!(accepted(&handle, NEW).await);

    let metrics = metrics_text(&handle).await;
    for sample in [
        "backhaul_inference_auth_refused_total{reason=\"missing\"} 4",
        "backhaul_inference_api_keys_loaded 1",
        "backhaul_inference_api_key_reloads_total{result=\"ok\"} 1",
    ] {
        assert!(metrics.contains(sample), "missing {sample} in:\n{metrics}");
    }
    assert!(
        metric(
            &handle,
            "backhaul_inference_auth_refused_total{reason=\"invalid\"}"
        )
        .await
            >= 2.0
    );
}

#[tokio::test]
async fn probes_answer_without_a_token_and_metrics_has_its_own_port() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let anonymous = http_with(None);
    for path in ["/health", "/ready"] {
        let response = anonymous.get(http_url(&handle, path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }

    // Not on the API port, with or without a credential...
    for client in [&anonymous, &http()] {
        let response = client
            .get(http_url(&handle, "/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }
    // ...but on the metrics port, without one.
    let response = anonymous
        .get(metrics_url(&handle, "/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("backhaul_inference_api_keys_loaded 1"),
        "{text}"
    );
    assert!(text.contains("backhaul_inference_engine_info"), "{text}");
    let health = anonymous.get(metrics_url(&handle, "/health")).send().await;
    assert_eq!(health.unwrap().status(), 200);
    let api = anonymous
        .get(metrics_url(&handle, "/v1/models"))
        .send()
        .await;
    assert_eq!(
        api.unwrap().status(),
        404,
        "the API is not on the metrics port"
    );
    assert_ne!(handle.metrics_addr, handle.http_addr);
}

#[tokio::test]
async fn grpc_calls_need_a_bearer_token_and_health_and_reflection_do_not() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;

    let mut anonymous = grpc_with(&handle, Bearer::none()).await;
    let status = anonymous
        .list_models(ListModelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("Bearer"), "{status:?}");
    let status = anonymous.chat(chat("Say hi.", 2)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = anonymous
        .chat_stream(chat("Say hi.", 2))
        .await
        .expect_err("stream refused");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let mut wrong = grpc_with(&handle, Bearer::token("guessed-token-0000000000000000")).await;
    let status = wrong.list_models(ListModelsRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("invalid"), "{status:?}");

    let mut client = grpc(&handle).await;
    let models = client
        .list_models(ListModelsRequest {})
        .await
        .expect("with the token")
        .into_inner();
    assert_eq!(models.models[0].served_name, "smollm2");
    let (text, last) = grpc_stream_text(&mut client, chat("Say hi.", 2)).await;
    assert!(!text.is_empty());
    assert_eq!(last.usage.unwrap().completion_tokens, 2);

    // Health and reflection need nothing.
    let channel = Endpoint::from_shared(format!("http://{}", handle.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: backhaul_proto::INFERENCE_SERVICE_NAME.into(),
        })
        .await
        .expect("health without a token")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let answer = answers.message().await.unwrap().expect("an answer");
    let Some(MessageResponse::ListServicesResponse(list)) = &answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == backhaul_proto::INFERENCE_SERVICE_NAME),
        "{list:?}"
    );

    assert_eq!(
        metric(
            &handle,
            "backhaul_inference_auth_refused_total{reason=\"missing\"}"
        )
        .await,
        3.0
    );
    assert_eq!(
        metric(
            &handle,
            "backhaul_inference_auth_refused_total{reason=\"invalid\"}"
        )
        .await,
        1.0
    );
}

/// The documented rotation (docs/publication.md): add the new token as the
/// second line, swap the lines, remove the old one; requests keep flowing
/// on both APIs and none carrying a token valid throughout a step fails.
#[tokio::test]
async fn rotating_the_token_with_requests_flowing_refuses_no_valid_request() {
    let _turn = SERIAL.lock().await;
    let keys = KeyDir::new(&[OLD]);
    let handle = server_with_keys(&keys.path()).await;
    assert!(!accepted(&handle, NEW).await);

    // 1. The new token as the second line: the old one keeps working.
    let old_http = Flow::http(&handle, OLD);
    let old_grpc = Flow::grpc(&handle, OLD).await;
    keys.write(&[OLD, NEW]);
    eventually(RELOAD, "the added token to be accepted", || async {
        accepted(&handle, NEW).await
    })
    .await;
    let sent = old_http.finish_without_failures("old token, step 1").await;
    old_grpc
        .finish_without_failures("old token over gRPC, step 1")
        .await;
    eprintln!("step 1: {sent} HTTP requests with the old token, none refused");

    // 2. Swap the lines (the Worker now sends the new one): both still work.
    let old_http = Flow::http(&handle, OLD);
    let new_http = Flow::http(&handle, NEW);
    keys.write(&[NEW, OLD]);
    eventually(RELOAD, "the swapped file to be loaded", || async {
        metric(
            &handle,
            "backhaul_inference_api_key_reloads_total{result=\"ok\"}",
        )
        .await
            == 2.0
    })
    .await;
    old_http.finish_without_failures("old token, step 2").await;
    new_http.finish_without_failures("new token, step 2").await;

    // 3. Remove the old line: the new one keeps working, the old is refused.
    let new_http = Flow::http(&handle, NEW);
    let new_grpc = Flow::grpc(&handle, NEW).await;
    keys.write(&[NEW]);
    eventually(RELOAD, "the removed token to be refused", || async {
        !accepted(&handle, OLD).await
    })
    .await;
    let sent = new_http.finish_without_failures("new token, step 3").await;
    new_grpc
        .finish_without_failures("new token over gRPC, step 3")
        .await;
    eprintln!("step 3: {sent} HTTP requests with the new token, none refused");
    assert_refused(&models_as(&handle, Some(OLD)).await, "invalid_api_key");
    let status = grpc_with(&handle, Bearer::token(OLD))
        .await
        .list_models(ListModelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        metric(&handle, "backhaul_inference_api_keys_loaded").await,
        1.0
    );
}

/// A Secret volume as the kubelet writes it: `tokens -> ..data/tokens`,
/// `..data -> ..<timestamp>`, updated by renaming a new `..data` symlink
/// over the old one.
struct SecretVolume {
    dir: tempfile::TempDir,
    generation: usize,
}

impl SecretVolume {
    fn new(lines: &[&str]) -> Self {
        let mut volume = Self {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
        };
        volume.update(lines);
        std::os::unix::fs::symlink("..data/tokens", volume.path()).unwrap();
        volume
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    fn update(&mut self, lines: &[&str]) {
        let root = self.dir.path();
        let old = root.join(format!("..2026_12_01_07_00_00.{}", self.generation));
        self.generation += 1;
        let name = format!("..2026_12_01_07_00_00.{}", self.generation);
        std::fs::create_dir(root.join(&name)).unwrap();
        let mut text = String::new();
        for line in lines {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(root.join(&name).join("tokens"), text).unwrap();
        std::os::unix::fs::symlink(&name, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        if old.exists() {
            std::fs::remove_dir_all(old).unwrap();
        }
    }

    /// Removes `..data`: the key file is unreadable until the next update.
    fn break_link(&self) {
        std::fs::remove_file(self.dir.path().join("..data")).unwrap();
    }
}

#[tokio::test]
async fn a_secret_volume_update_is_followed_and_an_unreadable_file_keeps_the_last_tokens() {
    let _turn = SERIAL.lock().await;
    let mut volume = SecretVolume::new(&[OLD]);
    let handle = server_with_keys(&volume.path()).await;
    assert!(accepted(&handle, OLD).await);

    let old_http = Flow::http(&handle, OLD);
    volume.update(&[OLD, NEW]);
    eventually(RELOAD, "the added token to be accepted", || async {
        accepted(&handle, NEW).await
    })
    .await;
    old_http
        .finish_without_failures("old token while adding")
        .await;

    let new_http = Flow::http(&handle, NEW);
    volume.update(&[NEW]);
    eventually(RELOAD, "the removed token to be refused", || async {
        !accepted(&handle, OLD).await
    })
    .await;
    new_http
        .finish_without_failures("new token while removing")
        .await;

    // The file vanishes (a gap in a swap, a broken mount): the tokens
    // loaded last stay in force.
    let new_http = Flow::http(&handle, NEW);
    volume.break_link();
    eventually(RELOAD, "the unreadable file to be noticed", || async {
        metric(
            &handle,
            "backhaul_inference_api_key_reloads_total{result=\"error\"}",
        )
        .await
            >= 1.0
    })
    .await;
    assert!(!accepted(&handle, OLD).await);
    volume.update(&[NEW]);
    new_http
        .finish_without_failures("new token while unreadable")
        .await;
    assert_eq!(
        metric(&handle, "backhaul_inference_api_keys_loaded").await,
        1.0
    );

    // A readable file without tokens revokes everything.
    volume.update(&["# revoked"]);
    eventually(RELOAD, "every token to be refused", || async {
        !accepted(&handle, NEW).await
    })
    .await;
    assert_refused(&models_as(&handle, Some(NEW)).await, "invalid_api_key");
    assert_eq!(
        metric(&handle, "backhaul_inference_api_keys_loaded").await,
        0.0
    );
}

#[tokio::test]
async fn the_server_refuses_to_start_without_a_credential_unless_told_to() {
    let _turn = SERIAL.lock().await;
    let model = || {
        ModelSource::Load(
            Config::try_parse_from(["backhaul-inference", "--model", "unused.gguf"])
                .unwrap()
                .model,
        )
    };
    let error = start(serve_args_without_credential(&[]), model())
        .await
        .expect_err("no key file and no --allow-unauthenticated")
        .to_string();
    assert!(error.contains("--api-key-file"), "{error}");
    assert!(error.contains("--allow-unauthenticated"), "{error}");

    let keys = KeyDir::new(&["# nothing yet"]);
    let path = keys.path();
    let error = start(
        serve_args_without_credential(&["--api-key-file", path.to_str().unwrap()]),
        model(),
    )
    .await
    .expect_err("a key file without tokens")
    .to_string();
    assert!(error.contains("no tokens"), "{error}");
    let absent = keys.dir.path().join("absent");
    let error = start(
        serve_args_without_credential(&["--api-key-file", absent.to_str().unwrap()]),
        model(),
    )
    .await
    .expect_err("a key file that is not there")
    .to_string();
    assert!(error.contains("absent"), "{error}");

    // Told to: the API answers anyone.
    let handle = server(&["--allow-unauthenticated"]).await;
    let (status, _, body) = models_as(&handle, None).await;
    assert_eq!(status, 200, "{body}");
    let models = grpc_with(&handle, Bearer::none())
        .await
        .list_models(ListModelsRequest {})
        .await
        .expect("no credential needed");
    assert_eq!(models.into_inner().models[0].served_name, "smollm2");
}
