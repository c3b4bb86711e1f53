//! Route sync against a fake Worker, on tokio's paused clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::build::tests::{FIXTURE, validated};
use crate::publish::{LeaseAnswer, LeaseRequest, PublishError, Route, RouteKey, WorkerApi};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseMode {
    /// As docs/publication.md says.
    Normal,
    /// A Worker that predates leases.
    NotFound,
    /// The Worker does not know the key.
    UnknownKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Put(String, u64),
    Delete(String),
    Get(String),
    Lease(usize),
}

#[derive(Debug)]
struct FakeState {
    calls: Vec<(Instant, Call)>,
    /// What the Worker holds: route → sequence (a tombstone counts as 0 routes).
    routes: BTreeMap<String, u64>,
    tombstones: BTreeMap<String, u64>,
    /// PUTs to fail with a 500 before succeeding.
    fail_puts: usize,
    lease: LeaseMode,
    delay: Duration,
    in_flight: usize,
    max_in_flight: usize,
}

#[derive(Clone, Debug)]
struct Fake(Arc<Mutex<FakeState>>);

impl Fake {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(FakeState {
            calls: Vec::new(),
            routes: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            fail_puts: 0,
            lease: LeaseMode::Normal,
            delay: Duration::from_millis(10),
            in_flight: 0,
            max_in_flight: 0,
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    fn calls(&self) -> Vec<Call> {
        self.with(|s| s.calls.iter().map(|(_, c)| c.clone()).collect())
    }

    fn count(&self, what: fn(&Call) -> bool) -> usize {
        self.calls().iter().filter(|c| what(c)).count()
    }

    async fn call<T>(&self, call: Call, answer: impl FnOnce(&mut FakeState) -> T) -> T {
        let delay = self.with(|s| {
            s.calls.push((Instant::now(), call));
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.delay
        });
        tokio::time::sleep(delay).await;
        self.with(|s| {
            s.in_flight -= 1;
            answer(s)
        })
    }
}

fn rejected(status: u16, code: &str) -> PublishError {
    PublishError::Rejected {
        method: "PUT",
        url: "http://worker.test".into(),
        status,
        code: code.into(),
        message: format!("{status} {code}"),
    }
}

impl WorkerApi for Fake {
    async fn put(&self, route: &Route) -> Result<(), PublishError> {
        let key = format!("{}/{}/{}", route.namespace, route.name, route.region);
        let sequence = route.sequence;
        self.call(Call::Put(key.clone(), sequence), |s| {
            if s.fail_puts > 0 {
                s.fail_puts -= 1;
                return Err(rejected(500, "internal"));
            }
            let stored = s.routes.get(&key).or(s.tombstones.get(&key)).copied();
            if stored.is_some_and(|st| sequence <= st) {
                return Err(rejected(409, "stale_sequence"));
            }
            s.tombstones.remove(&key);
            s.routes.insert(key, sequence);
            Ok(())
        })
        .await
    }

    async fn delete(&self, key: &RouteKey, sequence: u64) -> Result<(), PublishError> {
        let key = key.to_string();
        self.call(Call::Delete(key.clone()), |s| {
            if let Some(stored) = s.routes.get(&key)
                && sequence <= *stored
            {
                return Err(rejected(409, "stale_sequence"));
            }
            s.routes.remove(&key);
            s.tombstones.insert(key, sequence);
            Ok(())
        })
        .await
    }

    async fn stored_sequence(&self, key: &RouteKey) -> Result<u64, PublishError> {
        let key = key.to_string();
        self.call(Call::Get(key.clone()), |s| {
            Ok(s.routes
                .get(&key)
                .or(s.tombstones.get(&key))
                .copied()
                .unwrap_or(0))
        })
        .await
    }

    async fn renew(&self, lease: &LeaseRequest) -> Result<LeaseAnswer, PublishError> {
        self.call(Call::Lease(lease.routes), |s| match s.lease {
            LeaseMode::NotFound => Err(rejected(404, "")),
            LeaseMode::UnknownKey => Err(rejected(401, "unknown_key")),
            LeaseMode::Normal => {
                let keys: Vec<(RouteKey, u64)> = s
                    .routes
                    .iter()
                    .map(|(k, seq)| {
                        let mut parts = k.split('/');
                        let mut next = || parts.next().unwrap().to_owned();
                        (
                            RouteKey {
                                namespace: next(),
                                name: next(),
                                region: next(),
                            },
                            *seq,
                        )
                    })
                    .collect();
                Ok(LeaseAnswer {
                    routes: keys.len(),
                    digest: publish::lease_digest(keys.iter().map(|(k, s)| (k, *s))),
                })
            }
        })
        .await
    }
}

/// The fixture's route (ttlSeconds 60: a lease every 20 s) for `name`/`region`.
fn route(name: &str, region: &str, ready: i32) -> Route {
    let v = validated(FIXTURE);
    let mut r = publish::route(&v, &v.regions[0], ready, "t", "tok-0123456789abcdef");
    r.name = name.into();
    r.region = region.into();
    r
}

fn object(name: &str) -> ObjectKey {
    ("ml".into(), name.into())
}

fn live(routes: &[Route]) -> DesiredRoutes {
    DesiredRoutes {
        live: routes
            .iter()
            .map(|r| (r.region.clone(), r.clone()))
            .collect(),
        maybe_held: Default::default(),
    }
}

fn start(fake: &Fake, concurrency: usize) -> (RouteSync, mpsc::UnboundedReceiver<ObjectKey>) {
    RouteSync::start(fake.clone(), SyncConfig { concurrency }, Metrics::new())
}

/// Polls `check` on the paused clock until it holds (at most 10 virtual minutes).
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn is_put(c: &Call) -> bool {
    matches!(c, Call::Put(..))
}
fn is_lease(c: &Call) -> bool {
    matches!(c, Call::Lease(_))
}
fn is_delete(c: &Call) -> bool {
    matches!(c, Call::Delete(_))
}

#[tokio::test(start_paused = true)]
async fn a_route_is_put_on_change_only() {
    let fake = Fake::new();
    let (sync, _changes) = start(&fake, 8);
    let m = object("m");
    sync.desire(&m, live(&[route("m", "us-east", 1)]));
    until("published", || sync.states(&m)["us-east"].published).await;
    assert_eq!(fake.count(is_put), 1);

    // Five minutes of reconciles with the same content (another publishedAt):
    // the lease renews it, no body travels.
    for _ in 0..30 {
        let mut same = route("m", "us-east", 1);
        same.published_at = "later".into();
        sync.desire(&m, live(&[same]));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    assert_eq!(fake.count(is_put), 1, "{:?}", fake.calls());
    assert!(fake.count(is_lease) >= 14, "{:?}", fake.calls());

    // A change goes out at once.
    sync.desire(&m, live(&[route("m", "us-east", 2)]));
    until("changed route sent", || fake.count(is_put) == 2).await;
    let state = &sync.states(&m)["us-east"];
    assert!(state.published && state.error.is_none(), "{state:?}");
}

#[tokio::test(start_paused = true)]
async fn one_lease_per_interval_renews_every_route() {
    let fake = Fake::new();
    let (sync, _changes) = start(&fake, 8);
    for i in 0..20 {
        let name = format!("m{i}");
        let regions = [
            route(&name, "us-east", 1),
            route(&name, "eu-west", 1),
            route(&name, "ap-south", 1),
        ];
        sync.desire(&object(&name), live(&regions));
    }
    until("60 routes held", || sync.held_count() == 60).await;
    let puts = fake.count(is_put);
    assert_eq!(puts, 60);
    let leases_before = fake.count(is_lease);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(200)).await;
    let leases = fake.count(is_lease) - leases_before;
    // ttlSeconds 60: one lease every 20 s, whatever the number of routes.
    assert!(
        (9..=11).contains(&leases),
        "{leases} leases in {:?}",
        started.elapsed()
    );
    assert_eq!(fake.count(is_put), puts, "no route body was re-sent");
    // Each lease carries the whole held set, and the Worker agrees with it.
    assert!(fake.calls().contains(&Call::Lease(60)));
    assert!(
        sync.states(&object("m7"))
            .values()
            .all(|s| s.error.is_none())
    );
}

#[tokio::test(start_paused = true)]
async fn a_digest_mismatch_re_puts_every_held_route() {
    let fake = Fake::new();
    let (sync, _changes) = start(&fake, 4);
    for i in 0..5 {
        let name = format!("m{i}");
        sync.desire(&object(&name), live(&[route(&name, "us-east", 1)]));
    }
    until("5 held", || sync.held_count() == 5).await;
    // The Worker loses a route (storage restored from a backup).
    fake.with(|s| s.routes.remove("ml/m3/us-east"));
    until("every held route re-sent", || fake.count(is_put) == 10).await;
    assert!(fake.with(|s| s.routes.contains_key("ml/m3/us-east")));
    // Agreed again: nothing more is sent.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(fake.count(is_put), 10, "{:?}", fake.calls());
}

#[tokio::test(start_paused = true)]
async fn a_failing_route_backs_off_exponentially() {
    let fake = Fake::new();
    fake.with(|s| s.fail_puts = 4);
    let (sync, mut changes) = start(&fake, 8);
    let m = object("m");
    sync.desire(&m, live(&[route("m", "us-east", 1)]));
    until("failure reported", || {
        sync.states(&m)["us-east"].error.is_some()
    })
    .await;
    assert_eq!(changes.recv().await, Some(m.clone()), "status is told");
    let state = &sync.states(&m)["us-east"];
    assert!(!state.published && state.pending);
    assert!(state.error.as_deref().unwrap().contains("500"), "{state:?}");
    until("published after the failures", || {
        sync.states(&m)["us-east"].published
    })
    .await;
    let times: Vec<Instant> = fake.with(|s| {
        s.calls
            .iter()
            .filter(|(_, c)| is_put(c))
            .map(|(t, _)| *t)
            .collect()
    });
    let gaps: Vec<u64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64 / 100)
        .collect();
    // 1 s, 2 s, 4 s, 8 s (plus the fake's 10 ms answer), in tenths of a second.
    assert_eq!(gaps, [10, 20, 40, 80], "{times:?}");
    assert!(sync.states(&m)["us-east"].error.is_none());
}

#[tokio::test(start_paused = true)]
async fn requests_in_flight_stay_within_the_bound() {
    let fake = Fake::new();
    fake.with(|s| s.delay = Duration::from_secs(1));
    let (sync, _changes) = start(&fake, 3);
    for i in 0..12 {
        let name = format!("m{i}");
        sync.desire(&object(&name), live(&[route(&name, "us-east", 1)]));
    }
    until("12 held", || sync.held_count() == 12).await;
    assert_eq!(fake.with(|s| s.max_in_flight), 3);
}

#[tokio::test(start_paused = true)]
async fn withdrawal_deletes_what_may_be_held_once() {
    let fake = Fake::new();
    let (sync, mut changes) = start(&fake, 8);
    let m = object("m");
    sync.desire(
        &m,
        live(&[route("m", "us-east", 1), route("m", "eu-west", 1)]),
    );
    until("both held", || sync.held_count() == 2).await;
    while changes.try_recv().is_ok() {}
    // eu-west is no longer ready: withdrawn, us-east untouched.
    sync.desire(&m, live(&[route("m", "us-east", 1)]));
    until("eu-west withdrawn", || {
        !sync.states(&m)["eu-west"].published
    })
    .await;
    assert_eq!(changes.recv().await, Some(m.clone()));
    assert_eq!(fake.calls().iter().filter(|c| is_delete(c)).count(), 1);
    assert!(!fake.with(|s| s.routes.contains_key("ml/m/eu-west")));
    // A region status says was published by an earlier process: deleted too.
    sync.desire(
        &m,
        DesiredRoutes {
            live: BTreeMap::new(),
            maybe_held: ["ap-south".to_owned(), "eu-west".to_owned()].into(),
        },
    );
    until("everything withdrawn", || {
        sync.states(&m).values().all(|s| !s.published && !s.pending)
    })
    .await;
    assert_eq!(
        fake.count(is_delete),
        3,
        "eu-west is not deleted twice: {:?}",
        fake.calls()
    );
    assert!(fake.with(|s| s.routes.is_empty()));
    // Nothing held: no lease either.
    let leases = fake.count(is_lease);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(fake.count(is_lease), leases);
    sync.forget(&m);
    assert!(sync.states(&m).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restart_keeps_showing_what_status_said_was_published() {
    // A restarted operator: status says us-east is published, this process
    // has sent nothing yet, and the Worker is slow to answer.
    let fake = Fake::new();
    fake.with(|s| {
        s.delay = Duration::from_secs(2);
        s.fail_puts = 1;
    });
    let (sync, _changes) = start(&fake, 8);
    let (m, fresh) = (object("m"), object("fresh"));
    let carried = DesiredRoutes {
        maybe_held: ["us-east".to_owned()].into(),
        ..live(&[route("m", "us-east", 1)])
    };
    sync.desire(&m, carried);
    sync.desire(&fresh, live(&[route("fresh", "us-east", 1)]));
    until("both PUTs in flight", || fake.count(is_put) == 2).await;
    // Status does not flap to unpublished while the first PUT is out...
    assert!(sync.states(&m)["us-east"].published);
    // ...but a route no earlier life published is not claimed early.
    assert!(!sync.states(&fresh)["us-east"].published);
    // A failed first PUT: the earlier copy may still serve, and says why.
    until("a failure", || {
        sync.states(&m)["us-east"].error.is_some() || sync.states(&fresh)["us-east"].error.is_some()
    })
    .await;
    until("both held", || sync.held_count() == 2).await;
    assert!(sync.states(&m)["us-east"].published);
    // Once the route's TTL has passed, only a landed PUT counts.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(sync.states(&m)["us-east"].published, "held by its own PUT");
}

#[tokio::test(start_paused = true)]
async fn a_carried_route_the_worker_refuses_stops_showing_after_its_ttl() {
    let fake = Fake::new();
    fake.with(|s| s.fail_puts = usize::MAX);
    let (sync, _changes) = start(&fake, 8);
    let m = object("m");
    sync.desire(
        &m,
        DesiredRoutes {
            maybe_held: ["us-east".to_owned()].into(),
            ..live(&[route("m", "us-east", 1)])
        },
    );
    until("the refusal", || sync.states(&m)["us-east"].error.is_some()).await;
    let state = &sync.states(&m)["us-east"];
    assert!(
        state.published,
        "the earlier copy is live for its TTL: {state:?}"
    );
    // ttlSeconds 60: by then the Worker has expired the earlier copy.
    tokio::time::sleep(Duration::from_secs(61)).await;
    let state = &sync.states(&m)["us-east"];
    assert!(!state.published && state.error.is_some(), "{state:?}");
}

#[tokio::test(start_paused = true)]
async fn a_refused_lease_shows_on_every_held_route() {
    let fake = Fake::new();
    let (sync, mut changes) = start(&fake, 8);
    let (a, b) = (object("a"), object("b"));
    sync.desire(&a, live(&[route("a", "us-east", 1)]));
    sync.desire(&b, live(&[route("b", "us-east", 1)]));
    until("held", || sync.held_count() == 2).await;
    while changes.try_recv().is_ok() {}
    fake.with(|s| s.lease = LeaseMode::UnknownKey);
    until("lease error shown", || {
        sync.states(&a)["us-east"].error.is_some() && sync.states(&b)["us-east"].error.is_some()
    })
    .await;
    let error = sync.states(&a)["us-east"].error.clone().unwrap();
    assert!(error.contains("lease") && error.contains("401"), "{error}");
    assert!(sync.states(&a)["us-east"].published);
    let mut told = vec![changes.recv().await.unwrap(), changes.recv().await.unwrap()];
    told.sort();
    assert_eq!(told, [a.clone(), b.clone()]);
    // Accepted again: the error clears.
    fake.with(|s| s.lease = LeaseMode::Normal);
    until("lease error cleared", || {
        sync.states(&a)["us-east"].error.is_none()
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_without_leases_gets_per_route_heartbeats() {
    let fake = Fake::new();
    fake.with(|s| s.lease = LeaseMode::NotFound);
    let (sync, _changes) = start(&fake, 8);
    let m = object("m");
    sync.desire(
        &m,
        live(&[route("m", "us-east", 1), route("m", "eu-west", 1)]),
    );
    until("held", || sync.held_count() == 2).await;
    let puts = fake.count(is_put);
    tokio::time::sleep(Duration::from_secs(100)).await;
    // ttlSeconds 60: each route re-PUT every 20 s, about 5 times in 100 s.
    let heartbeats = fake.count(is_put) - puts;
    assert!(
        (8..=12).contains(&heartbeats),
        "{heartbeats}: {:?}",
        fake.calls()
    );
    // No error: an old Worker is not a failure.
    assert!(sync.states(&m).values().all(|s| s.error.is_none()));
    // The Worker is upgraded: the lease takes over and the heartbeats stop.
    fake.with(|s| s.lease = LeaseMode::Normal);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let puts = fake.count(is_put);
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(fake.count(is_put), puts, "{:?}", fake.calls());
}

#[tokio::test(start_paused = true)]
async fn a_higher_stored_sequence_is_published_above() {
    let fake = Fake::new();
    // An earlier operator whose clock ran ahead.
    let far = publish::unix_millis() + 10_000_000;
    fake.with(|s| s.routes.insert("ml/m/us-east".into(), far));
    let (sync, _changes) = start(&fake, 8);
    let m = object("m");
    sync.desire(&m, live(&[route("m", "us-east", 1)]));
    until("published", || sync.states(&m)["us-east"].published).await;
    assert_eq!(fake.with(|s| s.routes["ml/m/us-east"]), far + 1);
    assert!(fake.calls().contains(&Call::Get("ml/m/us-east".into())));
}

#[tokio::test(start_paused = true)]
async fn a_stopped_sync_sends_nothing_more() {
    let fake = Fake::new();
    let (sync, _changes) = start(&fake, 8);
    let m = object("m");
    sync.desire(&m, live(&[route("m", "us-east", 1)]));
    until("published", || sync.states(&m)["us-east"].published).await;
    sync.stop();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let calls = fake.calls().len();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(fake.calls().len(), calls);
}
