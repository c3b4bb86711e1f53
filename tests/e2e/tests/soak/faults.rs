//! The fault schedule (one region killed and restarted, the other flooded
//! directly with oversized prompts) and the regions' memory, sampled through
//! the run.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use backhaul_e2e::clusters::LocalRegion;
use tokio::sync::oneshot;
use tokio::time::{sleep_until, timeout};

/// When each fault happens, from the start of the run. Fixed fractions of
/// the run, so a short run and a long one go through the same phases:
/// steady load (the inter-token latency baseline), the flood, a quiet gap,
/// one region dead, and recovery after its restart.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub run: Duration,
    pub baseline: Range<Duration>,
    pub flood: Range<Duration>,
    pub kill_at: Duration,
    pub restart_at: Duration,
}

impl Schedule {
    pub fn new(run: Duration) -> Self {
        let at = |fraction: f64| run.mul_f64(fraction);
        Self {
            run,
            baseline: Duration::ZERO..at(0.30),
            flood: at(0.30)..at(0.55),
            kill_at: at(0.60),
            restart_at: at(0.75),
        }
    }
}

/// One thing the conductor did, and when (seconds from the start).
#[derive(Debug, Clone)]
pub struct Event {
    pub at: f64,
    pub what: String,
}

/// The direct flood's requests, as its clients saw them.
#[derive(Debug, Default)]
pub struct FloodReport {
    pub sent: u64,
    pub bytes: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Requests that ended in a transport error (a server may close the
    /// connection on a body it refuses before reading it all).
    pub transport_errors: u64,
    /// Requests with no answer within the deadline.
    pub hung: u64,
    /// Time from sending to the whole answer, per request (ms).
    pub latencies_ms: Vec<f64>,
}

/// Where the flood goes: a region's endpoint with its upstream token,
/// bypassing the Worker (whose body limit would stop it).
#[derive(Debug, Clone)]
pub struct FloodTarget {
    pub endpoint: String,
    pub token: String,
    pub model: String,
    pub concurrency: usize,
    pub deadline: Duration,
}

/// What the conductor hands back: the regions (alive until the caller drops
/// them), what it did, and the flood's results.
pub struct Conducted {
    pub regions: Vec<LocalRegion>,
    pub events: Vec<Event>,
    pub flood: FloodReport,
    /// Seconds from the restart to the region's `/ready`.
    pub restart_ready_s: Option<f64>,
    pub error: Option<String>,
}

/// Runs the schedule against `regions`: floods `regions[flooded]` through
/// `schedule.flood`, kills `regions[killed]` at `kill_at` and restarts it
/// on the same port at `restart_at`. Keeps `pids` current for the memory
/// sampler.
pub async fn conduct(
    mut regions: Vec<LocalRegion>,
    schedule: Schedule,
    t0: Instant,
    flood: FloodTarget,
    killed: usize,
    pids: Arc<Vec<AtomicU32>>,
) -> Conducted {
    let mut events = Vec::new();
    let mut log = |what: String| {
        eprintln!("soak: {:6.1}s {what}", t0.elapsed().as_secs_f64());
        events.push(Event {
            at: t0.elapsed().as_secs_f64(),
            what,
        });
    };
    sleep_until((t0 + schedule.flood.start).into()).await;
    log(format!(
        "flood starts: {} clients, 1-3 MiB prompts straight to {}",
        flood.concurrency, flood.endpoint
    ));
    let flood_end = t0 + schedule.flood.end;
    let flood_task = tokio::spawn(run_flood(flood, flood_end));

    sleep_until((t0 + schedule.kill_at).into()).await;
    let region = &mut regions[killed];
    pids[killed].store(0, Ordering::SeqCst);
    region.kill();
    log(format!(
        "SIGKILL region {} (port {})",
        region.name, region.port
    ));

    sleep_until((t0 + schedule.restart_at).into()).await;
    log(format!("restarting region {}", region.name));
    let restarting = Instant::now();
    let (restart_ready_s, error) = match region.restart().await {
        Ok(()) => {
            pids[killed].store(region.pid(), Ordering::SeqCst);
            let secs = restarting.elapsed().as_secs_f64();
            log(format!(
                "region {} ready again after {secs:.1}s",
                region.name
            ));
            (Some(secs), None)
        }
        Err(error) => (None, Some(format!("restart: {error:#}"))),
    };
    let flood = flood_task.await.unwrap_or_default();
    Conducted {
        regions,
        events,
        flood,
        restart_ready_s,
        error,
    }
}

/// The most requests one flood client sends, a bound besides the window's
/// end (a client answered at once sends a few hundred a second).
const FLOOD_MAX_REQUESTS: u64 = 200_000;

/// Sizes of the flood's prompts, in MiB, in turn.
const FLOOD_MIB: [usize; 3] = [1, 2, 3];

/// A chat request whose one message is `mib` MiB of plain words.
fn flood_body(model: &str, mib: usize) -> Vec<u8> {
    let phrase = "the tide came in over the rocks and went out again ";
    let text = phrase.repeat(mib * 1024 * 1024 / phrase.len() + 1);
    serde_json::to_vec(&serde_json::json!({
        "model": model,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": &text[..mib * 1024 * 1024]}],
    }))
    .expect("a JSON body")
}

/// `target.concurrency` clients, each sending oversized prompts one after
/// the other until `until`, as an abuser does: without waiting for a 429's
/// `Retry-After`.
async fn run_flood(target: FloodTarget, until: Instant) -> FloodReport {
    // Leaked once (6 MiB for the test's life), so that a request's body is
    // a static slice: the flood sends a hundred a second, and copying
    // megabytes per request would spend the cores it is measuring.
    let bodies: Vec<&'static [u8]> = FLOOD_MIB
        .iter()
        .map(|&mib| &*flood_body(&target.model, mib).leak())
        .collect();
    let tasks: Vec<_> = (0..target.concurrency)
        .map(|i| tokio::spawn(flood_client(target.clone(), bodies.clone(), i, until)))
        .collect();
    let mut report = FloodReport::default();
    for task in tasks {
        let Ok(one) = task.await else { continue };
        report.sent += one.sent;
        report.bytes += one.bytes;
        report.transport_errors += one.transport_errors;
        report.hung += one.hung;
        for (status, n) in one.by_status {
            *report.by_status.entry(status).or_default() += n;
        }
        report.latencies_ms.extend(one.latencies_ms);
    }
    report
}

async fn flood_client(
    target: FloodTarget,
    bodies: Vec<&'static [u8]>,
    index: usize,
    until: Instant,
) -> FloodReport {
    let http = reqwest::Client::new();
    let mut report = FloodReport::default();
    let url = format!("{}/v1/chat/completions", target.endpoint);
    while Instant::now() < until && report.sent < FLOOD_MAX_REQUESTS {
        let body = bodies[(index + report.sent as usize) % bodies.len()];
        report.sent += 1;
        report.bytes += body.len() as u64;
        let sent = Instant::now();
        let answer = http
            .post(&url)
            .bearer_auth(&target.token)
            .header("content-type", "application/json")
            .body(body)
            .send();
        // The whole answer (status and body) within the deadline.
        let outcome = timeout(target.deadline, async {
            let response = answer.await?;
            let status = response.status().as_u16();
            response.bytes().await?;
            Ok::<_, reqwest::Error>(status)
        })
        .await;
        match outcome {
            Err(_) => report.hung += 1,
            Ok(Err(_)) => report.transport_errors += 1,
            Ok(Ok(status)) => {
                *report.by_status.entry(status).or_default() += 1;
                report
                    .latencies_ms
                    .push(sent.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    report
}

/// One region's memory over the run.
#[derive(Debug, Default, Clone)]
pub struct RegionMemory {
    pub name: String,
    /// Highest VmRSS sampled, KiB.
    pub peak_rss_kib: u64,
    /// Highest VmHWM (the kernel's own peak RSS of the process), KiB: it
    /// also catches a peak between two samples.
    pub peak_hwm_kib: u64,
    /// VmRSS once a second: (seconds from the start, KiB).
    pub timeline: Vec<(f64, u64)>,
    /// Distinct server processes seen (2 for a region that was restarted).
    pub processes: usize,
}

/// VmRSS and VmHWM of `pid` in KiB, from /proc/PID/status.
fn memory_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Samples every region's memory every 250 ms until `stop` fires.
pub async fn sample_memory(
    names: Vec<String>,
    pids: Arc<Vec<AtomicU32>>,
    t0: Instant,
    mut stop: oneshot::Receiver<()>,
) -> Vec<RegionMemory> {
    let mut memory: Vec<RegionMemory> = names
        .into_iter()
        .map(|name| RegionMemory {
            name,
            ..RegionMemory::default()
        })
        .collect();
    let mut seen: Vec<Vec<u32>> = vec![Vec::new(); memory.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut next_timeline = 0.0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let at = t0.elapsed().as_secs_f64();
        for (i, region) in memory.iter_mut().enumerate() {
            let pid = pids[i].load(Ordering::SeqCst);
            let Some((rss, hwm)) = (pid != 0).then(|| memory_of(pid)).flatten() else {
                continue;
            };
            if !seen[i].contains(&pid) {
                seen[i].push(pid);
            }
            region.processes = seen[i].len();
            region.peak_rss_kib = region.peak_rss_kib.max(rss);
            region.peak_hwm_kib = region.peak_hwm_kib.max(hwm);
            if at >= next_timeline {
                region.timeline.push((at, rss));
            }
        }
        if at >= next_timeline {
            next_timeline = at.floor() + 1.0;
        }
    }
    memory
}

/// Starts `names`' regions side by side (each loads the model, so in
/// parallel they are ready sooner), each with the flags `extra`.
pub async fn start_regions(
    names: &[&str],
    ports: &[u16],
    served: &str,
    token: &str,
    extra: &[&str],
) -> Result<Vec<LocalRegion>> {
    let tokens = &[token.to_owned()];
    let starts = names.iter().zip(ports).map(|(name, &port)| async move {
        LocalRegion::start_with(name, port, served, tokens, extra)
            .await
            .with_context(|| format!("start region {name}"))
    });
    futures::future::try_join_all(starts).await
}
