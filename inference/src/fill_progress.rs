//! A weight cache fill's progress, printed on stdout as
//! [`DownloadProgress`] lines for the operator to read back from the fill's
//! pod log: one when the totals are known, one at most every second while a
//! file downloads, and one as each file is verified.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use backhaul_telemetry::DownloadProgress;

/// How often a line is printed while a file downloads.
const EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Tally {
    progress: DownloadProgress,
    /// Bytes of the file being fetched so far.
    current: u64,
    printed: Option<Instant>,
}

/// Counts a fill's bytes and prints them; a disabled one (a server resolving
/// its model at start) counts nothing and prints nothing.
#[derive(Debug, Clone, Default)]
pub struct FillProgress {
    tally: Option<Arc<Mutex<Tally>>>,
}

impl FillProgress {
    /// Prints progress over `files_total` files of `bytes_total` bytes.
    pub fn printing(bytes_total: u64, files_total: u32) -> Self {
        let this = Self {
            tally: Some(Arc::new(Mutex::new(Tally {
                progress: DownloadProgress {
                    bytes_total,
                    files_total,
                    ..DownloadProgress::default()
                },
                current: 0,
                printed: None,
            }))),
        };
        this.print(true);
        this
    }

    /// A file of `size` bytes is present and verified.
    pub fn file_done(&self, size: u64) {
        if let Some(tally) = &self.tally {
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            t.progress.files_done += 1;
            t.progress.bytes_done += size;
            t.current = 0;
        }
        self.print(true);
    }

    fn print(&self, force: bool) {
        let Some(tally) = &self.tally else { return };
        let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
        if !force && t.printed.is_some_and(|at| at.elapsed() < EVERY) {
            return;
        }
        t.printed = Some(Instant::now());
        let shown = DownloadProgress {
            bytes_done: (t.progress.bytes_done + t.current).min(t.progress.bytes_total),
            ..t.progress
        };
        println!("{}", shown.line());
    }
}

impl hf_hub::api::tokio::Progress for FillProgress {
    async fn init(&mut self, _size: usize, _filename: &str) {
        if let Some(tally) = &self.tally {
            tally.lock().unwrap_or_else(|e| e.into_inner()).current = 0;
        }
    }

    async fn update(&mut self, size: usize) {
        if let Some(tally) = &self.tally {
            tally.lock().unwrap_or_else(|e| e.into_inner()).current += size as u64;
        }
        self.print(false);
    }

    async fn finish(&mut self) {}
}
