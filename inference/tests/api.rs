//! The two APIs on a real server with SmolLM2: same greedy text over gRPC
//! and HTTP, token limits, stop sequences, and bad input refused with the
//! right code while the server keeps serving.

mod common;

use backhaul_proto::inference::v1::{self as pb, FinishReason, ListModelsRequest, Message};
use common::*;
use serde_json::{Value, json};
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const PROMPT: &str = "What is the capital of France? Answer in one sentence.";

#[tokio::test]
async fn grpc_and_http_give_the_same_greedy_text_streamed_and_unary() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let mut client = grpc(&handle).await;

    let (grpc_text, last) = grpc_stream_text(&mut client, chat(PROMPT, 24)).await;
    assert!(!grpc_text.trim().is_empty(), "model produced no text");
    assert_ne!(last.finish_reason, FinishReason::Unspecified as i32);
    let usage = last.usage.expect("usage on the last message");
    assert!(usage.prompt_tokens > 0);
    assert!(usage.completion_tokens > 0);
    assert!(usage.time_to_first_token_seconds > 0.0);

    let body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": PROMPT}],
        "temperature": 0,
        "max_tokens": 24,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let (status, headers, sse) = http_chat(&handle, body).await;
    assert_eq!(status, 200, "{sse}");
    assert!(
        headers[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let payloads = sse_payloads(&sse);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let usage_chunk: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        usage.completion_tokens
    );
    assert_eq!(sse_chat_text(&payloads), grpc_text);

    let unary = client.chat(chat(PROMPT, 24)).await.unwrap().into_inner();
    assert_eq!(unary.text, grpc_text);

    let (status, _, body) = http_chat(
        &handle,
        json!({
            "messages": [{"role": "user", "content": PROMPT}],
            "temperature": 0,
            "max_tokens": 24,
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], grpc_text);
    assert_eq!(body["object"], "chat.completion");
}

#[tokio::test]
async fn max_tokens_is_exact_and_finishes_with_length() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let mut client = grpc(&handle).await;
    let long = "Write a long story about a dragon who learns to bake bread.";

    let (_, last) = grpc_stream_text(&mut client, chat(long, 5)).await;
    assert_eq!(last.finish_reason, FinishReason::Length as i32);
    assert_eq!(last.usage.unwrap().completion_tokens, 5);

    let (status, _, body) = http_chat(
        &handle,
        json!({
            "messages": [{"role": "user", "content": long}],
            "temperature": 0,
            "max_tokens": 7,
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 7);

    let completion = client
        .complete(pb::CompleteRequest {
            model: String::new(),
            prompt: "Once upon a time".into(),
            sampling: Some(pb::Sampling {
                temperature: Some(0.0),
                max_tokens: Some(6),
                ..Default::default()
            }),
            request_id: "raw-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(completion.request_id, "raw-1");
    assert_eq!(completion.finish_reason, FinishReason::Length as i32);
    assert!(!completion.text.is_empty());
    assert_eq!(completion.usage.unwrap().completion_tokens, 6);
}

#[tokio::test]
async fn a_stop_sequence_never_appears_in_streamed_or_unary_text() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let mut client = grpc(&handle).await;
    let prompt = "List the days of the week, separated by commas.";

    // Greedy output without a stop sequence; then stop in its middle, at a
    // string that spans several tokens.
    let (full, _) = grpc_stream_text(&mut client, chat(prompt, 40)).await;
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 20, "output too short to test: {full:?}");
    let start = chars.len() / 2;
    let stop: String = chars[start..start + 6].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];

    let mut request = chat(prompt, 40);
    request.sampling.as_mut().unwrap().stop = vec![stop.clone()];
    let (streamed, last) = grpc_stream_text(&mut client, request.clone()).await;
    assert!(!streamed.contains(&stop), "{streamed:?} contains {stop:?}");
    assert_eq!(streamed, expected);
    assert_eq!(last.finish_reason, FinishReason::Stop as i32);

    let unary = client.chat(request).await.unwrap().into_inner();
    assert_eq!(unary.text, expected);

    let (status, _, sse) = http_chat(
        &handle,
        json!({
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": 40,
            "stop": stop,
            "stream": true,
        }),
    )
    .await;
    assert_eq!(status, 200);
    let text = sse_chat_text(&sse_payloads(&sse));
    assert_eq!(text, expected);
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_code_and_the_server_keeps_serving() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let mut client = grpc(&handle).await;
    let context = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models[0]
        .context_length;
    let huge_prompt = "hello ".repeat(context as usize + 100);

    let user = |content: &str| Message {
        role: "user".into(),
        content: content.into(),
    };
    let mut cases: Vec<(&str, pb::ChatRequest, &str)> = Vec::new();
    let mut empty = chat("hi", 4);
    empty.messages.clear();
    cases.push(("empty messages", empty, "messages"));
    let mut role = chat("hi", 4);
    role.messages = vec![Message {
        role: "wizard".into(),
        content: "hi".into(),
    }];
    cases.push(("unknown role", role, "messages"));
    cases.push((
        "max_tokens above context",
        chat("hi", context + 1),
        "max_tokens",
    ));
    let mut long = chat("hi", 4);
    long.messages = vec![user(&huge_prompt)];
    cases.push(("prompt longer than context", long, "messages"));
    let mut nan = chat("hi", 4);
    nan.sampling.as_mut().unwrap().temperature = Some(f64::NAN);
    cases.push(("NaN temperature", nan, "temperature"));
    let mut negative = chat("hi", 4);
    negative.sampling.as_mut().unwrap().top_p = Some(-0.5);
    cases.push(("negative top_p", negative, "top_p"));
    let mut model = chat("hi", 4);
    model.model = "gpt-17".into();
    cases.push(("unknown model", model, "gpt-17"));

    for (name, request, field) in cases {
        let status = client.chat(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(status.message().contains(field), "{name}: {status:?}");
        let status = client
            .chat_stream(request)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name}: stream accepted"));
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
    }

    let http_cases = [
        (
            "empty messages",
            json!({"messages": []}),
            400,
            Some("messages"),
        ),
        (
            "unknown role",
            json!({"messages": [{"role": "wizard", "content": "hi"}]}),
            400,
            Some("messages"),
        ),
        (
            "max_tokens above context",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": context + 1}),
            400,
            Some("max_tokens"),
        ),
        (
            "prompt longer than context",
            json!({"messages": [{"role": "user", "content": huge_prompt}]}),
            400,
            Some("messages"),
        ),
        (
            "negative temperature",
            json!({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}),
            400,
            Some("temperature"),
        ),
        (
            "seed",
            json!({"messages": [{"role": "user", "content": "hi"}], "seed": 7}),
            400,
            Some("seed"),
        ),
        (
            "unknown model",
            json!({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]}),
            404,
            Some("model"),
        ),
        (
            "missing messages",
            json!({"model": "smollm2"}),
            400,
            Some("messages"),
        ),
        ("not an object", json!([1, 2]), 400, None),
        (
            "logprobs are refused, not ignored",
            json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": true}),
            400,
            Some("logprobs"),
        ),
    ];
    // Plain text, the default, is served.
    let (status, _, text) = http_chat(
        &handle,
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "response_format": {"type": "text"}, "logprobs": false}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    for (name, body, code, param) in http_cases {
        let (status, _, text) = http_chat(&handle, body).await;
        assert_eq!(status.as_u16(), code, "{name}: {text}");
        let error: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: {text}"));
        assert!(error["error"]["message"].is_string(), "{name}: {text}");
        assert!(error["error"]["type"].is_string(), "{name}: {text}");
        if let Some(param) = param {
            assert_eq!(error["error"]["param"], param, "{name}: {text}");
        }
    }
    let response = http()
        .post(http_url(&handle, "/v1/chat/completions"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Still serving.
    let (text, _) = grpc_stream_text(&mut client, chat("Say hi.", 4)).await;
    assert!(!text.is_empty());
    let metrics = reqwest::get(metrics_url(&handle, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("outcome=\"invalid_argument\""),
        "refusals are counted: {metrics}"
    );
}

#[tokio::test]
async fn models_health_readiness_and_metrics_are_reported() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let mut client = grpc(&handle).await;
    let models = client
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].served_name, "smollm2");
    assert_eq!(models[0].device, "cpu");
    assert_eq!(models[0].quantization, "gguf:Q4_1");
    assert!(models[0].context_length >= 2048);

    let list: Value = get(http_url(&handle, "/v1/models"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], "smollm2");

    let mut health = HealthClient::new(
        Endpoint::from_shared(format!("http://{}", handle.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for service in ["", backhaul_proto::INFERENCE_SERVICE_NAME] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "health of {service:?}"
        );
    }
    assert_eq!(
        reqwest::get(http_url(&handle, "/ready"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(http_url(&handle, "/health"))
            .await
            .unwrap()
            .status(),
        200
    );

    let (_, last) =
        grpc_stream_text(&mut client, chat("Write a long story about a dragon.", 3)).await;
    assert_eq!(last.usage.unwrap().completion_tokens, 3);
    let metrics = reqwest::get(metrics_url(&handle, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "backhaul_inference_requests_total{api=\"grpc_chat_stream\",outcome=\"ok\"} 1",
        "backhaul_inference_time_to_first_token_seconds_bucket",
        "backhaul_inference_inter_token_latency_seconds_bucket",
        "backhaul_inference_request_duration_seconds_bucket",
        "backhaul_inference_generation_tokens_total 3",
        "backhaul_inference_requests_in_flight 0",
        "backhaul_inference_requests_queued 0",
        "backhaul_inference_engine_info{device=\"cpu\",model=\"smollm2\"",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
}
