//! The serving error type and its one mapping to gRPC status, HTTP status
//! and OpenAI error bodies. Every failure a request can meet is a variant
//! here, so adding one forces a decision in each mapping (the matches are
//! exhaustive), and the same bounded [`InferenceError::category`] string
//! labels metrics and logs.

use std::time::Duration;

use axum::http::StatusCode;

/// Why a request was refused or did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferenceError {
    /// A field of the request is missing, malformed or out of range.
    #[error("invalid `{field}`: {message}")]
    InvalidArgument {
        field: &'static str,
        message: String,
    },
    /// The request body is larger than the server accepts.
    #[error("request body is over the limit of {limit} bytes (--max-body-bytes)")]
    PayloadTooLarge { limit: usize },
    /// The request named a model this server does not serve.
    #[error("model `{requested}` is not served here (this server serves `{served}`)")]
    ModelNotFound { requested: String, served: String },
    /// Every generation slot and queue place is taken.
    #[error(
        "server overloaded: {in_flight} requests generating and {queued} queued; retry after {}s",
        retry_after.as_secs()
    )]
    Overloaded {
        in_flight: usize,
        queued: usize,
        retry_after: Duration,
    },
    /// The server is shutting down and takes no new work.
    #[error("server is draining and accepts no new requests")]
    Draining,
    /// The model is still loading.
    #[error("model is still loading")]
    Loading,
    /// The request's deadline passed before generation finished.
    #[error("deadline exceeded after {0:?}")]
    DeadlineExceeded(Duration),
    /// The client read its stream too slowly; its sequence was cancelled so
    /// it could not hold up the batch.
    #[error("client read the stream too slowly; generation cancelled")]
    SlowConsumer,
    /// Generation was cut short because the drain deadline passed.
    #[error("generation cancelled: server drain deadline reached")]
    DrainTimeout,
    /// The engine failed while generating.
    #[error("engine error: {0}")]
    Engine(String),
    /// No bearer token came with the request.
    #[error("missing API key: send `Authorization: Bearer <token>`")]
    MissingApiKey,
    /// The bearer token is not one this server accepts (now).
    #[error("invalid API key")]
    InvalidApiKey,
}

/// OpenAI-style error payload parts: HTTP status, `type`, `code`, `param`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub code: &'static str,
    pub param: Option<&'static str>,
}

impl InferenceError {
    /// Bounded label for metrics and logs; never contains request data.
    pub fn category(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "invalid_argument",
            Self::PayloadTooLarge { .. } => "request_too_large",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::Overloaded { .. } => "overloaded",
            Self::Draining => "draining",
            Self::Loading => "loading",
            Self::DeadlineExceeded(_) => "deadline_exceeded",
            Self::SlowConsumer => "slow_consumer",
            Self::DrainTimeout => "drain_timeout",
            Self::Engine(_) => "engine",
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
        }
    }

    /// How long a refused client should wait before retrying, if it should.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The gRPC status. Unknown models are INVALID_ARGUMENT (a bad field, as
    /// the proto documents); overload is RESOURCE_EXHAUSTED with a
    /// `retry-after` (seconds) metadata entry so the Worker can fail over.
    pub fn to_status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            Self::InvalidArgument { .. } | Self::ModelNotFound { .. } => Code::InvalidArgument,
            Self::PayloadTooLarge { .. } => Code::ResourceExhausted,
            Self::Overloaded { .. } => Code::ResourceExhausted,
            Self::Draining | Self::Loading => Code::Unavailable,
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::SlowConsumer | Self::DrainTimeout => Code::Cancelled,
            Self::Engine(_) => Code::Internal,
            Self::MissingApiKey | Self::InvalidApiKey => Code::Unauthenticated,
        };
        let mut status = tonic::Status::new(code, self.to_string());
        if let Some(after) = self.retry_after()
            && let Ok(value) = after.as_secs().max(1).to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }

    /// HTTP status and OpenAI error fields. Unknown models are 404
    /// `model_not_found`, as OpenAI answers them.
    pub fn to_http(&self) -> HttpError {
        let (status, error_type, code, param) = match self {
            Self::InvalidArgument { field, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_argument",
                Some(*field),
            ),
            Self::PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                "request_too_large",
                None,
            ),
            Self::ModelNotFound { .. } => (
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                Some("model"),
            ),
            Self::Overloaded { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "overloaded",
                None,
            ),
            Self::Draining => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "draining",
                None,
            ),
            Self::Loading => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "loading",
                None,
            ),
            Self::DeadlineExceeded(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "server_error",
                "deadline_exceeded",
                None,
            ),
            Self::SlowConsumer => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "slow_consumer",
                None,
            ),
            Self::DrainTimeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "drain_timeout",
                None,
            ),
            Self::Engine(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "engine_error",
                None,
            ),
            Self::MissingApiKey => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing_api_key",
                None,
            ),
            Self::InvalidApiKey => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid_api_key",
                None,
            ),
        };
        HttpError {
            status,
            error_type,
            code,
            param,
        }
    }

    /// The OpenAI error body: `{"error":{"message","type","code","param"}}`.
    pub fn to_openai_json(&self) -> serde_json::Value {
        let http = self.to_http();
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": http.error_type,
                "code": http.code,
                "param": http.param,
            }
        })
    }

    /// The `WWW-Authenticate` challenge of a 401 (RFC 6750), if this is one.
    pub fn www_authenticate(&self) -> Option<&'static str> {
        match self {
            Self::MissingApiKey => Some("Bearer realm=\"backhaul-inference\""),
            Self::InvalidApiKey => {
                Some("Bearer realm=\"backhaul-inference\", error=\"invalid_token\"")
            }
            _ => None,
        }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_refusals_are_401_authentication_errors_and_unauthenticated() {
        for (err, code) in [
            (InferenceError::MissingApiKey, "missing_api_key"),
            (InferenceError::InvalidApiKey, "invalid_api_key"),
        ] {
            let body = err.to_openai_json();
            assert_eq!(body["error"]["type"], "authentication_error");
            assert_eq!(body["error"]["code"], code);
            assert!(body["error"]["param"].is_null());
            assert_eq!(err.to_http().status, StatusCode::UNAUTHORIZED);
            assert_eq!(err.to_status().code(), tonic::Code::Unauthenticated);
            assert!(
                err.www_authenticate()
                    .unwrap()
                    .starts_with("Bearer realm=\"backhaul-inference\"")
            );
        }
        assert_eq!(InferenceError::Loading.www_authenticate(), None);
    }

    #[test]
    fn overload_maps_to_resource_exhausted_and_429_with_retry_after() {
        let err = InferenceError::Overloaded {
            in_flight: 2,
            queued: 4,
            retry_after: Duration::from_secs(3),
        };
        let status = err.to_status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "3");
        assert_eq!(err.to_http().status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.category(), "overloaded");
    }

    #[test]
    fn invalid_argument_names_the_field_in_the_openai_body() {
        let err = InferenceError::invalid("temperature", "must not be negative");
        let body = err.to_openai_json();
        assert_eq!(body["error"]["param"], "temperature");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("temperature")
        );
        assert_eq!(err.to_status().code(), tonic::Code::InvalidArgument);
    }
}
