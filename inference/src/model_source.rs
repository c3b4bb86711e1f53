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
        return download(args, &hub).await;
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

async fn download(args: &ModelArgs, hub: &HubRef) -> Result<LocalModel, SourceError> {
    let cache = args.model_cache.display().to_string();
    let fail = |message: String| SourceError::Download {
        model: args.model.clone(),
        cache: cache.clone(),
        message,
    };
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
    let revision = hub.revision.clone().unwrap_or_else(|| "main".to_string());
    let repo = api.repo(Repo::with_revision(
        hub.repo.clone(),
        RepoType::Model,
        revision,
    ));
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
    let fetch = |file: String| fetch_verified(&repo, &listing, file, &fail);

    if wants_gguf(args, false) {
        if args.gguf_files.is_empty() {
            return Err(SourceError::Invalid {
                model: args.model.clone(),
                message: "a GGUF model from the Hub needs --gguf-file".into(),
            });
        }
        let mut dir = None;
        for file in &args.gguf_files {
            tracing::info!(model = %args.model, file, "downloading GGUF file");
            let path = fetch(file.clone()).await?;
            dir = path.parent().map(Path::to_path_buf);
        }
        let dir = dir.ok_or_else(|| fail("downloaded file has no directory".into()))?;
        return Ok(LocalModel::Gguf {
            dir,
            files: args.gguf_files.clone(),
        });
    }

    let listed: Vec<String> = listing.names().map(str::to_string).collect();
    let weights: Vec<&String> = listed
        .iter()
        .filter(|f| f.ends_with(".safetensors") || f.ends_with(".safetensors.index.json"))
        .collect();
    if weights.is_empty() {
        return Err(fail(
            "the repo has no .safetensors weights (use --gguf-file for GGUF repos)".into(),
        ));
    }
    let mut dir = None;
    for file in PLAIN_REQUIRED.iter().map(|f| f.to_string()).chain(
        PLAIN_OPTIONAL
            .iter()
            .filter(|f| listed.iter().any(|l| l == *f))
            .map(|f| f.to_string()),
    ) {
        let path = fetch(file).await?;
        dir = path.parent().map(Path::to_path_buf);
    }
    for file in weights {
        tracing::info!(model = %args.model, file, "downloading weights");
        fetch(file.clone()).await?;
    }
    let dir = dir.ok_or_else(|| fail("downloaded files have no directory".into()))?;
    Ok(LocalModel::Plain { dir })
}

/// `file` from the cache or the Hub, checked against the listing: a cached
/// file that does not match (a download cut short, a corrupted disk) is
/// discarded and downloaded again, once; a download that does not match
/// either is an error naming the file. A partial download is resumed from
/// where it stopped (hf-hub keeps it beside the blob).
async fn fetch_verified(
    repo: &ApiRepo,
    listing: &Listing,
    file: String,
    fail: &impl Fn(String) -> SourceError,
) -> Result<PathBuf, SourceError> {
    let path = repo
        .get(&file)
        .await
        .map_err(|e| fail(format!("{file}: {e}")))?;
    let Some(expected) = listing.expected(&file) else {
        tracing::warn!(
            file,
            "the Hub lists no size or hash for this file; not verified"
        );
        return Ok(path);
    };
    let check = |path: PathBuf, file: String, expected: hub_files::Expected| async move {
        tokio::task::spawn_blocking(move || hub_files::check(&path, &file, &expected))
            .await
            .unwrap_or_else(|e| {
                Err(hub_files::Mismatch::Unreadable {
                    file: String::new(),
                    message: e.to_string(),
                })
            })
    };
    match check(path.clone(), file.clone(), expected.clone()).await {
        Ok(()) => Ok(path),
        Err(mismatch) => {
            tracing::warn!(%mismatch, "cached file does not match the Hub; downloading it again");
            hub_files::discard(&path);
            let path = repo
                .download(&file)
                .await
                .map_err(|e| fail(format!("{file}: {e}")))?;
            check(path.clone(), file.clone(), expected)
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
