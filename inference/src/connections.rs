//! Serving one listener's connections under per-connection limits, for the
//! API (HTTP/1.1 and h2c), gRPC (HTTP/2 only) and metrics listeners alike:
//!
//! - at most `--max-connections` open at once; one more is closed as soon
//!   as it is accepted (counted in `connections_refused_total`), so a flood
//!   of connections meets a prompt refusal rather than a growing backlog;
//! - HTTP/1.1 request headers must arrive within `--header-read-timeout`
//!   (hyper also applies it to a keep-alive connection waiting for its
//!   next request);
//! - a connection with no request in flight for `--idle-timeout` is shut
//!   down gracefully (what hyper has no setting for: HTTP/2 connections,
//!   whose keepalive PINGs keep them busy at the byte level, and an h2c
//!   client that opens a connection and never completes a request);
//! - HTTP/2 PINGs every `--http2-keepalive-interval`, closing a connection
//!   that does not answer within `--http2-keepalive-timeout`.
//!
//! On `stop`, each connection is shut down gracefully: requests in flight
//! finish, then it closes.

use std::{
    error::Error as StdError,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tokio_util::sync::CancellationToken;

use crate::{config::Limits, metrics::Metrics};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Which protocols a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1, and HTTP/2 with prior knowledge (h2c).
    Http,
    /// HTTP/2 only (gRPC).
    Http2Only,
}

/// The limits [`serve`] applies, from [`Limits`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
}

impl From<&Limits> for ConnectionLimits {
    fn from(limits: &Limits) -> Self {
        Self {
            max_connections: limits.max_connections as usize,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            http2_keepalive_interval: limits.http2_keepalive_interval,
            http2_keepalive_timeout: limits.http2_keepalive_timeout,
        }
    }
}

/// Serves `service` on every connection `listener` accepts until `stop`,
/// then shuts connections down gracefully and waits for them.
/// `name` labels the connection metrics (`api`, `grpc`, `metrics`).
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    protocol: Protocol,
    limits: ConnectionLimits,
    name: &'static str,
    metrics: Metrics,
    stop: CancellationToken,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let builder = builder(protocol, &limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let open = metrics.connections_open.with_label_values(&[name]);
    let refused = metrics.connections_refused.with_label_values(&[name]);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused.inc();
            tracing::debug!(listener = name, %peer, "connection limit reached; closing the new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (in_flight, watched) = watch::channel(0usize);
        let service = TowerToHyperService::new(Tracked {
            inner: service.clone(),
            in_flight: Arc::new(in_flight),
        });
        let builder = builder.clone();
        let stop = stop.clone();
        let open = open.clone();
        open.inc();
        connections.spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let idle = idle_for(watched, limits.idle_timeout);
            tokio::pin!(idle);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
                () = &mut idle => {
                    tracing::debug!(listener = name, %peer, "idle connection closed");
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(listener = name, %peer, %error, "connection ended with an error");
            }
            open.dec();
            drop(slot);
        });
        // Reap finished connections as we go.
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
}

fn builder(protocol: Protocol, limits: &ConnectionLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    if protocol == Protocol::Http2Only {
        builder = builder.http2_only();
    } else {
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    builder
}

/// Resolves once the connection has had no request in flight for
/// `timeout` at a stretch.
async fn idle_for(mut in_flight: watch::Receiver<usize>, timeout: Duration) {
    loop {
        // The sender lives as long as the connection's service.
        if in_flight.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        if tokio::time::timeout(timeout, in_flight.wait_for(|n| *n > 0))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Counts a connection's requests from their arrival until their response
/// body has been sent or dropped.
#[derive(Debug, Clone)]
struct Tracked<S> {
    inner: S,
    in_flight: Arc<watch::Sender<usize>>,
}

/// One request in flight; dropped with its response body (or with the
/// request, if it never got one).
#[derive(Debug)]
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn new(counter: &Arc<watch::Sender<usize>>) -> Self {
        counter.send_modify(|n| *n += 1);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl<S, B> tower::Service<Request<Incoming>> for Tracked<S>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(&self.in_flight);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody {
                inner: Box::pin(body),
                _guard: guard,
            }))
        })
    }
}

/// A response body that holds its request's [`InFlight`] until it is done.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _guard: InFlight,
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_flight_for_the_whole_timeout() {
        let (counter, watched) = watch::channel(0usize);
        let counter = Arc::new(counter);
        let idle = tokio::spawn(idle_for(watched, Duration::from_secs(10)));
        let started = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        let request = InFlight::new(&counter);
        // A request in flight for a minute keeps it open...
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!idle.is_finished());
        drop(request);
        // ...and the timeout starts again when it ends.
        idle.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(76));
    }
}
