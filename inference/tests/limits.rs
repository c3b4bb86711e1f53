//! Every request limit at its edge, on a real server with SmolLM2: exactly
//! at the limit is served, one over is refused with the right code and an
//! error naming the limit, and the server keeps serving. Also: a prompt too
//! long in bytes costs no tokenization, a client that gives up while its
//! prompt waits to be tokenized frees its slot and never generates, and
//! `--request-timeout` bounds both APIs. (An unset `max_tokens` on a long
//! context: long_context.rs, on a model loaded with a small context.)

mod common;

use std::time::Duration;

use backhaul_proto::inference::v1 as pb;
use common::*;
use prost::Message as _;
use serde_json::{Value, json};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(120);

async fn post(
    handle: &backhaul_inference::ServerHandle,
    body: Vec<u8>,
) -> (reqwest::StatusCode, Value) {
    let response = http()
        .post(http_url(handle, "/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("HTTP request");
    let status = response.status();
    let text = response.text().await.expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, value)
}

/// A chat body padded with an ignored field to exactly `size` bytes.
fn body_of_size(size: usize) -> Vec<u8> {
    let head = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1,"pad":""#;
    let tail = r#""}"#;
    let pad = size - head.len() - tail.len();
    format!("{head}{}{tail}", "x".repeat(pad)).into_bytes()
}

fn assert_still_serves(handle: &backhaul_inference::ServerHandle) -> impl Future<Output = ()> {
    let url = http_url(handle, "/v1/chat/completions");
    async move {
        let response = http()
            .post(url)
            .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
            .send()
            .await
            .expect("HTTP request");
        assert_eq!(response.status(), 200, "the server keeps serving");
    }
}

#[tokio::test]
async fn the_http_body_limit_is_exact_and_answered_as_an_openai_413() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--max-body-bytes", "2000"]).await;

    let (status, body) = post(&handle, body_of_size(2000)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&handle, body_of_size(2001)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "request_too_large");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2000 bytes"),
        "{body}"
    );
    assert_still_serves(&handle).await;
}

/// A chat request whose encoded message is exactly `size` bytes.
fn grpc_request_of_size(size: usize) -> pb::ChatRequest {
    let mut request = chat("hi", 1);
    for extra in 0..size {
        request.messages[0].content = format!("hi{}", " ".repeat(extra));
        if request.encoded_len() >= size {
            break;
        }
    }
    assert_eq!(
        request.encoded_len(),
        size,
        "padding reaches the size exactly"
    );
    request
}

#[tokio::test]
async fn the_grpc_message_limit_is_exact_and_refused_with_resource_exhausted() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--max-grpc-message-bytes", "3000"]).await;
    let mut client = grpc(&handle).await;

    let at = client.chat(grpc_request_of_size(3000)).await;
    assert!(at.is_ok(), "{at:?}");
    for over in [3001, 10_000] {
        let status = client.chat(grpc_request_of_size(over)).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.message(),
            format!(
                "request message is {over} bytes; the limit is 3000 bytes (--max-grpc-message-bytes)"
            )
        );
    }
    // The streaming call is refused the same way, before it starts.
    let status = client
        .chat_stream(grpc_request_of_size(3001))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (text, _) = grpc_stream_text(&mut client, chat("hi", 2)).await;
    assert!(!text.is_empty());
}

#[tokio::test]
async fn max_tokens_has_a_default_and_a_limit_at_their_edges() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--max-tokens-limit", "12", "--default-max-tokens", "5"]).await;
    let prompt = "Write a long story about a dragon who learns to bake bread.";

    let at = |max_tokens: Option<u32>| {
        let mut body = json!({"messages": [{"role": "user", "content": prompt}], "temperature": 0});
        if let Some(m) = max_tokens {
            body["max_tokens"] = json!(m);
        }
        post(&handle, serde_json::to_vec(&body).unwrap())
    };
    let (status, body) = at(Some(12)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 12);
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let (status, body) = at(Some(13)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "max_tokens");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 12"),
        "{body}"
    );

    // No max_tokens: the default, not the whole context window.
    let (status, body) = at(None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    // gRPC is bounded the same way.
    let mut client = grpc(&handle).await;
    let status = client.chat(chat(prompt, 13)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let reply = client.chat(chat(prompt, 12)).await.unwrap().into_inner();
    assert_eq!(reply.usage.unwrap().completion_tokens, 12);
}

#[tokio::test]
async fn stop_sequences_are_bounded_in_length_and_sixteen_long_ones_are_cheap() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--max-stop-bytes", "100000"]).await;
    let request = |stop: Vec<String>| {
        json!({
            "messages": [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}],
            "temperature": 0,
            "max_tokens": 24,
            "stop": stop,
        })
    };
    // Sixteen stops of exactly the limit (100 KB each, 1.6 MB in all) are
    // served: trimming them is linear in the text.
    let at_limit: Vec<String> = (0..16u8)
        .map(|i| format!("{}{}", "a".repeat(99_999), char::from(b'A' + i)))
        .collect();
    let (status, body) = post(&handle, serde_json::to_vec(&request(at_limit)).unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 24);

    // One byte over is refused, naming the limit.
    let mut over: Vec<String> = (0..15).map(|_| "x".into()).collect();
    over.push("b".repeat(100_001));
    let (status, body) = post(&handle, serde_json::to_vec(&request(over)).unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "stop");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 100000"),
        "{body}"
    );
    assert_still_serves(&handle).await;
}

#[tokio::test]
async fn a_prompt_too_long_in_bytes_is_refused_without_tokenizing() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let models: Value = get(http_url(&handle, "/v1/models"))
        .await
        .json()
        .await
        .unwrap();
    let context = models["data"][0]["context_length"].as_u64().unwrap() as usize;
    let tokenized = || metric(&handle, "backhaul_inference_tokenization_seconds_count");
    let before = tokenized().await;

    // Far more bytes than the context window could hold as tokens (each
    // token stands for at most the model's longest vocabulary entry):
    // 3.5 MB, inside the 4 MiB body limit.
    let huge = "word ".repeat(700_000);
    assert!(huge.len() > context * 256);
    let body = json!({"messages": [{"role": "user", "content": huge}]});
    let (status, body) = post(&handle, serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "messages");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fits the model's context window"),
        "{body}"
    );
    assert_eq!(tokenized().await, before, "the prompt was never tokenized");
    assert_still_serves(&handle).await;
}

#[tokio::test]
async fn a_client_that_gives_up_while_its_prompt_waits_to_be_tokenized_frees_its_slot() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--max-concurrent-tokenizations", "1"]).await;
    let mut client = grpc(&handle).await;
    let prompt_tokens = || metric(&handle, "backhaul_inference_prompt_tokens_total");
    let tokenized = || metric(&handle, "backhaul_inference_tokenization_seconds_count");
    let in_flight = || metric(&handle, "backhaul_inference_requests_in_flight");
    let before_tokens = prompt_tokens().await;
    let before_tokenized = tokenized().await;

    // A 2,000-word prompt: its prefill holds the engine's loop for a while,
    // and a tokenization sent meanwhile waits for the loop.
    let long = tokio::spawn({
        let mut client = client.clone();
        async move { client.chat(chat(&" hi".repeat(2000), 1)).await }
    });
    eventually(WAIT, "the long prompt to be tokenized", || async {
        tokenized().await == before_tokenized + 1.0
    })
    .await;

    // A second request is admitted and waits for its prompt to be
    // tokenized; its client gives up.
    let abandoned = tokio::spawn({
        let mut client = client.clone();
        async move { client.chat(chat("Tell me a story.", 64)).await }
    });
    eventually(WAIT, "the second request to be admitted", || async {
        in_flight().await == 2.0
    })
    .await;
    assert_eq!(
        tokenized().await,
        before_tokenized + 1.0,
        "the second prompt is still waiting to be tokenized"
    );
    abandoned.abort();
    // Its slot frees at once, before the engine has even answered.
    eventually(
        Duration::from_secs(5),
        "the abandoned slot to free",
        || async { in_flight().await == 1.0 },
    )
    .await;

    let reply = long.await.unwrap().expect("the long chat").into_inner();
    let long_tokens = reply.usage.unwrap().prompt_tokens;
    eventually(WAIT, "the long chat's slot to free", || async {
        in_flight().await == 0.0
    })
    .await;
    // The abandoned request never generated: only the long prompt counted,
    // and no generation was cancelled.
    assert_eq!(
        prompt_tokens().await - before_tokens,
        f64::from(long_tokens)
    );
    assert_eq!(
        metric(
            &handle,
            "backhaul_inference_requests_total{api=\"grpc_chat\",outcome=\"client_cancelled\"}"
        )
        .await,
        0.0
    );
    let reply = client.chat(chat("hi", 2)).await.expect("still serving");
    assert_eq!(reply.into_inner().usage.unwrap().completion_tokens, 2);
}

#[tokio::test]
async fn the_request_timeout_bounds_both_apis() {
    let _turn = SERIAL.lock().await;
    // Long enough for the first token (TTFT here is about 1.5 s on two
    // cores), far too short for 4,000 tokens.
    let handle = server(&["--request-timeout", "5s"]).await;
    let long = "Write a very long story about a lighthouse keeper.";

    let body = json!({"messages": [{"role": "user", "content": long}], "max_tokens": 4000});
    let (status, body) = post(&handle, serde_json::to_vec(&body).unwrap()).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "deadline_exceeded");

    // A client's longer grpc-timeout cannot extend it.
    let mut client = grpc_without_client_deadline(&handle);
    let mut request = tonic::Request::new(chat(long, 4000));
    request.set_timeout(Duration::from_secs(600));
    let status = client.chat(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // A stream ends with an error event after the text so far.
    let body = json!({"messages": [{"role": "user", "content": long}], "max_tokens": 4000, "stream": true});
    let response = http()
        .post(http_url(&handle, "/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let payloads = sse_payloads(&response.text().await.unwrap());
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "deadline_exceeded", "{last}");
    assert!(!sse_chat_text(&payloads).is_empty());
    eventually(WAIT, "the slots to free", || async {
        metric(&handle, "backhaul_inference_requests_in_flight").await == 0.0
    })
    .await;
}
