//! Route sync: the one owner of publication (docs/publication.md).
//!
//! Reconciles hand [`RouteSync::desire`] each object's complete desired route
//! set and return at once; one long-lived task ([`RouteSync::start`]) turns
//! the difference between what is wanted and what the Worker holds into
//! PUTs and DELETEs (at most `concurrency` at a time, each route backing off
//! on its own after failures), and renews every held route with one signed
//! lease per interval (`min(ttlSeconds) / 3` over the held routes, at least
//! 1 s). A full route body is sent only when the route changed, when the
//! Worker's digest of the held set disagrees with ours, or, against a Worker
//! that predates leases (`404`/`405` on the lease), as the per-route
//! heartbeat of old.
//!
//! Whenever an object's publication as status shows it changes (a PUT or
//! DELETE landed or failed, the lease was refused or accepted again), its
//! key is sent on the channel [`RouteSync::start`] returns, which the
//! controller feeds to `Controller::reconcile_on`; that reconcile reads
//! [`RouteSync::states`]. Every clock here is tokio's, so tests run on a
//! paused one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::publish::{
    self, Fingerprint, LeaseAnswer, LeaseRequest, PublishError, Route, RouteKey, Sequences,
    WorkerApi,
};

/// A ModelDeployment, by namespace and name.
pub type ObjectKey = (String, String);

/// Default of `--publish-concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// The first retry of a failed route or lease; doubles per failure.
const BACKOFF_START: Duration = Duration::from_secs(1);
/// The longest wait between retries of a failed route.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The shortest lease interval.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Settings of the sync task.
#[derive(Clone, Copy, Debug)]
pub struct SyncConfig {
    /// Requests to the Worker in flight at once (at least 1).
    pub concurrency: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
        }
    }
}

/// One object's desired publication, as a reconcile computed it.
#[derive(Clone, Debug, Default)]
pub struct DesiredRoutes {
    /// Routes to keep live, by region; every other route of the object is withdrawn.
    pub live: BTreeMap<String, Route>,
    /// Regions whose route the Worker may hold from an earlier life of this
    /// operator (status says published): withdrawn unless live.
    pub maybe_held: BTreeSet<String>,
}

/// One route as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteState {
    /// Whether the Worker may hold a route of ours (a PUT landed, or a
    /// withdrawal is still outstanding).
    pub published: bool,
    /// Whether work is outstanding (a PUT or DELETE not yet done).
    pub pending: bool,
    /// The last failure of this route, or of the lease while it is held.
    pub error: Option<String>,
}

#[derive(Clone, Debug)]
enum Want {
    /// The route's body and its fingerprint.
    Live(Box<Route>, Fingerprint),
    Withdrawn,
}

#[derive(Clone, Debug)]
struct Held {
    fingerprint: Fingerprint,
    sequence: u64,
    at: Instant,
    ttl: Duration,
}

#[derive(Clone, Debug)]
struct Entry {
    want: Want,
    held: Option<Held>,
    /// The Worker may hold a route of ours here (held, a PUT was sent, or
    /// status said published): a withdrawal must send a DELETE.
    dirty: bool,
    in_flight: bool,
    /// Re-PUT although unchanged (the lease digest disagreed).
    resend: bool,
    failures: u32,
    retry_at: Option<Instant>,
    error: Option<String>,
    /// Status said published when this process first saw the route: until
    /// this instant (the route's TTL after that) the Worker may still serve
    /// the earlier life's copy, so status keeps saying published while the
    /// first PUT is outstanding instead of flapping on every restart.
    carried_until: Option<Instant>,
}

impl Entry {
    fn new(want: Want, dirty: bool) -> Self {
        Self {
            want,
            held: None,
            dirty,
            in_flight: false,
            resend: false,
            failures: 0,
            retry_at: None,
            error: None,
            carried_until: None,
        }
    }

    /// Whether the Worker may hold a route of ours that status should show.
    fn published(&self, now: Instant) -> bool {
        match self.want {
            Want::Withdrawn => self.held.is_some() || self.dirty,
            Want::Live(..) => {
                self.held.is_some() || self.carried_until.is_some_and(|until| now < until)
            }
        }
    }

    /// Whether a request is owed, ignoring backoff.
    fn owed(&self, now: Instant, legacy: bool) -> bool {
        match (&self.want, &self.held) {
            (Want::Withdrawn, _) => self.dirty,
            (Want::Live(..), None) => true,
            (Want::Live(_, fingerprint), Some(held)) => {
                self.resend
                    || held.fingerprint != *fingerprint
                    || (legacy && now >= held.at + heartbeat(held.ttl))
            }
        }
    }

    /// When this entry next needs a request, if ever (no new desire).
    fn due_at(&self, now: Instant, legacy: bool) -> Option<Instant> {
        if self.in_flight {
            return None;
        }
        if self.owed(now, legacy) {
            return Some(self.retry_at.map_or(now, |t| t.max(now)));
        }
        match (&self.want, &self.held) {
            (Want::Live(..), Some(held)) if legacy => Some(held.at + heartbeat(held.ttl)),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
struct LeaseState {
    /// The Worker answered 404/405: it predates leases.
    legacy: bool,
    in_flight: bool,
    next_at: Option<Instant>,
    failures: u32,
    /// The lease's last failure, shown on every held route until it succeeds.
    error: Option<String>,
    /// When a renewal was last accepted.
    last_success: Option<Instant>,
    /// (our digest, the Worker's) of the last mismatch repaired by re-PUTs.
    last_mismatch: Option<(String, String)>,
    sequence: u64,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<ObjectKey, BTreeMap<String, Entry>>,
    lease: LeaseState,
    /// Bumped whenever the held set changes, so a lease answer computed
    /// over an older set is not taken for a mismatch.
    held_version: u64,
    closed: bool,
}

impl State {
    fn visible(&self, object: &ObjectKey) -> BTreeMap<String, RouteState> {
        let lease_error = self.lease.error.as_ref();
        self.objects
            .get(object)
            .into_iter()
            .flatten()
            .map(|(region, e)| {
                let error = e
                    .error
                    .clone()
                    .or_else(|| e.held.as_ref().and(lease_error.cloned()));
                let now = Instant::now();
                let state = RouteState {
                    published: e.published(now),
                    pending: e.in_flight || e.owed(now, false),
                    error,
                };
                (region.clone(), state)
            })
            .collect()
    }

    fn held(&self) -> impl Iterator<Item = (RouteKey, &Held)> {
        self.objects.iter().flat_map(|((ns, name), regions)| {
            regions.iter().filter_map(move |(region, e)| {
                e.held.as_ref().map(|h| {
                    (
                        RouteKey {
                            namespace: ns.clone(),
                            name: name.clone(),
                            region: region.clone(),
                        },
                        h,
                    )
                })
            })
        })
    }

    fn objects_holding(&self) -> Vec<ObjectKey> {
        self.objects
            .iter()
            .filter(|(_, r)| r.values().any(|e| e.held.is_some()))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The lease interval over the held routes; `None` when none is held.
    fn interval(&self) -> Option<Duration> {
        self.held()
            .map(|(_, h)| h.ttl)
            .min()
            .map(|ttl| (ttl / 3).max(MIN_INTERVAL))
    }
}

fn heartbeat(ttl: Duration) -> Duration {
    (ttl / 3).max(MIN_INTERVAL)
}

fn backoff(failures: u32, max: Duration) -> Duration {
    BACKOFF_START
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max)
}

struct Shared {
    state: Mutex<State>,
    wake: Notify,
}

/// Handle on the route-sync task; cheap to clone.
#[derive(Clone)]
pub struct RouteSync {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RouteSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSync").finish_non_exhaustive()
    }
}

enum Op {
    Put(Box<Route>),
    Delete,
}

enum Done {
    Route {
        object: ObjectKey,
        region: String,
        put: Option<Box<Route>>,
        result: Result<(), PublishError>,
    },
    Lease {
        request: LeaseRequest,
        version: u64,
        result: Result<LeaseAnswer, PublishError>,
    },
}

impl RouteSync {
    /// Starts the task publishing through `worker`; returns its handle and
    /// the keys of objects whose [`RouteSync::states`] changed.
    pub fn start<W: WorkerApi>(
        worker: W,
        config: SyncConfig,
        metrics: Metrics,
    ) -> (Self, mpsc::UnboundedReceiver<ObjectKey>) {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            wake: Notify::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Task {
            shared: shared.clone(),
            worker: Arc::new(worker),
            sequences: Arc::new(Sequences::default()),
            concurrency: config.concurrency.max(1),
            metrics,
            changed: tx,
        };
        tokio::spawn(task.run());
        (Self { shared }, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().expect("not poisoned")
    }

    /// Makes `desired` the object's whole publication: its live routes are
    /// PUT where they changed, every other route it may hold is withdrawn.
    /// Never waits for the Worker.
    pub fn desire(&self, object: &ObjectKey, desired: DesiredRoutes) {
        let mut state = self.lock();
        let regions = state.objects.entry(object.clone()).or_default();
        for (region, entry) in regions.iter_mut() {
            if !desired.live.contains_key(region) {
                entry.want = Want::Withdrawn;
            }
        }
        for region in &desired.maybe_held {
            if !desired.live.contains_key(region) && !regions.contains_key(region) {
                regions.insert(region.clone(), Entry::new(Want::Withdrawn, true));
            }
        }
        let now = Instant::now();
        for (region, route) in desired.live {
            let ttl = Duration::from_secs(u64::from(route.ttl_seconds));
            let fingerprint = publish::fingerprint(&route);
            let want = Want::Live(Box::new(route), fingerprint);
            match regions.get_mut(&region) {
                Some(entry) => entry.want = want,
                None => {
                    let carried = desired.maybe_held.contains(&region);
                    let mut entry = Entry::new(want, carried);
                    entry.carried_until = carried.then(|| now + ttl);
                    regions.insert(region, entry);
                }
            }
        }
        drop(state);
        self.shared.wake.notify_one();
    }

    /// What status should say about each route of `object` this operator knows.
    pub fn states(&self, object: &ObjectKey) -> BTreeMap<String, RouteState> {
        self.lock().visible(object)
    }

    /// Stops tracking `object` (it is gone, or its withdrawal was given up):
    /// its routes leave the lease's held set.
    pub fn forget(&self, object: &ObjectKey) {
        let mut state = self.lock();
        if state.objects.remove(object).is_some() {
            state.held_version += 1;
        }
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Whether anything renewed `object`'s routes on the Worker within `ttl`:
    /// an accepted lease (it renews every route of the key), or a PUT of one
    /// of them. When not, those routes have expired by themselves.
    pub fn renewed_within(&self, object: &ObjectKey, ttl: Duration) -> bool {
        let state = self.lock();
        let now = Instant::now();
        let recent = |t: Instant| now.saturating_duration_since(t) < ttl;
        state.lease.last_success.is_some_and(recent)
            || state
                .objects
                .get(object)
                .into_iter()
                .flatten()
                .any(|(_, e)| e.held.as_ref().is_some_and(|h| recent(h.at)))
    }

    /// Stops the task; requests in flight are dropped.
    pub fn stop(&self) {
        self.lock().closed = true;
        self.shared.wake.notify_one();
    }

    /// Routes the Worker holds from this process.
    pub fn held_count(&self) -> usize {
        self.lock().held().count()
    }
}

struct Task<W> {
    shared: Arc<Shared>,
    worker: Arc<W>,
    sequences: Arc<Sequences>,
    concurrency: usize,
    metrics: Metrics,
    changed: mpsc::UnboundedSender<ObjectKey>,
}

impl<W: WorkerApi> Task<W> {
    async fn run(self) {
        let mut running: JoinSet<Done> = JoinSet::new();
        loop {
            let next = match self.start_due(&mut running) {
                Some(next) => next,
                None => return,
            };
            tokio::select! {
                () = self.shared.wake.notified() => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(done) = done {
                        self.finish(done);
                    }
                }
                () = sleep_until(next) => {}
            }
        }
    }

    /// Starts every request that is due and fits under the bound; returns
    /// when to look again (`None`: stopped).
    fn start_due(&self, running: &mut JoinSet<Done>) -> Option<Option<Instant>> {
        let mut state = self.shared.state.lock().expect("not poisoned");
        if state.closed {
            running.abort_all();
            return None;
        }
        let now = Instant::now();
        let legacy = state.lease.legacy;
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));

        // The lease first: it keeps every held route alive.
        if state.interval().is_some() && !state.lease.in_flight {
            let at = *state.lease.next_at.get_or_insert(now);
            if at <= now && running.len() < self.concurrency {
                let held: Vec<(RouteKey, u64)> =
                    state.held().map(|(k, h)| (k, h.sequence)).collect();
                let lease = &mut state.lease;
                lease.in_flight = true;
                lease.sequence = (lease.sequence + 1).max(publish::unix_millis());
                let request = LeaseRequest {
                    sequence: lease.sequence,
                    routes: held.len(),
                    digest: publish::lease_digest(held.iter().map(|(k, s)| (k, *s))),
                };
                let version = state.held_version;
                let worker = self.worker.clone();
                running.spawn(async move {
                    let result = worker.renew(&request).await;
                    Done::Lease {
                        request,
                        version,
                        result,
                    }
                });
            } else if at > now {
                soonest(at);
            }
        }

        for ((ns, name), regions) in &mut state.objects {
            for (region, entry) in regions.iter_mut() {
                let Some(due) = entry.due_at(now, legacy) else {
                    continue;
                };
                if due > now {
                    soonest(due);
                    continue;
                }
                // Full: the next completion wakes the loop (no timer, which
                // would spin while the requests are in flight).
                if running.len() >= self.concurrency {
                    continue;
                }
                let op = match &entry.want {
                    Want::Live(route, _) => {
                        entry.dirty = true;
                        Op::Put(route.clone())
                    }
                    Want::Withdrawn => Op::Delete,
                };
                entry.in_flight = true;
                let key = RouteKey {
                    namespace: ns.clone(),
                    name: name.clone(),
                    region: region.clone(),
                };
                let (worker, sequences) = (self.worker.clone(), self.sequences.clone());
                let object = (ns.clone(), name.clone());
                running.spawn(async move {
                    match op {
                        Op::Put(mut route) => {
                            route.published_at = publish::rfc3339_seconds(SystemTime::now());
                            let result =
                                publish::put_route(&*worker, &sequences, &key, &mut route).await;
                            Done::Route {
                                object,
                                region: key.region,
                                put: Some(route),
                                result,
                            }
                        }
                        Op::Delete => {
                            let result = publish::delete_route(&*worker, &sequences, &key).await;
                            Done::Route {
                                object,
                                region: key.region,
                                put: None,
                                result,
                            }
                        }
                    }
                });
            }
        }
        self.metrics.set_routes_held(state.held().count());
        Some(next)
    }

    fn finish(&self, done: Done) {
        let mut state = self.shared.state.lock().expect("not poisoned");
        let now = Instant::now();
        match done {
            Done::Route {
                object,
                region,
                put,
                result,
            } => {
                let before = state.visible(&object);
                let operation = if put.is_some() { "put" } else { "delete" };
                let Some(entry) = state
                    .objects
                    .get_mut(&object)
                    .and_then(|r| r.get_mut(&region))
                else {
                    // Forgotten while in flight.
                    return;
                };
                entry.in_flight = false;
                let mut held_changed = false;
                match (result, put) {
                    (Ok(()), Some(route)) => {
                        self.metrics.published(operation, "success");
                        held_changed = true;
                        entry.held = Some(Held {
                            fingerprint: publish::fingerprint(&route),
                            sequence: route.sequence,
                            at: now,
                            ttl: Duration::from_secs(u64::from(route.ttl_seconds)),
                        });
                        entry.resend = false;
                        entry.failures = 0;
                        entry.retry_at = None;
                        entry.error = None;
                    }
                    (Ok(()), None) => {
                        self.metrics.published(operation, "success");
                        held_changed = entry.held.take().is_some();
                        entry.dirty = false;
                        entry.carried_until = None;
                        entry.failures = 0;
                        entry.retry_at = None;
                        entry.error = None;
                    }
                    (Err(e), _) => {
                        self.metrics.published(operation, e.category());
                        tracing::warn!(namespace = %object.0, name = %object.1, %region, error = %e, "{operation} of a route failed");
                        entry.failures = entry.failures.saturating_add(1);
                        entry.retry_at = Some(now + backoff(entry.failures, BACKOFF_MAX));
                        entry.error = Some(e.to_string());
                    }
                }
                if held_changed {
                    state.held_version += 1;
                }
                if state.visible(&object) != before {
                    let _ = self.changed.send(object);
                }
            }
            Done::Lease {
                request,
                version,
                result,
            } => self.finish_lease(&mut state, now, request, version, result),
        }
        self.metrics.set_routes_held(state.held().count());
    }

    fn finish_lease(
        &self,
        state: &mut State,
        now: Instant,
        request: LeaseRequest,
        version: u64,
        result: Result<LeaseAnswer, PublishError>,
    ) {
        let interval = state.interval().unwrap_or(MIN_INTERVAL);
        let holding = state.objects_holding();
        let before: Vec<_> = holding.iter().map(|o| state.visible(o)).collect();
        let lease = &mut state.lease;
        lease.in_flight = false;
        let mut resend_all = false;
        match result {
            Ok(answer) => {
                self.metrics.published("lease", "success");
                if lease.legacy {
                    tracing::info!("the Worker accepts leases now; per-route heartbeats stop");
                }
                lease.legacy = false;
                lease.failures = 0;
                lease.error = None;
                lease.last_success = Some(now);
                lease.next_at = Some(now + interval);
                let ours = (request.routes, request.digest.clone());
                if (answer.routes, answer.digest.clone()) == ours {
                    lease.last_mismatch = None;
                } else if version == state.held_version {
                    let pair = (request.digest, answer.digest.clone());
                    if lease.last_mismatch.as_ref() == Some(&pair) {
                        // Re-sending every route did not change the Worker's
                        // digest: it holds routes of this key that this
                        // operator does not (another process with the same
                        // key, or a route whose withdrawal was given up).
                        tracing::warn!(
                            held = request.routes,
                            worker = answer.routes,
                            "the lease digest still differs after re-sending every held route"
                        );
                    } else {
                        tracing::info!(
                            held = request.routes,
                            worker = answer.routes,
                            "the Worker's lease digest differs; re-sending every held route"
                        );
                        lease.last_mismatch = Some(pair);
                        resend_all = true;
                    }
                }
            }
            Err(PublishError::Rejected {
                status: 404 | 405, ..
            }) => {
                self.metrics.published("lease", "unsupported");
                if !lease.legacy {
                    tracing::warn!(
                        "the Worker has no lease endpoint (404/405): it predates leases; renewing each route with a PUT every ttlSeconds / 3 instead"
                    );
                }
                lease.legacy = true;
                lease.failures = 0;
                lease.error = None;
                lease.next_at = Some(now + interval);
            }
            Err(e) if e.is_stale_sequence() => {
                // The Worker holds a newer lease of this key (a clock that went
                // back): the routes are renewed one by one this time; the
                // millisecond floor catches up.
                self.metrics.published("lease", e.category());
                tracing::warn!(error = %e, "lease refused as stale; renewing each held route with a PUT");
                lease.next_at = Some(now + interval);
                resend_all = true;
            }
            Err(e) => {
                self.metrics.published("lease", e.category());
                tracing::warn!(error = %e, "renewing the lease failed");
                lease.failures = lease.failures.saturating_add(1);
                lease.next_at = Some(now + backoff(lease.failures, interval));
                lease.error = Some(format!("lease: {e}"));
            }
        }
        if resend_all {
            for entry in state.objects.values_mut().flat_map(|r| r.values_mut()) {
                if entry.held.is_some() {
                    entry.resend = true;
                }
            }
        }
        for (object, before) in holding.into_iter().zip(before) {
            if state.visible(&object) != before {
                let _ = self.changed.send(object);
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
