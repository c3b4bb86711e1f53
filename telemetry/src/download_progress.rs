//! The progress line a weight cache's fill (`backhaul-inference
//! --download-only`) prints on stdout, and the operator reads back from the
//! fill's pod log to report `Downloading n/m bytes` in status. One
//! definition for both sides: the writer and the reader are this type.
//!
//! A line is one JSON object with a single key, so it stands apart from the
//! log lines around it in either log format: `{"backhaulDownload":{...}}`.

use serde::{Deserialize, Serialize};

/// The key that marks a progress line.
const KEY: &str = "backhaulDownload";

/// How far a fill has come.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DownloadProgress {
    /// Bytes of the needed files present and verified, plus those of the
    /// file being fetched so far.
    pub bytes_done: u64,
    /// Bytes of every file the model needs, from the Hub's listing.
    pub bytes_total: u64,
    /// Files present and verified.
    pub files_done: u32,
    /// Files the model needs.
    pub files_total: u32,
}

#[derive(Serialize, Deserialize)]
struct Line {
    #[serde(rename = "backhaulDownload")]
    progress: DownloadProgress,
}

impl DownloadProgress {
    /// The line to print (without the newline).
    pub fn line(&self) -> String {
        serde_json::to_string(&Line { progress: *self }).unwrap_or_default()
    }

    /// The newest progress line in `log` (a pod log's tail), if any.
    pub fn last_in(log: &str) -> Option<Self> {
        log.lines()
            .rev()
            .filter(|l| l.contains(KEY))
            .find_map(|l| serde_json::from_str::<Line>(l.trim()).ok())
            .map(|l| l.progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_line_wins_and_other_lines_are_skipped() {
        let a = DownloadProgress {
            bytes_done: 10,
            bytes_total: 100,
            files_done: 0,
            files_total: 2,
        };
        let b = DownloadProgress {
            bytes_done: 60,
            ..a
        };
        let log = format!(
            "2026-12-06T10:00:00Z INFO downloading GGUF file\n{}\n{{\"level\":\"INFO\",\"fields\":{{\"message\":\"backhaulDownload\"}}}}\n{}\nnot json\n",
            a.line(),
            b.line()
        );
        assert_eq!(DownloadProgress::last_in(&log), Some(b));
        assert_eq!(
            b.line(),
            r#"{"backhaulDownload":{"bytesDone":60,"bytesTotal":100,"filesDone":0,"filesTotal":2}}"#
        );
    }

    #[test]
    fn a_log_without_progress_has_none() {
        assert_eq!(
            DownloadProgress::last_in("starting\nbackhaulDownload: {\n"),
            None
        );
        assert_eq!(DownloadProgress::last_in(""), None);
    }
}
