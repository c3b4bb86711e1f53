//! HTTP adapter: the OpenAI-compatible API (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`) plus `/health` and `/ready`; and the
//! metrics listener's `/metrics` and `/health` ([`metrics_router`]).
//! Everything under `/v1` needs `Authorization: Bearer <token>`
//! ([`crate::auth`]); the probes do not. Errors are OpenAI-shaped; an error
//! after streaming began is sent as a final SSE `data: {"error": ...}` event
//! (what the OpenAI clients raise on) with no `[DONE]` after it.

use std::{convert::Infallible, time::SystemTime};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRef, FromRequest, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event, Sse},
    },
    routing::{get, post},
};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    auth::Authenticator,
    error::InferenceError,
    metrics::{Api, Metrics},
    relay::{Completion, GenEvent, Usage},
    service::{Generation, InferenceService},
    tool_calls::{self, CallDetector, Ending, Tools},
    validate::{HistoryCall, RawMessage, RawPrompt, RawRequest, RawSampling},
};

/// OpenAI's default `max_tokens` for the legacy completions endpoint.
const COMPLETIONS_DEFAULT_MAX_TOKENS: i64 = 16;

/// The API listener: `/v1/*` (with a credential), `/health`, `/ready`.
/// Request bodies over `max_body_bytes` are refused with 413.
pub fn router(service: InferenceService, auth: Authenticator, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(ApiState {
            service,
            max_body_bytes,
        })
        // Outermost, so it sees unknown /v1 paths (and wrong methods) too,
        // and refuses before a body is read.
        .layer(middleware::from_fn_with_state(auth, require_credential))
}

/// What the API's handlers share.
#[derive(Debug, Clone)]
struct ApiState {
    service: InferenceService,
    max_body_bytes: usize,
}

impl FromRef<ApiState> for InferenceService {
    fn from_ref(state: &ApiState) -> Self {
        state.service.clone()
    }
}

/// A request body within `--max-body-bytes`; beyond it, an OpenAI-shaped
/// 413 naming the limit (axum's own rejection is plain text).
struct ApiBody(Bytes);

impl FromRequest<ApiState> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &ApiState) -> Result<Self, ApiError> {
        Bytes::from_request(request, state)
            .await
            .map(Self)
            .map_err(|rejection: BytesRejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    InferenceError::PayloadTooLarge {
                        limit: state.max_body_bytes,
                    }
                } else {
                    InferenceError::invalid("body", rejection.body_text())
                }
                .into()
            })
    }
}

/// The metrics listener: `/metrics` and `/health`, without a credential.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/health", get(health))
        .fallback(not_found)
        .with_state(metrics)
}

/// Refuses `/v1` and everything under it without an accepted bearer token:
/// 401, OpenAI-shaped, with a `WWW-Authenticate` challenge.
async fn require_credential(
    State(auth): State<Authenticator>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if path == "/v1" || path.starts_with("/v1/") {
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        if let Err(error) = auth.check(authorization) {
            return ApiError(error).into_response();
        }
    }
    next.run(request).await
}

/// An error as an OpenAI-shaped response (with Retry-After when useful).
#[derive(Debug)]
pub struct ApiError(pub InferenceError);

impl From<InferenceError> for ApiError {
    fn from(e: InferenceError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let http = self.0.to_http();
        let mut response = (http.status, Json(self.0.to_openai_json())).into_response();
        if let Some(after) = self.0.retry_after() {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        if let Some(challenge) = self.0.www_authenticate() {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {
            "message": "no such endpoint",
            "type": "invalid_request_error",
            "code": "not_found",
            "param": null,
        }})),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct BodyMessage {
    role: String,
    content: Option<Content>,
    tool_calls: Option<Vec<BodyToolCall>>,
    tool_call_id: Option<String>,
    name: Option<String>,
}

/// A call in an assistant message of the history.
#[derive(Debug, Deserialize)]
struct BodyToolCall {
    id: String,
    function: BodyFunctionCall,
}

#[derive(Debug, Deserialize)]
struct BodyFunctionCall {
    name: String,
    arguments: String,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Sampling fields shared by both generation endpoints.
#[derive(Debug, Default, Deserialize)]
struct BodySampling {
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stop: Option<OneOrMany>,
    frequency_penalty: Option<f64>,
    presence_penalty: Option<f64>,
    /// An extension (vLLM, mistral.rs): 1 is none.
    repetition_penalty: Option<f64>,
    seed: Option<i64>,
    n: Option<i64>,
}

impl BodySampling {
    fn into_raw(self, default_max_tokens: Option<i64>) -> RawSampling {
        RawSampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            max_tokens: self
                .max_completion_tokens
                .or(self.max_tokens)
                .or(default_max_tokens),
            stop: self.stop.map(OneOrMany::into_vec).unwrap_or_default(),
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            n: self.n,
        }
    }
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    model: Option<String>,
    messages: Vec<BodyMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    response_format: Option<Value>,
    #[serde(flatten)]
    sampling: BodySampling,
    #[serde(flatten)]
    unsupported: Unsupported,
}

/// OpenAI request fields this server cannot honour. Each is refused with a
/// `400` naming it when set to anything but its no-op value, never silently
/// ignored (docs/openai-compatibility.md lists every field).
#[derive(Debug, Default, Deserialize)]
struct Unsupported {
    logprobs: Option<Value>,
    top_logprobs: Option<Value>,
    logit_bias: Option<Value>,
    functions: Option<Value>,
    function_call: Option<Value>,
    audio: Option<Value>,
    modalities: Option<Value>,
    prediction: Option<Value>,
    web_search_options: Option<Value>,
    reasoning_effort: Option<Value>,
    verbosity: Option<Value>,
    best_of: Option<Value>,
}

impl Unsupported {
    fn check(&self) -> Result<(), InferenceError> {
        let no_op = |v: &Option<Value>, allowed: &[Value]| match v {
            None | Some(Value::Null) => true,
            Some(v) => allowed.contains(v),
        };
        let fields: [(&'static str, &Option<Value>, &[Value], &str); 12] = [
            (
                "logprobs",
                &self.logprobs,
                &[json!(false), json!(0)],
                "log probabilities are not returned",
            ),
            (
                "top_logprobs",
                &self.top_logprobs,
                &[json!(0)],
                "log probabilities are not returned",
            ),
            (
                "logit_bias",
                &self.logit_bias,
                &[json!({})],
                "logit bias is not supported",
            ),
            (
                "functions",
                &self.functions,
                &[json!([])],
                "the deprecated `functions` are not supported; use `tools`",
            ),
            (
                "function_call",
                &self.function_call,
                &[json!("none")],
                "the deprecated `function_call` is not supported; use `tool_choice`",
            ),
            ("audio", &self.audio, &[], "audio output is not supported"),
            (
                "modalities",
                &self.modalities,
                &[json!(["text"])],
                "only the text modality is supported",
            ),
            (
                "prediction",
                &self.prediction,
                &[],
                "predicted outputs are not supported",
            ),
            (
                "web_search_options",
                &self.web_search_options,
                &[],
                "web search is not supported",
            ),
            (
                "reasoning_effort",
                &self.reasoning_effort,
                &[],
                "this model has no reasoning effort setting",
            ),
            (
                "verbosity",
                &self.verbosity,
                &[],
                "verbosity is not supported",
            ),
            (
                "best_of",
                &self.best_of,
                &[json!(1)],
                "only one candidate (best_of = 1) is generated",
            ),
        ];
        match fields
            .iter()
            .find(|(_, value, allowed, _)| !no_op(value, allowed))
        {
            Some((field, _, _, why)) => Err(InferenceError::invalid(field, *why)),
            None => Ok(()),
        }
    }
}

#[derive(Debug, Deserialize)]
struct CompletionBody {
    model: Option<String>,
    prompt: OneOrMany,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    echo: bool,
    suffix: Option<String>,
    #[serde(flatten)]
    sampling: BodySampling,
    #[serde(flatten)]
    unsupported: Unsupported,
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, InferenceError> {
    serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        // serde names missing fields as "missing field `x`".
        let field = [
            "messages",
            "prompt",
            "model",
            "stop",
            "temperature",
            "max_tokens",
        ]
        .into_iter()
        .find(|f| message.contains(&format!("`{f}`")))
        .unwrap_or("body");
        InferenceError::invalid(field, format!("request body is not valid: {message}"))
    })
}

fn request_id_header(headers: &HeaderMap) -> Option<String> {
    header_text(headers, "x-request-id")
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    })
}

async fn chat_completions(
    State(service): State<InferenceService>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let body: ChatBody = parse_body(&body)?;
    body.unsupported.check()?;
    let mut messages = Vec::with_capacity(body.messages.len());
    for m in body.messages {
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(InferenceError::invalid(
                                "messages",
                                format!("content part type `{kind}` is not supported; only text"),
                            )
                            .into());
                        }
                    }
                }
                text
            }
        };
        messages.push(RawMessage {
            role: m.role,
            content,
            tool_calls: m
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|c| HistoryCall {
                    id: c.id,
                    name: c.function.name,
                    arguments: c.function.arguments,
                })
                .collect(),
            tool_call_id: m.tool_call_id,
            name: m.name,
        });
    }
    let raw = RawRequest {
        model: body.model,
        prompt: RawPrompt::Chat(messages),
        sampling: body.sampling.into_raw(None),
        request_id: request_id_header(&headers),
        traceparent: header_text(&headers, "traceparent"),
        response_format: body.response_format,
        tools: body.tools,
        tool_choice: body.tool_choice,
        parallel_tool_calls: body.parallel_tool_calls,
    };
    let generation = service.generate(raw, Api::OpenAiChat, None).await?;
    let tools = generation.tools.clone().filter(Tools::may_call);
    let model = service.model()?.served_name.clone();
    let include_usage = body
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let id = format!("chatcmpl-{}", generation.request_id);
    let request_id = generation.request_id.clone();
    let response = if body.stream {
        sse(chat_chunks(generation, tools, id, model, include_usage)).into_response()
    } else {
        let collected = generation.collect().await;
        if let Some(error) = collected.completion.error {
            return Err(error.into());
        }
        let mut finish_reason = collected.completion.finish_reason.as_openai();
        let calls = tools.and_then(|t| tool_calls::extract_calls(&collected.text, &t));
        let message = match calls {
            Some(calls) => {
                finish_reason = "tool_calls";
                json!({
                    "role": "assistant",
                    "content": null,
                    "tool_calls": calls.iter().enumerate().map(|(i, c)| {
                        let mut call = c.to_openai_json(i);
                        // Whole messages carry no index.
                        call.as_object_mut().map(|o| o.remove("index"));
                        call
                    }).collect::<Vec<_>>(),
                })
            }
            None => json!({"role": "assistant", "content": collected.text}),
        };
        Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": unix_now(),
            "model": model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": usage_json(&collected.completion.usage),
        }))
        .into_response()
    };
    Ok(with_request_id(response, &request_id))
}

fn with_request_id(mut response: Response, request_id: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

fn sse(
    events: impl Stream<Item = Event> + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(events.map(Ok))
}

fn error_event(error: &InferenceError) -> Event {
    Event::default().data(error.to_openai_json().to_string())
}

fn chat_chunks(
    generation: Generation,
    tools: Option<Tools>,
    id: String,
    model: String,
    include_usage: bool,
) -> impl Stream<Item = Event> + Send + 'static {
    let created = unix_now();
    let chunk = move |delta: Value, finish: Value| {
        let mut chunk = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    };
    async_stream::stream! {
        let mut generation = generation;
        // Without tools, every piece of text passes straight through.
        let mut detector = tools.map(CallDetector::new);
        yield Event::default().data(chunk(json!({"role": "assistant", "content": ""}), Value::Null).to_string());
        while let Some(event) = generation.next().await {
            match event {
                GenEvent::Text(text) => {
                    let text = match detector.as_mut() {
                        Some(detector) => detector.push(&text),
                        None => Some(text),
                    };
                    if let Some(text) = text.filter(|t| !t.is_empty()) {
                        yield Event::default().data(chunk(json!({"content": text}), Value::Null).to_string());
                    }
                }
                GenEvent::Done(Completion { error: Some(error), .. }) => {
                    yield error_event(&error);
                    return;
                }
                GenEvent::Done(completion) => {
                    let mut finish_reason = completion.finish_reason.as_openai();
                    match detector.take().map(CallDetector::finish) {
                        Some(Ending::Calls(calls)) => {
                            finish_reason = "tool_calls";
                            let calls: Vec<Value> = calls.iter().enumerate().map(|(i, c)| c.to_openai_json(i)).collect();
                            yield Event::default().data(chunk(json!({"tool_calls": calls}), Value::Null).to_string());
                        }
                        Some(Ending::Text(held)) if !held.is_empty() => {
                            yield Event::default().data(chunk(json!({"content": held}), Value::Null).to_string());
                        }
                        _ => {}
                    }
                    yield Event::default().data(chunk(json!({}), json!(finish_reason)).to_string());
                    if include_usage {
                        let mut last = chunk(json!({}), Value::Null);
                        last["choices"] = json!([]);
                        last["usage"] = usage_json(&completion.usage);
                        yield Event::default().data(last.to_string());
                    }
                    yield Event::default().data("[DONE]");
                    return;
                }
            }
        }
    }
}

async fn completions(
    State(service): State<InferenceService>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let body: CompletionBody = parse_body(&body)?;
    body.unsupported.check()?;
    if body.echo {
        return Err(InferenceError::invalid("echo", "echo is not supported").into());
    }
    if body.suffix.is_some() {
        return Err(InferenceError::invalid("suffix", "suffix is not supported").into());
    }
    let mut prompts = body.prompt.into_vec();
    if prompts.len() != 1 {
        return Err(
            InferenceError::invalid("prompt", "exactly one prompt string is supported").into(),
        );
    }
    let raw = RawRequest {
        model: body.model,
        prompt: RawPrompt::Text(prompts.remove(0)),
        sampling: body.sampling.into_raw(Some(COMPLETIONS_DEFAULT_MAX_TOKENS)),
        request_id: request_id_header(&headers),
        traceparent: header_text(&headers, "traceparent"),
        ..RawRequest::default()
    };
    let generation = service.generate(raw, Api::OpenAiCompletions, None).await?;
    let model = service.model()?.served_name.clone();
    let include_usage = body
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let id = format!("cmpl-{}", generation.request_id);
    let request_id = generation.request_id.clone();
    let created = unix_now();
    let response = if body.stream {
        let chunk = move |text: &str, finish: Value| {
            json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "system_fingerprint": null,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            })
        };
        let events = async_stream::stream! {
            let mut generation = generation;
            while let Some(event) = generation.next().await {
                match event {
                    GenEvent::Text(text) => yield Event::default().data(chunk(&text, Value::Null).to_string()),
                    GenEvent::Done(Completion { error: Some(error), .. }) => {
                        yield error_event(&error);
                        return;
                    }
                    GenEvent::Done(completion) => {
                        let mut last = chunk("", json!(completion.finish_reason.as_openai()));
                        if include_usage {
                            last["usage"] = usage_json(&completion.usage);
                        }
                        yield Event::default().data(last.to_string());
                        yield Event::default().data("[DONE]");
                        return;
                    }
                }
            }
        };
        sse(events).into_response()
    } else {
        let collected = generation.collect().await;
        if let Some(error) = collected.completion.error {
            return Err(error.into());
        }
        Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": null,
            "choices": [{
                "index": 0,
                "text": collected.text,
                "logprobs": null,
                "finish_reason": collected.completion.finish_reason.as_openai(),
            }],
            "usage": usage_json(&collected.completion.usage),
        }))
        .into_response()
    };
    Ok(with_request_id(response, &request_id))
}

async fn models(State(service): State<InferenceService>) -> Result<Response, ApiError> {
    let model = service.model()?;
    Ok(Json(json!({
        "object": "list",
        "data": [{
            "id": model.served_name,
            "object": "model",
            "created": 0,
            "owned_by": "backhaul",
            "context_length": model.context_length,
            "quantization": model.quantization,
            "device": model.device,
        }],
    }))
    .into_response())
}

/// Liveness: the process serves HTTP.
async fn health() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// Readiness: model loaded and not draining.
async fn ready(State(service): State<InferenceService>) -> Response {
    if service.is_ready() {
        return Json(json!({"status": "ready"})).into_response();
    }
    let status = if service.is_shutting_down() {
        "draining"
    } else {
        "loading"
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"status": status})),
    )
        .into_response()
}

async fn render_metrics(State(metrics): State<Metrics>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        metrics.render(),
    )
        .into_response()
}
