//! What the Hugging Face Hub says a revision's files are, and checking the
//! downloaded files against it.
//!
//! The Hub's listing (`/api/models/{repo}/revision/{rev}?blobs=true`) gives
//! each file's size and the hash it stores it under: the SHA-256 of the
//! content for files in Git LFS (all weights), the Git blob id (SHA-1 of
//! `blob {len}\0` and the content) for the others. hf-hub checks neither,
//! and hands back a cached file as it finds it, so a truncated or corrupted
//! download would load (or fail to load) as if it were the model.
//!
//! Hashing 140 GB of weights takes minutes, so a file that passed is marked
//! (`<blob>.verified`: the hash it matched, its size and modification
//! time) and not hashed again while it is unchanged. A change that keeps
//! both (bit rot in place) is not seen.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::Sha256;

/// A revision's file listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    /// The commit the revision resolved to.
    pub sha: String,
    pub siblings: Vec<Sibling>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, rename = "blobId", skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LfsInfo {
    pub sha256: String,
    pub size: u64,
}

/// What one file must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub size: u64,
    pub digest: Digest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Digest {
    /// SHA-256 of the content, lower-case hex (LFS files).
    Sha256(String),
    /// Git's blob id, lower-case hex (files in Git proper).
    GitBlob(String),
}

/// Why a file does not match the listing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Mismatch {
    #[error("{file} is {actual} bytes; the Hub lists {expected}")]
    Size {
        file: String,
        actual: u64,
        expected: u64,
    },
    #[error("{file} has {kind} {actual}; the Hub lists {expected}")]
    Hash {
        file: String,
        kind: &'static str,
        actual: String,
        expected: String,
    },
    #[error("{file}: {message}")]
    Unreadable { file: String, message: String },
}

impl Listing {
    /// File names in the revision.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.siblings.iter().map(|s| s.rfilename.as_str())
    }

    /// What `file` must be; `None` when the listing does not say (a file
    /// not in the revision, or a listing without sizes and hashes).
    pub fn expected(&self, file: &str) -> Option<Expected> {
        let sibling = self.siblings.iter().find(|s| s.rfilename == file)?;
        if let Some(lfs) = &sibling.lfs {
            return Some(Expected {
                size: lfs.size,
                digest: Digest::Sha256(lfs.sha256.to_ascii_lowercase()),
            });
        }
        Some(Expected {
            size: sibling.size?,
            digest: Digest::GitBlob(sibling.blob_id.as_ref()?.to_ascii_lowercase()),
        })
    }
}

/// Checks `path` (as `file` in messages) against `expected`, unless it
/// was checked before; marks it when it matches.
pub fn check(path: &Path, file: &str, expected: &Expected) -> Result<(), Mismatch> {
    let unreadable = |e: std::io::Error| Mismatch::Unreadable {
        file: file.to_string(),
        message: e.to_string(),
    };
    let blob = std::fs::canonicalize(path).map_err(unreadable)?;
    let actual = std::fs::metadata(&blob).map_err(unreadable)?.len();
    if actual != expected.size {
        return Err(Mismatch::Size {
            file: file.to_string(),
            actual,
            expected: expected.size,
        });
    }
    let want = match &expected.digest {
        Digest::Sha256(h) | Digest::GitBlob(h) => h,
    };
    let marker = marker_path(&blob);
    let stamp = format!(
        "{want} {actual} {}",
        modified_nanos(&blob).map_err(unreadable)?
    );
    if std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == stamp) {
        return Ok(());
    }
    let (kind, got) = match &expected.digest {
        Digest::Sha256(_) => (
            "sha256",
            hash_file::<Sha256>(&blob, None).map_err(unreadable)?,
        ),
        Digest::GitBlob(_) => (
            "git blob id",
            hash_file::<Sha1>(&blob, Some(actual)).map_err(unreadable)?,
        ),
    };
    if &got != want {
        return Err(Mismatch::Hash {
            file: file.to_string(),
            kind,
            actual: got,
            expected: want.clone(),
        });
    }
    // Best effort: without the marker the file is hashed again next time.
    let _ = std::fs::write(&marker, stamp);
    Ok(())
}

/// Removes a downloaded file (its snapshot link, its blob and the blob's
/// marker) so the next download fetches it whole.
pub fn discard(path: &Path) {
    if let Ok(blob) = std::fs::canonicalize(path) {
        let _ = std::fs::remove_file(marker_path(&blob));
        let _ = std::fs::remove_file(&blob);
    }
    let _ = std::fs::remove_file(path);
}

fn modified_nanos(path: &Path) -> std::io::Result<u128> {
    let modified = std::fs::metadata(path)?.modified()?;
    Ok(modified
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos()))
}

fn marker_path(blob: &Path) -> PathBuf {
    let mut name = blob.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    blob.with_file_name(name)
}

/// Hex digest of the file; with `git_blob_len`, of Git's blob header and
/// then the content.
fn hash_file<D: sha2::Digest>(path: &Path, git_blob_len: Option<u64>) -> std::io::Result<String> {
    let mut hasher = D::new();
    if let Some(len) = git_blob_len {
        hasher.update(format!("blob {len}\0").as_bytes());
    }
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn listing() -> Listing {
        serde_json::from_value(serde_json::json!({
            "sha": "abc",
            "siblings": [
                {"rfilename": "config.json", "size": 11, "blobId": "95d09f2b10159347eece71399a7e2e907ea3df4f"},
                {"rfilename": "model.gguf", "size": 3, "blobId": "x", "lfs": {"sha256": sha256_hex(b"abc"), "size": 3}},
                {"rfilename": "README.md"},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn the_listing_names_lfs_and_git_hashes() {
        let l = listing();
        assert_eq!(
            l.expected("model.gguf"),
            Some(Expected {
                size: 3,
                digest: Digest::Sha256(sha256_hex(b"abc"))
            })
        );
        assert!(matches!(
            l.expected("config.json").unwrap().digest,
            Digest::GitBlob(_)
        ));
        assert_eq!(l.expected("README.md"), None);
        assert_eq!(l.expected("nope"), None);
    }

    #[test]
    fn matching_files_pass_and_are_not_hashed_twice() {
        let dir = tempfile::tempdir().unwrap();
        let l = listing();
        let gguf = dir.path().join("model.gguf");
        std::fs::write(&gguf, b"abc").unwrap();
        check(&gguf, "model.gguf", &l.expected("model.gguf").unwrap()).unwrap();
        assert!(marker_path(&gguf.canonicalize().unwrap()).is_file());
        // `git hash-object` of "hello world" (11 bytes, no newline).
        let config = dir.path().join("config.json");
        std::fs::write(&config, b"hello world").unwrap();
        check(&config, "config.json", &l.expected("config.json").unwrap()).unwrap();
    }

    #[test]
    fn truncated_and_corrupted_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let expected = listing().expected("model.gguf").unwrap();
        let path = dir.path().join("model.gguf");
        std::fs::write(&path, b"ab").unwrap();
        let e = check(&path, "model.gguf", &expected).unwrap_err();
        assert_eq!(e.to_string(), "model.gguf is 2 bytes; the Hub lists 3");
        std::fs::write(&path, b"abd").unwrap();
        let e = check(&path, "model.gguf", &expected).unwrap_err();
        assert!(matches!(e, Mismatch::Hash { kind: "sha256", .. }), "{e}");
        // A marker does not vouch for content written after it.
        std::fs::write(&path, b"abc").unwrap();
        check(&path, "model.gguf", &expected).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"abd").unwrap();
        assert!(check(&path, "model.gguf", &expected).is_err());
        discard(&path);
        assert!(!path.exists() && !marker_path(&path).exists());
    }
}
