//! `hf://` models from a stand-in Hub (`HF_ENDPOINT`), on the real binary:
//! `--download-only` fetches and verifies the files and a second fill
//! downloads nothing; a transfer corrupted once is detected and fetched
//! again; one that stays corrupted fails naming the file; a damaged cache
//! is repaired; and a server started from an `hf://` SmolLM2 serves it.
//! A fill (a weight cache's Job) prints its progress for the operator and
//! saves its record; `--hub-offline` (a replica on a filled cache) loads
//! from the cache without the Hub, and refuses a cache whose fill did not
//! complete or whose files changed since.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::Arc,
    time::Duration,
};

use backhaul_testkit::hub::{COMMIT, FakeHub, HubFile};
use common::*;
use serde_json::json;

const REPO: &str = "acme/tiny";
const FILE: &str = "tiny.gguf";

fn tiny_weights() -> Vec<u8> {
    // 3 MiB that differ byte to byte, so a flipped byte shows.
    (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

async fn hub_with(content: Vec<u8>) -> FakeHub {
    FakeHub::start(
        REPO,
        vec![
            HubFile {
                name: FILE.into(),
                content: Arc::new(content),
            },
            HubFile {
                name: "README.md".into(),
                content: Arc::new(b"# tiny\n".to_vec()),
            },
        ],
    )
    .await
}

async fn download(hub: &FakeHub, cache: &Path) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_backhaul-inference"))
        .args(["--download-only", "--model", &format!("hf://{REPO}@main")])
        .args(["--format", "gguf", "--gguf-file", FILE, "--model-cache"])
        .arg(cache)
        .env("HF_ENDPOINT", &hub.url)
        .env_remove("HF_TOKEN")
        .output()
        .await
        .expect("the binary runs")
}

fn cached(cache: &Path) -> PathBuf {
    cache
        .join(format!("models--{}", REPO.replace('/', "--")))
        .join("snapshots")
        .join(COMMIT)
        .join(FILE)
}

/// Rewrites the cached file with one byte of `weights` flipped at `at`:
/// same size, other bytes, a later modification time than its check.
async fn alter_in_place(cache: &Path, weights: &[u8], at: usize) {
    let blob = std::fs::canonicalize(cached(cache)).unwrap();
    let mut altered = weights.to_vec();
    altered[at] ^= 1;
    tokio::time::sleep(Duration::from_millis(20)).await; // a later mtime
    std::fs::write(&blob, &altered).unwrap();
}

fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_verified_download_is_not_fetched_again() {
    let weights = tiny_weights();
    let hub = hub_with(weights.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    assert_ok(&download(&hub, cache.path()).await);
    assert_eq!(hub.served_bytes(), weights.len() as u64);
    assert_eq!(std::fs::read(cached(cache.path())).unwrap(), weights);
    // A second fill (a restarted pod, a second replica) finds it verified.
    assert_ok(&download(&hub, cache.path()).await);
    assert_eq!(hub.served_bytes(), weights.len() as u64);
}

#[tokio::test]
async fn a_corrupted_transfer_is_detected_and_fetched_again() {
    let weights = tiny_weights();
    let hub = hub_with(weights.clone()).await;
    hub.corrupt_next(1);
    let cache = tempfile::tempdir().unwrap();
    let output = download(&hub, cache.path()).await;
    assert_ok(&output);
    assert_eq!(hub.served_bytes(), 2 * weights.len() as u64);
    assert_eq!(std::fs::read(cached(cache.path())).unwrap(), weights);
    // The server logs to stdout.
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("does not match the Hub"), "{log}");
}

#[tokio::test]
async fn a_transfer_that_stays_corrupted_fails_naming_the_file() {
    let hub = hub_with(tiny_weights()).await;
    hub.corrupt_next(u32::MAX);
    let cache = tempfile::tempdir().unwrap();
    let output = download(&hub, cache.path()).await;
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains(FILE) && log.contains("sha256"), "{log}");
}

#[tokio::test]
async fn a_truncated_or_altered_cache_is_repaired() {
    let weights = tiny_weights();
    let hub = hub_with(weights.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    assert_ok(&download(&hub, cache.path()).await);
    let blob = std::fs::canonicalize(cached(cache.path())).unwrap();

    // Cut short (a node that lost power mid-write).
    std::fs::write(&blob, &weights[..weights.len() / 2]).unwrap();
    assert_ok(&download(&hub, cache.path()).await);
    assert_eq!(hub.served_bytes(), 2 * weights.len() as u64);
    assert_eq!(std::fs::read(cached(cache.path())).unwrap(), weights);

    // Same size, other bytes, written after it was verified.
    alter_in_place(cache.path(), &weights, 12_345).await;
    assert_ok(&download(&hub, cache.path()).await);
    assert_eq!(hub.served_bytes(), 3 * weights.len() as u64);
    assert_eq!(std::fs::read(cached(cache.path())).unwrap(), weights);
}

#[tokio::test]
async fn a_server_started_from_an_hf_model_serves_it() {
    let gguf = model_path();
    let name = gguf.file_name().unwrap().to_string_lossy().to_string();
    let hub = FakeHub::start(
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        vec![HubFile {
            name: name.clone(),
            content: Arc::new(std::fs::read(&gguf).unwrap()),
        }],
    )
    .await;
    let cache = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        &[
            "--model",
            "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
            "--gguf-file",
            &name,
            "--model-cache",
            cache.path().to_str().unwrap(),
        ],
        &[("HF_ENDPOINT", hub.url.as_str())],
    )
    .await;
    let response = http()
        .post(format!("{}/v1/chat/completions", server.http))
        .json(&json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(hub.served_bytes(), std::fs::metadata(&gguf).unwrap().len());
}

fn offline_args(cache: &Path) -> backhaul_inference::config::ModelArgs {
    use clap::Parser;
    backhaul_inference::Config::try_parse_from([
        "backhaul-inference",
        "--model",
        &format!("hf://{REPO}@main"),
        "--format",
        "gguf",
        "--gguf-file",
        FILE,
        "--hub-offline",
        "--model-cache",
        cache.to_str().unwrap(),
    ])
    .unwrap()
    .model
}

#[tokio::test]
async fn a_fill_reports_progress_to_the_last_byte_and_saves_its_record() {
    let weights = tiny_weights();
    let hub = hub_with(weights.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    let output = download(&hub, cache.path()).await;
    assert_ok(&output);
    let log = String::from_utf8_lossy(&output.stdout);
    let last = backhaul_telemetry::DownloadProgress::last_in(&log).expect("a progress line");
    let size = weights.len() as u64;
    assert_eq!(
        last,
        backhaul_telemetry::DownloadProgress {
            bytes_done: size,
            bytes_total: size,
            files_done: 1,
            files_total: 1,
        }
    );
    // The first line gives the totals before any byte arrives.
    let first = log
        .lines()
        .find_map(backhaul_telemetry::DownloadProgress::last_in)
        .unwrap();
    assert_eq!((first.bytes_done, first.bytes_total), (0, size));
    assert!(
        backhaul_inference::model_source::completion_record(cache.path(), REPO, "main").is_file()
    );
}

#[tokio::test]
async fn offline_resolution_reads_a_completed_fill_without_the_hub() {
    let weights = tiny_weights();
    let hub = hub_with(weights.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    assert_ok(&download(&hub, cache.path()).await);
    // Gone: a request to it would fail.
    drop(hub);
    let local = backhaul_inference::model_source::resolve(&offline_args(cache.path()))
        .await
        .unwrap();
    let backhaul_inference::model_source::LocalModel::Gguf { dir, files } = local else {
        panic!("a GGUF model")
    };
    assert_eq!(files, vec![FILE.to_string()]);
    assert_eq!(std::fs::read(dir.join(FILE)).unwrap(), weights);
}

#[tokio::test]
async fn offline_resolution_refuses_an_unfinished_or_altered_cache() {
    let weights = tiny_weights();
    let hub = hub_with(weights.clone()).await;
    let cache = tempfile::tempdir().unwrap();
    assert_ok(&download(&hub, cache.path()).await);

    // Altered after the fill.
    alter_in_place(cache.path(), &weights, 7).await;
    let err = backhaul_inference::model_source::resolve(&offline_args(cache.path()))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not match its fill") && err.contains(FILE),
        "{err}"
    );

    // A fill that never finished leaves no record.
    std::fs::remove_file(backhaul_inference::model_source::completion_record(
        cache.path(),
        REPO,
        "main",
    ))
    .unwrap();
    let err = backhaul_inference::model_source::resolve(&offline_args(cache.path()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no completed fill"), "{err}");
    assert_eq!(
        hub.served_bytes(),
        weights.len() as u64,
        "offline never downloads"
    );
}
