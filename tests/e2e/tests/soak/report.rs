//! Counting the outcomes, the latency figures, the pass/fail checks, the
//! summary table and the JSON results.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use crate::client::{Outcome, Record, Role};
use crate::faults::{Conducted, FloodReport, RegionMemory, Schedule};

/// How many requests ended each way.
#[derive(Debug, Default)]
pub struct Tally {
    pub total: u64,
    pub complete: u64,
    /// Explicit errors, by status and `code`.
    pub refused: BTreeMap<(u16, String), u64>,
    /// The first message of each status and `code`.
    pub refused_messages: BTreeMap<(u16, String), String>,
    pub stream_errors: u64,
    pub abandoned: u64,
    pub hung: u64,
    pub lost: u64,
    /// Answered by a region after more than one attempt (failed over).
    pub failed_over: u64,
    /// Complete answers by the region that gave them.
    pub by_region: BTreeMap<String, u64>,
    /// The first few lost and hung requests, described, for the log.
    pub examples: Vec<String>,
    /// Contract breaks (see [`Record::violations`]), each described.
    pub violations: Vec<String>,
}

const EXAMPLES: usize = 20;

impl Tally {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a Record>) -> Self {
        let mut t = Self::default();
        for r in records {
            t.total += 1;
            if r.attempts.is_some_and(|a| a > 1) && r.region.is_some() {
                t.failed_over += 1;
            }
            match &r.outcome {
                Outcome::Complete => {
                    t.complete += 1;
                    let region = r.region.clone().unwrap_or_else(|| "(none)".into());
                    *t.by_region.entry(region).or_default() += 1;
                }
                Outcome::Refused {
                    status,
                    code,
                    message,
                } => {
                    let key = (*status, code.clone());
                    *t.refused.entry(key.clone()).or_default() += 1;
                    t.refused_messages
                        .entry(key)
                        .or_insert_with(|| message.clone());
                }
                Outcome::StreamError => t.stream_errors += 1,
                Outcome::Abandoned => t.abandoned += 1,
                Outcome::Hung => t.hung += 1,
                Outcome::Lost(_) => t.lost += 1,
            }
            if matches!(r.outcome, Outcome::Hung | Outcome::Lost(_)) && t.examples.len() < EXAMPLES
            {
                t.examples.push(describe(r));
            }
            t.violations
                .extend(r.violations.iter().map(|v| format!("{}: {v}", describe(r))));
        }
        t
    }

    /// Explicit errors by status alone.
    pub fn refused_by_status(&self) -> BTreeMap<String, u64> {
        let mut by = BTreeMap::new();
        for ((status, _), n) in &self.refused {
            *by.entry(status.to_string()).or_default() += n;
        }
        by
    }
}

fn describe(r: &Record) -> String {
    format!(
        "client {} ({}, {}, {} prompt) sent at {:.1}s, ended at {:.1}s via {}: {:?}",
        r.client,
        r.role.name(),
        if r.stream { "stream" } else { "whole" },
        if r.long_prompt { "long" } else { "short" },
        r.sent.as_secs_f64(),
        r.ended.as_secs_f64(),
        r.region.as_deref().unwrap_or("-"),
        r.outcome
    )
}

/// A stretch of the run (by when requests were sent) and how its requests
/// ended.
pub struct Phase {
    pub name: &'static str,
    pub during: Range<Duration>,
    pub tally: Tally,
}

/// The run cut at the schedule's faults: steady load, the flood, the
/// quiet gap, the region down (kill to ready again), and recovery.
pub fn phases(
    records: &[Record],
    schedule: &Schedule,
    restart_ready: Option<Duration>,
) -> Vec<Phase> {
    let back = (schedule.restart_at + restart_ready.unwrap_or(schedule.run)).min(schedule.run);
    let cuts = [
        ("steady", Duration::ZERO..schedule.flood.start),
        ("flood", schedule.flood.clone()),
        ("after the flood", schedule.flood.end..schedule.kill_at),
        ("region down", schedule.kill_at..back),
        ("recovered", back..schedule.run),
    ];
    cuts.into_iter()
        .map(|(name, during)| Phase {
            name,
            tally: Tally::of(records.iter().filter(|r| during.contains(&r.sent))),
            during,
        })
        .collect()
}

impl Phase {
    fn line(&self) -> String {
        let t = &self.tally;
        let refused: Vec<String> = t
            .refused_by_status()
            .iter()
            .map(|(s, n)| format!("{n}×{s}"))
            .collect();
        format!(
            "{} sent: {} complete, errors [{}], {} mid-stream, {} abandoned, {} hung, {} lost",
            t.total,
            t.complete,
            refused.join(" "),
            t.stream_errors,
            t.abandoned,
            t.hung,
            t.lost
        )
    }

    fn json(&self) -> serde_json::Value {
        let t = &self.tally;
        serde_json::json!({
            "phase": self.name,
            "sent_from_s": round(self.during.start.as_secs_f64()),
            "sent_to_s": round(self.during.end.as_secs_f64()),
            "requests": t.total, "complete": t.complete, "explicit_error": t.refused_by_status(),
            "mid_stream_error": t.stream_errors, "abandoned_by_client": t.abandoned,
            "hung": t.hung, "lost": t.lost,
        })
    }
}

/// One request as a line of JSON (the soak's requests.jsonl, for
/// finding out what happened when).
pub fn record_line(r: &Record) -> String {
    let outcome = match &r.outcome {
        Outcome::Complete => "complete".to_owned(),
        Outcome::Refused { status, code, .. } => format!("{status} {code}"),
        Outcome::StreamError => "mid-stream error".to_owned(),
        Outcome::Abandoned => "abandoned".to_owned(),
        Outcome::Hung => "hung".to_owned(),
        Outcome::Lost(why) => format!("lost: {why}"),
    };
    serde_json::json!({
        "client": r.client, "role": r.role.name(), "stream": r.stream, "long_prompt": r.long_prompt,
        "sent_s": round(r.sent.as_secs_f64()), "ended_s": round(r.ended.as_secs_f64()),
        "outcome": outcome, "region": r.region, "attempts": r.attempts,
        "ttft_ms": r.ttft.map(|t| round(t.as_secs_f64() * 1000.0)), "content_events": r.gaps.len() + usize::from(r.ttft.is_some()),
    })
    .to_string()
}

/// Percentiles of a set of milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        Self {
            samples: ms.len(),
            p50_ms: percentile(&ms, 0.50),
            p99_ms: percentile(&ms, 0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"samples": self.samples, "p50_ms": round(self.p50_ms),
            "p99_ms": round(self.p99_ms), "max_ms": round(self.max_ms)})
    }
}

/// Nearest-rank percentile of sorted values (0 when there are none).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `x` to one decimal, as every figure is written.
pub fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Inter-token latency through the Worker: the gaps between consecutive
/// content events of the streams running in `window` (a gap belongs to the
/// window it ends in), of every region's streams or of `region`'s. Slow
/// readers' gaps are their own pauses, so they are left out.
pub fn itl(records: &[Record], window: &Range<Duration>, region: Option<&str>) -> Latency {
    let gaps = records
        .iter()
        .filter(|r| r.role != Role::SlowReader)
        .filter(|r| region.is_none() || r.region.as_deref() == region)
        .flat_map(|r| &r.gaps)
        .filter(|(at, _)| window.contains(at))
        .map(|(_, gap)| gap.as_secs_f64() * 1000.0)
        .collect();
    Latency::of(gaps)
}

/// Time to first token of the streams that got one.
pub fn ttft(records: &[Record]) -> Latency {
    Latency::of(
        records
            .iter()
            .filter_map(|r| r.ttft)
            .map(|t| t.as_secs_f64() * 1000.0)
            .collect(),
    )
}

/// Everything the checks and the outputs need.
pub struct Results<'a> {
    pub tally: Tally,
    pub phases: Vec<Phase>,
    pub itl_baseline: Latency,
    pub itl_flood: Latency,
    /// Per region: (name, without the flood, during it).
    pub itl_by_region: Vec<(String, Latency, Latency)>,
    pub ttft: Latency,
    pub memory: &'a [RegionMemory],
    pub flood: &'a FloodReport,
    pub max_rss_mib: u64,
    pub max_itl_p99_ms: f64,
    pub fault_error: Option<&'a str>,
}

impl<'a> Results<'a> {
    /// The figures of a run: `records` of the clients under `schedule` over
    /// `regions`, what the conductor did, and the regions' memory; checked
    /// against the bounds `max_rss_mib` and `max_itl_p99_ms`.
    pub fn of(
        records: &[Record],
        schedule: &Schedule,
        regions: &[&str],
        conducted: &'a Conducted,
        memory: &'a [RegionMemory],
        (max_rss_mib, max_itl_p99_ms): (u64, f64),
    ) -> Self {
        let restart_ready = conducted.restart_ready_s.map(Duration::from_secs_f64);
        let itl_by_region = regions
            .iter()
            .map(|&name| {
                let of = |window| itl(records, window, Some(name));
                (name.to_owned(), of(&schedule.baseline), of(&schedule.flood))
            })
            .collect();
        Self {
            tally: Tally::of(records),
            phases: phases(records, schedule, restart_ready),
            itl_baseline: itl(records, &schedule.baseline, None),
            itl_flood: itl(records, &schedule.flood, None),
            itl_by_region,
            ttft: ttft(records),
            memory,
            flood: &conducted.flood,
            max_rss_mib,
            max_itl_p99_ms,
            fault_error: conducted.error.as_deref(),
        }
    }
}

fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0)
}

/// The peak resident memory of any region process, MiB.
pub fn peak_mib(memory: &[RegionMemory]) -> f64 {
    memory
        .iter()
        .map(|m| mib(m.peak_rss_kib.max(m.peak_hwm_kib)))
        .fold(0.0, f64::max)
}

/// Why the soak failed; empty when it passed.
pub fn failures(r: &Results) -> Vec<String> {
    let t = &r.tally;
    let mut failed = Vec::new();
    if t.hung > 0 {
        failed.push(format!("{} request(s) hung", t.hung));
    }
    if t.lost > 0 {
        failed.push(format!("{} request(s) lost", t.lost));
    }
    if t.complete == 0 {
        failed.push("no request completed".into());
    }
    if !t.violations.is_empty() {
        failed.push(format!(
            "{} explicit error(s) broke the contract",
            t.violations.len()
        ));
    }
    let peak = peak_mib(r.memory);
    if peak > r.max_rss_mib as f64 {
        failed.push(format!(
            "a region's peak RSS {peak} MiB is over the bound {} MiB",
            r.max_rss_mib
        ));
    }
    if r.memory.iter().any(|m| m.peak_hwm_kib == 0) {
        failed.push("a region's memory was never sampled".into());
    }
    for (name, l) in [("without", &r.itl_baseline), ("during", &r.itl_flood)] {
        if l.p99_ms > r.max_itl_p99_ms {
            failed.push(format!(
                "inter-token latency p99 {name} the flood is {:.0} ms, over the bound {:.0} ms",
                l.p99_ms, r.max_itl_p99_ms
            ));
        }
    }
    if r.flood.hung > 0 {
        failed.push(format!(
            "{} flood request(s) got no answer within the deadline",
            r.flood.hung
        ));
    }
    if let Some(error) = r.fault_error {
        failed.push(format!("the fault schedule failed: {error}"));
    }
    failed
}

/// The summary table, for the log.
pub fn table(r: &Results) -> String {
    let t = &r.tally;
    let mut rows: Vec<(String, String)> = vec![
        ("requests".into(), t.total.to_string()),
        ("complete".into(), t.complete.to_string()),
    ];
    for ((status, code), n) in &t.refused {
        rows.push((format!("explicit error {status} {code}"), n.to_string()));
    }
    rows.extend([
        ("mid-stream error event".into(), t.stream_errors.to_string()),
        ("abandoned by client".into(), t.abandoned.to_string()),
        ("hung".into(), t.hung.to_string()),
        ("lost".into(), t.lost.to_string()),
        ("contract violations".into(), t.violations.len().to_string()),
        (
            "failed over (attempts > 1)".into(),
            t.failed_over.to_string(),
        ),
        ("complete, by region".into(), format!("{:?}", t.by_region)),
        (
            "flood (direct, 1-3 MiB)".into(),
            format!(
                "{} sent, by status {:?}, {} transport errors, {} hung",
                r.flood.sent, r.flood.by_status, r.flood.transport_errors, r.flood.hung
            ),
        ),
    ]);
    for p in &r.phases {
        rows.push((
            format!(
                "sent {:.0}-{:.0}s, {}",
                p.during.start.as_secs_f64(),
                p.during.end.as_secs_f64(),
                p.name
            ),
            p.line(),
        ));
    }
    for m in r.memory {
        rows.push((
            format!("peak RSS {}", m.name),
            format!(
                "{} MiB (VmHWM {} MiB, {} process(es))",
                mib(m.peak_rss_kib),
                mib(m.peak_hwm_kib),
                m.processes
            ),
        ));
    }
    rows.push(("peak RSS bound".into(), format!("{} MiB", r.max_rss_mib)));
    rows.push(latency_row("ITL without flood", &r.itl_baseline));
    rows.push(latency_row("ITL during flood", &r.itl_flood));
    for (name, without, during) in &r.itl_by_region {
        rows.push(latency_row(&format!("ITL {name} without flood"), without));
        rows.push(latency_row(&format!("ITL {name} during flood"), during));
    }
    rows.push(latency_row("TTFT", &r.ttft));
    rows.push((
        "ITL p99 bound".into(),
        format!("{:.0} ms", r.max_itl_p99_ms),
    ));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("  {k:<width$}  {v}\n"))
        .collect()
}

fn latency_row(name: &str, l: &Latency) -> (String, String) {
    (
        name.to_owned(),
        format!(
            "p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples)",
            l.p50_ms, l.p99_ms, l.max_ms, l.samples
        ),
    )
}

/// The results as JSON (docs/benchmarks/soak.md says what each field means).
pub fn json(r: &Results) -> serde_json::Value {
    let t = &r.tally;
    let memory: serde_json::Map<String, serde_json::Value> = r
        .memory
        .iter()
        .map(|m| {
            let first = m.timeline.first().map_or(0.0, |&(_, kib)| mib(kib));
            let last = m.timeline.last().map_or(0.0, |&(_, kib)| mib(kib));
            (
                m.name.clone(),
                serde_json::json!({
                    "peak_rss_mib": mib(m.peak_rss_kib), "peak_hwm_mib": mib(m.peak_hwm_kib),
                    "first_rss_mib": first, "last_rss_mib": last, "processes": m.processes,
                    "timeline_s_mib": m.timeline.iter().map(|&(s, kib)| (round(s), mib(kib))).collect::<Vec<_>>(),
                }),
            )
        })
        .collect();
    let flood_latency = Latency::of(r.flood.latencies_ms.clone());
    serde_json::json!({
        "requests": {
            "total": t.total,
            "complete": t.complete,
            "explicit_error": t.refused_by_status(),
            "explicit_error_by_code": t.refused.iter().map(|((s, c), n)| (format!("{s} {c}"), *n)).collect::<BTreeMap<_, _>>(),
            "explicit_error_first_message": t.refused_messages.iter().map(|((s, c), m)| (format!("{s} {c}"), m)).collect::<BTreeMap<_, _>>(),
            "mid_stream_error": t.stream_errors,
            "abandoned_by_client": t.abandoned,
            "hung": t.hung,
            "lost": t.lost,
            "contract_violations": t.violations.len(),
            "failed_over": t.failed_over,
            "complete_by_region": t.by_region,
            "examples": t.examples,
            "violations": t.violations.iter().take(EXAMPLES).collect::<Vec<_>>(),
        },
        "flood": {
            "sent": r.flood.sent,
            "mib_in_bodies": round(r.flood.bytes as f64 / 1048576.0),
            "by_status": r.flood.by_status.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "transport_errors": r.flood.transport_errors,
            "hung": r.flood.hung,
            "latency": flood_latency.json(),
        },
        "phases": r.phases.iter().map(Phase::json).collect::<Vec<_>>(),
        "memory": {"peak_rss_mib": peak_mib(r.memory), "bound_mib": r.max_rss_mib, "regions": memory},
        "itl": {"without_flood": r.itl_baseline.json(), "during_flood": r.itl_flood.json(),
                "by_region": r.itl_by_region.iter().map(|(name, without, during)| (name.clone(),
                    serde_json::json!({"without_flood": without.json(), "during_flood": during.json()})))
                    .collect::<serde_json::Map<_, _>>(),
                "p99_bound_ms": r.max_itl_p99_ms},
        "ttft": r.ttft.json(),
    })
}
