//! The one request path both APIs share:
//! validate (raw → [`ValidatedRequest`]) → count the prompt and settle the
//! token budget → admit → submit to the engine → relay. Adapters
//! ([`crate::grpc`], [`crate::http`]) only translate to and from their wire
//! formats.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    admission::{Admission, Permit},
    engine::{Engine, ModelInfo},
    error::InferenceError,
    metrics::{Api, Metrics},
    relay::{self, Completion, GenEvent, RelayContext},
    validate::{RawRequest, ValidatedRequest, check_context, validate},
};

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
    stream_buffer: usize,
}

impl InferenceService {
    pub fn new(admission: Admission, metrics: Metrics, stream_buffer: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                engine: OnceLock::new(),
                admission,
                metrics,
                hard_stop: CancellationToken::new(),
                stream_buffer,
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

    /// Loaded and not draining.
    pub fn is_ready(&self) -> bool {
        self.shared.engine.get().is_some() && !self.shared.admission.is_draining()
    }

    /// Cuts every running generation short (drain deadline passed).
    pub fn cancel_all(&self) {
        self.shared.hard_stop.cancel();
    }

    /// Runs the request path. Returns once the first event is known, so a
    /// request that fails before producing text fails as a whole (a gRPC
    /// status or HTTP error) rather than inside an open stream.
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
        let ValidatedRequest {
            request_id,
            prompt,
            sampling,
        } = validate(raw, engine.info())?;
        tracing::debug!(%request_id, api = api.as_str(), "request validated");

        let prompt_tokens = engine.count_prompt_tokens(&prompt).await?;
        let sampling = check_context(
            &sampling,
            &prompt,
            prompt_tokens,
            engine.info().context_length,
        )?;

        let deadline = deadline.map(|d| received + d);
        let permit = match deadline {
            Some(at) => tokio::time::timeout_at(at.into(), shared.admission.admit())
                .await
                .map_err(|_| InferenceError::DeadlineExceeded(at - received))??,
            None => shared.admission.admit().await?,
        };

        let engine_rx = engine.submit(&prompt, &sampling).await?;
        let rx = relay::spawn(
            engine_rx,
            RelayContext {
                request_id: request_id.clone(),
                api,
                received,
                deadline,
                stop: sampling.stop.clone(),
                prompt_tokens,
                max_tokens: sampling.max_tokens,
                hard_stop: shared.hard_stop.clone(),
                metrics: shared.metrics.clone(),
                client_buffer: shared.stream_buffer,
            },
        );
        let mut generation = Generation {
            request_id,
            prompt_tokens,
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
