//! Admission: at most `max_in_flight` requests generate at once and at most
//! `max_queue` wait for a slot. Anything beyond is refused at once with
//! [`InferenceError::Overloaded`] (RESOURCE_EXHAUSTED / 429 + Retry-After),
//! never left hanging, so the routing Worker can fail over. Draining refuses
//! new requests with [`InferenceError::Draining`]; requests already queued
//! were accepted, and keep their place (the drain timeout bounds them).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::{error::InferenceError, metrics::Metrics};

/// What refused clients are told to wait. A fixed second: long enough to
/// let a slot free up on a busy pod, short enough not to idle a client
/// (the Worker fails over to another region rather than waiting).
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    max_queue: usize,
    queued: AtomicUsize,
    draining: CancellationToken,
    /// Requests queued or admitted and not yet finished; drain waits for
    /// zero.
    active: watch::Sender<usize>,
    metrics: Metrics,
}

/// A generation slot; released when dropped.
#[derive(Debug)]
pub struct Permit {
    _slot: OwnedSemaphorePermit,
    inner: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.inner.active.send_modify(|n| *n -= 1);
        self.inner.metrics.in_flight.dec();
    }
}

struct QueuePlace<'a>(&'a Inner);

impl<'a> QueuePlace<'a> {
    fn take(inner: &'a Inner) -> (Self, usize) {
        // Counted as active before it is counted as queued, so that the
        // hand-over from place to permit never shows zero.
        inner.active.send_modify(|n| *n += 1);
        let queued_before = inner.queued.fetch_add(1, Ordering::SeqCst);
        inner.metrics.queued.inc();
        (Self(inner), queued_before)
    }
}

impl Drop for QueuePlace<'_> {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.queued.dec();
        self.0.active.send_modify(|n| *n -= 1);
    }
}

impl Admission {
    pub fn new(max_in_flight: usize, max_queue: usize, metrics: Metrics) -> Self {
        let max_in_flight = max_in_flight.max(1);
        Self {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                max_queue,
                queued: AtomicUsize::new(0),
                draining: CancellationToken::new(),
                active: watch::Sender::new(0),
                metrics,
            }),
        }
    }

    /// Takes a slot, waiting in the queue if there is room there.
    pub async fn admit(&self) -> Result<Permit, InferenceError> {
        let inner = &self.inner;
        if inner.draining.is_cancelled() {
            return Err(InferenceError::Draining);
        }
        if let Ok(slot) = inner.slots.clone().try_acquire_owned() {
            return Ok(self.permit(slot));
        }
        let (place, queued_before) = QueuePlace::take(inner);
        if queued_before >= inner.max_queue {
            drop(place);
            return Err(InferenceError::Overloaded {
                in_flight: inner.max_in_flight - inner.slots.available_permits(),
                queued: queued_before,
                retry_after: RETRY_AFTER,
            });
        }
        let slot = inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| InferenceError::Draining)?;
        let permit = self.permit(slot);
        drop(place);
        Ok(permit)
    }

    fn permit(&self, slot: OwnedSemaphorePermit) -> Permit {
        self.inner.active.send_modify(|n| *n += 1);
        self.inner.metrics.in_flight.inc();
        Permit {
            _slot: slot,
            inner: self.inner.clone(),
        }
    }

    /// Refuses new work from now on; queued requests keep their place.
    pub fn start_draining(&self) {
        self.inner.draining.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Requests queued or admitted, and not yet finished.
    pub fn active(&self) -> usize {
        *self.inner.active.borrow()
    }

    /// Resolves once no queued or admitted request remains.
    pub async fn wait_idle(&self) {
        let mut rx = self.inner.active.subscribe();
        // The sender lives in `inner`, which we hold: this cannot error.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_slots_and_queue_and_reuses_freed_slots() {
        let admission = Admission::new(1, 1, Metrics::new());
        let first = admission.admit().await.unwrap();

        // One may wait in the queue...
        let queued = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit().await.map(|_| ()) }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while admission.inner.queued.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never queued");
            tokio::task::yield_now().await;
        }
        // ...the next is refused at once.
        let err = admission.admit().await.unwrap_err();
        assert!(matches!(err, InferenceError::Overloaded { .. }), "{err:?}");

        drop(first);
        queued.await.unwrap().unwrap();
        assert_eq!(admission.active(), 0);
        let _again = admission.admit().await.unwrap();
    }

    #[tokio::test]
    async fn draining_refuses_new_requests_and_serves_queued_ones() {
        let admission = Admission::new(1, 4, Metrics::new());
        let held = admission.admit().await.unwrap();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let queued = tokio::spawn({
            let admission = admission.clone();
            async move {
                let permit = admission.admit().await?;
                let _ = released.await;
                drop(permit);
                Ok::<_, InferenceError>(())
            }
        });
        while admission.inner.queued.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        admission.start_draining();
        assert!(matches!(
            admission.admit().await,
            Err(InferenceError::Draining)
        ));
        // The queued request counts: the drain is not idle until it is done.
        assert_eq!(admission.active(), 2);
        drop(held);
        while admission.inner.queued.load(Ordering::SeqCst) != 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(admission.active(), 1);
        release.send(()).unwrap();
        queued.await.unwrap().unwrap();
        admission.wait_idle().await;
        assert_eq!(admission.active(), 0);
    }
}
