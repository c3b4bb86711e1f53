//! Shared by the integration tests: finds the test model, loads it once per
//! test binary, and starts real servers on free loopback ports. Servers
//! accept [`TOKEN`] (from a key file) unless a test passes its own
//! credential flags, and the HTTP and gRPC clients here send it.

#![allow(dead_code)]

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use backhaul_inference::{
    Engine, ModelSource, ServerHandle,
    config::{Config, ServeArgs},
    start,
};
use backhaul_proto::inference::v1::{
    self as pb, ChatRequest, Message, Sampling, inference_client::InferenceClient,
};
use clap::Parser;
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

/// The bearer token test servers accept by default.
pub const TOKEN: &str = "backhaul-test-token-3Jx8q2LmZg0b7WcR";

/// Writes a key file with these lines atomically (a temporary file in the
/// same directory renamed over it), so a server polling it never sees a
/// half-written file.
pub fn write_key_file(path: &Path, lines: &[&str]) {
    let dir = path.parent().expect("the key file has a directory");
    let mut file = tempfile::NamedTempFile::new_in(dir).expect("a temporary key file");
    for line in lines {
        writeln!(file, "{line}").expect("writing the key file");
    }
    file.persist(path)
        .expect("renaming the key file into place");
}

/// The key file holding [`TOKEN`] that servers start with by default.
pub fn default_key_file() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("backhaul-inference-api-keys");
        write_key_file(&path, &["# test servers' token", TOKEN]);
        path
    })
}

/// Where `make model` puts SmolLM2-135M-Instruct; BACKHAUL_MODEL overrides.
pub fn model_path() -> PathBuf {
    if let Ok(path) = std::env::var("BACKHAUL_MODEL") {
        return PathBuf::from(path);
    }
    let cache = std::env::var("BACKHAUL_CACHE").map_or_else(
        |_| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set"))
                .join(".cache")
                .join("backhaul")
        },
        PathBuf::from,
    );
    let path = cache.join("models").join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "test model not found at {}: run `make model` (or set BACKHAUL_MODEL to a GGUF file)",
        path.display()
    );
    path
}

/// Tests in one binary share one loaded model. It is loaded on a runtime
/// that lives for the whole process, since each test has its own runtime.
pub fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE.get_or_init(|| load_engine(&[])).clone()
}

/// Loads the test model with these extra model flags (e.g. a smaller
/// `--max-seq-len`); a binary that needs one keeps it in its own static.
pub fn load_engine(extra: &[&str]) -> Arc<Engine> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME
        .get_or_init(|| tokio::runtime::Runtime::new().expect("a runtime for loading the model"));
    let path = model_path();
    let mut argv = vec![
        "backhaul-inference",
        "--model",
        path.to_str().expect("utf-8 model path"),
        "--device",
        "cpu",
        "--served-name",
        "smollm2",
    ];
    argv.extend_from_slice(extra);
    let config = Config::try_parse_from(argv).expect("test flags parse");
    let started = Instant::now();
    // Called from inside a test's runtime, which cannot block on another
    // runtime on its own thread.
    let engine = std::thread::spawn(move || runtime.block_on(Engine::load(&config.model)))
        .join()
        .expect("the loader thread")
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    eprintln!("model loaded in {:.1}s", started.elapsed().as_secs_f64());
    Arc::new(engine)
}

/// Engine-bound tests take turns: greedy outputs are compared across
/// requests, and batching with another test's sequences could change them.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serving flags for a test server on free loopback ports, accepting
/// [`TOKEN`] unless `extra` has `--api-key-file` or
/// `--allow-unauthenticated`.
pub fn serve_args(extra: &[&str]) -> ServeArgs {
    let own_credential = extra
        .iter()
        .any(|a| matches!(*a, "--api-key-file" | "--allow-unauthenticated"));
    let key_file = default_key_file().to_str().expect("utf-8 path");
    let mut flags = Vec::new();
    if !own_credential {
        flags.extend(["--api-key-file", key_file]);
    }
    flags.extend_from_slice(extra);
    serve_args_without_credential(&flags)
}

/// Serving flags on free loopback ports with only the credential flags in
/// `extra`.
pub fn serve_args_without_credential(extra: &[&str]) -> ServeArgs {
    let mut argv = vec![
        "backhaul-inference",
        "--model",
        "unused",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    Config::try_parse_from(argv)
        .expect("test flags parse")
        .serve
}

/// Starts a server on the shared model and waits until it is ready.
pub async fn server(extra: &[&str]) -> ServerHandle {
    server_on(engine(), extra).await
}

/// Starts a server on this engine and waits until it is ready.
pub async fn server_on(engine: Arc<Engine>, extra: &[&str]) -> ServerHandle {
    let mut handle = start(serve_args(extra), ModelSource::Loaded(engine))
        .await
        .expect("server starts");
    handle.ready().await.expect("server becomes ready");
    handle
}

/// Adds `authorization: Bearer <token>` to every call (nothing for
/// [`Bearer::none`]).
#[derive(Debug, Clone)]
pub struct Bearer(Option<AsciiMetadataValue>);

impl Bearer {
    pub fn token(token: &str) -> Self {
        Self(Some(
            MetadataValue::try_from(format!("Bearer {token}")).expect("an ASCII token"),
        ))
    }

    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A gRPC client of the Inference service that sends a credential.
pub type GrpcClient = InferenceClient<InterceptedService<Channel, Bearer>>;

/// A client sending [`TOKEN`].
pub async fn grpc(handle: &ServerHandle) -> GrpcClient {
    grpc_with(handle, Bearer::token(TOKEN)).await
}

pub async fn grpc_with(handle: &ServerHandle, bearer: Bearer) -> GrpcClient {
    let channel = Channel::from_shared(format!("http://{}", handle.grpc_addr))
        .expect("a URI")
        .connect()
        .await
        .expect("gRPC connects");
    InferenceClient::with_interceptor(channel, bearer)
}

pub fn http_url(handle: &ServerHandle, path: &str) -> String {
    format!("http://{}{}", handle.http_addr, path)
}

/// A URL on the metrics listener.
pub fn metrics_url(handle: &ServerHandle, path: &str) -> String {
    format!("http://{}{}", handle.metrics_addr, path)
}

/// An HTTP client sending `Authorization: Bearer` [`TOKEN`].
pub fn http() -> reqwest::Client {
    http_with(Some(TOKEN))
}

/// An HTTP client sending this bearer token, or none.
pub fn http_with(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("a header value"),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("an HTTP client")
}

/// `GET` with [`TOKEN`].
pub async fn get(url: String) -> reqwest::Response {
    http().get(url).send().await.expect("HTTP request")
}

pub fn chat(prompt: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: "smollm2".into(),
        messages: vec![Message {
            role: "user".into(),
            content: prompt.into(),
        }],
        sampling: Some(Sampling {
            temperature: Some(0.0),
            max_tokens: Some(max_tokens),
            ..Sampling::default()
        }),
        request_id: String::new(),
    }
}

/// A gRPC client without tonic's client-side deadline timer (which reports
/// an expired `grpc-timeout` as CANCELLED on its own), so a test sees the
/// status the server sends.
pub type RawGrpcClient = InferenceClient<
    InterceptedService<
        hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            tonic::body::Body,
        >,
        Bearer,
    >,
>;

pub fn grpc_without_client_deadline(handle: &ServerHandle) -> RawGrpcClient {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    InferenceClient::with_origin(
        InterceptedService::new(client, Bearer::token(TOKEN)),
        format!("http://{}", handle.grpc_addr)
            .parse()
            .expect("a URI"),
    )
}

/// The text and last message of a gRPC chat stream read to its end.
pub async fn grpc_stream_text(
    client: &mut GrpcClient,
    request: ChatRequest,
) -> (String, pb::ChatStreamResponse) {
    let mut stream = client
        .chat_stream(request)
        .await
        .expect("stream starts")
        .into_inner();
    let mut text = String::new();
    let mut last = None;
    while let Some(message) = stream.message().await.expect("stream message") {
        text.push_str(&message.delta);
        last = Some(message);
    }
    (text, last.expect("at least one message"))
}

/// Text and parsed `data:` payloads of an OpenAI SSE response body.
pub fn sse_payloads(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.trim().to_string())
        .collect()
}

/// Concatenated `delta.content` of chat completion SSE payloads.
pub fn sse_chat_text(payloads: &[String]) -> String {
    payloads
        .iter()
        .filter(|p| p.as_str() != "[DONE]")
        .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// Polls `check` until it holds, failing the test after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The metrics listener's /metrics text (no credential needed).
pub async fn metrics_text(handle: &ServerHandle) -> String {
    reqwest::get(metrics_url(handle, "/metrics"))
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics body")
}

/// The value of one sample line in /metrics, e.g.
/// `backhaul_inference_requests_queued`.
pub async fn metric(handle: &ServerHandle, sample: &str) -> f64 {
    metric_at(&metrics_url(handle, "/metrics"), sample).await
}

/// The value of one sample line in the /metrics text at `url`.
pub async fn metric_at(url: &str, sample: &str) -> f64 {
    let body = reqwest::get(url)
        .await
        .expect("metrics reachable")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .find_map(|line| {
            line.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The server process; killed if the test ends without it exiting.
pub struct ServerProcess {
    pub child: Child,
    pub http: String,
    pub metrics: String,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts the binary on the test model and waits until it is ready.
    pub async fn start(extra: &[&str]) -> Self {
        let model = model_path();
        let mut args = vec!["--model", model.to_str().expect("a UTF-8 path")];
        args.extend_from_slice(extra);
        Self::start_with(&args, &[]).await
    }

    /// Starts the binary with `args` (which name the model) and extra
    /// environment, and waits until it is ready.
    pub async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let port = |_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let [http, grpc, metrics] = [0, 1, 2].map(port);
        let child = Command::new(env!("CARGO_BIN_EXE_backhaul-inference"))
            .args(["--device", "cpu", "--served-name", "smollm2"])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .arg("--api-key-file")
            .arg(default_key_file())
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .expect("the server binary starts");
        let server = Self {
            child,
            http: format!("http://127.0.0.1:{http}"),
            metrics: format!("http://127.0.0.1:{metrics}/metrics"),
        };
        eventually(
            Duration::from_secs(120),
            "the server to be ready",
            || async {
                reqwest::get(format!("{}/ready", server.http))
                    .await
                    .is_ok_and(|r| r.status() == 200)
            },
        )
        .await;
        server
    }

    pub async fn metric(&self, sample: &str) -> f64 {
        metric_at(&self.metrics, sample).await
    }
}

/// POSTs a chat completion body over HTTP: status, headers and body text.
pub async fn http_chat(
    handle: &backhaul_inference::ServerHandle,
    body: serde_json::Value,
) -> (reqwest::StatusCode, reqwest::header::HeaderMap, String) {
    let response = http()
        .post(http_url(handle, "/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("HTTP request");
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.expect("body"))
}
