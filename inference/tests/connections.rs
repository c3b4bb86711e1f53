//! Connection limits on a real server: the connection cap refuses one more
//! at once, slow headers and idle connections are closed after their
//! timeouts (freeing their places), an HTTP/2 peer that stops answering
//! keepalive PINGs is dropped, and the server serves throughout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const WAIT: Duration = Duration::from_secs(30);

/// Reads until the server closes the connection (EOF or reset); returns
/// how long that took. Panics after `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> Duration {
    let started = Instant::now();
    let mut buffer = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open past {within:?}"),
        }
    }
}

async fn chat_ok(handle: &backhaul_inference::ServerHandle) -> bool {
    http()
        .post(http_url(handle, "/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn the_connection_cap_refuses_one_more_and_slow_headers_are_closed() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[
        "--max-connections",
        "4",
        "--header-read-timeout",
        "1s",
        "--idle-timeout",
        "60s",
    ])
    .await;

    // Four clients that send a request's headers a byte at a time, slower
    // than the timeout allows (a slowloris).
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(handle.http_addr).await.unwrap();
        stream
            .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(stream);
    }
    eventually(WAIT, "four open connections", || async {
        metric(
            &handle,
            "backhaul_inference_connections_open{listener=\"api\"}",
        )
        .await
            == 4.0
    })
    .await;

    // A fifth is closed as soon as it is accepted.
    let mut fifth = TcpStream::connect(handle.http_addr).await.unwrap();
    let _ = fifth
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    closed_by_server(&mut fifth, Duration::from_secs(5)).await;
    assert_eq!(
        metric(
            &handle,
            "backhaul_inference_connections_refused_total{listener=\"api\"}"
        )
        .await,
        1.0
    );

    // Trickling bytes does not keep a connection: each is closed once its
    // headers are a second late.
    for stream in &mut slow {
        let _ = stream.write_all(b"X-Slow: 1\r\n").await;
        let took = closed_by_server(stream, Duration::from_secs(10)).await;
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
    eventually(WAIT, "the slow connections' places to free", || async {
        metric(
            &handle,
            "backhaul_inference_connections_open{listener=\"api\"}",
        )
        .await
            == 0.0
    })
    .await;
    assert!(
        chat_ok(&handle).await,
        "the server serves once places are free"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_on_both_listeners() {
    let _turn = SERIAL.lock().await;
    let handle = server(&["--idle-timeout", "1s", "--header-read-timeout", "30s"]).await;

    // An HTTP/1.1 keep-alive connection after one request...
    let mut http1 = TcpStream::connect(handle.http_addr).await.unwrap();
    http1
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = [0u8; 1024];
    let n = http1.read(&mut response).await.unwrap();
    assert!(response[..n].starts_with(b"HTTP/1.1 200"));
    // ...and a gRPC (HTTP/2) client that connects and never calls. (It
    // answers PINGs, as real clients do: HTTP/2's graceful close waits for
    // one; a peer that answers none is dropped by the keepalive instead.)
    let _channel = tonic::transport::Endpoint::from_shared(format!("http://{}", handle.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let grpc_open = || {
        metric(
            &handle,
            "backhaul_inference_connections_open{listener=\"grpc\"}",
        )
    };
    eventually(WAIT, "the gRPC connection open", || async {
        grpc_open().await == 1.0
    })
    .await;

    let took = closed_by_server(&mut http1, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(500), "{took:?}");
    eventually(
        Duration::from_secs(10),
        "the idle gRPC connection closed",
        || async { grpc_open().await == 0.0 },
    )
    .await;

    // A request in flight longer than the idle timeout is not cut.
    let started = Instant::now();
    let response = http()
        .post(http_url(&handle, "/v1/chat/completions"))
        .json(&json!({
            "messages": [{"role": "user", "content": "Write a long story."}],
            "max_tokens": 120,
            "stream": true,
        }))
        .send()
        .await
        .unwrap();
    let body = response.text().await.unwrap();
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    eprintln!(
        "a {:?} stream outlived the 1 s idle timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_http2_peer_that_stops_answering_pings_is_dropped() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[
        "--http2-keepalive-interval",
        "500ms",
        "--http2-keepalive-timeout",
        "500ms",
        "--idle-timeout",
        "60s",
    ])
    .await;
    // The HTTP/2 preface and an empty SETTINGS frame, then silence: the
    // server's PINGs go unanswered.
    let mut h2 = TcpStream::connect(handle.grpc_addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let took = closed_by_server(&mut h2, Duration::from_secs(20)).await;
    assert!(took < Duration::from_secs(20), "{took:?}");
    // A client that answers them keeps its connection through many PINGs.
    let mut client = grpc(&handle).await;
    let (text, _) = grpc_stream_text(&mut client, chat("Tell me about the sea.", 80)).await;
    assert!(!text.is_empty());
}
