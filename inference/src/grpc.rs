//! gRPC adapter: `backhaul.inference.v1.Inference` over the shared request
//! path. Honours the caller's `grpc-timeout` for the whole generation,
//! ending late calls with DEADLINE_EXCEEDED (the server does not use tonic's
//! own timer, which bounds only the time to a stream's response headers and
//! answers CANCELLED; see `server::serve_grpc`). Every call needs
//! `authorization: Bearer <token>` metadata ([`RequireCredential`]); health
//! and reflection, served beside it, do not.

use std::{pin::Pin, time::Duration};

use backhaul_proto::inference::v1::{self as pb, inference_server::Inference};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, metadata::MetadataMap};

use crate::{
    auth::Authenticator,
    error::InferenceError,
    metrics::Api,
    relay::{Completion, FinishReason, GenEvent, Usage},
    service::InferenceService,
    validate::{RawMessage, RawPrompt, RawRequest, RawSampling},
};

#[derive(Debug, Clone)]
pub struct GrpcApi {
    service: InferenceService,
}

impl GrpcApi {
    pub fn new(service: InferenceService) -> Self {
        Self { service }
    }
}

/// Refuses a call without an accepted bearer token with UNAUTHENTICATED,
/// before its message is read.
#[derive(Debug, Clone)]
pub struct RequireCredential(pub Authenticator);

impl tonic::service::Interceptor for RequireCredential {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes());
        self.0.check(authorization).map_err(|e| e.to_status())?;
        Ok(request)
    }
}

type ChatStream = Pin<Box<dyn Stream<Item = Result<pb::ChatStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Inference for GrpcApi {
    type ChatStreamStream = ChatStream;

    async fn chat_stream(
        &self,
        request: Request<pb::ChatRequest>,
    ) -> Result<Response<ChatStream>, Status> {
        let deadline = grpc_deadline(request.metadata()).map_err(|e| e.to_status())?;
        let raw = chat_request(request);
        let generation = self
            .service
            .generate(raw, Api::GrpcChatStream, deadline)
            .await
            .map_err(|e| e.to_status())?;
        let request_id = generation.request_id.clone();
        let header_id = request_id.clone();
        let stream = async_stream::stream! {
            let mut generation = generation;
            while let Some(event) = generation.next().await {
                match event {
                    GenEvent::Text(delta) => yield Ok(pb::ChatStreamResponse {
                        request_id: request_id.clone(),
                        delta,
                        finish_reason: pb::FinishReason::Unspecified.into(),
                        usage: None,
                    }),
                    GenEvent::Done(completion) => {
                        let error = completion.error.clone();
                        yield Ok(pb::ChatStreamResponse {
                            request_id: request_id.clone(),
                            delta: String::new(),
                            finish_reason: finish_reason(completion.finish_reason).into(),
                            usage: Some(usage(&completion.usage)),
                        });
                        // Cut-short generations also end with a non-OK
                        // status, so generic clients see the failure.
                        if let Some(error) = error {
                            yield Err(error.to_status());
                        }
                        break;
                    }
                }
            }
        };
        let mut response = Response::new(Box::pin(stream) as ChatStream);
        insert_request_id(response.metadata_mut(), &header_id);
        Ok(response)
    }

    async fn chat(
        &self,
        request: Request<pb::ChatRequest>,
    ) -> Result<Response<pb::ChatResponse>, Status> {
        let deadline = grpc_deadline(request.metadata()).map_err(|e| e.to_status())?;
        let raw = chat_request(request);
        let generation = self
            .service
            .generate(raw, Api::GrpcChat, deadline)
            .await
            .map_err(|e| e.to_status())?;
        let request_id = generation.request_id.clone();
        let collected = generation.collect().await;
        let Completion {
            finish_reason: reason,
            usage: u,
            error,
        } = collected.completion;
        if let Some(error) = error {
            return Err(error.to_status());
        }
        let mut response = Response::new(pb::ChatResponse {
            request_id: request_id.clone(),
            text: collected.text,
            finish_reason: finish_reason(reason).into(),
            usage: Some(usage(&u)),
        });
        insert_request_id(response.metadata_mut(), &request_id);
        Ok(response)
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let deadline = grpc_deadline(request.metadata()).map_err(|e| e.to_status())?;
        let header_id = header_request_id(request.metadata());
        let traceparent = metadata_text(request.metadata(), "traceparent");
        let request = request.into_inner();
        let raw = RawRequest {
            model: Some(request.model),
            prompt: RawPrompt::Text(request.prompt),
            sampling: raw_sampling(request.sampling),
            request_id: Some(request.request_id)
                .filter(|id| !id.is_empty())
                .or(header_id),
            traceparent,
            ..RawRequest::default()
        };
        let generation = self
            .service
            .generate(raw, Api::GrpcComplete, deadline)
            .await
            .map_err(|e| e.to_status())?;
        let request_id = generation.request_id.clone();
        let collected = generation.collect().await;
        if let Some(error) = collected.completion.error {
            return Err(error.to_status());
        }
        let mut response = Response::new(pb::CompleteResponse {
            request_id: request_id.clone(),
            text: collected.text,
            finish_reason: finish_reason(collected.completion.finish_reason).into(),
            usage: Some(usage(&collected.completion.usage)),
        });
        insert_request_id(response.metadata_mut(), &request_id);
        Ok(response)
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let model = self.service.model().map_err(|e| e.to_status())?;
        Ok(Response::new(pb::ListModelsResponse {
            models: vec![pb::ModelInfo {
                served_name: model.served_name.clone(),
                context_length: u32::try_from(model.context_length).unwrap_or(u32::MAX),
                quantization: model.quantization.clone(),
                device: model.device.clone(),
            }],
        }))
    }
}

fn chat_request(request: Request<pb::ChatRequest>) -> RawRequest {
    let header_id = header_request_id(request.metadata());
    let traceparent = metadata_text(request.metadata(), "traceparent");
    let request = request.into_inner();
    RawRequest {
        model: Some(request.model),
        prompt: RawPrompt::Chat(
            request
                .messages
                .into_iter()
                .map(|m| RawMessage {
                    role: m.role,
                    content: m.content,
                    ..RawMessage::default()
                })
                .collect(),
        ),
        sampling: raw_sampling(request.sampling),
        request_id: Some(request.request_id)
            .filter(|id| !id.is_empty())
            .or(header_id),
        traceparent,
        ..RawRequest::default()
    }
}

fn raw_sampling(sampling: Option<pb::Sampling>) -> RawSampling {
    let s = sampling.unwrap_or_default();
    RawSampling {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k.map(i64::from),
        min_p: s.min_p,
        max_tokens: s.max_tokens.map(i64::from),
        stop: s.stop,
        frequency_penalty: s.frequency_penalty.map(f64::from),
        presence_penalty: s.presence_penalty.map(f64::from),
        repetition_penalty: None,
        seed: None,
        n: None,
    }
}

fn finish_reason(reason: FinishReason) -> pb::FinishReason {
    match reason {
        FinishReason::Stop => pb::FinishReason::Stop,
        FinishReason::Length => pb::FinishReason::Length,
        FinishReason::Cancelled => pb::FinishReason::Cancelled,
        FinishReason::Error => pb::FinishReason::Error,
    }
}

fn usage(usage: &Usage) -> pb::Usage {
    pb::Usage {
        prompt_tokens: u32::try_from(usage.prompt_tokens).unwrap_or(u32::MAX),
        completion_tokens: u32::try_from(usage.completion_tokens).unwrap_or(u32::MAX),
        time_to_first_token_seconds: usage.time_to_first_token.map_or(0.0, |t| t.as_secs_f64()),
    }
}

fn header_request_id(metadata: &MetadataMap) -> Option<String> {
    metadata_text(metadata, "x-request-id")
}

fn metadata_text(metadata: &MetadataMap, name: &str) -> Option<String> {
    metadata
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn insert_request_id(metadata: &mut MetadataMap, request_id: &str) {
    if !request_id.is_empty()
        && let Ok(value) = request_id.parse()
    {
        metadata.insert("x-request-id", value);
    }
}

/// tonic refuses a request message over `--max-grpc-message-bytes` with
/// OUT_OF_RANGE; the gRPC spec (and grpc-go, grpc-core) answer
/// RESOURCE_EXHAUSTED, which is what clients retry and alert on, so such
/// a refusal is rewritten, naming the flag. The refusal is a trailers-only
/// response, so its status is in the headers.
pub fn message_limit_status<B>(mut response: axum::http::Response<B>) -> axum::http::Response<B> {
    const TONIC_PREFIX: &str = "Error, decoded message length too large: ";
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != tonic::Code::OutOfRange || !status.message().starts_with(TONIC_PREFIX) {
        return response;
    }
    // "found N bytes, the limit is: M bytes"
    let numbers: Vec<&str> = status
        .message()
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    let message = match numbers.as_slice() {
        [found, limit] => format!(
            "request message is {found} bytes; the limit is {limit} bytes (--max-grpc-message-bytes)"
        ),
        _ => "request message is over the limit of --max-grpc-message-bytes".to_string(),
    };
    let headers = response.headers_mut();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if Status::resource_exhausted(message)
        .add_header(headers)
        .is_err()
    {
        tracing::warn!("cannot encode a gRPC status; leaving tonic's");
    }
    response
}

/// Parses the `grpc-timeout` header: up to 8 digits and a unit
/// (H, M, S, m, u, n), per the gRPC HTTP/2 protocol spec.
pub fn grpc_deadline(metadata: &MetadataMap) -> Result<Option<Duration>, InferenceError> {
    let Some(value) = metadata.get("grpc-timeout") else {
        return Ok(None);
    };
    let bad = || InferenceError::invalid("grpc-timeout", "malformed header");
    let text = value.to_str().map_err(|_| bad())?;
    parse_grpc_timeout(text).map(Some).ok_or_else(bad)
}

fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_message_limit_refusal_becomes_resource_exhausted() {
        let refusal = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 5000 bytes, the limit is: 4096 bytes",
        )
        .into_http::<()>();
        let fixed = message_limit_status(refusal);
        let status = tonic::Status::from_header_map(fixed.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "request message is 5000 bytes; the limit is 4096 bytes (--max-grpc-message-bytes)"
        );
        // Other statuses pass through.
        let other = message_limit_status(tonic::Status::out_of_range("x").into_http::<()>());
        let status = tonic::Status::from_header_map(other.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::OutOfRange);
    }

    #[test]
    fn grpc_timeouts_parse_per_spec() {
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("1x"), None);
    }
}
