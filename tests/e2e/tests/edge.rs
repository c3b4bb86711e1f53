//! What the edge does besides routing, with a real region behind it: the
//! routing Worker under `wrangler dev` in front of one `backhaul-inference`
//! on 127.0.0.1 (SmolLM2 from `make model`, JSON logs), as the soak runs
//! them: no Kubernetes, the region's route published straight to the
//! Worker's admin API, signed with the harness's key.
//!
//! Each case asserts what a user would notice: the request id on the answer
//! and in the region's log (and the client's trace id there), the response
//! cache (`x-backhaul-cache`, identical content, no generation at the region
//! for a hit, counted at the region's `/metrics`), identical concurrent
//! requests coalesced into one generation, and, through the official OpenAI
//! Python client, an image part refused with `BadRequestError`, JSON mode,
//! JSON schema and a tool call round trip.
//!
//! One Worker and one region serve every case (started once, stopped at the
//! end, whatever happened). Run with `cargo test --workspace --test edge`
//! after `build_workspace` (a step of `scripts/test.sh`); names given as
//! arguments select cases by substring. Logs: `$BACKHAUL_E2E_LOGS`
//! (`scripts/test.sh`: `$BACKHAUL_CACHE/edge/logs`); each failure names its file.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use backhaul_e2e::clusters::LocalRegion;
use backhaul_e2e::{SseData, SseParser, Worker, check, header_text, interrupted, logs_dir, openai};
use backhaul_operator::publish::RouteRouting;
use futures::FutureExt;
use serde_json::{Value, json};

/// The served model name, and the Worker's cache configuration for it.
const MODEL: &str = "smollm2-edge";
const CACHE_MODELS: &str = r#"{"smollm2-edge": {"ttlSeconds": 600}}"#;
/// The region's counter of requests it answered or refused, one per
/// request (inference/src/metrics.rs): a generation the Worker saved is
/// one it was never sent.
const REQUESTS_TOTAL: &str = "backhaul_inference_requests_total";
/// The longest one case may take; generations on two cores are seconds.
const CASE_TIMEOUT: Duration = Duration::from_secs(180);

struct Ctx {
    worker: Worker,
    region: LocalRegion,
    http: reqwest::Client,
}

type CaseFn = for<'a> fn(&'a Ctx) -> Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

fn main() -> ExitCode {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let cases: Vec<(&str, CaseFn)> = vec![
        (
            "request_id_from_the_client_is_answered_and_in_the_region_log",
            |c| Box::pin(client_request_id(c)),
        ),
        (
            "request_id_made_by_the_worker_is_answered_and_in_the_region_log",
            |c| Box::pin(worker_request_id(c)),
        ),
        ("traceparent_trace_id_is_in_the_region_log", |c| {
            Box::pin(trace_id(c))
        }),
        (
            "cache_greedy_twice_miss_then_hit_without_a_generation",
            |c| Box::pin(cache_miss_then_hit(c)),
        ),
        (
            "cache_streamed_miss_replayed_whole_with_the_same_text",
            |c| Box::pin(cache_stream_then_whole(c)),
        ),
        ("cache_skip_header_bypasses_and_generates", |c| {
            Box::pin(cache_bypass(c))
        }),
        (
            "coalescing_identical_concurrent_requests_one_generation",
            |c| Box::pin(coalescing(c)),
        ),
        ("openai_client_image_part_is_a_bad_request", |c| {
            Box::pin(openai_image_part(c))
        }),
        ("openai_client_json_mode_and_json_schema", |c| {
            Box::pin(openai_json(c))
        }),
        ("openai_client_tool_call_round_trip", |c| {
            Box::pin(openai_tools(c))
        }),
    ];
    let selected: Vec<_> = cases
        .into_iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let code = runtime.block_on(async move {
        let started = Instant::now();
        let ctx = tokio::select! {
            ctx = setup() => match ctx {
                Ok(ctx) => ctx,
                Err(error) => {
                    eprintln!("edge: setup failed: {error:#}");
                    return ExitCode::FAILURE;
                }
            },
            signal = interrupted() => {
                eprintln!("edge: {signal} during setup");
                return ExitCode::FAILURE;
            }
        };
        eprintln!(
            "edge: setup (Worker, region, route) in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let mut failed = Vec::new();
        for (name, case) in &selected {
            let t = Instant::now();
            eprintln!("test {name} ...");
            let outcome = tokio::select! {
                outcome = AssertUnwindSafe(tokio::time::timeout(CASE_TIMEOUT, case(&ctx))).catch_unwind() => outcome,
                signal = interrupted() => {
                    eprintln!("edge: {signal}: stopping every process it started");
                    failed.push(*name);
                    break;
                }
            };
            let secs = t.elapsed().as_secs_f64();
            if !backhaul_e2e::report_case(name, secs, CASE_TIMEOUT, outcome) {
                failed.push(*name);
            }
        }
        // The Worker and the region stop here (their process groups).
        drop(ctx);
        let total = started.elapsed().as_secs_f64();
        eprintln!(
            "edge: {} passed, {} failed in {total:.1}s (logs in {})",
            selected.len() - failed.len(),
            failed.len(),
            logs_dir().display()
        );
        if failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            eprintln!("edge: failed: {}", failed.join(", "));
            ExitCode::FAILURE
        }
    });
    drop(runtime);
    code
}

/// The Worker (with the response cache on for [`MODEL`]) and the region side
/// by side, the region's route published, the model listed.
async fn setup() -> Result<Ctx> {
    let model = backhaul_e2e::model_file();
    if !model.exists() {
        bail!("{} is missing: make model", model.display());
    }
    let logs = logs_dir();
    for entry in std::fs::read_dir(&logs)?.flatten() {
        let path = entry.path();
        let _ = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
    }
    let state = logs.join("worker-state");
    std::fs::create_dir_all(&state)?;
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let port = LocalRegion::reserve_port();
    let tokens = [token.clone()];
    let (worker, region) = tokio::try_join!(
        Worker::start_with_vars(&state, &[], &[("CACHE_MODELS", CACHE_MODELS)]),
        // JSON lines: the request and trace ids are fields of the
        // generation's span.
        LocalRegion::start_with("local", port, MODEL, &tokens, &["--log-format", "json"]),
    )?;
    // Every request is heavy (thresholds 0, no edge model): the region
    // answers it. One region, so one attempt.
    let routing = RouteRouting {
        heavy_prompt_tokens: 0,
        heavy_max_tokens: 0,
        request_timeout_ms: 120_000,
        first_byte_timeout_ms: 60_000,
        failover_attempts: 1,
    };
    worker
        .put_route(&region.route("edge", "smollm2", (51.5, -0.1), routing, &token))
        .await?;
    worker
        .wait_for_model(MODEL, Duration::from_secs(30))
        .await?;
    Ok(Ctx {
        worker,
        region,
        http: reqwest::Client::new(),
    })
}

/// One answer of the Worker, read to its end.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    /// The body as it came.
    body: String,
    /// The generated text: `choices[0].message.content` of a completion,
    /// the content deltas of a stream joined.
    text: String,
    /// A stream's `data: [DONE]`.
    done: bool,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `x-backhaul-cache`, or "-" when absent.
    fn cache(&self) -> &str {
        self.header("x-backhaul-cache").unwrap_or("-")
    }
}

/// A chat completion body for [`MODEL`]: `prompt` as the user's message.
fn chat_body(prompt: &str, max_tokens: u32, extra: Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": prompt}],
    });
    if let (Some(body), Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    body
}

/// A prompt no other request of this run sends (no cache entry, no flight).
fn fresh_prompt(topic: &str) -> String {
    format!(
        "In one sentence, {topic} (note {}).",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl Ctx {
    /// POSTs `body` to the Worker's chat completions with `headers`; reads
    /// the whole answer (and parses a stream's events).
    async fn chat(&self, body: &Value, headers: &[(&str, &str)]) -> Result<Answer> {
        let mut request = self
            .http
            .post(format!("{}/v1/chat/completions", self.worker.url()))
            .json(body)
            .timeout(Duration::from_secs(150));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "the Worker did not answer POST /v1/chat/completions (log {})",
                self.worker.log().display()
            )
        })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let is_sse = header_text(&response, "content-type")
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let body = response.text().await.context("read the Worker's answer")?;
        let (mut text, mut done) = (String::new(), false);
        if is_sse {
            for data in SseParser::default().push(body.as_bytes()) {
                match data {
                    SseData::Done => done = true,
                    SseData::Json(value) => {
                        if let Some(content) = SseData::content_of(&value) {
                            text.push_str(content);
                        }
                    }
                    SseData::Other(_) => {}
                }
            }
        } else if status == 200 {
            let value: Value = serde_json::from_str(&body)
                .with_context(|| format!("the Worker's 200 is not JSON: {body}"))?;
            text = value["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        Ok(Answer {
            status,
            headers,
            body,
            text,
            done,
        })
    }

    /// Requests the region has counted (answered or refused) so far.
    async fn region_requests(&self) -> Result<f64> {
        self.region.metric_sum(REQUESTS_TOTAL).await
    }

    /// The region's "generation finished" log line of request `request_id`
    /// (its JSON, `span` holding the generation span's fields), waiting a
    /// little for the line to be written.
    async fn region_generation(&self, request_id: &str) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&self.region.proc.log).unwrap_or_default();
            let found = log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| {
                    v["message"] == "generation finished" && v["span"]["request_id"] == request_id
                });
            if let Some(line) = found {
                return Ok(line);
            }
            if Instant::now() > deadline {
                bail!(
                    "the region's log has no finished generation with request_id {request_id:?} (log {})",
                    self.region.proc.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Fails unless `answer` is a 200.
fn ok(answer: &Answer, what: &str) -> Result<()> {
    check(answer.status == 200, "the Worker", || {
        format!("{what}: status {} {}", answer.status, answer.body)
    })
}

/// A non-cacheable request (temperature above 0, no cache TTL header).
fn uncached(topic: &str) -> Value {
    chat_body(&fresh_prompt(topic), 4, json!({"temperature": 0.7}))
}

async fn client_request_id(ctx: &Ctx) -> Result<()> {
    let id = format!("edge-client-{}", uuid::Uuid::new_v4().simple());
    let answer = ctx
        .chat(&uncached("name a colour"), &[("x-request-id", &id)])
        .await?;
    ok(&answer, "a request with x-request-id")?;
    check(
        answer.header("x-request-id") == Some(&id),
        "the Worker",
        || {
            format!(
                "answered x-request-id {:?}, the client sent {id:?}",
                answer.header("x-request-id")
            )
        },
    )?;
    ctx.region_generation(&id).await?;
    Ok(())
}

async fn worker_request_id(ctx: &Ctx) -> Result<()> {
    let answer = ctx.chat(&uncached("name a fruit"), &[]).await?;
    ok(&answer, "a request without x-request-id")?;
    let id = answer
        .header("x-request-id")
        .filter(|id| !id.is_empty())
        .context("the Worker's answer has no x-request-id")?;
    ctx.region_generation(id).await?;
    Ok(())
}

async fn trace_id(ctx: &Ctx) -> Result<()> {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let parent = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let traceparent = format!("00-{trace}-{parent}-01");
    let answer = ctx
        .chat(
            &uncached("name an animal"),
            &[("traceparent", &traceparent)],
        )
        .await?;
    ok(&answer, "a request with a traceparent")?;
    let id = answer
        .header("x-request-id")
        .context("the Worker's answer has no x-request-id")?;
    let line = ctx.region_generation(id).await?;
    check(
        line["span"]["trace_id"] == trace.as_str(),
        "the region",
        || {
            format!(
                "logged trace_id {} for the request, the client's traceparent has {trace} (log {})",
                line["span"]["trace_id"],
                ctx.region.proc.log.display()
            )
        },
    )
}

async fn cache_miss_then_hit(ctx: &Ctx) -> Result<()> {
    let body = chat_body(
        &fresh_prompt("what is the sea"),
        12,
        json!({"temperature": 0}),
    );
    let before = ctx.region_requests().await?;
    let miss = ctx.chat(&body, &[]).await?;
    ok(&miss, "the first greedy request")?;
    let after_miss = ctx.region_requests().await?;
    let hit = ctx.chat(&body, &[]).await?;
    ok(&hit, "the second greedy request")?;
    let after_hit = ctx.region_requests().await?;
    check(
        miss.cache() == "MISS" && hit.cache() == "HIT",
        "the Worker",
        || {
            format!(
                "x-backhaul-cache {} then {}, want MISS then HIT",
                miss.cache(),
                hit.cache()
            )
        },
    )?;
    check(
        !miss.text.is_empty() && hit.text == miss.text,
        "the Worker",
        || {
            format!(
                "the hit's content {:?} is not the miss's {:?}",
                hit.text, miss.text
            )
        },
    )?;
    check(
        hit.header("x-backhaul-attempts") == Some("0"),
        "the Worker",
        || {
            format!(
                "a hit has x-backhaul-attempts {:?}, want 0",
                hit.header("x-backhaul-attempts")
            )
        },
    )?;
    check(
        after_miss - before == 1.0 && after_hit == after_miss,
        "the region",
        || {
            format!(
                "{REQUESTS_TOTAL} went {before} → {after_miss} (miss) → {after_hit} (hit); want +1 then +0"
            )
        },
    )
}

async fn cache_stream_then_whole(ctx: &Ctx) -> Result<()> {
    let prompt = fresh_prompt("what is a river");
    let streamed = chat_body(&prompt, 12, json!({"temperature": 0, "stream": true}));
    let whole = chat_body(&prompt, 12, json!({"temperature": 0}));
    let before = ctx.region_requests().await?;
    let miss = ctx.chat(&streamed, &[]).await?;
    ok(&miss, "the streamed request")?;
    check(miss.done && !miss.text.is_empty(), "the Worker", || {
        format!(
            "the streamed miss did not end with text and [DONE]: {}",
            miss.body
        )
    })?;
    let hit = ctx.chat(&whole, &[]).await?;
    ok(&hit, "the non-streamed replay")?;
    let after = ctx.region_requests().await?;
    check(
        miss.cache() == "MISS" && hit.cache() == "HIT",
        "the Worker",
        || {
            format!(
                "x-backhaul-cache {} (streamed) then {} (whole), want MISS then HIT",
                miss.cache(),
                hit.cache()
            )
        },
    )?;
    check(hit.text == miss.text, "the Worker", || {
        format!(
            "the whole replay's content {:?} is not the stream's {:?}",
            hit.text, miss.text
        )
    })?;
    let object: Value = serde_json::from_str(&hit.body)?;
    check(object["object"] == "chat.completion", "the Worker", || {
        format!("the replay is not a chat.completion: {}", hit.body)
    })?;
    check(after - before == 1.0, "the region", || {
        format!("{REQUESTS_TOTAL} went {before} → {after} for a stream and its replay; want +1")
    })
}

async fn cache_bypass(ctx: &Ctx) -> Result<()> {
    let body = chat_body(
        &fresh_prompt("what is a cloud"),
        8,
        json!({"temperature": 0}),
    );
    let before = ctx.region_requests().await?;
    let miss = ctx.chat(&body, &[]).await?;
    ok(&miss, "the greedy request")?;
    let bypass = ctx
        .chat(&body, &[("x-backhaul-skip-cache", "true")])
        .await?;
    ok(&bypass, "the request with x-backhaul-skip-cache")?;
    let after = ctx.region_requests().await?;
    check(
        miss.cache() == "MISS" && bypass.cache() == "BYPASS",
        "the Worker",
        || {
            format!(
                "x-backhaul-cache {} then {} (skip-cache), want MISS then BYPASS",
                miss.cache(),
                bypass.cache()
            )
        },
    )?;
    check(after - before == 2.0, "the region", || {
        format!(
            "{REQUESTS_TOTAL} went {before} → {after}; want +2 (the bypass generates although the answer is cached)"
        )
    })?;
    // Greedy: the generation it paid for says the same.
    check(bypass.text == miss.text, "the region", || {
        format!(
            "a greedy generation said {:?}, then {:?}",
            miss.text, bypass.text
        )
    })
}

/// How many identical requests go at once in the coalescing case.
const COALESCED: usize = 4;

async fn coalescing(ctx: &Ctx) -> Result<()> {
    // Streamed, and long enough that every request joins while the first
    // one's generation runs.
    let body = chat_body(
        &fresh_prompt("describe a lighthouse"),
        24,
        json!({"temperature": 0, "stream": true}),
    );
    let before = ctx.region_requests().await?;
    let answers = futures::future::join_all((0..COALESCED).map(|_| ctx.chat(&body, &[]))).await;
    let after = ctx.region_requests().await?;
    let answers = answers.into_iter().collect::<Result<Vec<_>>>()?;
    for (i, a) in answers.iter().enumerate() {
        ok(a, &format!("identical request {i}"))?;
        check(a.done && !a.text.is_empty(), "the Worker", || {
            format!(
                "identical request {i} did not get a whole stream: {}",
                a.body
            )
        })?;
        check(a.text == answers[0].text, "the Worker", || {
            format!(
                "identical request {i} got {:?}, request 0 got {:?}",
                a.text, answers[0].text
            )
        })?;
        check(matches!(a.cache(), "MISS" | "HIT"), "the Worker", || {
            format!("identical request {i}: x-backhaul-cache {}", a.cache())
        })?;
    }
    check(after - before == 1.0, "the region", || {
        format!(
            "{COALESCED} identical concurrent requests made {} generations ({REQUESTS_TOTAL} {before} → {after}); want 1",
            after - before
        )
    })
}

/// The OpenAI client against the Worker, as a user configures it.
const CLIENT: &str = r#"
import json, os, sys, openai
client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key="unused", max_retries=0, timeout=150)
MODEL = os.environ["MODEL"]
"#;

async fn run_client(ctx: &Ctx, script: &str) -> Result<String> {
    let script = format!("{CLIENT}{script}");
    let out = openai::run(
        &script,
        &format!("{}/v1", ctx.worker.url()),
        &[("MODEL", MODEL)],
    )
    .await
    .with_context(|| {
        format!(
            "through the Worker (log {}) to the region (log {})",
            ctx.worker.log().display(),
            ctx.region.proc.log.display()
        )
    })?;
    eprintln!("{}", out.trim_end());
    Ok(out)
}

async fn openai_image_part(ctx: &Ctx) -> Result<()> {
    let before = ctx.region_requests().await?;
    run_client(
        ctx,
        r#"
try:
    client.chat.completions.create(model=MODEL, max_tokens=8, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="}},
    ]}])
    sys.exit("an image part was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400, e.status_code
    assert e.code == "unsupported_content_part", e
    assert e.param == "messages", e
    assert "messages[0].content[1]" in e.message and "image_url" in e.message, e.message
    print("image part refused:", e.message)
"#,
    )
    .await?;
    let after = ctx.region_requests().await?;
    check(after == before, "the Worker", || {
        format!("an image part reached the region ({REQUESTS_TOTAL} {before} → {after})")
    })
}

async fn openai_json(ctx: &Ctx) -> Result<()> {
    run_client(
        ctx,
        r#"
mode = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=96,
    response_format={"type": "json_object"},
    messages=[{"role": "system", "content": "You reply with a JSON object only."},
              {"role": "user", "content": "Give the name and the age of a person as JSON."}])
content = mode.choices[0].message.content
try:
    value = json.loads(content)
except ValueError as e:
    sys.exit(f"json_object: content is not JSON ({e}; finish_reason {mode.choices[0].finish_reason}): {content!r}")
assert isinstance(value, dict), f"json_object: not an object: {content!r}"
print("json_object:", content)

# Strings and a boolean: a greedy 135M model may spin an unbounded integer
# out to max_tokens (the schema allows any length), which says nothing of the path.
schema = {"type": "object", "additionalProperties": False, "required": ["city", "country", "is_capital"],
          "properties": {"city": {"type": "string"}, "country": {"type": "string"}, "is_capital": {"type": "boolean"}}}
typed = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=96,
    response_format={"type": "json_schema", "json_schema": {"name": "city_info", "strict": True, "schema": schema}},
    messages=[{"role": "user", "content": "Name the capital of France."}])
content = typed.choices[0].message.content
try:
    value = json.loads(content)
except ValueError as e:
    sys.exit(f"json_schema: content is not JSON ({e}; finish_reason {typed.choices[0].finish_reason}): {content!r}")
assert isinstance(value, dict), f"json_schema: not an object: {content!r}"
assert isinstance(value.get("city"), str) and isinstance(value.get("country"), str), \
    f"json_schema: city and country are not strings: {content!r}"
assert isinstance(value.get("is_capital"), bool), f"json_schema: is_capital is not a boolean: {content!r}"
print("json_schema:", content)
"#,
    )
    .await
    .map(drop)
}

async fn openai_tools(ctx: &Ctx) -> Result<()> {
    run_client(
        ctx,
        r#"
tools = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
first = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=64, messages=messages, tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}})
message = first.choices[0].message
assert message.tool_calls, f"no tool_calls: {first}"
call = message.tool_calls[0]
assert call.type == "function", call
assert call.function.name == "get_weather", call
arguments = json.loads(call.function.arguments)
assert isinstance(arguments.get("city"), str) and arguments["city"], f"no city in {call.function.arguments!r}"
print("tool call:", call.function.name, call.function.arguments)

messages += [message.model_dump(exclude_none=True),
             {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"city": arguments["city"], "temperature_c": 21, "sky": "sunny"})}]
second = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=32, messages=messages, tools=tools)
answer = second.choices[0].message
assert not answer.tool_calls, f"a second tool call instead of an answer: {second}"
assert isinstance(answer.content, str) and answer.content.strip(), f"no text answer: {second}"
print("answer:", answer.content)
"#,
    )
    .await
    .map(drop)
}
