//! A stand-in Hugging Face Hub on 127.0.0.1 (or an address of the caller's,
//! such as the local cluster's pod gateway), for `HF_ENDPOINT`: one
//! model repository in the Hub's layout, as hf-hub reads it.
//!
//! - `GET /api/models/{org}/{repo}/revision/{rev}` lists the files with
//!   their sizes and hashes (`?blobs=true` form: `size`, `blobId`, and for
//!   LFS files `lfs.sha256`);
//! - `GET /{org}/{repo}/resolve/{rev}/{file}` serves a file, honouring
//!   `Range` (hf-hub probes with `bytes=0-0`, then downloads in ranges),
//!   with `x-repo-commit` and the ETag hf-hub names blobs by.
//!
//! It counts the bytes of file content it serves (probes excluded), and can
//! be told to corrupt the next downloads, to test what a client does with a
//! bad transfer, or to serve at a set rate, so a download lasts long enough
//! to watch.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The commit every revision resolves to.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One file of the repository. Files ending in `.gguf` or `.safetensors`
/// are served as LFS files (as the Hub does), the others as Git blobs.
#[derive(Debug, Clone)]
pub struct HubFile {
    pub name: String,
    pub content: Arc<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Shared {
    repo: String,
    files: BTreeMap<String, HubFile>,
    served_bytes: AtomicU64,
    /// Downloads (range requests past the probe) still to corrupt.
    corrupt_next: Mutex<u32>,
    /// Bytes per second over all downloads, and when the link is next free.
    rate: Mutex<Option<(u64, tokio::time::Instant)>>,
}

/// The fake Hub; stopped when dropped.
#[derive(Debug)]
pub struct FakeHub {
    /// For `HF_ENDPOINT`.
    pub url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeHub {
    /// Serves `files` as the repository `repo` (`org/name`) at any revision.
    pub async fn start(repo: &str, files: Vec<HubFile>) -> Self {
        Self::start_on("127.0.0.1", repo, files).await
    }

    /// [`FakeHub::start`] on `ip` (a port of its own).
    pub async fn start_on(ip: &str, repo: &str, files: Vec<HubFile>) -> Self {
        let shared = Arc::new(Shared {
            repo: repo.to_string(),
            files: files.into_iter().map(|f| (f.name.clone(), f)).collect(),
            ..Shared::default()
        });
        let app = Router::new()
            .route("/api/models/{org}/{name}/revision/{rev}", get(listing))
            .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .expect("bind the fake Hub");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, shared, task }
    }

    /// Bytes of file content served so far (`bytes=0-0` probes excluded).
    pub fn served_bytes(&self) -> u64 {
        self.shared.served_bytes.load(Ordering::SeqCst)
    }

    /// Flips a byte in each of the next `n` downloads of a file.
    pub fn corrupt_next(&self, n: u32) {
        *self.shared.corrupt_next.lock().expect("lock") = n;
    }

    /// Serves file content at most `bytes_per_second`, all downloads together.
    pub fn limit_rate(&self, bytes_per_second: u64) {
        *self.shared.rate.lock().expect("lock") =
            Some((bytes_per_second.max(1), tokio::time::Instant::now()));
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_lfs(name: &str) -> bool {
    name.ends_with(".gguf") || name.ends_with(".safetensors")
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn git_blob_id(bytes: &[u8]) -> String {
    use sha1::Digest as _;
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex::encode(hasher.finalize())
}

async fn listing(
    State(shared): State<Arc<Shared>>,
    Path((org, name, _rev)): Path<(String, String, String)>,
) -> Response {
    if format!("{org}/{name}") != shared.repo {
        return StatusCode::NOT_FOUND.into_response();
    }
    let siblings: Vec<_> = shared
        .files
        .values()
        .map(|f| {
            let mut sibling = json!({
                "rfilename": f.name,
                "size": f.content.len(),
                "blobId": git_blob_id(&f.content),
            });
            if is_lfs(&f.name) {
                sibling["lfs"] = json!({"sha256": sha256_hex(&f.content), "size": f.content.len(), "pointerSize": 134});
            }
            sibling
        })
        .collect();
    Json(json!({"id": shared.repo, "sha": COMMIT, "siblings": siblings})).into_response()
}

async fn resolve(
    State(shared): State<Arc<Shared>>,
    Path((org, name, _rev, file)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(f) = shared
        .files
        .get(&file)
        .filter(|_| format!("{org}/{name}") == shared.repo)
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let total = f.content.len() as u64;
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .map_or((0, total.saturating_sub(1)), |(a, b)| {
            (a, b.min(total.saturating_sub(1)))
        });
    let mut body = f.content[start as usize..=end as usize].to_vec();
    let probe = start == 0 && end == 0;
    let free_at = shared
        .rate
        .lock()
        .expect("lock")
        .as_mut()
        .map(|(rate, next)| {
            let begin = (*next).max(tokio::time::Instant::now());
            *next = begin + std::time::Duration::from_secs_f64(body.len() as f64 / *rate as f64);
            *next
        });
    if let Some(at) = free_at.filter(|_| !probe) {
        tokio::time::sleep_until(at).await;
    }
    if !probe {
        shared
            .served_bytes
            .fetch_add(body.len() as u64, Ordering::SeqCst);
        let mut corrupt = shared.corrupt_next.lock().expect("lock");
        if *corrupt > 0 && !body.is_empty() {
            *corrupt -= 1;
            let middle = body.len() / 2;
            body[middle] ^= 0xff;
        }
    }
    let etag = if is_lfs(&f.name) {
        sha256_hex(&f.content)
    } else {
        git_blob_id(&f.content)
    };
    let mut response = (StatusCode::PARTIAL_CONTENT, body).into_response();
    let h = response.headers_mut();
    h.insert("x-repo-commit", HeaderValue::from_static(COMMIT));
    let etag = HeaderValue::from_str(&format!("\"{etag}\"")).expect("etag");
    if is_lfs(&f.name) {
        h.insert("x-linked-etag", etag.clone());
        h.insert("x-linked-size", HeaderValue::from(total));
    }
    h.insert(header::ETAG, etag);
    h.insert(
        header::CONTENT_RANGE,
        HeaderValue::from_str(&format!("bytes {start}-{end}/{total}")).expect("range"),
    );
    response
}
