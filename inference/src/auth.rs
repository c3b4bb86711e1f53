//! The Worker → region credential (docs/publication.md, "Worker → region
//! credential"): every `/v1/*` HTTP request and every
//! `backhaul.inference.v1` gRPC call carries `Authorization: Bearer <token>`
//! with a token from `--api-key-file`.
//!
//! - The file holds one token per line; blank lines and lines starting with
//!   `#` are ignored and whitespace around a token is trimmed. Every line is
//!   accepted, so two tokens are valid at once during a rotation.
//! - The file is polled (`--api-key-reload-interval`) and the token set is
//!   swapped whole when its content changes, so a rotated Kubernetes Secret
//!   (kubelet swaps a `..data` symlink) takes effect without a restart. A
//!   file that cannot be read keeps the last good set (a gap during a swap
//!   must not lock the Worker out); a readable file without tokens refuses
//!   every request (everything revoked).
//! - Tokens are held only as SHA-256 digests and compared in constant time,
//!   against every accepted token without an early exit. Logs name tokens
//!   by fingerprint only: the first 16 hex digits of their SHA-256, the
//!   same as the Worker's `upstreamTokenSha256`.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};
use tokio_util::sync::CancellationToken;

use crate::{config::ServeArgs, error::InferenceError, metrics::Metrics};

/// After a change is seen, the file is read once more this much later and
/// the new content taken only if both reads agree, so a poll that lands
/// between an editor's truncate and write does not load an empty set.
const SETTLE: Duration = Duration::from_millis(25);

/// How requests are authenticated, as the flags decide it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Accept the tokens in this file, re-read every `reload_interval`.
    KeyFile {
        path: PathBuf,
        reload_interval: Duration,
    },
    /// `--allow-unauthenticated`: serve without any credential.
    Unauthenticated,
}

/// Why the server cannot start with the credential flags it was given.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error(
        "no credential configured: pass --api-key-file <path> (BACKHAUL_API_KEY_FILE) with the \
         accepted bearer tokens, or --allow-unauthenticated (BACKHAUL_ALLOW_UNAUTHENTICATED=true) \
         to serve without one"
    )]
    NotConfigured,
    #[error(
        "--api-key-file and --allow-unauthenticated were both given; pass one \
         (BACKHAUL_API_KEY_FILE or BACKHAUL_ALLOW_UNAUTHENTICATED)"
    )]
    Ambiguous,
    #[error("--api-key-reload-interval must be above zero")]
    ZeroReloadInterval,
    #[error("cannot read the API key file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(
        "the API key file {path} holds no tokens (one per line; blank lines and `#` comments \
         are ignored)"
    )]
    Empty { path: PathBuf },
}

impl AuthMode {
    /// Fails closed: without `--api-key-file` the server starts only with
    /// `--allow-unauthenticated`.
    pub fn from_args(serve: &ServeArgs) -> Result<Self, AuthConfigError> {
        match (&serve.api_key_file, serve.allow_unauthenticated) {
            (Some(_), true) => Err(AuthConfigError::Ambiguous),
            (None, false) => Err(AuthConfigError::NotConfigured),
            (None, true) => Ok(Self::Unauthenticated),
            (Some(_), false) if serve.api_key_reload_interval.is_zero() => {
                Err(AuthConfigError::ZeroReloadInterval)
            }
            (Some(path), false) => Ok(Self::KeyFile {
                path: path.clone(),
                reload_interval: serve.api_key_reload_interval,
            }),
        }
    }
}

/// The accepted tokens, as SHA-256 digests.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

impl TokenSet {
    /// One token per line; blank lines and `#` comments are skipped,
    /// surrounding whitespace is trimmed, duplicates count once.
    pub fn parse(text: &str) -> Self {
        let mut digests: Vec<[u8; 32]> = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let digest = sha256(line.as_bytes());
            if !digests.contains(&digest) {
                digests.push(digest);
            }
        }
        Self { digests }
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `token` is one of the set. Takes the same time whichever
    /// token matches, or none: the digests are compared in constant time
    /// and every one is compared.
    pub fn accepts(&self, token: &[u8]) -> bool {
        let presented = sha256(token);
        let mut found = Choice::from(0);
        for accepted in &self.digests {
            found |= accepted[..].ct_eq(&presented[..]);
        }
        found.into()
    }

    /// The first 16 hex digits of each token's SHA-256, in file order.
    pub fn fingerprints(&self) -> Vec<String> {
        self.digests.iter().map(|d| hex::encode(&d[..8])).collect()
    }
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
}

/// The first 16 hex digits of SHA-256 of `token`, as logs and the Worker's
/// `upstreamTokenSha256` name it.
pub fn fingerprint(token: &str) -> String {
    hex::encode(&sha256(token.trim().as_bytes())[..8])
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The token of an `Authorization: Bearer <token>` value (scheme matched
/// case-insensitively); `None` when there is no bearer token.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let split = value.iter().position(|b| b.is_ascii_whitespace())?;
    let (scheme, token) = value.split_at(split);
    let token = token.trim_ascii();
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty()).then_some(token)
}

/// Checks the credential of each request; cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator {
    keys: Option<Arc<Keys>>,
}

#[derive(Debug)]
struct Keys {
    path: PathBuf,
    reload_interval: Duration,
    current: RwLock<Arc<TokenSet>>,
    metrics: Metrics,
}

impl Authenticator {
    /// Reads the key file (for [`AuthMode::KeyFile`]); a file that cannot
    /// be read or holds no token is an error.
    pub async fn new(mode: AuthMode, metrics: &Metrics) -> Result<Self, AuthConfigError> {
        let (path, reload_interval) = match mode {
            AuthMode::Unauthenticated => {
                tracing::warn!(
                    "--allow-unauthenticated: serving the API without any credential; \
                     anyone who reaches this server can use it"
                );
                return Ok(Self { keys: None });
            }
            AuthMode::KeyFile {
                path,
                reload_interval,
            } => (path, reload_interval),
        };
        let content = read_key_file(&path)
            .await
            .map_err(|message| AuthConfigError::Read {
                path: path.clone(),
                message,
            })?;
        let set = TokenSet::parse(&content);
        if set.is_empty() {
            return Err(AuthConfigError::Empty { path });
        }
        tracing::info!(
            path = %path.display(),
            tokens = set.len(),
            fingerprints = ?set.fingerprints(),
            "API keys loaded"
        );
        metrics.api_keys_loaded.set(gauge_value(set.len()));
        Ok(Self {
            keys: Some(Arc::new(Keys {
                path,
                reload_interval,
                current: RwLock::new(Arc::new(set)),
                metrics: metrics.clone(),
            })),
        })
    }

    /// Accepts every request (as `--allow-unauthenticated` does).
    pub fn unauthenticated() -> Self {
        Self { keys: None }
    }

    /// Checks an `Authorization` value: `MissingApiKey` without a bearer
    /// token, `InvalidApiKey` for a token not accepted now. Refusals are
    /// counted by reason.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), InferenceError> {
        let Some(keys) = &self.keys else {
            return Ok(());
        };
        let (error, reason) = match authorization.and_then(bearer_token) {
            None => (InferenceError::MissingApiKey, "missing"),
            Some(token) if keys.current().accepts(token) => return Ok(()),
            Some(_) => (InferenceError::InvalidApiKey, "invalid"),
        };
        keys.metrics.auth_refused.with_label_values(&[reason]).inc();
        tracing::debug!(reason, "request refused: no valid credential");
        Err(error)
    }

    /// Polls the key file until `stop`, swapping the token set when the
    /// content changes. Nothing to do without a key file.
    pub fn spawn_reloader(&self, stop: CancellationToken) {
        if let Some(keys) = &self.keys {
            tokio::spawn(keys.clone().reload_until(stop));
        }
    }
}

impl Keys {
    fn current(&self) -> Arc<TokenSet> {
        // A panic while holding the lock cannot leave the set half-written
        // (it is swapped whole), so a poisoned lock is still good.
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn swap(&self, set: TokenSet) {
        let set = Arc::new(set);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
    }

    async fn reload_until(self: Arc<Self>, stop: CancellationToken) {
        let mut interval = tokio::time::interval(self.reload_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the file was read at startup.
        interval.tick().await;
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {}
            }
            match self.poll().await {
                Ok(()) => {
                    if failing {
                        tracing::info!(path = %self.path.display(), "API key file readable again");
                    }
                    failing = false;
                }
                Err(message) => {
                    self.metrics
                        .api_key_reloads
                        .with_label_values(&["error"])
                        .inc();
                    if !failing {
                        let kept = self.current();
                        tracing::error!(
                            path = %self.path.display(),
                            error = %message,
                            kept_tokens = kept.len(),
                            kept_fingerprints = ?kept.fingerprints(),
                            "cannot read the API key file; keeping the tokens loaded last"
                        );
                    }
                    failing = true;
                }
            }
        }
    }

    /// One look at the file: swaps in its tokens when they changed.
    async fn poll(&self) -> Result<(), String> {
        let content = read_key_file(&self.path).await?;
        let set = TokenSet::parse(&content);
        if set == *self.current() {
            return Ok(());
        }
        tokio::time::sleep(SETTLE).await;
        if read_key_file(&self.path).await? != content {
            // Being written; the next poll takes the settled content.
            return Ok(());
        }
        let fingerprints = set.fingerprints();
        let tokens = set.len();
        self.metrics.api_keys_loaded.set(gauge_value(tokens));
        self.metrics
            .api_key_reloads
            .with_label_values(&["ok"])
            .inc();
        self.swap(set);
        if tokens == 0 {
            tracing::warn!(
                path = %self.path.display(),
                "API key file reloaded with no tokens: every request is refused"
            );
        } else {
            tracing::info!(
                path = %self.path.display(),
                tokens,
                ?fingerprints,
                "API key file reloaded"
            );
        }
        Ok(())
    }
}

/// The key file's text; follows symlinks (a Kubernetes Secret volume is
/// `tokens -> ..data/tokens`, `..data -> ..<timestamp>`) on every read.
async fn read_key_file(path: &Path) -> Result<String, String> {
    let bytes = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
    String::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_string())
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn every_line_is_a_token_except_blanks_and_comments() {
        let set = TokenSet::parse("# rotated 2026-12-01\n  first-token \n\nsecond-token\r\n#x\n");
        assert_eq!(set.len(), 2);
        assert!(set.accepts(b"first-token"));
        assert!(set.accepts(b"second-token"));
        assert!(!set.accepts(b"#x"));
        assert!(!set.accepts(b" first-token "));
        assert!(!set.accepts(b""));
        assert!(!set.accepts(b"first-token2"));
        assert!(!set.accepts(b"first"));
        assert_eq!(TokenSet::parse("a\na\n").len(), 1);
        assert!(TokenSet::parse("\n# only a comment\n  \n").is_empty());
        assert!(!TokenSet::default().accepts(b"anything"));
    }

    #[test]
    fn fingerprints_are_the_first_16_hex_digits_of_sha256_and_debug_shows_only_them() {
        // sha256("abc") = ba7816bf8f01cfea...
        assert_eq!(fingerprint("abc"), "ba7816bf8f01cfea");
        let set = TokenSet::parse("abc\nsecret-token\n");
        assert_eq!(set.fingerprints()[0], "ba7816bf8f01cfea");
        let debug = format!("{set:?}");
        assert!(debug.contains("ba7816bf8f01cfea"), "{debug}");
        assert!(!debug.contains("secret-token"), "{debug}");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_value() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer   "), None);
        assert_eq!(bearer_token(b"Basic YWxhZGRpbjpvcGVu"), None);
        assert_eq!(bearer_token(b"abc"), None);
        assert_eq!(bearer_token(b""), None);
    }

    fn header(value: &str) -> Option<&[u8]> {
        Some(value.as_bytes())
    }

    fn serve(args: &[&str]) -> ServeArgs {
        let mut argv = vec!["backhaul-inference", "--model", "m.gguf"];
        argv.extend_from_slice(args);
        crate::Config::try_parse_from(argv).unwrap().serve
    }

    #[test]
    fn startup_fails_closed_without_a_key_file_or_the_explicit_opt_out() {
        let error = AuthMode::from_args(&serve(&[])).unwrap_err().to_string();
        assert!(error.contains("--api-key-file"), "{error}");
        assert!(error.contains("--allow-unauthenticated"), "{error}");
        assert_eq!(
            AuthMode::from_args(&serve(&["--allow-unauthenticated"])).unwrap(),
            AuthMode::Unauthenticated
        );
        assert_eq!(
            AuthMode::from_args(&serve(&["--api-key-file", "/keys/tokens"])).unwrap(),
            AuthMode::KeyFile {
                path: "/keys/tokens".into(),
                reload_interval: Duration::from_secs(1),
            }
        );
        assert!(matches!(
            AuthMode::from_args(&serve(&[
                "--api-key-file",
                "/keys/tokens",
                "--allow-unauthenticated"
            ])),
            Err(AuthConfigError::Ambiguous)
        ));
        assert!(matches!(
            AuthMode::from_args(&serve(&[
                "--api-key-file",
                "/keys/tokens",
                "--api-key-reload-interval",
                "0s"
            ])),
            Err(AuthConfigError::ZeroReloadInterval)
        ));
    }

    #[tokio::test]
    async fn a_missing_or_empty_key_file_is_a_startup_error() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let missing = AuthMode::KeyFile {
            path: dir.path().join("absent"),
            reload_interval: Duration::from_secs(1),
        };
        let error = Authenticator::new(missing, &metrics).await.unwrap_err();
        assert!(matches!(error, AuthConfigError::Read { .. }), "{error}");
        let empty = dir.path().join("tokens");
        std::fs::write(&empty, "# nothing yet\n\n").unwrap();
        let mode = AuthMode::KeyFile {
            path: empty,
            reload_interval: Duration::from_secs(1),
        };
        let error = Authenticator::new(mode, &metrics).await.unwrap_err();
        assert!(matches!(error, AuthConfigError::Empty { .. }), "{error}");
    }

    #[tokio::test]
    async fn refusals_are_missing_or_invalid_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "current\n").unwrap();
        let metrics = Metrics::new();
        let auth = Authenticator::new(
            AuthMode::KeyFile {
                path,
                reload_interval: Duration::from_secs(1),
            },
            &metrics,
        )
        .await
        .unwrap();
        assert!(auth.check(header("Bearer current")).is_ok());
        assert!(matches!(
            auth.check(None),
            Err(InferenceError::MissingApiKey)
        ));
        assert!(matches!(
            auth.check(header("Basic Y3VycmVudA==")),
            Err(InferenceError::MissingApiKey)
        ));
        assert!(matches!(
            auth.check(header("Bearer old")),
            Err(InferenceError::InvalidApiKey)
        ));
        let text = metrics.render();
        assert!(
            text.contains("backhaul_inference_auth_refused_total{reason=\"missing\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("backhaul_inference_auth_refused_total{reason=\"invalid\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("backhaul_inference_api_keys_loaded 1"),
            "{text}"
        );
        assert!(
            Authenticator::unauthenticated().check(None).is_ok(),
            "no key file: everything passes"
        );
    }

    #[tokio::test]
    async fn a_changed_file_is_swapped_in_and_an_unreadable_one_keeps_the_last_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "old\n").unwrap();
        let metrics = Metrics::new();
        let auth = Authenticator::new(
            AuthMode::KeyFile {
                path: path.clone(),
                reload_interval: Duration::from_secs(3600),
            },
            &metrics,
        )
        .await
        .unwrap();
        let keys = auth.keys.clone().unwrap();

        std::fs::write(&path, "old\nnew\n").unwrap();
        keys.poll().await.unwrap();
        assert!(auth.check(header("Bearer old")).is_ok());
        assert!(auth.check(header("Bearer new")).is_ok());

        std::fs::remove_file(&path).unwrap();
        assert!(keys.poll().await.is_err());
        assert!(
            auth.check(header("Bearer new")).is_ok(),
            "last good set kept"
        );

        std::fs::write(&path, "# revoked\n").unwrap();
        keys.poll().await.unwrap();
        assert!(matches!(
            auth.check(header("Bearer new")),
            Err(InferenceError::InvalidApiKey)
        ));
        let text = metrics.render();
        assert!(
            text.contains("backhaul_inference_api_keys_loaded 0"),
            "{text}"
        );
        assert!(
            text.contains("backhaul_inference_api_key_reloads_total{result=\"ok\"} 2"),
            "{text}"
        );
    }
}
