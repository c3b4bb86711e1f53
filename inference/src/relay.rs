//! The relay between the engine and one client: it drains the engine's
//! response channel at once (so the engine never waits on a client), trims
//! stop sequences, enforces deadlines, records token metrics, and hands
//! [`GenEvent`]s to the adapter through a bounded buffer.
//!
//! A client that falls `--stream-buffer` events behind is cut off: its
//! sequence is cancelled and its stream ends with
//! [`InferenceError::SlowConsumer`]. A client that goes away (its receiver
//! dropped) cancels its sequence at the engine's next step.

use std::time::{Duration, Instant};

use mistralrs::Response;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    error::InferenceError,
    json_scan::JsonScan,
    metrics::{Api, Metrics},
};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of sequence or a stop sequence.
    Stop,
    /// `max_tokens` or the context window.
    Length,
    /// Cut short by the server: deadline, drain timeout, slow client.
    Cancelled,
    /// The engine failed.
    Error,
}

impl FinishReason {
    /// The OpenAI `finish_reason` string.
    pub fn as_openai(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// From receiving the request to the first generated text.
    pub time_to_first_token: Option<Duration>,
}

/// The last event of every generation.
#[derive(Debug, Clone)]
pub struct Completion {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// Set when the finish reason is `Cancelled` or `Error`.
    pub error: Option<InferenceError>,
}

#[derive(Debug, Clone)]
pub enum GenEvent {
    /// New text, never empty, never containing a stop sequence.
    Text(String),
    Done(Completion),
}

/// Holds back text that could be the start of a stop sequence, and cuts
/// the text before the first stop sequence. The engine detects stop strings
/// only after their tokens were streamed, so without this a stop sequence
/// could leak into streamed text.
///
/// Linear in the text: each stop sequence runs a Knuth-Morris-Pratt matcher
/// over the bytes as they arrive, whose state is the longest suffix of the
/// text that is a prefix of that stop, which is exactly what must be held
/// back. (The `aho-corasick` crate matches all stops at once but does not
/// expose that depth for a streaming state; with at most 16 stops, one
/// matcher each costs at most 16 steps per byte.)
#[derive(Debug, Default)]
pub struct StopTrimmer {
    matchers: Vec<StopMatcher>,
    /// Text received and not yet sent: at most the longest stop's length.
    pending: String,
    stopped: bool,
}

impl StopTrimmer {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            matchers: stops.into_iter().map(StopMatcher::new).collect(),
            ..Self::default()
        }
    }

    /// Adds generated text; returns what is now safe to send (may be empty).
    pub fn push(&mut self, delta: &str) -> String {
        if self.stopped {
            return String::new();
        }
        let start = self.pending.len();
        self.pending.push_str(delta);
        // The earliest-starting stop completed by this delta wins (the same
        // stop's occurrences all have one length, so its first completion is
        // also its earliest start).
        let mut first_stop: Option<usize> = None;
        for matcher in &mut self.matchers {
            for (i, byte) in delta.bytes().enumerate() {
                if matcher.advance(byte) {
                    let at = start + i + 1 - matcher.stop.len();
                    first_stop = Some(first_stop.map_or(at, |f| f.min(at)));
                    break;
                }
            }
        }
        if let Some(at) = first_stop {
            // A stop that completes starts at or after the held-back text,
            // and on a char boundary (both texts are UTF-8).
            self.pending.truncate(at);
            self.stopped = true;
            return std::mem::take(&mut self.pending);
        }
        let held = self.matchers.iter().map(|m| m.matched).max().unwrap_or(0);
        let safe = self.pending.len() - held;
        let rest = self.pending.split_off(safe);
        std::mem::replace(&mut self.pending, rest)
    }

    /// Whether a stop sequence was seen; no more text will be sent.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Releases held-back text once generation has ended without a stop
    /// sequence completing.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// One stop sequence's streaming matcher.
#[derive(Debug)]
struct StopMatcher {
    stop: Vec<u8>,
    /// `fallback[i]`: the longest proper prefix of `stop[..=i]` that is also
    /// its suffix (KMP's failure function).
    fallback: Vec<usize>,
    /// Bytes of `stop` the text now ends with (less than its length).
    matched: usize,
}

impl StopMatcher {
    fn new(stop: String) -> Self {
        let stop = stop.into_bytes();
        let mut fallback = vec![0; stop.len()];
        let mut k = 0;
        for i in 1..stop.len() {
            while k > 0 && stop[i] != stop[k] {
                k = fallback[k - 1];
            }
            if stop[i] == stop[k] {
                k += 1;
            }
            fallback[i] = k;
        }
        Self {
            stop,
            fallback,
            matched: 0,
        }
    }

    /// Takes the next byte of text; true when the whole stop has arrived.
    fn advance(&mut self, byte: u8) -> bool {
        while self.matched > 0 && self.stop[self.matched] != byte {
            self.matched = self.fallback[self.matched - 1];
        }
        if self.stop.get(self.matched) == Some(&byte) {
            self.matched += 1;
        }
        if self.matched == self.stop.len() {
            self.matched = 0;
            return true;
        }
        false
    }
}

/// Everything the relay needs besides its channels.
#[derive(Debug)]
pub struct RelayContext {
    pub request_id: String,
    /// From the caller's `traceparent`: joins this generation's log lines
    /// to the Worker's trace.
    pub trace_id: Option<String>,
    /// The caller's `traceparent` (valid, or `None`): exported spans are
    /// its children.
    pub traceparent: Option<String>,
    pub api: Api,
    pub received: Instant,
    /// The request's deadline (`--request-timeout`, or a shorter
    /// `grpc-timeout`).
    pub deadline: Instant,
    pub stop: Vec<String>,
    /// The output is held to a JSON schema: generation ends when the JSON
    /// value is complete (see [`crate::json_scan`]).
    pub json_output: bool,
    pub prompt_tokens: usize,
    /// Tokens the engine has sampled for this generation.
    pub sampled: crate::engine::SampledTokens,
    /// Cancelled when the drain deadline passes.
    pub hard_stop: CancellationToken,
    pub metrics: Metrics,
    /// Events the client may fall behind (at least 2: one is kept for the
    /// final event).
    pub client_buffer: usize,
}

/// Starts the relay task for one generation.
pub fn spawn(engine_rx: mpsc::Receiver<Response>, ctx: RelayContext) -> mpsc::Receiver<GenEvent> {
    let (client_tx, client_rx) = mpsc::channel(ctx.client_buffer.max(2));
    let span = tracing::info_span!(
        "generation",
        request_id = %ctx.request_id,
        trace_id = ctx.trace_id.as_deref().unwrap_or(""),
        api = ctx.api.as_str()
    );
    if let Some(traceparent) = &ctx.traceparent {
        backhaul_telemetry::continue_trace(&span, traceparent);
    }
    tokio::spawn(run(engine_rx, client_tx, ctx).instrument(span));
    client_rx
}

struct State {
    ctx: RelayContext,
    trimmer: StopTrimmer,
    json_end: Option<JsonScan>,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

enum Step {
    Continue,
    Finished(Completion),
}

async fn run(
    mut engine_rx: mpsc::Receiver<Response>,
    client_tx: mpsc::Sender<GenEvent>,
    ctx: RelayContext,
) {
    let hard_stop = ctx.hard_stop.clone();
    let deadline = ctx.deadline;
    let mut state = State {
        trimmer: StopTrimmer::new(ctx.stop.clone()),
        json_end: ctx.json_output.then(JsonScan::default),
        ctx,
        first_token_at: None,
        last_token_at: None,
    };
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    loop {
        let step = tokio::select! {
            biased;
            () = client_tx.closed() => {
                // Dropping `engine_rx` on return makes the engine's next
                // send fail, which cancels the sequence.
                tracing::info!("client went away; cancelling generation");
                state.ctx.metrics.record_outcome(state.ctx.api, "client_cancelled", state.ctx.received.elapsed());
                return;
            }
            () = hard_stop.cancelled() => Step::Finished(state.cut_short(InferenceError::DrainTimeout)),
            () = &mut sleep => {
                let waited = deadline.saturating_duration_since(state.ctx.received);
                Step::Finished(state.cut_short(InferenceError::DeadlineExceeded(waited)))
            }
            response = engine_rx.recv() => match response {
                Some(response) => state.on_response(response, &client_tx),
                None => Step::Finished(state.cut_short(InferenceError::Engine("engine closed the stream".into()))),
            },
        };
        match step {
            Step::Continue => {}
            Step::Finished(completion) => {
                state.finish(completion, &client_tx);
                return;
            }
        }
    }
}

impl State {
    fn on_response(&mut self, response: Response, client_tx: &mpsc::Sender<GenEvent>) -> Step {
        let (delta, finish, usage) = match response {
            Response::Chunk(chunk) => {
                let choice = chunk.choices.into_iter().next();
                let usage = chunk.usage;
                match choice {
                    Some(c) => (c.delta.content, c.finish_reason, usage),
                    None => (None, None, usage),
                }
            }
            Response::CompletionChunk(chunk) => match chunk.choices.into_iter().next() {
                Some(c) => (Some(c.text), c.finish_reason, None),
                None => (None, None, None),
            },
            Response::ValidationError(e) => {
                return Step::Finished(
                    self.cut_short(InferenceError::invalid("messages", e.to_string())),
                );
            }
            Response::InternalError(e) => {
                return Step::Finished(self.cut_short(InferenceError::Engine(e.to_string())));
            }
            Response::ModelError(e, _) | Response::CompletionModelError(e, _) => {
                return Step::Finished(self.cut_short(InferenceError::Engine(e)));
            }
            Response::Done(done) => {
                let text = done
                    .choices
                    .into_iter()
                    .next()
                    .map(|c| (c.message.content, c.finish_reason));
                let (content, reason) = text.unwrap_or((None, "stop".into()));
                (content, Some(reason), Some(done.usage))
            }
            Response::CompletionDone(done) => {
                let text = done
                    .choices
                    .into_iter()
                    .next()
                    .map(|c| (Some(c.text), c.finish_reason));
                let (content, reason) = text.unwrap_or((None, "stop".into()));
                (content, Some(reason), Some(done.usage))
            }
            _ => return Step::Continue,
        };

        let now = Instant::now();
        if let Some(last) = self.last_token_at {
            self.ctx
                .metrics
                .inter_token_latency
                .observe((now - last).as_secs_f64());
        }
        self.last_token_at = Some(now);
        let mut json_complete = false;
        if let Some(delta) = delta.filter(|d| !d.is_empty()) {
            if let Some(scan) = self.json_end.as_mut() {
                scan.feed(&delta);
                json_complete = scan.closed();
            }
            let safe = self.trimmer.push(&delta);
            if !safe.is_empty() {
                if self.first_token_at.is_none() {
                    self.first_token_at = Some(now);
                    self.ctx
                        .metrics
                        .time_to_first_token
                        .observe((now - self.ctx.received).as_secs_f64());
                }
                if let Err(slow) = send_text(client_tx, safe) {
                    return Step::Finished(self.cut_short(slow));
                }
            }
        }
        if self.trimmer.stopped() {
            // A stop sequence completed; finishing here also frees the
            // engine sequence in case it has not matched it yet.
            return Step::Finished(self.completion(FinishReason::Stop, None, None));
        }
        if json_complete && finish.is_none() {
            // Nothing can follow the value but end-of-sequence tokens.
            return Step::Finished(self.completion(FinishReason::Stop, None, None));
        }
        match finish {
            None => Step::Continue,
            Some(reason) => {
                let reason = match reason.as_str() {
                    "length" => FinishReason::Length,
                    "canceled" | "cancelled" => FinishReason::Cancelled,
                    _ => FinishReason::Stop,
                };
                Step::Finished(self.completion(reason, usage, None))
            }
        }
    }

    fn completion(
        &self,
        finish_reason: FinishReason,
        engine_usage: Option<mistralrs::Usage>,
        error: Option<InferenceError>,
    ) -> Completion {
        let usage = match engine_usage {
            Some(u) => Usage {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                time_to_first_token: None,
            },
            // Streamed completion chunks (every generation is submitted as
            // tokens, so every one streams them) carry no usage: the engine
            // counted each token it sampled for this sequence.
            None => Usage {
                prompt_tokens: self.ctx.prompt_tokens,
                completion_tokens: self.ctx.sampled.count(self.ctx.prompt_tokens),
                time_to_first_token: None,
            },
        };
        Completion {
            finish_reason,
            usage: Usage {
                time_to_first_token: self.first_token_at.map(|t| t - self.ctx.received),
                ..usage
            },
            error,
        }
    }

    fn cut_short(&self, error: InferenceError) -> Completion {
        let reason = match error {
            InferenceError::Engine(_) | InferenceError::InvalidArgument { .. } => {
                FinishReason::Error
            }
            _ => FinishReason::Cancelled,
        };
        self.completion(reason, None, Some(error))
    }

    fn finish(&mut self, completion: Completion, client_tx: &mpsc::Sender<GenEvent>) {
        if completion.error.is_none() {
            let rest = self.trimmer.finish();
            if !rest.is_empty() {
                // The final event has a reserved slot; this text may not,
                // in which case the client is too slow anyway.
                let _ = send_text(client_tx, rest);
            }
        }
        let outcome = completion
            .error
            .as_ref()
            .map_or("ok", InferenceError::category);
        let metrics = &self.ctx.metrics;
        metrics.record_outcome(self.ctx.api, outcome, self.ctx.received.elapsed());
        metrics
            .prompt_tokens
            .inc_by(completion.usage.prompt_tokens as u64);
        metrics
            .generation_tokens
            .inc_by(completion.usage.completion_tokens as u64);
        match &completion.error {
            None => tracing::info!(
                finish_reason = completion.finish_reason.as_openai(),
                prompt_tokens = completion.usage.prompt_tokens,
                completion_tokens = completion.usage.completion_tokens,
                ttft_ms = completion
                    .usage
                    .time_to_first_token
                    .map(|t| t.as_millis() as u64),
                "generation finished"
            ),
            Some(error) => tracing::warn!(
                category = error.category(),
                %error,
                completion_tokens = completion.usage.completion_tokens,
                "generation cut short"
            ),
        }
        // One slot is always kept free for this event (see `send_text`).
        let _ = client_tx.try_send(GenEvent::Done(completion));
    }
}

/// Sends text without ever waiting, keeping the channel's last slot for the
/// final event. A full buffer means the client cannot keep up.
fn send_text(client_tx: &mpsc::Sender<GenEvent>, text: String) -> Result<(), InferenceError> {
    if client_tx.capacity() <= 1 {
        return Err(InferenceError::SlowConsumer);
    }
    match client_tx.try_send(GenEvent::Text(text)) {
        Ok(()) => Ok(()),
        // Closed: the relay loop notices on its next turn.
        Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(InferenceError::SlowConsumer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stops: &[&str], deltas: &[&str]) -> (Vec<String>, String, bool) {
        let mut t = StopTrimmer::new(stops.iter().map(|s| s.to_string()).collect());
        let sent: Vec<String> = deltas.iter().map(|d| t.push(d)).collect();
        let stopped = t.stopped();
        let rest = t.finish();
        (sent, rest, stopped)
    }

    #[test]
    fn a_stop_sequence_split_across_deltas_never_leaks() {
        let (sent, rest, stopped) = feed(&["END"], &["Hello ", "E", "N", "D more"]);
        assert_eq!(sent, ["Hello ", "", "", ""]);
        assert_eq!(rest, "");
        assert!(stopped);
    }

    #[test]
    fn a_false_start_is_released() {
        let (sent, rest, stopped) = feed(&["END"], &["an E", "Nx", " tail E"]);
        assert_eq!(sent.concat() + &rest, "an ENx tail E");
        assert_eq!(sent[0], "an ");
        assert!(!stopped);
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        // "xabc": "abc" starts at 1, before "b" at 2, so only "x" is sent.
        let (sent, _, stopped) = feed(&["abc", "b"], &["xa", "bc"]);
        assert_eq!(sent.concat(), "x");
        assert!(stopped);
    }

    #[test]
    fn overlapping_prefixes_are_held_and_matched() {
        // KMP's fallback: "aab" inside "aaab" after a false start.
        let (sent, _, stopped) = feed(&["aab"], &["xa", "a", "a", "b tail"]);
        assert_eq!(sent.concat(), "xa");
        assert!(stopped);
        let (sent, rest, stopped) = feed(&["abab"], &["aba", "c", "abab"]);
        assert_eq!(sent.concat() + &rest, "abac");
        assert!(stopped);
    }

    #[test]
    fn sixteen_stops_of_100_kb_stay_linear() {
        // Each stop is 100 KB of "a" then a distinct letter; the text is a
        // long run of "a", so every matcher holds a long partial match. The
        // quadratic trimmer this replaced would not finish here.
        let stops: Vec<String> = (0..16u8)
            .map(|i| format!("{}{}", "a".repeat(100_000), char::from(b'b' + i)))
            .collect();
        let mut t = StopTrimmer::new(stops);
        let mut sent = 0;
        for _ in 0..50_000 {
            sent += t.push("aaaa").len();
        }
        // Everything but the longest possible partial match was released...
        assert_eq!(sent, 200_000 - 100_000);
        // ...and the held text was the start of the stop that completes.
        assert_eq!(t.push("c"), "");
        assert!(t.stopped());
        assert_eq!(t.finish(), "");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let (sent, rest, _) = feed(&["é!"], &["caf", "é", "s"]);
        assert_eq!(sent.concat() + &rest, "cafés");
    }

    #[tokio::test]
    async fn a_full_client_buffer_reports_a_slow_consumer() {
        let (tx, _rx) = mpsc::channel(2);
        assert!(send_text(&tx, "a".into()).is_ok());
        assert!(matches!(
            send_text(&tx, "b".into()),
            Err(InferenceError::SlowConsumer)
        ));
        // The reserved slot still takes the final event.
        assert!(
            tx.try_send(GenEvent::Done(Completion {
                finish_reason: FinishReason::Cancelled,
                usage: Usage::default(),
                error: Some(InferenceError::SlowConsumer),
            }))
            .is_ok()
        );
    }
}
