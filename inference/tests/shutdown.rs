//! A real SIGTERM to the `backhaul-inference` process, with requests in
//! flight and queued: readiness drops at once, new requests are still
//! served for `--drain-delay`, then refused (503); everything accepted is
//! answered in full; the process exits 0.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

impl ServerProcess {
    fn chat(&self, max_tokens: u32) -> tokio::task::JoinHandle<(u16, Value)> {
        let url = format!("{}/v1/chat/completions", self.http);
        tokio::spawn(async move {
            let response = http()
                .post(url)
                .json(&json!({
                    "messages": [{"role": "user", "content": "Write a story about a fox."}],
                    "temperature": 0,
                    "max_tokens": max_tokens,
                }))
                .send()
                .await
                .expect("an answer, not a dropped connection");
            let status = response.status().as_u16();
            (status, response.json().await.expect("a JSON body"))
        })
    }

    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn assert_complete((status, body): &(u16, Value), max_tokens: u64) {
    assert_eq!(*status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], max_tokens, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn sigterm_answers_in_flight_and_queued_work_then_exits_zero() {
    let _turn = SERIAL.lock().await;
    let delay = Duration::from_secs(3);
    let mut server = ServerProcess::start(&[
        "--max-in-flight",
        "1",
        "--max-queue",
        "3",
        "--drain-delay",
        "3s",
        "--drain-timeout",
        "60s",
    ])
    .await;

    // One generating, two queued behind it.
    let in_flight = server.chat(120);
    eventually(WAIT, "one request generating", || async {
        server.metric("backhaul_inference_requests_in_flight").await == 1.0
    })
    .await;
    let queued = [server.chat(8), server.chat(8)];
    eventually(WAIT, "two requests queued", || async {
        server.metric("backhaul_inference_requests_queued").await == 2.0
    })
    .await;

    server.terminate();
    let terminated = Instant::now();
    // Readiness drops first...
    eventually(
        Duration::from_secs(2),
        "/ready to report draining",
        || async {
            reqwest::get(format!("{}/ready", server.http))
                .await
                .is_ok_and(|r| r.status() == 503)
        },
    )
    .await;
    // ...while new work is still accepted during the delay.
    assert!(terminated.elapsed() < delay);
    let during_delay = server.chat(8);
    eventually(delay, "the late request to be queued", || async {
        server.metric("backhaul_inference_requests_queued").await == 3.0
    })
    .await;

    // After the delay, new work is refused with 503 so the Worker fails over.
    tokio::time::sleep_until((terminated + delay + Duration::from_millis(300)).into()).await;
    let (status, body) = server.chat(8).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "draining");

    // Everything accepted is answered in full.
    assert_complete(&in_flight.await.unwrap(), 120);
    for request in queued {
        assert_complete(&request.await.unwrap(), 8);
    }
    assert_complete(&during_delay.await.unwrap(), 8);

    // And the process exits 0.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the server did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}
