//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas never reconcile at once. kube 5 has no helper for this.
//!
//! Like client-go, expiry is judged on this process's monotonic clock: a
//! holder is presumed dead when its Lease record has not changed for
//! `leaseDurationSeconds` since we first saw it, so clock skew between
//! replicas does not matter. Writes use the Lease's resourceVersion, so two
//! candidates racing for an expired Lease cannot both win.
//!
//! The guarantee a leader gives its standbys: it stops leading no later than
//! `renew_deadline` after the start of its last successful renewal. The
//! record that renewal wrote reached the API server after that start, so a
//! standby sees it then or later and waits a further `lease_duration`
//! (longer than `renew_deadline`) before taking over. Every attempt therefore
//! runs under a timeout that ends at the deadline: a request to an API
//! server that stopped answering would otherwise hang for the client's read
//! timeout (295 s) while a standby takes over after 15.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
// Tokio's clock, so that tests can run elections on a paused one.
use tokio::time::Instant;

/// The last Lease record seen (holder, renewTime) and when we saw it change.
type Observed = Option<(Option<String>, Option<MicroTime>, Instant)>;

/// Timing of an election.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
    /// The leader steps down when it could not renew for this long; shorter
    /// than `lease_duration`, so it has stopped before a standby takes over.
    pub renew_deadline: Duration,
    /// How often candidates try and the leader renews.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        // client-go's defaults.
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Why a leader stopped leading.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    /// The Lease names another holder.
    #[error("the lease is held by {0}")]
    Taken(String),
    /// No renewal succeeded within the renew deadline.
    #[error("no renewal succeeded within the renew deadline of {0:?}")]
    DeadlineExceeded(Duration),
}

/// What one attempt found.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// We hold the Lease (took or renewed it).
    Held,
    /// Someone else holds it, and it has not expired.
    HeldBy(String),
    /// Someone else wrote it between our read and our write; the next read tells.
    Conflict,
}

/// One candidate for a Lease.
#[derive(Debug)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    observed: Mutex<Observed>,
}

impl LeaderElector {
    /// A candidate `identity` for Lease `namespace/name`.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing,
            observed: Mutex::new(None),
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The Lease's name.
    pub fn lease(&self) -> &str {
        &self.name
    }

    fn spec(&self, transitions: i32, acquire_time: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: Some(acquire_time.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or renew the Lease; `Ok(true)` when we hold it afterwards.
    /// It is not bounded in time: [`acquire`](Self::acquire) and
    /// [`hold`](Self::hold) bound it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        Ok(self.attempt().await? == Attempt::Held)
    }

    async fn attempt(&self) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Attempt::Held),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = {
            let mut observed = self.observed.lock().expect("not poisoned");
            let now = Instant::now();
            let changed =
                !matches!(&*observed, Some((h, r, _)) if *h == holder && *r == spec.renew_time);
            if changed {
                *observed = Some((holder.clone(), spec.renew_time.clone(), now));
            }
            let seen_at = observed.as_ref().map(|(_, _, t)| *t).unwrap_or(now);
            let duration = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(u64::try_from(s).unwrap_or(0)))
                .unwrap_or(self.timing.lease_duration);
            holder.is_none() || now.duration_since(seen_at) >= duration
        };
        if !ours && !expired {
            // Not expired means someone holds it.
            return Ok(Attempt::HeldBy(holder.unwrap_or_default()));
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(self.spec(transitions, if ours { spec.acquire_time } else { None }));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(Attempt::Held),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the Lease; returns when the
    /// successful attempt started, the instant [`hold`](Self::hold)'s first
    /// deadline counts from. Each attempt is bounded by the renew deadline,
    /// so a hung request is abandoned and retried rather than waited on.
    pub async fn acquire(&self) -> Instant {
        loop {
            let started = Instant::now();
            match tokio::time::timeout(self.timing.renew_deadline, self.attempt()).await {
                Ok(Ok(Attempt::Held)) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return started;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    tracing::debug!(lease = %self.name, %holder, "another replica leads");
                }
                Ok(Ok(Attempt::Conflict)) => {
                    tracing::debug!(lease = %self.name, "another replica wrote the lease first");
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.name, error = %e, "leader election failed")
                }
                Err(_) => tracing::warn!(
                    lease = %self.name,
                    timeout_s = self.timing.renew_deadline.as_secs_f64(),
                    "leader election timed out"
                ),
            }
            tokio::time::sleep(self.timing.retry_period).await;
        }
    }

    /// Renews the Lease every retry period; returns as soon as leadership is
    /// lost: the Lease names another holder, or no renewal succeeded within
    /// the renew deadline of the start of the last one that did (`renewed_at`
    /// at first, as [`acquire`](Self::acquire) returned it). Never later than
    /// that deadline: each attempt is cut off at it, whatever the API server
    /// does.
    pub async fn hold(&self, renewed_at: Instant) -> Lost {
        let mut deadline = renewed_at + self.timing.renew_deadline;
        loop {
            tokio::time::sleep_until(deadline.min(Instant::now() + self.timing.retry_period)).await;
            let started = Instant::now();
            if started >= deadline {
                return Lost::DeadlineExceeded(self.timing.renew_deadline);
            }
            match tokio::time::timeout_at(deadline, self.attempt()).await {
                Ok(Ok(Attempt::Held)) => deadline = started + self.timing.renew_deadline,
                Ok(Ok(Attempt::HeldBy(holder))) => return Lost::Taken(holder),
                Ok(Ok(Attempt::Conflict)) => {
                    tracing::warn!(lease = %self.name, "another writer changed the lease during a renewal");
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.name, error = %e, "renewing the lease failed");
                }
                Err(_) => {
                    tracing::warn!(lease = %self.name, "renewing the lease timed out at the renew deadline");
                }
            }
        }
    }

    /// Gives the Lease up (on clean shutdown) so a standby takes over at once.
    /// Bounded by the renew deadline: shutdown must not hang on an API server
    /// that stopped answering (the Lease then expires on its own).
    pub async fn release(&self) -> Result<(), ReleaseError> {
        tokio::time::timeout(self.timing.renew_deadline, self.release_now())
            .await
            .map_err(|_| ReleaseError::TimedOut(self.timing.renew_deadline))?
            .map_err(ReleaseError::Api)
    }

    async fn release_now(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Releasing the Lease failed; it expires after its duration instead.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The API server refused or could not be reached.
    #[error(transparent)]
    Api(kube::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

#[cfg(test)]
mod tests {
    //! Elections against a fake API server on a paused clock: each test
    //! decides when (and whether) every request is answered.
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
    type Pending = tower_test::mock::SendResponse<Response<Body>>;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/backhaul-operator";

    fn elector() -> (LeaderElector, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let elector = LeaderElector::new(
            Client::new(service, "default"),
            "ops",
            "backhaul-operator",
            "a",
            Timing::default(),
        );
        (elector, handle)
    }

    fn lease(holder: &str, resource_version: u32) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": "backhaul-operator",
                "namespace": "ops",
                "resourceVersion": resource_version.to_string(),
            },
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "acquireTime": "2026-12-01T00:00:00.000000Z",
                // A new renewTime each version: the record changed.
                "renewTime": format!("2026-12-01T00:00:{:02}.000000Z", resource_version % 60),
                "leaseTransitions": 0,
            },
        })
    }

    fn answer(pending: Pending, status: u16, body: &Value) {
        pending.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
    }

    fn status(code: u16) -> Value {
        let reason = if code == 404 {
            "NotFound"
        } else {
            "InternalError"
        };
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code})
    }

    /// The next request, which must be `method` on the Lease.
    async fn expect(handle: &mut Handle, method: &str, path: &str) -> Pending {
        let (request, pending) = handle.next_request().await.expect("a request");
        assert_eq!(
            (request.method().as_str(), request.uri().path()),
            (method, path)
        );
        pending
    }

    /// Answers one renewal (GET, then PUT) as a healthy API server does.
    async fn renew(handle: &mut Handle, resource_version: u32) {
        let get = expect(handle, "GET", LEASE).await;
        answer(get, 200, &lease("a", resource_version));
        let put = expect(handle, "PUT", LEASE).await;
        answer(put, 200, &lease("a", resource_version + 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_ends_leadership_at_the_renew_deadline() {
        let (elector, mut handle) = elector();
        let start = Instant::now();
        let hold = tokio::spawn(async move { elector.hold(start).await });
        renew(&mut handle, 1).await; // at 2 s
        // At 4 s the API server stops answering (the request stays open).
        let _hung = expect(&mut handle, "GET", LEASE).await;
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        let lost = hold.await.unwrap();
        assert_eq!(lost, Lost::DeadlineExceeded(Duration::from_secs(10)));
        // The renewal that started at 2 s was the last: 10 s after it, not
        // after the client's read timeout.
        assert_eq!(start.elapsed(), Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_counts_from_when_the_renewal_started() {
        let (elector, mut handle) = elector();
        let start = Instant::now();
        let hold = tokio::spawn(async move { elector.hold(start).await });
        // The renewal starting at 2 s is answered at 9 s: its record may have
        // reached the API server (and a standby) at 2 s.
        let get = expect(&mut handle, "GET", LEASE).await;
        tokio::time::sleep(Duration::from_secs(7)).await;
        answer(get, 200, &lease("a", 1));
        let put = expect(&mut handle, "PUT", LEASE).await;
        answer(put, 200, &lease("a", 2));
        let _hung = expect(&mut handle, "GET", LEASE).await;
        assert_eq!(
            hold.await.unwrap(),
            Lost::DeadlineExceeded(Duration::from_secs(10))
        );
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(12),
            "2 s + 10 s, not 9 s + 10 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failed_renewals_are_retried_up_to_the_deadline_and_not_past_it() {
        let (elector, mut handle) = elector();
        let start = Instant::now();
        let hold = tokio::spawn(async move { elector.hold(start).await });
        let server = tokio::spawn(async move {
            let mut attempts = Vec::new();
            while let Some((_, pending)) = handle.next_request().await {
                attempts.push(start.elapsed());
                answer(pending, 500, &status(500));
            }
            attempts
        });
        assert_eq!(
            hold.await.unwrap(),
            Lost::DeadlineExceeded(Duration::from_secs(10))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // The elector is gone: the fake server's stream ends.
        let attempts = server.await.unwrap();
        assert_eq!(
            attempts,
            [2, 4, 6, 8].map(Duration::from_secs),
            "one attempt per retry period"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn another_holder_ends_leadership_at_once() {
        let (elector, mut handle) = elector();
        let start = Instant::now();
        let hold = tokio::spawn(async move { elector.hold(start).await });
        renew(&mut handle, 1).await;
        let get = expect(&mut handle, "GET", LEASE).await;
        answer(get, 200, &lease("b", 5));
        assert_eq!(hold.await.unwrap(), Lost::Taken("b".into()));
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn an_acquire_attempt_that_hangs_is_abandoned_and_retried() {
        let (elector, mut handle) = elector();
        let start = Instant::now();
        let acquire = tokio::spawn(async move { elector.acquire().await });
        let hung = expect(&mut handle, "GET", LEASE).await;
        // Abandoned at the renew deadline, retried a retry period later.
        let get = expect(&mut handle, "GET", LEASE).await;
        assert_eq!(start.elapsed(), Duration::from_secs(12));
        drop(hung);
        answer(get, 404, &status(404));
        let create = expect(
            &mut handle,
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/ops/leases",
        )
        .await;
        answer(create, 201, &lease("a", 1));
        let acquired_at = acquire.await.unwrap();
        assert_eq!(acquired_at - start, Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_hangs_gives_up_at_the_renew_deadline() {
        let (elector, mut handle) = elector();
        let start = Instant::now();
        let release = tokio::spawn(async move { elector.release().await });
        let _hung = expect(&mut handle, "GET", LEASE).await;
        let result = release.await.unwrap();
        assert!(
            matches!(result, Err(ReleaseError::TimedOut(_))),
            "{result:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }
}
