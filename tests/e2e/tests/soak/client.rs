//! The virtual clients: a closed loop each, through the Worker, and how each
//! request ended.
//!
//! A request ends in exactly one [`Outcome`]. The client decides it alone,
//! from what it saw on the wire: the status, the body, the SSE events, and a
//! deadline of its own ([`Target::deadline`], well above every server-side
//! bound) past which the request counts as hung.

use std::time::{Duration, Instant};

use backhaul_e2e::{SseData, SseParser, header_text};
use futures::StreamExt;
use tokio::time::{sleep_until, timeout_at};

/// What a virtual client does, fixed per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Short and long prompts, streamed and not, read at full speed.
    Mixed,
    /// Streams, and drops the stream after a few content events.
    Abandoner,
    /// Streams, and sleeps between reads.
    SlowReader,
}

impl Role {
    /// The role of client `index`: of every 8 clients two abandon early (one
    /// near each region) and one reads slowly.
    pub fn of(index: usize) -> Self {
        match index % 8 {
            2 | 7 => Self::Abandoner,
            5 => Self::SlowReader,
            _ => Self::Mixed,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Mixed => "mixed",
            Self::Abandoner => "abandons early",
            Self::SlowReader => "slow reader",
        }
    }
}

/// Content events an abandoning client reads before it drops the stream.
const ABANDON_AFTER: usize = 2;
/// A slow reader's pause between two reads of the body.
const READ_PAUSE: Duration = Duration::from_secs(1);
/// The longest a client honours a 429's `Retry-After` before it asks again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A client's pause after any other failure, so it never spins.
const ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Where the clients send their requests.
#[derive(Debug, Clone)]
pub struct Target {
    /// The Worker's base URL (127.0.0.1).
    pub worker_url: String,
    /// The served model name.
    pub model: String,
    /// A request with no end this long after it was sent is hung.
    pub deadline: Duration,
    /// When the soak started: every time in a [`Record`] counts from here.
    pub t0: Instant,
    /// No request starts after this.
    pub end: Instant,
    /// The most requests one client sends (a bound besides `end`).
    pub max_requests: usize,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A non-streamed 200 with a chat completion, or a stream that ended
    /// with `data: [DONE]` and no error event.
    Complete,
    /// An answer other than 200, with its status, its error's `code` and
    /// `message`.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    /// A stream that carried an `{"error": ...}` event.
    StreamError,
    /// The client dropped the stream itself (an [`Role::Abandoner`]).
    Abandoned,
    /// No end within [`Target::deadline`].
    Hung,
    /// Closed without [DONE] and without an error event, a transport error,
    /// or a 200 that was not what was asked for.
    Lost(String),
}

/// What the client saw of one request.
#[derive(Debug, Clone)]
pub struct Record {
    pub client: usize,
    pub role: Role,
    pub stream: bool,
    pub long_prompt: bool,
    /// When it was sent and when it ended, from [`Target::t0`].
    pub sent: Duration,
    pub ended: Duration,
    pub outcome: Outcome,
    /// `x-backhaul-region` and `x-backhaul-attempts` of the answer.
    pub region: Option<String>,
    pub attempts: Option<u32>,
    /// From sending to the first content event.
    pub ttft: Option<Duration>,
    /// For each content event after the first: when it arrived (from
    /// `t0`) and the gap since the previous one.
    pub gaps: Vec<(Duration, Duration)>,
    /// Breaks of the contract that do not change the outcome: a 429
    /// without `Retry-After`, an error body that is not OpenAI-shaped.
    pub violations: Vec<String>,
    /// A 429's `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
}

/// What one request asks for.
#[derive(Debug, Clone)]
struct Plan {
    stream: bool,
    long_prompt: bool,
    max_tokens: u32,
    abandon_after: Option<usize>,
    read_pause: Option<Duration>,
}

/// A small deterministic generator (xorshift64): each client's mix is the
/// same from run to run.
struct Rng(u64);

impl Rng {
    fn new(seed: usize) -> Self {
        Self(0x9E37_79B9_7F4A_7C15 ^ (seed as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

impl Plan {
    fn next(role: Role, rng: &mut Rng) -> Self {
        let long_prompt = rng.below(3) == 0;
        let max_tokens = [8, 16][rng.below(2) as usize];
        let mixed = Self {
            stream: rng.below(2) == 0,
            long_prompt,
            max_tokens,
            abandon_after: None,
            read_pause: None,
        };
        match role {
            Role::Mixed => mixed,
            Role::Abandoner => Self {
                stream: true,
                max_tokens: 24,
                abandon_after: Some(ABANDON_AFTER),
                ..mixed
            },
            Role::SlowReader => Self {
                stream: true,
                read_pause: Some(READ_PAUSE),
                ..mixed
            },
        }
    }
}

const SHORT_PROMPTS: [&str; 4] = [
    "Say hello in French.",
    "What is the capital of Italy?",
    "Name three colours.",
    "What is two plus two?",
];

/// About 90 tokens of context before the question: with the chat template
/// a long prompt is about 130 tokens, a short one about 40. Prompt tokens
/// cost about what generated ones do on these CPU kernels
/// (docs/benchmarks/README.md), so this is what makes a request long.
const LONG_CONTEXT: &str = "The lighthouse stood on a rock at the mouth of the harbour. Every \
evening the keeper climbed its one hundred and twelve steps, trimmed the wick, wound the clockwork \
that turned the lens, and wrote the weather in a book bound in green cloth. One year the harbour \
master decided that an electric light would replace the lamp. The keeper asked who would write \
the weather when he was gone. Nobody had thought of that.";

/// The prompt of request `seq` of client `client`. The numbers come first
/// so that no two prompts share a prefix the engine could reuse: every
/// request pays for its own prompt, as distinct users' requests do.
fn prompt(client: usize, seq: usize, long: bool, pick: u64) -> String {
    let question = SHORT_PROMPTS[pick as usize % SHORT_PROMPTS.len()];
    if long {
        format!("Note {client}-{seq}. {LONG_CONTEXT}\n\nIn one sentence: what worried the keeper?")
    } else {
        format!("Note {client}-{seq}. {question}")
    }
}

/// Client `index` in a closed loop: one request at a time until
/// [`Target::end`] or [`Target::max_requests`]; after a 429 it waits its
/// `Retry-After` (at most [`MAX_BACKOFF`]).
pub async fn run(index: usize, location: &'static str, target: Target) -> Vec<Record> {
    let role = Role::of(index);
    let http = reqwest::Client::new();
    let mut rng = Rng::new(index);
    let mut records = Vec::new();
    while Instant::now() < target.end && records.len() < target.max_requests {
        let plan = Plan::next(role, &mut rng);
        let text = prompt(index, records.len(), plan.long_prompt, rng.below(100));
        let record = request(&http, &target, location, index, role, &plan, &text).await;
        let pause = match (&record.outcome, record.retry_after) {
            (Outcome::Refused { status: 429, .. }, Some(secs)) => {
                Duration::from_secs(secs).min(MAX_BACKOFF)
            }
            (Outcome::Complete | Outcome::Abandoned, _) => Duration::ZERO,
            _ => ERROR_BACKOFF,
        };
        records.push(record);
        sleep_until((Instant::now() + pause).min(target.end).into()).await;
    }
    records
}

/// Sends one request and follows it to its end.
async fn request(
    http: &reqwest::Client,
    target: &Target,
    location: &str,
    client: usize,
    role: Role,
    plan: &Plan,
    text: &str,
) -> Record {
    let body = serde_json::json!({
        "model": target.model,
        "stream": plan.stream,
        "max_tokens": plan.max_tokens,
        "temperature": 0,
        "messages": [{"role": "user", "content": text}],
    });
    let sent = Instant::now();
    let deadline = (sent + target.deadline).into();
    let mut record = Record {
        client,
        role,
        stream: plan.stream,
        long_prompt: plan.long_prompt,
        sent: sent - target.t0,
        ended: Duration::ZERO,
        outcome: Outcome::Hung,
        region: None,
        attempts: None,
        ttft: None,
        gaps: Vec::new(),
        violations: Vec::new(),
        retry_after: None,
    };
    let send = http
        .post(format!("{}/v1/chat/completions", target.worker_url))
        .header("x-backhaul-client-location", location)
        .json(&body)
        .send();
    record.outcome = match timeout_at(deadline, send).await {
        Err(_) => Outcome::Hung,
        Ok(Err(error)) => Outcome::Lost(format!("sending: {error}")),
        Ok(Ok(response)) => {
            let header = |name: &str| header_text(&response, name);
            record.region = header("x-backhaul-region");
            record.attempts = header("x-backhaul-attempts").and_then(|v| v.parse().ok());
            if response.status() != 200 {
                refused(response, deadline, &mut record).await
            } else if plan.stream {
                streamed(response, deadline, plan, sent, target.t0, &mut record).await
            } else {
                whole(response, deadline).await
            }
        }
    };
    record.ended = target.t0.elapsed();
    record
}

/// An answer other than 200: an explicit error, which must be OpenAI-shaped
/// (`{"error": {"message": ...}}`) and, for 429, say when to come back.
async fn refused(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
    record: &mut Record,
) -> Outcome {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status == 429 {
        record.retry_after = retry_after.as_deref().and_then(|v| v.trim().parse().ok());
        if record.retry_after.is_none() {
            record.violations.push(format!(
                "429 without a Retry-After in seconds ({retry_after:?})"
            ));
        }
    }
    let body = match timeout_at(deadline, response.text()).await {
        Err(_) => return Outcome::Hung,
        Ok(Err(error)) => return Outcome::Lost(format!("{status}, reading its body: {error}")),
        Ok(Ok(body)) => body,
    };
    let error =
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["error"].take();
    if !error["message"].is_string() {
        record.violations.push(format!(
            "{status} whose body is not an OpenAI error: {}",
            &body[..body.len().min(200)]
        ));
    }
    let code = error["code"].as_str().unwrap_or("(no code)").to_owned();
    let message = error["message"].as_str().unwrap_or_default().to_owned();
    Outcome::Refused {
        status,
        code,
        message,
    }
}

/// A non-streamed 200: complete when its body is a chat completion.
async fn whole(response: reqwest::Response, deadline: tokio::time::Instant) -> Outcome {
    match timeout_at(deadline, response.text()).await {
        Err(_) => Outcome::Hung,
        Ok(Err(error)) => Outcome::Lost(format!("200, reading its body: {error}")),
        Ok(Ok(body)) => {
            let value = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default();
            if value["choices"][0]["message"].is_object() {
                Outcome::Complete
            } else {
                Outcome::Lost(format!(
                    "200 whose body is not a chat completion: {}",
                    &body[..body.len().min(200)]
                ))
            }
        }
    }
}

/// A streamed 200, read event by event until it ends, the deadline passes,
/// or the plan says to drop it.
async fn streamed(
    response: reqwest::Response,
    deadline: tokio::time::Instant,
    plan: &Plan,
    sent: Instant,
    t0: Instant,
    record: &mut Record,
) -> Outcome {
    let is_sse = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        return Outcome::Lost("200 to a streamed request that is not text/event-stream".into());
    }
    let mut body = response.bytes_stream();
    let mut events = SseParser::default();
    let (mut done, mut error_event, mut transport) = (false, false, None);
    let mut contents = 0;
    let mut last: Option<Instant> = None;
    loop {
        let chunk = match timeout_at(deadline, body.next()).await {
            Err(_) => return Outcome::Hung,
            Ok(None) => break,
            Ok(Some(Err(error))) => {
                transport = Some(error.to_string());
                break;
            }
            Ok(Some(Ok(chunk))) => chunk,
        };
        let now = Instant::now();
        for data in events.push(&chunk) {
            let SseData::Json(value) = data else {
                done |= data == SseData::Done;
                continue;
            };
            error_event |= value.get("error").is_some();
            if SseData::content_of(&value).is_none() {
                continue;
            }
            contents += 1;
            match last {
                None => record.ttft = Some(now - sent),
                Some(previous) => record.gaps.push((now - t0, now - previous)),
            }
            last = Some(now);
        }
        if plan.abandon_after.is_some_and(|n| contents >= n) && !done && !error_event {
            // Dropping the body closes the connection: the Worker sees the
            // client go and must cancel the region's sequence.
            return Outcome::Abandoned;
        }
        if let Some(pause) = plan.read_pause {
            sleep_until((Instant::now() + pause).min(deadline.into_std()).into()).await;
        }
    }
    if error_event {
        Outcome::StreamError
    } else if done {
        Outcome::Complete
    } else {
        Outcome::Lost(transport.map_or_else(
            || "the stream ended without [DONE] and without an error event".into(),
            |e| format!("the stream broke without an error event: {e}"),
        ))
    }
}
