//! Soak test over the whole request path: the routing Worker under
//! `wrangler dev` in front of two regions, each `backhaul-inference` on
//! 127.0.0.1 serving SmolLM2 with small admission bounds, under a closed
//! loop of virtual clients at and above saturation, while a fault schedule
//! ([`faults::Schedule`]) floods one region directly with 1-3 MiB prompts
//! and kills the other (SIGKILL) and restarts it on its port.
//!
//! Every request must end in a complete answer, an explicit OpenAI-shaped
//! error (a 429 with `Retry-After`), a mid-stream error event, or the
//! client's own early disconnect; the soak fails if any hangs past the
//! client's deadline or is lost, if nothing completes, if a region's peak
//! RSS passes its bound, or if the inter-token latency p99 (with or without
//! the flood) passes its bound. Both bounds are generous: the machine has
//! two cores, shared by both regions, the Worker and the clients.
//!
//! No Kubernetes: the routes are published straight to the Worker's admin
//! API, signed with the harness's key. Every process is started through the
//! harness's [`backhaul_e2e::Proc`] and stopped by process group when the
//! soak ends, whatever happens (an interrupt included).
//!
//! Run with `scripts/soak.sh` (`make soak`; `--short` is the run `make test`
//! does). Knobs: [`Params::from_env`]. Results: a table on stderr and JSON at
//! `$BACKHAUL_SOAK_OUT` (docs/benchmarks/soak.md says what the figures mean).

mod client;
mod faults;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use backhaul_e2e::clusters::LocalRegion;
use backhaul_e2e::{Worker, interrupted, logs_dir, repo_root};
use backhaul_operator::publish::{RouteRouting, rfc3339_seconds};
use tokio::sync::oneshot;

use crate::client::{Record, Role, Target};
use crate::faults::{Conducted, FloodTarget, Schedule};
use crate::report::Results;

/// The served model name.
const MODEL: &str = "smollm2-soak";
/// The regions, where they are, and where their clients are (New York is
/// nearer us-east, London nearer eu-west).
const REGIONS: [(&str, (f64, f64), &str); 2] = [
    ("us-east", (39.04, -77.49), "40.71,-74.01"),
    ("eu-west", (53.35, -6.26), "51.51,-0.13"),
];
/// The region flooded directly, and the one killed and restarted.
const FLOODED: usize = 0;
const KILLED: usize = 1;
/// The Worker's budget per attempt (the route's `routing`), and the most
/// attempts (regions) per request: a request the Worker gives up on ends
/// within `FAILOVER_ATTEMPTS × REQUEST_TIMEOUT_MS` (180 s) in an explicit
/// error, below the clients' deadline, so only a real hang counts as one.
const REQUEST_TIMEOUT_MS: u64 = 90_000;
const FIRST_BYTE_TIMEOUT_MS: u64 = 60_000;
const FAILOVER_ATTEMPTS: u32 = 2;

/// The soak's knobs, from the environment.
#[derive(Debug, Clone)]
struct Params {
    /// `BACKHAUL_SOAK_SECONDS` (300): how long clients keep starting requests.
    seconds: u64,
    /// `BACKHAUL_SOAK_CLIENTS` (8): concurrent virtual clients, half near each region.
    clients: usize,
    /// `BACKHAUL_SOAK_MAX_IN_FLIGHT` (2) and `BACKHAUL_SOAK_MAX_QUEUE` (1):
    /// each region's admission bounds, small so that the clients are more
    /// than both regions hold (8 against 6) and 429s happen.
    max_in_flight: u32,
    max_queue: u32,
    /// `BACKHAUL_SOAK_DEADLINE_SECONDS` (240): a request with no end by
    /// then is hung; above the Worker's own bound (180 s, two attempts).
    deadline: Duration,
    /// `BACKHAUL_SOAK_FLOOD_CLIENTS` (2): concurrent senders of the flood.
    flood_clients: usize,
    /// `BACKHAUL_SOAK_MAX_RSS_MIB` (2048): bound on any region's peak RSS.
    max_rss_mib: u64,
    /// `BACKHAUL_SOAK_MAX_ITL_P99_MS` (60000): bound on the inter-token
    /// latency p99, with and without the flood: no running stream stalls
    /// for a minute (a long prompt's prefill stalls the others for seconds
    /// here, so the bound says nothing finer).
    max_itl_p99_ms: f64,
    /// `BACKHAUL_SOAK_MAX_REQUESTS` (10000): the most requests one client sends.
    max_requests: usize,
    /// `BACKHAUL_SOAK_OUT` (`<logs>/soak.json`): where the JSON results go.
    out: PathBuf,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

impl Params {
    fn from_env() -> Result<Self> {
        let params = Self {
            seconds: env_or("BACKHAUL_SOAK_SECONDS", 300)?,
            clients: env_or("BACKHAUL_SOAK_CLIENTS", 8)?,
            max_in_flight: env_or("BACKHAUL_SOAK_MAX_IN_FLIGHT", 2)?,
            max_queue: env_or("BACKHAUL_SOAK_MAX_QUEUE", 1)?,
            deadline: Duration::from_secs(env_or("BACKHAUL_SOAK_DEADLINE_SECONDS", 240)?),
            flood_clients: env_or("BACKHAUL_SOAK_FLOOD_CLIENTS", 2)?,
            max_rss_mib: env_or("BACKHAUL_SOAK_MAX_RSS_MIB", 2048)?,
            max_itl_p99_ms: env_or("BACKHAUL_SOAK_MAX_ITL_P99_MS", 60_000.0)?,
            max_requests: env_or("BACKHAUL_SOAK_MAX_REQUESTS", 10_000)?,
            out: std::env::var_os("BACKHAUL_SOAK_OUT")
                .filter(|p| !p.is_empty())
                .map_or_else(|| logs_dir().join("soak.json"), PathBuf::from),
        };
        // The routes live an hour (ttlSeconds' most) and are not renewed.
        if !(10..=3000).contains(&params.seconds) {
            bail!("BACKHAUL_SOAK_SECONDS must be 10 to 3000");
        }
        let worker_bound = Duration::from_millis(u64::from(FAILOVER_ATTEMPTS) * REQUEST_TIMEOUT_MS);
        if params.deadline <= worker_bound {
            bail!(
                "BACKHAUL_SOAK_DEADLINE_SECONDS must be above the Worker's own bound, {worker_bound:?}"
            );
        }
        if params.clients == 0 || params.flood_clients == 0 {
            bail!("BACKHAUL_SOAK_CLIENTS and BACKHAUL_SOAK_FLOOD_CLIENTS must be at least 1");
        }
        Ok(params)
    }

    fn json(&self, schedule: &Schedule) -> serde_json::Value {
        let s = |d: Duration| (d.as_secs_f64() * 10.0).round() / 10.0;
        let roles: Vec<&str> = (0..self.clients).map(|i| Role::of(i).name()).collect();
        serde_json::json!({
            "seconds": self.seconds,
            "clients": self.clients,
            "client_roles": roles,
            "regions": REGIONS.iter().map(|(name, ..)| *name).collect::<Vec<_>>(),
            "max_in_flight": self.max_in_flight,
            "max_queue": self.max_queue,
            "client_deadline_s": self.deadline.as_secs(),
            "worker_request_timeout_ms": REQUEST_TIMEOUT_MS,
            "worker_first_byte_timeout_ms": FIRST_BYTE_TIMEOUT_MS,
            "schedule_s": {
                "itl_baseline": [s(schedule.baseline.start), s(schedule.baseline.end)],
                "flood": [s(schedule.flood.start), s(schedule.flood.end)],
                "flood_region": REGIONS[FLOODED].0,
                "flood_clients": self.flood_clients,
                "kill_at": s(schedule.kill_at),
                "restart_at": s(schedule.restart_at),
                "killed_region": REGIONS[KILLED].0,
            },
            "max_rss_mib": self.max_rss_mib,
            "max_itl_p99_ms": self.max_itl_p99_ms,
            "worker_dir": backhaul_e2e::worker_dir(),
            "inference_bin": backhaul_e2e::binary("backhaul-inference"),
        })
    }
}

fn main() -> ExitCode {
    let params = match Params::from_env() {
        Ok(p) => p,
        Err(error) => {
            eprintln!("soak: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let code = runtime.block_on(async {
        tokio::select! {
            outcome = soak(&params) => match outcome {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(error) => {
                    eprintln!("soak: FAILED: {error:#}");
                    ExitCode::FAILURE
                }
            },
            signal = interrupted() => {
                eprintln!("soak: {signal}: stopping every process it started");
                ExitCode::FAILURE
            }
        }
    });
    // Dropping the runtime drops every task, and with them the regions and
    // the Worker: each stops its process group.
    drop(runtime);
    code
}

/// The whole soak: setup, the run, the checks, the outputs. `Ok(false)`:
/// it ran and a check failed.
async fn soak(params: &Params) -> Result<bool> {
    let started = Instant::now();
    // Other work on the machine moves every figure: recorded at both ends.
    let loadavg_at_start = loadavg();
    // What is measured is what was checked out when the processes started.
    let commit = git_commit();
    let schedule = Schedule::new(Duration::from_secs(params.seconds));
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let (worker, regions) = setup(params, &token).await?;
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!(
        "soak: setup (Worker, two regions, routes) in {setup_s:.1}s; {} s of load, {} clients",
        params.seconds, params.clients
    );
    let (records, conducted, memory, run_s) =
        run(params, &schedule, &worker, regions, &token).await?;
    let total_s = started.elapsed().as_secs_f64();
    write_requests(&records)?;
    let names: Vec<&str> = REGIONS.iter().map(|(name, ..)| *name).collect();
    let bounds = (params.max_rss_mib, params.max_itl_p99_ms);
    let results = Results::of(&records, &schedule, &names, &conducted, &memory, bounds);
    let failures = report::failures(&results);
    eprint!("soak: summary\n{}", report::table(&results));
    let tally = &results.tally;
    for example in tally.examples.iter().chain(&tally.violations).take(20) {
        eprintln!("soak:   {example}");
    }
    for ((status, code), message) in &tally.refused_messages {
        eprintln!("soak:   first {status} {code}: {message}");
    }
    let around = serde_json::json!({
        "commit": commit,
        "durations": {"setup_s": report::round(setup_s), "run_and_drain_s": report::round(run_s),
            "restart_ready_s": conducted.restart_ready_s.map(report::round), "total_s": report::round(total_s)},
        "machine": {
            "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu_model": cpu_model(),
            "loadavg_at_start": loadavg_at_start,
            "loadavg_at_end": loadavg(),
        },
    });
    write_json(params, &schedule, &results, &conducted, around, &failures)?;
    // The processes stop here, before the verdict is printed.
    drop(conducted.regions);
    drop(worker);
    Ok(verdict(params, &failures, total_s))
}

/// Prints whether the soak passed; true when it did.
fn verdict(params: &Params, failures: &[String], total_s: f64) -> bool {
    if failures.is_empty() {
        eprintln!(
            "soak: ok ({total_s:.1}s); results in {}",
            params.out.display()
        );
        return true;
    }
    eprintln!(
        "soak: FAILED: {}; results in {}, logs in {}",
        failures.join("; "),
        params.out.display(),
        logs_dir().display()
    );
    false
}

/// Every request as a line of JSON, beside the logs.
fn write_requests(records: &[Record]) -> Result<()> {
    let lines: String = records
        .iter()
        .map(|r| report::record_line(r) + "\n")
        .collect();
    let path = logs_dir().join("requests.jsonl");
    std::fs::write(&path, lines).with_context(|| format!("write {}", path.display()))
}

/// Starts the Worker and both regions side by side, publishes the regions'
/// routes and waits until the Worker lists the model.
async fn setup(params: &Params, token: &str) -> Result<(Worker, Vec<LocalRegion>)> {
    let model = backhaul_e2e::model_file();
    if !model.exists() {
        bail!("{} is missing: make model", model.display());
    }
    // Beside the logs: two soaks with their own log directories (a make
    // test beside a make soak) keep apart.
    let state = logs_dir().join("worker-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let names: Vec<&str> = REGIONS.iter().map(|(name, ..)| *name).collect();
    let ports: Vec<u16> = names.iter().map(|_| LocalRegion::reserve_port()).collect();
    let (in_flight, queue) = (
        params.max_in_flight.to_string(),
        params.max_queue.to_string(),
    );
    let flags = ["--max-in-flight", &in_flight, "--max-queue", &queue];
    let (worker, regions) = tokio::try_join!(
        Worker::start(&state, &[]),
        faults::start_regions(&names, &ports, MODEL, token, &flags),
    )?;
    for (region, (_, location, _)) in regions.iter().zip(REGIONS) {
        worker
            .put_route(&region.route("soak", "smollm2", location, routing(), token))
            .await?;
    }
    worker
        .wait_for_model(MODEL, Duration::from_secs(30))
        .await?;
    Ok((worker, regions))
}

/// Every request is heavy (thresholds 0, no edge model), so each goes to a
/// region; the routes live an hour, longer than any soak.
fn routing() -> RouteRouting {
    RouteRouting {
        heavy_prompt_tokens: 0,
        heavy_max_tokens: 0,
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        first_byte_timeout_ms: FIRST_BYTE_TIMEOUT_MS,
        failover_attempts: FAILOVER_ATTEMPTS,
    }
}

type RunOutput = (Vec<Record>, Conducted, Vec<faults::RegionMemory>, f64);

/// The load and the faults: the clients, the conductor and the memory
/// sampler side by side; returns when every client has stopped (no request
/// starts after the run, and each one in flight ends by its deadline).
async fn run(
    params: &Params,
    schedule: &Schedule,
    worker: &Worker,
    regions: Vec<LocalRegion>,
    token: &str,
) -> Result<RunOutput> {
    let t0 = Instant::now();
    let pids: Arc<Vec<AtomicU32>> =
        Arc::new(regions.iter().map(|r| AtomicU32::new(r.pid())).collect());
    let names = regions.iter().map(|r| r.name.clone()).collect();
    let (stop_sampling, stop) = oneshot::channel();
    let sampler = tokio::spawn(faults::sample_memory(names, pids.clone(), t0, stop));
    let flood = FloodTarget {
        endpoint: LocalRegion::endpoint_at(regions[FLOODED].port),
        token: token.to_owned(),
        model: MODEL.to_owned(),
        concurrency: params.flood_clients,
        deadline: params.deadline,
    };
    let conductor = tokio::spawn(faults::conduct(
        regions,
        schedule.clone(),
        t0,
        flood,
        KILLED,
        pids,
    ));
    let target = Target {
        worker_url: worker.url(),
        model: MODEL.to_owned(),
        deadline: params.deadline,
        t0,
        end: t0 + schedule.run,
        max_requests: params.max_requests,
    };
    let clients: Vec<_> = (0..params.clients)
        .map(|i| tokio::spawn(client::run(i, REGIONS[i % REGIONS.len()].2, target.clone())))
        .collect();
    let mut records = Vec::new();
    for c in clients {
        records.extend(c.await.context("a virtual client panicked")?);
    }
    let conducted = conductor.await.context("the fault conductor panicked")?;
    let run_s = t0.elapsed().as_secs_f64();
    let _ = stop_sampling.send(());
    let memory = sampler.await.context("the memory sampler panicked")?;
    Ok((records, conducted, memory, run_s))
}

/// Writes the JSON results to `params.out`.
fn write_json(
    params: &Params,
    schedule: &Schedule,
    results: &Results,
    conducted: &Conducted,
    // Fields measured around the run: the commit, durations, the machine.
    around: serde_json::Value,
    failures: &[String],
) -> Result<()> {
    let mut doc = report::json(results);
    let extra = serde_json::json!({
        "date": rfc3339_seconds(SystemTime::now()),
        "command": format!("BACKHAUL_SOAK_SECONDS={} scripts/soak.sh", params.seconds),
        "parameters": params.json(schedule),
        "events": conducted.events.iter().map(|e| serde_json::json!({"at_s": report::round(e.at), "what": e.what})).collect::<Vec<_>>(),
        "passed": failures.is_empty(),
        "failures": failures,
    });
    if let (Some(doc), serde_json::Value::Object(extra)) = (doc.as_object_mut(), extra) {
        doc.extend(extra);
        if let serde_json::Value::Object(around) = around {
            doc.extend(around);
        }
    }
    if let Some(dir) = params.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = serde_json::to_string_pretty(&doc)?;
    text.push('\n');
    std::fs::write(&params.out, text).with_context(|| format!("write {}", params.out.display()))?;
    Ok(())
}

/// The commit measured, and whether the tree had changes on top of it.
fn git_commit() -> serde_json::Value {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir(repo_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    serde_json::json!({
        "head": git(&["rev-parse", "--short=12", "HEAD"]),
        "dirty": git(&["status", "--porcelain", "--untracked-files=no"]).map(|s| !s.is_empty()),
    })
}

/// The CPU the figures come from.
fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).map(str::to_owned).collect()
}
