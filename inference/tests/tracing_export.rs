//! With `--otlp-endpoint`, the real binary exports each request's
//! `generation` span to an OTLP collector as a child of the caller's
//! `traceparent`, carrying the request id and trace id it logs.

mod common;

use std::time::Duration;

use backhaul_testkit::{otlp::OtlpCollector, wait_for};
use common::*;
use serde_json::json;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

async fn chat(server: &ServerProcess, request_id: &str) {
    let response = http()
        .post(format!("{}/v1/chat/completions", server.http))
        .header("x-request-id", request_id)
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 2}))
        .send()
        .await
        .expect("chat request");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_requests_span_reaches_the_collector_in_the_callers_trace() {
    let collector = OtlpCollector::start().await;
    let server = ServerProcess::start(&[
        "--otlp-endpoint",
        &collector.url,
        "--otlp-service-name",
        "region-test",
    ])
    .await;
    chat(&server, "req-otlp-1").await;
    // The batch goes out within the SDK's schedule (5 s) at the latest.
    let span = wait_for(Duration::from_secs(20), || async {
        collector
            .spans()
            .into_iter()
            .find(|s| s.name == "generation")
    })
    .await
    .expect("the generation span is exported");
    assert_eq!(span.service, "region-test");
    assert_eq!(span.trace_id, TRACE);
    assert_eq!(span.parent_span_id, PARENT);
    assert_eq!(span.attributes["request_id"], "req-otlp-1");
    assert_eq!(span.attributes["trace_id"], TRACE);
    assert_eq!(span.attributes["api"], "openai_chat_completions");
}
