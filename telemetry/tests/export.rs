//! Spans reach an OTLP collector with the service name, the attributes
//! recorded on them, and the remote parent of a `traceparent`; a trace the
//! caller did not sample is not exported.

use std::time::Duration;

use backhaul_telemetry::{OtlpArgs, continue_trace};
use backhaul_testkit::{otlp::OtlpCollector, wait_for};
use tracing_subscriber::prelude::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn spans_continue_the_callers_trace_at_the_collector() {
    let collector = OtlpCollector::start().await;
    let args = OtlpArgs {
        endpoint: Some(collector.url.clone()),
        sample_ratio: 1.0,
        service_name: None,
    };
    let (layer, flush) = args
        .layer("backhaul-test")
        .expect("exporter builds")
        .expect("on with an endpoint");
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let sampled = tracing::info_span!("generation", request_id = "req-1");
        continue_trace(&sampled, &format!("00-{TRACE}-{PARENT}-01"));
        sampled.in_scope(|| tracing::info!("inside"));
        drop(sampled);
        let unsampled = tracing::info_span!("generation", request_id = "req-2");
        continue_trace(&unsampled, &format!("00-{}-{PARENT}-00", "1".repeat(32)));
        drop(unsampled);
        let fresh = tracing::info_span!("reconcile");
        drop(fresh);
    });
    flush.flush();

    let spans = wait_for(Duration::from_secs(10), || async {
        let spans = collector.spans();
        (spans.len() >= 2).then_some(spans)
    })
    .await
    .expect("two spans exported");
    let generation = spans
        .iter()
        .find(|s| s.name == "generation")
        .expect("the generation span");
    assert_eq!(generation.service, "backhaul-test");
    assert_eq!(generation.trace_id, TRACE);
    assert_eq!(generation.parent_span_id, PARENT);
    assert_eq!(generation.attributes["request_id"], "req-1");
    let fresh = spans
        .iter()
        .find(|s| s.name == "reconcile")
        .expect("reconcile");
    assert_ne!(fresh.trace_id, TRACE);
    assert_eq!(fresh.parent_span_id, "", "a new trace has no parent");
    // flush() waited for the export: the unsampled trace is not coming.
    assert!(
        !spans
            .iter()
            .any(|s| s.attributes.get("request_id").map(String::as_str) == Some("req-2")),
        "{spans:?}"
    );
    assert_eq!(spans.len(), 2, "{spans:?}");
}
