//! Load behaviour on a real server with SmolLM2: a full queue is refused at
//! once (with Retry-After) while admitted work completes; a cancelled
//! stream frees its slot; a slow reader cannot hold up a fast one;
//! deadlines end generations; draining refuses new work and lets in-flight
//! work finish.

mod common;

use std::time::{Duration, Instant};

use backhaul_proto::inference::v1::{FinishReason, inference_client::InferenceClient};
use common::*;
use serde_json::json;
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const LONG: &str = "Write a long story about a dragon who learns to bake bread.";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_full_queue_is_refused_at_once_while_admitted_requests_complete() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--max-in-flight", "1", "--max-queue", "1"]).await;
    let mut client = grpc(&handle).await;

    // One generating...
    let mut running = client
        .chat_stream(chat(LONG, 40))
        .await
        .unwrap()
        .into_inner();
    running.message().await.unwrap().expect("first token");
    // ...one queued...
    let queued = tokio::spawn({
        let mut client = client.clone();
        async move { grpc_stream_text(&mut client, chat(LONG, 8)).await }
    });
    eventually(WAIT, "a request queued", || async {
        metric(&handle, "backhaul_inference_requests_queued").await == 1.0
    })
    .await;

    // ...and the next is refused at once, on both APIs.
    let started = Instant::now();
    let status = client.chat(chat(LONG, 8)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
    let response = http()
        .post(http_url(&handle, "/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": LONG}], "max_tokens": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refusals must not wait: {:?}",
        started.elapsed()
    );

    // The admitted requests still complete.
    let mut last = None;
    while let Some(message) = running.message().await.unwrap() {
        last = Some(message);
    }
    assert_eq!(last.unwrap().finish_reason, FinishReason::Length as i32);
    let (text, last) = queued.await.unwrap();
    assert!(!text.is_empty());
    assert_eq!(last.finish_reason, FinishReason::Length as i32);
}

#[tokio::test]
async fn a_cancelled_stream_frees_its_slot_at_once() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--max-in-flight", "1", "--max-queue", "0"]).await;
    let mut client = grpc(&handle).await;

    let mut stream = client
        .chat_stream(chat(LONG, 400))
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().expect("first token");
    let cancelled_at = Instant::now();
    drop(stream);

    // The slot frees long before 400 tokens could have been generated...
    eventually(Duration::from_secs(5), "the slot to free", || async {
        metric(&handle, "backhaul_inference_requests_in_flight").await == 0.0
    })
    .await;
    // ...and is usable by the next request, with no queue to wait in.
    let (text, last) = grpc_stream_text(&mut client, chat(LONG, 4)).await;
    assert!(!text.is_empty());
    assert_eq!(last.usage.unwrap().completion_tokens, 4);
    assert!(cancelled_at.elapsed() < WAIT);
    assert_eq!(
        metric(
            &handle,
            "backhaul_inference_requests_total{api=\"grpc_chat_stream\",outcome=\"client_cancelled\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_slow_reader_is_cut_off_and_does_not_hold_up_a_fast_one() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--stream-buffer", "8"]).await;

    // A client that reads one message and then stops reading; a tiny HTTP/2
    // window makes the server feel that at once.
    let slow_channel = Endpoint::from_shared(format!("http://{}", handle.grpc_addr))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut slow_client = InferenceClient::with_interceptor(slow_channel, Bearer::token(TOKEN));
    let mut slow = slow_client
        .chat_stream(chat(LONG, 1000))
        .await
        .unwrap()
        .into_inner();
    slow.message().await.unwrap().expect("first token");

    // A fast client alongside it finishes normally.
    let mut fast = grpc(&handle).await;
    let started = Instant::now();
    let (text, last) = tokio::time::timeout(WAIT, grpc_stream_text(&mut fast, chat(LONG, 32)))
        .await
        .expect("the fast stream is not held up");
    assert!(!text.is_empty());
    assert_eq!(last.usage.unwrap().completion_tokens, 32);
    eprintln!("fast stream beside a stalled one: {:?}", started.elapsed());

    // The slow one was cut off rather than allowed to stall the engine.
    eventually(WAIT, "the slow stream to be cut off", || async {
        metric(
            &handle,
            "backhaul_inference_requests_total{api=\"grpc_chat_stream\",outcome=\"slow_consumer\"}",
        )
        .await
            == 1.0
    })
    .await;
    let mut final_message = None;
    let status = loop {
        match slow.message().await {
            Ok(Some(message)) => final_message = Some(message),
            Ok(None) => panic!("slow stream ended without an error status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(
        final_message.unwrap().finish_reason,
        FinishReason::Cancelled as i32
    );
}

#[tokio::test]
async fn a_grpc_deadline_ends_the_generation() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let mut client = grpc_without_client_deadline(&handle);
    let mut request = tonic::Request::new(chat(LONG, 2000));
    request.set_timeout(Duration::from_millis(1500));
    let started = Instant::now();
    let outcome = async {
        let mut stream = client.chat_stream(request).await?.into_inner();
        while stream.message().await?.is_some() {}
        Ok::<_, tonic::Status>(())
    }
    .await;
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    eventually(WAIT, "the slot to free", || async {
        metric(&handle, "backhaul_inference_requests_in_flight").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_grpc_deadline_ends_a_unary_call_with_deadline_exceeded() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let mut client = grpc_without_client_deadline(&handle);
    // Passes before the first token (the prompt is still being admitted)
    // and while generating: both are DEADLINE_EXCEEDED, never CANCELLED.
    for timeout in [Duration::from_millis(1), Duration::from_millis(1500)] {
        let mut request = tonic::Request::new(chat(LONG, 2000));
        request.set_timeout(timeout);
        let status = client.chat(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "timeout {timeout:?}: {status:?}"
        );
    }
    eventually(WAIT, "the slot to free", || async {
        metric(&handle, "backhaul_inference_requests_in_flight").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn draining_refuses_new_work_reports_not_serving_and_lets_in_flight_work_finish() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--drain-timeout", "60s"]).await;
    let mut client = grpc(&handle).await;
    let mut health = HealthClient::new(
        Endpoint::from_shared(format!("http://{}", handle.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );

    let mut running = client
        .chat_stream(chat(LONG, 24))
        .await
        .unwrap()
        .into_inner();
    running.message().await.unwrap().expect("first token");

    handle.drain();

    for service in ["", backhaul_proto::INFERENCE_SERVICE_NAME] {
        eventually(WAIT, "health NOT_SERVING", || {
            let mut health = health.clone();
            async move {
                health
                    .check(HealthCheckRequest {
                        service: service.into(),
                    })
                    .await
                    .map(|r| r.into_inner().status == ServingStatus::NotServing as i32)
                    .unwrap_or(false)
            }
        })
        .await;
    }
    assert_eq!(
        reqwest::get(http_url(&handle, "/ready"))
            .await
            .unwrap()
            .status(),
        503
    );
    let status = client.chat(chat(LONG, 4)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let response = http()
        .post(http_url(&handle, "/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let _ = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;

    // The in-flight stream runs to its normal end.
    let mut last = None;
    while let Some(message) = running.message().await.unwrap() {
        last = Some(message);
    }
    assert_eq!(last.unwrap().finish_reason, FinishReason::Length as i32);
    drop(health);
    drop(client);
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("server stops after draining")
        .expect("clean stop");
}

#[tokio::test]
async fn the_drain_timeout_cancels_generations_that_run_past_it() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--drain-timeout", "300ms"]).await;
    let mut client = grpc(&handle).await;
    let mut running = client
        .chat_stream(chat(LONG, 4000))
        .await
        .unwrap()
        .into_inner();
    running.message().await.unwrap().expect("first token");
    handle.drain();
    let mut last = None;
    let status = loop {
        match running.message().await {
            Ok(Some(message)) => last = Some(message),
            Ok(None) => panic!("stream ended without an error status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Cancelled);
    assert_eq!(last.unwrap().finish_reason, FinishReason::Cancelled as i32);
    drop(client);
    tokio::time::timeout(WAIT, handle.wait())
        .await
        .expect("server stops")
        .expect("clean stop");
}
