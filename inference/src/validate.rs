//! Validation: a [`RawRequest`] (whatever a gRPC or HTTP client sent) becomes
//! a [`ValidatedRequest`] or an [`InferenceError::InvalidArgument`] naming
//! the field at fault. Nothing past this point sees unchecked input.
//!
//! Validation also refuses a prompt whose bytes alone prove it cannot fit
//! the context window (see [`ModelInfo::max_prompt_bytes`]), so an
//! oversized prompt costs no tokenization. Checks that need the token count
//! (prompt and max_tokens against the context window) are in
//! [`check_context`], run once the prompt is tokenized.

use serde_json::Value;

use crate::{
    config::Limits, engine::ModelInfo, error::InferenceError, response_format::ResponseFormat,
    tool_calls::Tools,
};

/// Most stop sequences a request may carry.
pub const MAX_STOP_SEQUENCES: usize = 16;

/// The per-request bounds validation applies (from [`Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Tokens generated when the request sets no `max_tokens`.
    pub default_max_tokens: usize,
    /// Largest `max_tokens` accepted.
    pub max_tokens_limit: usize,
    /// Longest stop sequence in bytes.
    pub max_stop_bytes: usize,
    /// Longest prompt text in bytes, if configured (`--max-prompt-bytes`).
    pub max_prompt_bytes: Option<usize>,
}

impl From<&Limits> for RequestLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            default_max_tokens: limits.default_max_tokens as usize,
            max_tokens_limit: limits.max_tokens_limit as usize,
            max_stop_bytes: limits.max_stop_bytes,
            max_prompt_bytes: limits.max_prompt_bytes,
        }
    }
}

/// A request as a client sent it; adapters fill this from proto or JSON.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    pub model: Option<String>,
    pub prompt: RawPrompt,
    pub sampling: RawSampling,
    pub request_id: Option<String>,
    /// A W3C `traceparent` header, if the caller sent one.
    pub traceparent: Option<String>,
    /// OpenAI's `response_format`, as sent (chat only).
    pub response_format: Option<Value>,
    /// OpenAI's `tools`, `tool_choice` and `parallel_tool_calls`, as sent
    /// (chat only).
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
}

#[derive(Debug, Clone)]
pub enum RawPrompt {
    Chat(Vec<RawMessage>),
    Text(String),
}

impl Default for RawPrompt {
    fn default() -> Self {
        Self::Chat(Vec::new())
    }
}

#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    pub role: String,
    pub content: String,
    /// Calls an assistant message made (the history of a tool round trip).
    pub tool_calls: Vec<HistoryCall>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

/// A tool call earlier in the conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryCall {
    pub id: String,
    pub name: String,
    /// The arguments as the model wrote them (JSON text).
    pub arguments: String,
}

#[derive(Debug, Clone, Default)]
pub struct RawSampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub max_tokens: Option<i64>,
    pub stop: Vec<String>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    /// Multiplies down the logits of tokens already in the sequence; 1 is
    /// none (an extension: vLLM, mistral.rs).
    pub repetition_penalty: Option<f64>,
    /// Refused when set: mistral.rs 0.8.1 has no per-request seed.
    pub seed: Option<i64>,
    /// Refused unless 1.
    pub n: Option<i64>,
}

/// A checked request, ready for admission.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedRequest {
    pub request_id: String,
    /// The trace this request belongs to (from a valid `traceparent`), so
    /// logs join the Worker's.
    pub trace_id: Option<String>,
    /// The `traceparent` that trace id came from (a valid one only).
    pub traceparent: Option<String>,
    pub prompt: Prompt,
    pub sampling: RequestedSampling,
    pub response_format: ResponseFormat,
    /// The tools offered, if any (chat only).
    pub tools: Option<Tools>,
}

impl ValidatedRequest {
    /// The JSON schema decoding is held to, if any: a required tool call's,
    /// else `response_format`'s.
    pub fn output_schema(&self) -> Option<Value> {
        self.tools
            .as_ref()
            .and_then(Tools::forced_schema)
            .or_else(|| self.response_format.schema())
            .map(crate::response_format::for_engine)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Text(String),
}

impl Prompt {
    /// The request field holding the prompt, for error messages.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Chat(_) => "messages",
            Self::Text(_) => "prompt",
        }
    }

    /// Bytes of text the client sent (chat template excluded), tool call
    /// arguments in the history included.
    pub fn text_bytes(&self) -> usize {
        match self {
            Self::Chat(messages) => messages
                .iter()
                .map(|m| {
                    m.content.len()
                        + m.tool_calls
                            .iter()
                            .map(|c| c.name.len() + c.arguments.len())
                            .sum::<usize>()
                })
                .sum(),
            Self::Text(text) => text.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// Only on assistant messages.
    pub tool_calls: Vec<HistoryCall>,
    /// Only on tool messages, where it is required.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// A tool's result, answering an assistant's call.
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// Sampling as requested; `max_tokens` is settled by [`check_context`].
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedSampling {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

/// Final sampling settings with a definite token budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
    pub max_tokens: usize,
    pub stop: Vec<String>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InferenceError {
    InferenceError::invalid(field, message)
}

/// Checks everything that does not need the tokenizer.
pub fn validate(
    raw: RawRequest,
    model: &ModelInfo,
    limits: &RequestLimits,
) -> Result<ValidatedRequest, InferenceError> {
    if let Some(requested) = raw.model.filter(|m| !m.is_empty())
        && requested != model.served_name
    {
        return Err(InferenceError::ModelNotFound {
            requested,
            served: model.served_name.clone(),
        });
    }
    let request_id = match raw.request_id.filter(|id| !id.is_empty()) {
        Some(id) if id.len() > 128 || id.chars().any(|c| c.is_control()) => {
            return Err(invalid(
                "request_id",
                "must be at most 128 printable characters",
            ));
        }
        Some(id) => id,
        None => uuid::Uuid::new_v4().to_string(),
    };
    let prompt = match raw.prompt {
        RawPrompt::Chat(messages) => {
            if messages.is_empty() {
                return Err(invalid("messages", "must contain at least one message"));
            }
            let messages = messages
                .into_iter()
                .map(chat_message)
                .collect::<Result<Vec<_>, _>>()?;
            Prompt::Chat(messages)
        }
        RawPrompt::Text(text) => {
            if text.is_empty() {
                return Err(invalid("prompt", "must not be empty"));
            }
            Prompt::Text(text)
        }
    };
    check_prompt_bytes(&prompt, model, limits)?;
    let sampling = validate_sampling(raw.sampling, model, limits)?;
    let response_format = ResponseFormat::parse(raw.response_format.as_ref())?;
    let tools = Tools::parse(
        raw.tools.as_ref(),
        raw.tool_choice.as_ref(),
        raw.parallel_tool_calls,
    )?;
    // One constraint per answer: a call's schema and a response schema
    // cannot both hold, and an answer that may be either is not enforced.
    if response_format != ResponseFormat::Text && tools.as_ref().is_some_and(Tools::may_call) {
        return Err(invalid(
            "response_format",
            "cannot be combined with tool calling; send tool_choice \"none\" or no response_format",
        ));
    }
    let trace_id = raw.traceparent.as_deref().and_then(trace_id);
    Ok(ValidatedRequest {
        request_id,
        traceparent: raw.traceparent.filter(|_| trace_id.is_some()),
        trace_id,
        prompt,
        sampling,
        response_format,
        tools,
    })
}

fn chat_message(m: RawMessage) -> Result<ChatMessage, InferenceError> {
    let role = match m.role.as_str() {
        "system" | "developer" => Role::System,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(invalid(
                "messages",
                format!(
                    "unknown role `{}`; expected system, user, assistant or tool",
                    other.escape_debug()
                ),
            ));
        }
    };
    if !m.tool_calls.is_empty() && role != Role::Assistant {
        return Err(invalid(
            "messages",
            format!("a `{}` message cannot carry tool_calls", role.as_str()),
        ));
    }
    let tool_call_id = m.tool_call_id.filter(|id| !id.is_empty());
    if role == Role::Tool && tool_call_id.is_none() {
        return Err(invalid(
            "messages",
            "a `tool` message needs the `tool_call_id` it answers",
        ));
    }
    Ok(ChatMessage {
        role,
        content: m.content,
        tool_calls: m.tool_calls,
        tool_call_id,
        name: m.name,
    })
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`,
/// neither id all zeros); an invalid one is ignored, as the spec says.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = parts.next().is_none()
        && version == "00"
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && parent.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_string())
}

/// Refuses a prompt longer in bytes than `--max-prompt-bytes`, or than any
/// prompt that could fit the context window, before it is tokenized.
fn check_prompt_bytes(
    prompt: &Prompt,
    model: &ModelInfo,
    limits: &RequestLimits,
) -> Result<(), InferenceError> {
    let bytes = prompt.text_bytes();
    if let Some(max_bytes) = limits.max_prompt_bytes
        && bytes > max_bytes
    {
        return Err(invalid(
            prompt.field(),
            format!(
                "the prompt is {bytes} bytes; at most {max_bytes} are allowed (--max-prompt-bytes)"
            ),
        ));
    }
    if let Some(max_bytes) = model.max_prompt_bytes
        && bytes > max_bytes
    {
        return Err(invalid(
            prompt.field(),
            format!(
                "the prompt is {bytes} bytes; no prompt over {max_bytes} bytes fits the model's context window of {} tokens",
                model.context_length
            ),
        ));
    }
    Ok(())
}

fn finite_in(
    field: &'static str,
    value: Option<f64>,
    min: f64,
    max: f64,
) -> Result<Option<f64>, InferenceError> {
    match value {
        Some(v) if !v.is_finite() => Err(invalid(field, "must be a finite number")),
        Some(v) if v < min || v > max => Err(invalid(
            field,
            format!("must be between {min} and {max}, got {v}"),
        )),
        other => Ok(other),
    }
}

fn validate_sampling(
    raw: RawSampling,
    model: &ModelInfo,
    limits: &RequestLimits,
) -> Result<RequestedSampling, InferenceError> {
    if raw.seed.is_some() {
        return Err(invalid(
            "seed",
            "is not supported: the engine has no per-request seed; use temperature 0 for reproducible output",
        ));
    }
    if let Some(n) = raw.n
        && n != 1
    {
        return Err(invalid("n", "only one choice (n = 1) is supported"));
    }
    let temperature = finite_in("temperature", raw.temperature, 0.0, 100.0)?.unwrap_or(1.0);
    let top_p = finite_in("top_p", raw.top_p, 0.0, 1.0)?;
    if top_p == Some(0.0) {
        return Err(invalid("top_p", "must be greater than 0"));
    }
    let min_p = finite_in("min_p", raw.min_p, 0.0, 1.0)?;
    let top_k = match raw.top_k {
        Some(k) if k < 0 => return Err(invalid("top_k", "must not be negative")),
        // 0 means "no top-k filtering", as in most servers.
        Some(0) | None => None,
        Some(k) => Some(usize::try_from(k).map_err(|_| invalid("top_k", "is too large"))?),
    };
    let frequency_penalty = finite_in("frequency_penalty", raw.frequency_penalty, -2.0, 2.0)?;
    let presence_penalty = finite_in("presence_penalty", raw.presence_penalty, -2.0, 2.0)?;
    let repetition_penalty = finite_in("repetition_penalty", raw.repetition_penalty, 0.0, 2.0)?;
    if repetition_penalty == Some(0.0) {
        return Err(invalid("repetition_penalty", "must be greater than 0"));
    }
    let max_tokens = match raw.max_tokens {
        None => None,
        Some(m) if m < 1 => return Err(invalid("max_tokens", "must be at least 1")),
        Some(m) => {
            let m = usize::try_from(m).unwrap_or(usize::MAX);
            if m > limits.max_tokens_limit {
                return Err(invalid(
                    "max_tokens",
                    format!(
                        "{m} exceeds this server's limit of {} (--max-tokens-limit)",
                        limits.max_tokens_limit
                    ),
                ));
            }
            if m > model.context_length {
                return Err(invalid(
                    "max_tokens",
                    format!(
                        "{m} exceeds the model's context window of {} tokens",
                        model.context_length
                    ),
                ));
            }
            Some(m)
        }
    };
    if raw.stop.len() > MAX_STOP_SEQUENCES {
        return Err(invalid(
            "stop",
            format!("at most {MAX_STOP_SEQUENCES} stop sequences are allowed"),
        ));
    }
    if raw.stop.iter().any(String::is_empty) {
        return Err(invalid("stop", "stop sequences must not be empty"));
    }
    if let Some(long) = raw.stop.iter().find(|s| s.len() > limits.max_stop_bytes) {
        return Err(invalid(
            "stop",
            format!(
                "a stop sequence is {} bytes; at most {} are allowed (--max-stop-bytes)",
                long.len(),
                limits.max_stop_bytes
            ),
        ));
    }
    Ok(RequestedSampling {
        temperature,
        top_k,
        top_p,
        min_p,
        max_tokens,
        stop: raw.stop,
        frequency_penalty: frequency_penalty.map(|v| v as f32),
        presence_penalty: presence_penalty.map(|v| v as f32),
        repetition_penalty: repetition_penalty.map(|v| v as f32),
    })
}

/// Checks the counted prompt against the context window and settles the
/// token budget: an unset `max_tokens` means `default_max_tokens`, or the
/// room left in the context window if that is less.
pub fn check_context(
    requested: &RequestedSampling,
    prompt: &Prompt,
    prompt_tokens: usize,
    context_length: usize,
    default_max_tokens: usize,
) -> Result<Sampling, InferenceError> {
    if prompt_tokens >= context_length {
        return Err(invalid(
            prompt.field(),
            format!(
                "the prompt is {prompt_tokens} tokens; the model's context window is {context_length}"
            ),
        ));
    }
    let room = context_length - prompt_tokens;
    let max_tokens = match requested.max_tokens {
        Some(m) if m > room => {
            return Err(invalid(
                "max_tokens",
                format!(
                    "prompt ({prompt_tokens} tokens) plus max_tokens ({m}) exceeds the context window of {context_length}"
                ),
            ));
        }
        Some(m) => m,
        None => default_max_tokens.min(room),
    };
    Ok(Sampling {
        temperature: requested.temperature,
        top_k: requested.top_k,
        top_p: requested.top_p,
        min_p: requested.min_p,
        max_tokens,
        stop: requested.stop.clone(),
        frequency_penalty: requested.frequency_penalty,
        presence_penalty: requested.presence_penalty,
        repetition_penalty: requested.repetition_penalty,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        default_max_tokens: 20,
        max_tokens_limit: 90,
        max_stop_bytes: 8,
        max_prompt_bytes: None,
    };

    fn model() -> ModelInfo {
        ModelInfo {
            served_name: "smol".into(),
            context_length: 100,
            quantization: "gguf".into(),
            device: "cpu".into(),
            max_prompt_bytes: Some(1000),
        }
    }

    fn chat(messages: &[(&str, &str)]) -> RawRequest {
        RawRequest {
            prompt: RawPrompt::Chat(
                messages
                    .iter()
                    .map(|(role, content)| RawMessage {
                        role: (*role).into(),
                        content: (*content).into(),
                        ..RawMessage::default()
                    })
                    .collect(),
            ),
            ..RawRequest::default()
        }
    }

    fn field_of(err: InferenceError) -> &'static str {
        match err {
            InferenceError::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_chat_validates_with_defaults() {
        let v = validate(chat(&[("user", "hi")]), &model(), &LIMITS).unwrap();
        assert_eq!(v.sampling.temperature, 1.0);
        assert_eq!(v.sampling.max_tokens, None);
        assert!(!v.request_id.is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        let m = model();
        assert_eq!(
            field_of(validate(chat(&[]), &m, &LIMITS).unwrap_err()),
            "messages"
        );
        assert_eq!(
            field_of(validate(chat(&[("wizard", "x")]), &m, &LIMITS).unwrap_err()),
            "messages"
        );
        let with = |f: fn(&mut RawSampling)| {
            let mut r = chat(&[("user", "hi")]);
            f(&mut r.sampling);
            field_of(validate(r, &m, &LIMITS).unwrap_err())
        };
        assert_eq!(with(|s| s.temperature = Some(f64::NAN)), "temperature");
        assert_eq!(with(|s| s.temperature = Some(-1.0)), "temperature");
        assert_eq!(with(|s| s.top_p = Some(1.5)), "top_p");
        assert_eq!(with(|s| s.top_k = Some(-3)), "top_k");
        assert_eq!(with(|s| s.min_p = Some(f64::INFINITY)), "min_p");
        assert_eq!(with(|s| s.max_tokens = Some(0)), "max_tokens");
        assert_eq!(with(|s| s.max_tokens = Some(101)), "max_tokens");
        assert_eq!(
            with(|s| s.frequency_penalty = Some(9.0)),
            "frequency_penalty"
        );
        assert_eq!(
            with(|s| s.repetition_penalty = Some(0.0)),
            "repetition_penalty"
        );
        assert_eq!(
            with(|s| s.repetition_penalty = Some(2.01)),
            "repetition_penalty"
        );
        assert_eq!(with(|s| s.stop = vec![String::new()]), "stop");
        assert_eq!(with(|s| s.seed = Some(1)), "seed");
        assert_eq!(with(|s| s.n = Some(2)), "n");
    }

    #[test]
    fn unknown_models_are_not_found() {
        let mut r = chat(&[("user", "hi")]);
        r.model = Some("gpt-9".into());
        assert!(matches!(
            validate(r, &model(), &LIMITS),
            Err(InferenceError::ModelNotFound { .. })
        ));
    }

    #[test]
    fn the_context_window_bounds_prompt_and_budget() {
        let v = validate(chat(&[("user", "hi")]), &model(), &LIMITS).unwrap();
        assert_eq!(
            check_context(&v.sampling, &v.prompt, 30, 100, 1000)
                .unwrap()
                .max_tokens,
            70
        );
        assert_eq!(
            field_of(check_context(&v.sampling, &v.prompt, 100, 100, 1000).unwrap_err()),
            "messages"
        );
        let mut r = chat(&[("user", "hi")]);
        r.sampling.max_tokens = Some(80);
        let v = validate(r, &model(), &LIMITS).unwrap();
        assert_eq!(
            field_of(check_context(&v.sampling, &v.prompt, 30, 100, 1000).unwrap_err()),
            "max_tokens"
        );
    }

    #[test]
    fn a_configured_prompt_byte_limit_applies_at_its_edge() {
        let limits = RequestLimits {
            max_prompt_bytes: Some(100),
            ..LIMITS
        };
        let at = "a".repeat(100);
        assert!(validate(chat(&[("user", &at)]), &model(), &limits).is_ok());
        let err = validate(chat(&[("user", &format!("{at}b"))]), &model(), &limits).unwrap_err();
        assert!(err.to_string().contains("at most 100"), "{err}");
        assert_eq!(field_of(err), "messages");
    }

    #[test]
    fn a_valid_traceparent_gives_its_trace_id_and_others_are_ignored() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id(&format!("00-{trace}-00f067aa0ba902b7-01")).as_deref(),
            Some(trace)
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(trace_id(bad), None, "{bad}");
        }
        let mut r = chat(&[("user", "hi")]);
        r.traceparent = Some(format!("00-{trace}-00f067aa0ba902b7-01"));
        assert_eq!(
            validate(r, &model(), &LIMITS).unwrap().trace_id.as_deref(),
            Some(trace)
        );
    }

    #[test]
    fn an_unset_max_tokens_is_the_default_or_the_room_left() {
        let v = validate(chat(&[("user", "hi")]), &model(), &LIMITS).unwrap();
        let settled = |prompt_tokens| {
            check_context(&v.sampling, &v.prompt, prompt_tokens, 100, 20)
                .unwrap()
                .max_tokens
        };
        assert_eq!(settled(30), 20);
        assert_eq!(settled(80), 20);
        assert_eq!(settled(81), 19);
        assert_eq!(settled(99), 1);
    }

    #[test]
    fn max_tokens_is_bounded_by_the_limit_at_its_edge() {
        let with_max = |m| {
            let mut r = chat(&[("user", "hi")]);
            r.sampling.max_tokens = Some(m);
            validate(r, &model(), &LIMITS)
        };
        assert_eq!(with_max(90).unwrap().sampling.max_tokens, Some(90));
        let err = with_max(91).unwrap_err();
        assert!(err.to_string().contains("limit of 90"), "{err}");
        assert_eq!(field_of(err), "max_tokens");
    }

    #[test]
    fn stop_sequences_are_bounded_in_length_at_the_edge() {
        let with_stop = |stop: &str| {
            let mut r = chat(&[("user", "hi")]);
            r.sampling.stop = vec!["x".into(), stop.into()];
            validate(r, &model(), &LIMITS)
        };
        assert!(with_stop("12345678").is_ok());
        let err = with_stop("123456789").unwrap_err();
        assert!(err.to_string().contains("at most 8"), "{err}");
        assert_eq!(field_of(err), "stop");
    }

    #[test]
    fn a_prompt_too_long_in_bytes_is_refused_before_tokenizing() {
        let exactly = "a".repeat(1000);
        assert!(validate(chat(&[("user", &exactly)]), &model(), &LIMITS).is_ok());
        // Two messages' content counts together.
        let split = validate(
            chat(&[("system", &exactly[..600]), ("user", &exactly[..401])]),
            &model(),
            &LIMITS,
        )
        .unwrap_err();
        assert!(split.to_string().contains("1001 bytes"), "{split}");
        assert_eq!(field_of(split), "messages");
        let mut text = RawRequest {
            prompt: RawPrompt::Text("b".repeat(1001)),
            ..RawRequest::default()
        };
        assert_eq!(
            field_of(validate(text.clone(), &model(), &LIMITS).unwrap_err()),
            "prompt"
        );
        // Without a known bound, only the token count decides.
        let mut unbounded = model();
        unbounded.max_prompt_bytes = None;
        text.prompt = RawPrompt::Text("b".repeat(100_000));
        assert!(validate(text, &unbounded, &LIMITS).is_ok());
    }
}
