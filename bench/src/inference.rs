//! The inference benchmark: the same greedy chat requests against every
//! target at each concurrency, in rounds that rotate the target order.
//! Each batch's requests take the prompts in turn from where the previous
//! round's batch stopped, so small batches (one request per round) still
//! cover every prompt.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use anyhow::Context;
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    cpu,
    stats::{Millis, round3},
    targets::{Sample, Target},
};

/// Fixed prompts, one per request in turn; short, so decoding dominates.
const PROMPTS: &[&str] = &[
    "Explain what a load balancer does in a few sentences.",
    "Write a short poem about the sea at night.",
    "List five tips for writing clear documentation.",
    "What is the difference between a process and a thread?",
    "Describe how to make a cup of tea, step by step.",
    "Why is the sky blue? Answer for a ten year old.",
    "Summarise the plot of a detective story you invent.",
    "Give three reasons to learn a second language.",
];

const IN_PROCESS: &str = "in_process";
const GRPC: &str = "backhaul_grpc";
const HTTP: &str = "backhaul_http";
const SERVE: &str = "mistralrs_serve";

/// Inference benchmark: Backhaul's gRPC and HTTP surfaces against mistral.rs
/// in-process, `mistralrs serve` and other OpenAI-compatible servers (peers,
/// e.g. llama.cpp's), same model, prompts and greedy sampling.
#[derive(clap::Parser, Debug)]
#[command(name = "backhaul-bench", version)]
pub struct Args {
    /// The GGUF file (also loaded in this process).
    #[arg(long)]
    model: PathBuf,
    /// Where the in-process engine runs: `cpu`, or `cuda` (a build with the
    /// `cuda` feature).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    /// Backhaul's gRPC endpoint, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    grpc: Option<String>,
    /// Backhaul's HTTP base URL, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    http: Option<String>,
    /// Model name Backhaul's HTTP surface serves.
    #[arg(long, default_value = "smollm2")]
    http_model: String,
    /// `mistralrs serve` base URL, e.g. http://127.0.0.1:1234.
    #[arg(long)]
    serve: Option<String>,
    /// Model name `mistralrs serve` answers to.
    #[arg(long, default_value = "default")]
    serve_model: String,
    /// Another OpenAI-compatible server measured beside Backhaul, as
    /// NAME=BASE_URL (NAME: lowercase letters, digits, `_`; it keys the
    /// results); it answers to the first model its /v1/models lists.
    /// Repeatable.
    #[arg(long, value_parser = parse_peer)]
    peer: Vec<(String, String)>,
    /// Process id of a peer's server, as NAME=PID, to account its CPU.
    #[arg(long, value_parser = parse_peer_pid)]
    peer_pid: Vec<(String, u32)>,
    /// Leave mistral.rs in-process out (it is then not the reference for the
    /// greedy-text check: the first target is).
    #[arg(long)]
    no_in_process: bool,
    /// Concurrency levels (requests in flight at once).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    concurrency: Vec<usize>,
    /// Requests per batch: max(this × concurrency, --min-requests).
    #[arg(long, default_value_t = 2)]
    requests_factor: usize,
    /// Fewest requests in one batch.
    #[arg(long, default_value_t = 6)]
    min_requests: usize,
    /// Rounds; each runs every target once per concurrency, order rotated.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// max_tokens of every request.
    #[arg(long, default_value_t = 96)]
    max_tokens: usize,
    /// Process id of the `backhaul-inference` behind --grpc/--http, to
    /// account the CPU it spends per output token.
    #[arg(long)]
    backhaul_pid: Option<u32>,
    /// Process id of `mistralrs serve`, likewise.
    #[arg(long)]
    serve_pid: Option<u32>,
    /// Most sequences the in-process engine batches together (it also
    /// sizes the automatic device map); give the servers the same
    /// (`backhaul-inference --max-num-seqs`, `mistralrs serve --max-seqs`).
    /// Requests beyond it wait in the engine's queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    max_num_seqs: u32,
    /// Context the in-process engine's automatic device map plans for,
    /// with --max-num-seqs sequences (mistral.rs's default: 4096); give the
    /// servers the same (`backhaul-inference --max-seq-len`, `mistralrs
    /// serve --max-seq-len`). At 128 sequences the default plans a KV cache
    /// larger than an 80 GB GPU for an 8B model and maps layers to the CPU.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    max_seq_len: u32,
}

/// Names the results already use for the built-in targets.
const BUILT_IN: &[&str] = &[IN_PROCESS, GRPC, HTTP, SERVE];

fn parse_peer(s: &str) -> Result<(String, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=BASE_URL"))?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid || BUILT_IN.contains(&name) {
        return Err(format!(
            "{name:?}: a peer's name is lowercase letters, digits and `_`, and not one of {BUILT_IN:?}"
        ));
    }
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(format!("{url:?}: expected an http(s) base URL"));
    }
    Ok((name.to_string(), url.to_string()))
}

fn parse_peer_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PID"))?;
    let pid = pid.parse().map_err(|e| format!("{pid:?}: {e}"))?;
    Ok((name.to_string(), pid))
}

/// Whose CPU one target's tokens cost: the process that generates them
/// (this one for in-process) and, for a server, this process as its client.
#[derive(Debug, Clone, Copy)]
struct CpuAccount {
    server: Option<u32>,
    client: Option<u32>,
}

impl CpuAccount {
    fn read(self) -> anyhow::Result<(Option<f64>, Option<f64>)> {
        let read = |pid: Option<u32>| {
            pid.map(|p| cpu::seconds(p).with_context(|| format!("CPU time of process {p}")))
                .transpose()
        };
        Ok((read(self.server)?, read(self.client)?))
    }
}

/// One batch: `requests` requests, `concurrency` at a time.
#[derive(Debug, Default)]
struct Batch {
    wall_s: f64,
    samples: Vec<Sample>,
    /// CPU seconds the server (in-process: this process) used meanwhile.
    server_cpu_s: Option<f64>,
    /// CPU seconds this process used as the server's client.
    client_cpu_s: Option<f64>,
}

impl Batch {
    fn tokens(&self) -> usize {
        self.samples.iter().map(|s| s.tokens).sum()
    }
}

/// `first_prompt`: where in `PROMPTS` the batch's first request starts.
async fn run_batch(
    target: &Arc<Target>,
    account: CpuAccount,
    concurrency: usize,
    requests: usize,
    first_prompt: usize,
    max_tokens: usize,
) -> anyhow::Result<Batch> {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = account.read()?;
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let target = Arc::clone(target);
        let next = Arc::clone(&next);
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return anyhow::Ok(samples);
                }
                let prompt = PROMPTS[(first_prompt + i) % PROMPTS.len()];
                let sample = target.run(prompt, max_tokens).await?;
                samples.push((i, sample));
            }
        }));
    }
    let mut all = Vec::new();
    for worker in workers {
        all.extend(worker.await??);
    }
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_after = account.read()?;
    let delta = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
    all.sort_by_key(|(i, _)| *i);
    Ok(Batch {
        wall_s,
        samples: all.into_iter().map(|(_, s)| s).collect(),
        server_cpu_s: delta(cpu_before.0, cpu_after.0),
        client_cpu_s: delta(cpu_before.1, cpu_after.1),
    })
}

/// CPU milliseconds per output token over a set of batches.
#[derive(Debug, Clone, Copy, Serialize)]
struct CpuPerToken {
    /// The generating process: this one in-process, else the server.
    server_ms: f64,
    /// This process as the server's client (absent in-process).
    client_ms: Option<f64>,
}

impl CpuPerToken {
    fn of(batches: &[Batch]) -> Option<Self> {
        let tokens = batches.iter().map(Batch::tokens).sum::<usize>() as f64;
        let sum = |f: fn(&Batch) -> Option<f64>| -> Option<f64> {
            batches.iter().map(f).sum::<Option<f64>>()
        };
        let per_token = |s: f64| round3(s * 1000.0 / tokens);
        Some(Self {
            server_ms: per_token(sum(|b| b.server_cpu_s)?),
            client_ms: sum(|b| b.client_cpu_s).map(per_token),
        })
    }
}

#[derive(Debug, Serialize)]
struct Level {
    requests: usize,
    output_tokens: usize,
    wall_s: f64,
    /// Output tokens over wall time, all rounds together.
    output_tokens_per_s: f64,
    /// The same, per round.
    rounds_output_tokens_per_s: Vec<f64>,
    ttft_ms: Millis,
    inter_token_ms: Millis,
    /// Absent when the server's process id was not given.
    cpu_per_token: Option<CpuPerToken>,
    /// Requests whose completion tokens the server reported (usage); the
    /// others were counted from the stream (see `Sample::tokens`).
    tokens_from_usage: usize,
}

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let started = chrono::Utc::now();
    let me = Some(std::process::id());
    let served_by = |server: Option<u32>| CpuAccount {
        server,
        client: server.and(me),
    };
    let mut targets: Vec<(String, Arc<Target>)> = Vec::new();
    let mut accounts: BTreeMap<String, CpuAccount> = BTreeMap::new();
    if !args.no_in_process {
        eprintln!("[bench] loading {} in-process", args.model.display());
        targets.push((
            IN_PROCESS.into(),
            Arc::new(
                Target::in_process(
                    &args.model,
                    args.device == "cpu",
                    args.max_num_seqs as usize,
                    args.max_seq_len as usize,
                )
                .await?,
            ),
        ));
        accounts.insert(
            IN_PROCESS.into(),
            CpuAccount {
                server: me,
                client: None,
            },
        );
    }
    if let Some(addr) = &args.grpc {
        targets.push((GRPC.into(), Arc::new(Target::grpc(addr).await?)));
        accounts.insert(GRPC.into(), served_by(args.backhaul_pid));
    }
    if let Some(base) = &args.http {
        targets.push((
            HTTP.into(),
            Arc::new(Target::openai(base, &args.http_model)?),
        ));
        accounts.insert(HTTP.into(), served_by(args.backhaul_pid));
    }
    if let Some(base) = &args.serve {
        targets.push((
            SERVE.into(),
            Arc::new(Target::openai(base, &args.serve_model)?),
        ));
        accounts.insert(SERVE.into(), served_by(args.serve_pid));
    }
    let mut peer_models = serde_json::Map::new();
    for (name, base) in &args.peer {
        if accounts.contains_key(name) {
            anyhow::bail!("--peer {name} given twice");
        }
        let (target, model) = Target::openai_first_model(base)
            .await
            .with_context(|| format!("peer {name}"))?;
        let pid = args
            .peer_pid
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, pid)| *pid);
        targets.push((name.clone(), Arc::new(target)));
        accounts.insert(name.clone(), served_by(pid));
        peer_models.insert(name.clone(), json!(model));
    }
    if let Some((name, _)) = args
        .peer_pid
        .iter()
        .find(|(n, _)| !accounts.contains_key(n))
    {
        anyhow::bail!("--peer-pid {name}: no --peer of that name");
    }
    anyhow::ensure!(!targets.is_empty(), "no target to measure");

    // Warm-up: two sequential requests each, and the greedy texts of every
    // prompt at concurrency 1, to check all targets generate the same thing.
    let mut texts: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, target) in &targets {
        for prompt in PROMPTS.iter().take(2) {
            target
                .run(prompt, args.max_tokens)
                .await
                .with_context(|| format!("warm-up of {name}"))?;
        }
        let mut mine = Vec::new();
        for prompt in PROMPTS {
            mine.push(target.run(prompt, args.max_tokens).await?.text);
        }
        texts.insert(name.as_str(), mine);
        eprintln!("[bench] {name}: warmed up");
    }

    // (target, concurrency) → batches across rounds.
    let mut batches: BTreeMap<(&str, usize), Vec<Batch>> = BTreeMap::new();
    for round in 0..args.rounds {
        for &c in &args.concurrency {
            let requests = (args.requests_factor * c).max(args.min_requests);
            let n = targets.len();
            for k in 0..n {
                let (name, target) = &targets[(k + round) % n];
                let batch = run_batch(
                    target,
                    accounts[name],
                    c,
                    requests,
                    round * requests,
                    args.max_tokens,
                )
                .await
                .with_context(|| format!("{name} at concurrency {c}"))?;
                let tokens = batch.tokens();
                let cpu = batch
                    .server_cpu_s
                    .map(|s| format!(", {:.1} CPU ms/token", s * 1000.0 / tokens as f64))
                    .unwrap_or_default();
                eprintln!(
                    "[bench] round {} c={c} {name}: {:.1} tok/s ({tokens} tokens in {:.2}s{cpu})",
                    round + 1,
                    tokens as f64 / batch.wall_s,
                    batch.wall_s
                );
                batches.entry((name.as_str(), c)).or_default().push(batch);
            }
        }
    }

    let mut results: BTreeMap<&str, BTreeMap<String, Level>> = BTreeMap::new();
    for ((name, c), runs) in &batches {
        let samples: Vec<&Sample> = runs.iter().flat_map(|b| &b.samples).collect();
        let output_tokens: usize = samples.iter().map(|s| s.tokens).sum();
        let wall_s: f64 = runs.iter().map(|b| b.wall_s).sum();
        let ttft: Vec<f64> = samples.iter().map(|s| s.ttft_s).collect();
        let gaps: Vec<f64> = samples.iter().flat_map(|s| s.gaps_s.clone()).collect();
        results.entry(name).or_default().insert(
            c.to_string(),
            Level {
                requests: samples.len(),
                output_tokens,
                wall_s: round3(wall_s),
                output_tokens_per_s: round3(output_tokens as f64 / wall_s),
                rounds_output_tokens_per_s: runs
                    .iter()
                    .map(|b| round3(b.tokens() as f64 / b.wall_s))
                    .collect(),
                ttft_ms: Millis::of_seconds(&ttft),
                inter_token_ms: Millis::of_seconds(&gaps),
                cpu_per_token: CpuPerToken::of(runs),
                tokens_from_usage: samples.iter().filter(|s| s.tokens_from_usage).count(),
            },
        );
    }

    // Backhaul over the other, output tokens/s, per surface and concurrency;
    // `rounds` pairs batches of the same round (run back to back).
    let ratio = |surface: &str, other: &str| -> Value {
        let mut out = serde_json::Map::new();
        for &c in &args.concurrency {
            let (Some(a), Some(b)) = (batches.get(&(surface, c)), batches.get(&(other, c))) else {
                continue;
            };
            let tps = |bs: &[Batch]| -> Vec<f64> {
                bs.iter().map(|b| b.tokens() as f64 / b.wall_s).collect()
            };
            let total = |bs: &[Batch]| {
                bs.iter()
                    .flat_map(|b| &b.samples)
                    .map(|s| s.tokens)
                    .sum::<usize>() as f64
                    / bs.iter().map(|b| b.wall_s).sum::<f64>()
            };
            let per_round: Vec<f64> = tps(a)
                .iter()
                .zip(tps(b))
                .map(|(x, y)| round3(x / y))
                .collect();
            out.insert(
                c.to_string(),
                json!({"ratio": round3(total(a) / total(b)), "rounds": per_round}),
            );
        }
        Value::Object(out)
    };
    // Server CPU per output token, Backhaul over the other (below 1: less
    // CPU per token than the other).
    let cpu_ratio = |surface: &str, other: &str| -> Value {
        let mut out = serde_json::Map::new();
        for &c in &args.concurrency {
            let cpu = |name: &str| results.get(name)?.get(&c.to_string())?.cpu_per_token;
            if let (Some(a), Some(b)) = (cpu(surface), cpu(other)) {
                out.insert(c.to_string(), json!(round3(a.server_ms / b.server_ms)));
            }
        }
        Value::Object(out)
    };
    // Time to first token, Backhaul's p50 and p99 over the other's (below 1:
    // Backhaul answers sooner).
    let ttft_ratio = |surface: &str, other: &str| -> Value {
        let mut out = serde_json::Map::new();
        for &c in &args.concurrency {
            let ttft = |name: &str| Some(results.get(name)?.get(&c.to_string())?.ttft_ms);
            if let (Some(a), Some(b)) = (ttft(surface), ttft(other)) {
                out.insert(
                    c.to_string(),
                    json!({"p50": round3(a.p50 / b.p50), "p99": round3(a.p99 / b.p99)}),
                );
            }
        }
        Value::Object(out)
    };
    let mut vs_in = serde_json::Map::new();
    let mut vs_serve = serde_json::Map::new();
    let mut cpu_vs_in = serde_json::Map::new();
    let mut cpu_vs_serve = serde_json::Map::new();
    // peer → surface → concurrency → figure.
    let mut vs_peers = serde_json::Map::new();
    let mut cpu_vs_peers = serde_json::Map::new();
    let mut ttft_vs_peers = serde_json::Map::new();
    for surface in [GRPC, HTTP] {
        if results.contains_key(surface) {
            if results.contains_key(IN_PROCESS) {
                vs_in.insert(surface.into(), ratio(surface, IN_PROCESS));
                cpu_vs_in.insert(surface.into(), cpu_ratio(surface, IN_PROCESS));
            }
            if results.contains_key(SERVE) {
                vs_serve.insert(surface.into(), ratio(surface, SERVE));
                cpu_vs_serve.insert(surface.into(), cpu_ratio(surface, SERVE));
            }
            for (peer, _) in &args.peer {
                let entry = |m: &mut serde_json::Map<String, Value>, v: Value| {
                    if let Value::Object(per) = m.entry(peer.clone()).or_insert_with(|| json!({})) {
                        per.insert(surface.into(), v);
                    }
                };
                entry(&mut vs_peers, ratio(surface, peer));
                entry(&mut cpu_vs_peers, cpu_ratio(surface, peer));
                entry(&mut ttft_vs_peers, ttft_ratio(surface, peer));
            }
        }
    }

    // The greedy texts at c=1 against a reference: mistral.rs in-process,
    // else the first target.
    let reference = if texts.contains_key(IN_PROCESS) {
        IN_PROCESS
    } else {
        targets[0].0.as_str()
    };
    let same_text: BTreeMap<&str, String> = texts
        .iter()
        .map(|(name, t)| {
            let same = t
                .iter()
                .zip(&texts[reference])
                .filter(|(a, b)| a == b)
                .count();
            (*name, format!("{same}/{}", texts[reference].len()))
        })
        .collect();
    let mut report = json!({
        "started": started.to_rfc3339(),
        "finished": chrono::Utc::now().to_rfc3339(),
        "config": {
            "model": args.model.file_name().map(|f| f.to_string_lossy().to_string()),
            "prompts": PROMPTS.len(),
            "max_tokens": args.max_tokens,
            "temperature": 0,
            "device": args.device,
            "concurrency": args.concurrency,
            "requests_per_batch": args.concurrency.iter().map(|c| (args.requests_factor * c).max(args.min_requests)).collect::<Vec<_>>(),
            "rounds": args.rounds,
            "in_process_max_num_seqs": args.max_num_seqs,
            "in_process_max_seq_len": args.max_seq_len,
        },
        "targets": results,
        "ratio_vs_inprocess": vs_in,
        "ratio_vs_mistralrs_serve": vs_serve,
        "cpu_per_token_ratio_vs_inprocess": cpu_vs_in,
        "cpu_per_token_ratio_vs_mistralrs_serve": cpu_vs_serve,
        "same_greedy_text": {"reference": reference, "same": same_text},
    });
    if reference == IN_PROCESS {
        report["same_greedy_text_as_inprocess"] = report["same_greedy_text"]["same"].clone();
    }
    if !args.peer.is_empty() {
        report["peers"] = Value::Object(peer_models);
        report["ratio_vs_peers"] = Value::Object(vs_peers);
        report["cpu_per_token_ratio_vs_peers"] = Value::Object(cpu_vs_peers);
        report["ttft_ratio_vs_peers"] = Value::Object(ttft_vs_peers);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_a_fresh_name_and_a_base_url() {
        assert_eq!(
            parse_peer("llama_cpp=http://127.0.0.1:8080"),
            Ok(("llama_cpp".into(), "http://127.0.0.1:8080".into()))
        );
        assert!(parse_peer("llama_cpp").is_err());
        assert!(parse_peer("Llama=http://x").is_err());
        assert!(parse_peer("backhaul_http=http://x").is_err());
        assert!(parse_peer("llama_cpp=127.0.0.1:8080").is_err());
        assert_eq!(parse_peer_pid("llama_cpp=42"), Ok(("llama_cpp".into(), 42)));
        assert!(parse_peer_pid("llama_cpp=x").is_err());
    }

    #[test]
    fn the_in_process_engine_plans_32_sequences_of_4096_tokens_unless_told() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            Args::try_parse_from(["backhaul-bench", "--model", "m.gguf"].iter().chain(extra))
        };
        let args = parse(&[]).unwrap();
        assert_eq!((args.max_num_seqs, args.max_seq_len), (32, 4096));
        let args = parse(&[
            "--max-num-seqs",
            "128",
            "--max-seq-len",
            "1024",
            "--concurrency",
            "1,8,32,128",
        ])
        .unwrap();
        assert_eq!((args.max_num_seqs, args.max_seq_len), (128, 1024));
        assert_eq!(args.concurrency, [1, 8, 32, 128]);
        assert!(parse(&["--max-num-seqs", "0"]).is_err());
        assert!(parse(&["--max-seq-len", "0"]).is_err());
    }
}
