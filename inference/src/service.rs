//! The one request path both APIs share, cheapest step first, so that
//! overload and abuse are refused before they cost anything:
//!
//! 1. validate (raw → [`ValidatedRequest`]; field checks, and a prompt too
//!    long in bytes to fit the context window);
//! 2. admit: a generation slot, or a bounded wait in the queue
//!    (429 / RESOURCE_EXHAUSTED beyond it);
//! 3. tokenize, at most `--max-concurrent-tokenizations` at once;
//! 4. settle the token budget against the context window;
//! 5. submit the tokens to the engine, and relay its stream.
//!
//! Every wait is bounded by the request's deadline (the smaller of the
//! client's and `--request-timeout`), and every step is cancelled when the
//! client goes away (the adapter drops this future). Adapters
//! ([`crate::grpc`], [`crate::http`]) only translate to and from their wire
//! formats.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::Stream;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::{
    admission::{Admission, Permit},
    engine::{Engine, ModelInfo},
    error::InferenceError,
    metrics::{Api, Metrics},
    relay::{self, Completion, GenEvent, RelayContext},
    tool_calls::Tools,
    validate::{RawRequest, RequestLimits, ValidatedRequest, check_context, validate},
};

/// How the request path is bounded (from [`crate::config::Limits`]).
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// Events a streaming client may fall behind (`--stream-buffer`).
    pub stream_buffer: usize,
    pub limits: RequestLimits,
    /// Longest a request may run (`--request-timeout`).
    pub request_timeout: Duration,
    /// Prompts tokenized at once (`--max-concurrent-tokenizations`).
    pub max_concurrent_tokenizations: usize,
}

/// Shared by every adapter; cheap to clone.
#[derive(Debug, Clone)]
pub struct InferenceService {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    engine: OnceLock<Arc<Engine>>,
    admission: Admission,
    metrics: Metrics,
    /// Cancelled when the drain deadline passes: cuts every generation short.
    hard_stop: CancellationToken,
    /// Turns at the engine's tokenizer.
    tokenizer_turns: Arc<Semaphore>,
    /// Set when shutdown begins: readiness reports false from then on.
    shutting_down: std::sync::atomic::AtomicBool,
    options: ServiceOptions,
}

impl InferenceService {
    pub fn new(admission: Admission, metrics: Metrics, options: ServiceOptions) -> Self {
        Self {
            shared: Arc::new(Shared {
                engine: OnceLock::new(),
                admission,
                metrics,
                hard_stop: CancellationToken::new(),
                tokenizer_turns: Arc::new(Semaphore::new(
                    options.max_concurrent_tokenizations.max(1),
                )),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
                options,
            }),
        }
    }

    /// Makes the loaded engine available; requests before this get
    /// [`InferenceError::Loading`].
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.shared.engine.set(engine);
    }

    pub fn model(&self) -> Result<&ModelInfo, InferenceError> {
        self.engine().map(|e| e.info())
    }

    fn engine(&self) -> Result<&Arc<Engine>, InferenceError> {
        self.shared.engine.get().ok_or(InferenceError::Loading)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    pub fn admission(&self) -> &Admission {
        &self.shared.admission
    }

    /// Loaded and not shutting down.
    pub fn is_ready(&self) -> bool {
        self.shared.engine.get().is_some() && !self.is_shutting_down()
    }

    /// Shutdown has begun (requests may still be served for the drain
    /// delay).
    pub fn is_shutting_down(&self) -> bool {
        self.shared
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Readiness reports false from now on; requests are still served
    /// until the admission starts draining.
    pub fn stop_reporting_ready(&self) {
        self.shared
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts every running generation short (drain deadline passed).
    pub fn cancel_all(&self) {
        self.shared.hard_stop.cancel();
    }

    /// Runs the request path. Returns once the first event is known, so a
    /// request that fails before producing text fails as a whole (a gRPC
    /// status or HTTP error) rather than inside an open stream. `deadline`
    /// is the client's own (gRPC's `grpc-timeout`); `--request-timeout`
    /// bounds it.
    pub async fn generate(
        &self,
        raw: RawRequest,
        api: Api,
        deadline: Option<Duration>,
    ) -> Result<Generation, InferenceError> {
        let received = Instant::now();
        match self.try_generate(raw, api, received, deadline).await {
            Ok(generation) => Ok(generation),
            Err(Refused { error, recorded }) => {
                if !recorded {
                    self.shared
                        .metrics
                        .record_outcome(api, error.category(), received.elapsed());
                }
                tracing::info!(api = api.as_str(), category = error.category(), %error, "request refused");
                Err(error)
            }
        }
    }

    async fn try_generate(
        &self,
        raw: RawRequest,
        api: Api,
        received: Instant,
        deadline: Option<Duration>,
    ) -> Result<Generation, Refused> {
        let shared = &self.shared;
        if shared.admission.is_draining() {
            return Err(InferenceError::Draining.into());
        }
        let engine = self.engine()?.clone();
        let request = validate(raw, engine.info(), &shared.options.limits)?;
        let schema = request.output_schema();
        let schema_set = schema.is_some();
        let ValidatedRequest {
            request_id,
            trace_id,
            traceparent,
            prompt,
            sampling,
            tools,
            ..
        } = request;
        let offered = tools.as_ref().map_or(&[][..], |t| t.offered());
        tracing::debug!(%request_id, ?trace_id, api = api.as_str(), "request validated");

        let timeout = deadline.map_or(shared.options.request_timeout, |d| {
            d.min(shared.options.request_timeout)
        });
        let deadline = received + timeout;
        let permit = self
            .within(deadline, received, shared.admission.admit())
            .await??;
        let turn = self
            .within(
                deadline,
                received,
                shared.tokenizer_turns.clone().acquire_owned(),
            )
            .await?
            .map_err(|_| InferenceError::Draining)?;
        let tokenizing = Instant::now();
        let tokens = self
            .within(deadline, received, engine.tokenize(&prompt, offered, turn))
            .await??;
        shared
            .metrics
            .tokenization_seconds
            .observe(tokenizing.elapsed().as_secs_f64());
        let prompt_tokens = tokens.len();
        let sampling = check_context(
            &sampling,
            &prompt,
            prompt_tokens,
            engine.info().context_length,
            shared.options.limits.default_max_tokens,
        )?;

        let (engine_rx, sampled) = engine.submit(tokens, &sampling, schema).await?;
        let rx = relay::spawn(
            engine_rx,
            RelayContext {
                request_id: request_id.clone(),
                trace_id,
                traceparent,
                api,
                received,
                deadline,
                stop: sampling.stop.clone(),
                json_output: schema_set,
                prompt_tokens,
                sampled,
                hard_stop: shared.hard_stop.clone(),
                metrics: shared.metrics.clone(),
                client_buffer: shared.options.stream_buffer,
            },
        );
        let mut generation = Generation {
            request_id,
            prompt_tokens,
            tools,
            rx,
            peeked: None,
            _permit: permit,
        };
        match generation.rx.recv().await {
            Some(GenEvent::Done(Completion {
                error: Some(error), ..
            })) => Err(Refused {
                error,
                recorded: true,
            }),
            Some(event) => {
                generation.peeked = Some(event);
                Ok(generation)
            }
            None => Err(InferenceError::Engine("generation ended without a result".into()).into()),
        }
    }

    /// Runs one step of the path before generation starts, bounded by the
    /// request's deadline and by the drain deadline.
    async fn within<T>(
        &self,
        deadline: Instant,
        received: Instant,
        step: impl Future<Output = T>,
    ) -> Result<T, InferenceError> {
        tokio::select! {
            out = tokio::time::timeout_at(deadline.into(), step) => {
                out.map_err(|_| InferenceError::DeadlineExceeded(deadline - received))
            }
            () = self.shared.hard_stop.cancelled() => Err(InferenceError::DrainTimeout),
        }
    }
}

/// A refusal, and whether the relay already counted it in metrics.
struct Refused {
    error: InferenceError,
    recorded: bool,
}

impl From<InferenceError> for Refused {
    fn from(error: InferenceError) -> Self {
        Self {
            error,
            recorded: false,
        }
    }
}

/// A running generation: a stream of [`GenEvent`]s ending with
/// [`GenEvent::Done`]. Dropping it cancels the engine sequence and frees
/// its admission slot at once.
#[derive(Debug)]
pub struct Generation {
    pub request_id: String,
    pub prompt_tokens: usize,
    /// The request's validated tools: the adapter reads calls out of the
    /// answer with them.
    pub tools: Option<Tools>,
    rx: mpsc::Receiver<GenEvent>,
    peeked: Option<GenEvent>,
    _permit: Permit,
}

/// A whole reply, for unary calls.
#[derive(Debug, Clone)]
pub struct Collected {
    pub text: String,
    pub completion: Completion,
}

impl Generation {
    /// Reads the generation to its end.
    pub async fn collect(mut self) -> Collected {
        use futures::StreamExt;
        let mut text = String::new();
        while let Some(event) = self.next().await {
            match event {
                GenEvent::Text(t) => text.push_str(&t),
                GenEvent::Done(completion) => return Collected { text, completion },
            }
        }
        Collected {
            text,
            completion: Completion {
                finish_reason: relay::FinishReason::Error,
                usage: relay::Usage::default(),
                error: Some(InferenceError::Engine(
                    "generation ended without a result".into(),
                )),
            },
        }
    }
}

impl Stream for Generation {
    type Item = GenEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<GenEvent>> {
        if let Some(event) = self.peeked.take() {
            return Poll::Ready(Some(event));
        }
        self.rx.poll_recv(cx)
    }
}
