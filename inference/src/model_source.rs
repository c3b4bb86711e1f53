//! Where the weights come from: `--model` and `--format` resolved to files
//! on local disk. `hf://` models are downloaded here, into `--model-cache`,
//! rather than by mistral.rs, because mistral.rs reads its cache location
//! only from the process environment.

use std::path::{Path, PathBuf};

use hf_hub::{
    Repo, RepoType,
    api::tokio::{ApiBuilder, ApiRepo},
};

use crate::{
    config::{ModelArgs, ModelFormat},
    fill_progress::FillProgress,
    hub_files::{self, Listing},
};

/// Files ready to hand to the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalModel {
    /// GGUF weights (tokenizer and chat template embedded): `files` inside `dir`.
    Gguf { dir: PathBuf, files: Vec<String> },
    /// A directory with `config.json`, `tokenizer.json` and safetensors.
    Plain { dir: PathBuf },
}

/// A model that could not be found or fetched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("model `{model}` does not exist on local disk")]
    NotFound { model: String },
    #[error("model `{model}`: {message}")]
    Invalid { model: String, message: String },
    #[error(
        "could not download model `{model}` from the Hugging Face Hub into {cache} \
         (is the network reachable and the repo public, or HF_TOKEN set?): {message}"
    )]
    Download {
        model: String,
        cache: String,
        message: String,
    },
}

/// An `hf://org/repo[@revision]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub repo: String,
    pub revision: Option<String>,
}

impl HubRef {
    /// Parses `hf://org/repo[@revision]`; `None` when `model` is not hf://.
    pub fn parse(model: &str) -> Option<Result<Self, String>> {
        let rest = model.strip_prefix("hf://")?;
        let (repo, revision) = match rest.split_once('@') {
            Some((repo, revision)) => (repo, Some(revision.to_string())),
            None => (rest, None),
        };
        let valid = repo.split('/').count() == 2
            && repo.split('/').all(|part| !part.is_empty())
            && revision.as_deref() != Some("");
        Some(if valid {
            Ok(Self {
                repo: repo.to_string(),
                revision,
            })
        } else {
            Err("expected hf://org/repo or hf://org/repo@revision".to_string())
        })
    }
}

/// The name clients use when `--served-name` is not given: the file name
/// without `.gguf`, the directory name, or the repo name.
pub fn default_served_name(args: &ModelArgs) -> String {
    if let Some(Ok(hub)) = HubRef::parse(&args.model) {
        return hub.repo.rsplit('/').next().unwrap_or(&hub.repo).to_string();
    }
    let path = Path::new(&args.model);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| args.model.clone());
    name.strip_suffix(".gguf").unwrap_or(&name).to_string()
}

fn wants_gguf(args: &ModelArgs, path_is_gguf_file: bool) -> bool {
    match args.format {
        ModelFormat::Gguf => true,
        ModelFormat::Plain => false,
        ModelFormat::Auto => path_is_gguf_file || !args.gguf_files.is_empty(),
    }
}

/// Resolves `--model` to local files, downloading hf:// models if needed.
pub async fn resolve(args: &ModelArgs) -> Result<LocalModel, SourceError> {
    let model = args.model.clone();
    if let Some(hub) = HubRef::parse(&model) {
        let hub = hub.map_err(|message| SourceError::Invalid {
            model: model.clone(),
            message,
        })?;
        return download(args, &hub, false).await;
    }
    let path = PathBuf::from(&model);
    if path.is_file() {
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if !wants_gguf(args, is_gguf) {
            return Err(SourceError::Invalid {
                model,
                message: "a single file can only be a GGUF model; plain models are directories"
                    .into(),
            });
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        return Ok(LocalModel::Gguf {
            dir,
            files: vec![file],
        });
    }
    if path.is_dir() {
        if wants_gguf(args, false) {
            if args.gguf_files.is_empty() {
                return Err(SourceError::Invalid {
                    model,
                    message: "a GGUF model directory needs --gguf-file".into(),
                });
            }
            for file in &args.gguf_files {
                if !path.join(file).is_file() {
                    return Err(SourceError::Invalid {
                        model,
                        message: format!("GGUF file `{file}` is not in the directory"),
                    });
                }
            }
            return Ok(LocalModel::Gguf {
                dir: path,
                files: args.gguf_files.clone(),
            });
        }
        for required in ["config.json", "tokenizer.json"] {
            if !path.join(required).is_file() {
                return Err(SourceError::Invalid {
                    model,
                    message: format!("plain model directory has no `{required}`"),
                });
            }
        }
        return Ok(LocalModel::Plain { dir: path });
    }
    Err(SourceError::NotFound { model })
}

/// Files a plain model needs besides its weights; missing optional ones are
/// skipped.
const PLAIN_REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const PLAIN_OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
];

/// A weight cache's fill (`--download-only`): downloads and verifies an
/// `hf://` model like [`resolve`], printing its progress, and saves the
/// listing it verified against as the cache's completion record.
pub async fn fill(args: &ModelArgs) -> Result<LocalModel, SourceError> {
    match HubRef::parse(&args.model) {
        Some(Ok(hub)) => download(args, &hub, true).await,
        Some(Err(message)) => Err(SourceError::Invalid {
            model: args.model.clone(),
            message,
        }),
        None => Err(SourceError::Invalid {
            model: args.model.clone(),
            message: "a fill needs an hf://org/repo[@revision] model".into(),
        }),
    }
}

/// Where a completed fill of `repo` at `revision` saves the listing its
/// files were verified against. Its presence is what `--hub-offline` needs:
/// hf-hub's own layout cannot tell a finished download from one cut short.
pub fn completion_record(cache: &Path, repo: &str, revision: &str) -> PathBuf {
    cache.join("backhaul-fills").join(format!(
        "{}@{}.json",
        repo.replace('/', "--"),
        revision.replace('/', "%2F")
    ))
}

async fn download(args: &ModelArgs, hub: &HubRef, report: bool) -> Result<LocalModel, SourceError> {
    let cache = args.model_cache.display().to_string();
    let fail = |message: String| SourceError::Download {
        model: args.model.clone(),
        cache: cache.clone(),
        message,
    };
    let revision = hub.revision.clone().unwrap_or_else(|| "main".to_string());
    let record = completion_record(&args.model_cache, &hub.repo, &revision);
    let hf_repo = Repo::with_revision(hub.repo.clone(), RepoType::Model, revision);
    let cached = hf_hub::Cache::new(args.model_cache.clone()).repo(hf_repo.clone());
    if args.hub_offline {
        let listing = read_record(&record).map_err(|message| SourceError::Download {
            model: args.model.clone(),
            cache: cache.clone(),
            message,
        })?;
        let files = needed_files(args, &listing)?;
        let mut paths = Vec::new();
        for file in &files {
            let path = cached.get(file).ok_or_else(|| {
                fail(format!(
                    "{file} is not in the cache, though its fill completed"
                ))
            })?;
            if let Some(expected) = listing.expected(file) {
                verify(path.clone(), file.clone(), expected)
                    .await
                    .map_err(|m| fail(format!("the cache does not match its fill: {m}")))?;
            }
            paths.push(path);
        }
        return local_model(args, &paths, &fail);
    }

    std::fs::create_dir_all(&args.model_cache)
        .map_err(|e| fail(format!("cannot create the cache directory: {e}")))?;
    let token = std::env::var("HF_TOKEN").ok();
    let mut builder = ApiBuilder::new();
    // A mirror or a Hub-compatible server of the user's (hf-hub reads it
    // only in `from_env`, which would also move the cache).
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT")
        && !endpoint.is_empty()
    {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder
        .with_cache_dir(args.model_cache.clone())
        .with_progress(false)
        .with_token(token)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let repo = api.repo(hf_repo);
    let listing: Listing = repo
        .info_request()
        .query(&[("blobs", "true")])
        .send()
        .await
        .and_then(|response| response.error_for_status())
        .map_err(|e| fail(format!("listing the revision's files: {e}")))?
        .json()
        .await
        .map_err(|e| fail(format!("reading the revision's file listing: {e}")))?;
    let files = needed_files(args, &listing)?;
    let size = |file: &str| listing.expected(file).map_or(0, |e| e.size);
    let progress = if report {
        FillProgress::printing(
            files.iter().map(|f| size(f)).sum(),
            u32::try_from(files.len()).unwrap_or(u32::MAX),
        )
    } else {
        FillProgress::default()
    };
    let mut paths = Vec::new();
    for file in &files {
        tracing::info!(model = %args.model, file, "fetching");
        let path = fetch_verified(&repo, &cached, &listing, file, &progress, &fail).await?;
        progress.file_done(size(file));
        paths.push(path);
    }
    if report {
        save_record(&record, &listing).map_err(|e| {
            fail(format!(
                "saving the fill's record {}: {e}",
                record.display()
            ))
        })?;
    }
    local_model(args, &paths, &fail)
}

/// The files `args` needs from a revision: the named GGUF files, or a plain
/// model's config, tokenizer and safetensors.
fn needed_files(args: &ModelArgs, listing: &Listing) -> Result<Vec<String>, SourceError> {
    let invalid = |message: &str| SourceError::Invalid {
        model: args.model.clone(),
        message: message.into(),
    };
    if wants_gguf(args, false) {
        if args.gguf_files.is_empty() {
            return Err(invalid("a GGUF model from the Hub needs --gguf-file"));
        }
        return Ok(args.gguf_files.clone());
    }
    let listed: Vec<&str> = listing.names().collect();
    let weights: Vec<String> = listed
        .iter()
        .filter(|f| f.ends_with(".safetensors") || f.ends_with(".safetensors.index.json"))
        .map(|f| f.to_string())
        .collect();
    if weights.is_empty() {
        return Err(SourceError::Download {
            model: args.model.clone(),
            cache: args.model_cache.display().to_string(),
            message: "the repo has no .safetensors weights (use --gguf-file for GGUF repos)".into(),
        });
    }
    Ok(PLAIN_REQUIRED
        .iter()
        .chain(PLAIN_OPTIONAL.iter().filter(|f| listed.contains(f)))
        .map(|f| f.to_string())
        .chain(weights)
        .collect())
}

/// The model the fetched `paths` (all in one snapshot directory) make.
fn local_model(
    args: &ModelArgs,
    paths: &[PathBuf],
    fail: &impl Fn(String) -> SourceError,
) -> Result<LocalModel, SourceError> {
    let dir = paths
        .last()
        .and_then(|p| p.parent())
        .map(Path::to_path_buf)
        .ok_or_else(|| fail("no files were fetched".into()))?;
    Ok(if wants_gguf(args, false) {
        LocalModel::Gguf {
            dir,
            files: args.gguf_files.clone(),
        }
    } else {
        LocalModel::Plain { dir }
    })
}

fn read_record(record: &Path) -> Result<Listing, String> {
    let text = std::fs::read_to_string(record).map_err(|e| {
        format!(
            "--hub-offline: no completed fill of this revision in the cache ({}: {e})",
            record.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", record.display()))
}

/// Written whole, then renamed into place: a fill killed while writing it
/// leaves no record rather than half of one.
fn save_record(record: &Path, listing: &Listing) -> std::io::Result<()> {
    if let Some(dir) = record.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = record.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(listing)?)?;
    std::fs::rename(&partial, record)
}

async fn verify(
    path: PathBuf,
    file: String,
    expected: hub_files::Expected,
) -> Result<(), hub_files::Mismatch> {
    tokio::task::spawn_blocking(move || hub_files::check(&path, &file, &expected))
        .await
        .unwrap_or_else(|e| {
            Err(hub_files::Mismatch::Unreadable {
                file: String::new(),
                message: e.to_string(),
            })
        })
}

/// `file` from the cache or the Hub, checked against the listing: a cached
/// file that does not match (a download cut short, a corrupted disk) is
/// discarded and downloaded again, once; a download that does not match
/// either is an error naming the file. A partial download is resumed from
/// where it stopped (hf-hub keeps it beside the blob).
async fn fetch_verified(
    repo: &ApiRepo,
    cached: &hf_hub::CacheRepo,
    listing: &Listing,
    file: &str,
    progress: &FillProgress,
    fail: &impl Fn(String) -> SourceError,
) -> Result<PathBuf, SourceError> {
    let download = || async {
        repo.download_with_progress(file, progress.clone())
            .await
            .map_err(|e| fail(format!("{file}: {e}")))
    };
    let path = match cached.get(file) {
        Some(path) => path,
        None => download().await?,
    };
    let Some(expected) = listing.expected(file) else {
        tracing::warn!(
            file,
            "the Hub lists no size or hash for this file; not verified"
        );
        return Ok(path);
    };
    match verify(path.clone(), file.to_string(), expected.clone()).await {
        Ok(()) => Ok(path),
        Err(mismatch) => {
            tracing::warn!(%mismatch, "cached file does not match the Hub; downloading it again");
            hub_files::discard(&path);
            let path = download().await?;
            verify(path.clone(), file.to_string(), expected)
                .await
                .map_err(|m| fail(format!("the download does not match the Hub: {m}")))?;
            Ok(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ModelArgs {
        let mut argv = vec!["backhaul-inference"];
        argv.extend_from_slice(extra);
        crate::config::Config::try_parse_from(argv).unwrap().model
    }

    #[test]
    fn hub_refs_parse_with_and_without_revision() {
        assert_eq!(
            HubRef::parse("hf://org/repo").unwrap().unwrap(),
            HubRef {
                repo: "org/repo".into(),
                revision: None
            }
        );
        assert_eq!(
            HubRef::parse("hf://org/repo@v1").unwrap().unwrap().revision,
            Some("v1".into())
        );
        assert!(HubRef::parse("hf://repo").unwrap().is_err());
        assert!(HubRef::parse("hf://org/repo@").unwrap().is_err());
        assert!(HubRef::parse("/models/x.gguf").is_none());
    }

    #[test]
    fn served_names_default_to_file_dir_or_repo_name() {
        assert_eq!(
            default_served_name(&args(&["--model", "/m/SmolLM2.Q4_1.gguf"])),
            "SmolLM2.Q4_1"
        );
        assert_eq!(
            default_served_name(&args(&["--model", "hf://org/Name@rev"])),
            "Name"
        );
    }

    #[tokio::test]
    async fn local_sources_resolve_or_fail_naming_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("m.gguf");
        std::fs::write(&gguf, b"x").unwrap();
        let resolved = resolve(&args(&["--model", gguf.to_str().unwrap()]))
            .await
            .unwrap();
        assert_eq!(
            resolved,
            LocalModel::Gguf {
                dir: dir.path().to_path_buf(),
                files: vec!["m.gguf".into()]
            }
        );

        let missing = dir.path().join("nope");
        let err = resolve(&args(&["--model", missing.to_str().unwrap()]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");

        let err = resolve(&args(&["--model", dir.path().to_str().unwrap()]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
