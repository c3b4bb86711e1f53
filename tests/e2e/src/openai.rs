//! The official OpenAI Python client, unchanged, as a user runs it: the
//! pinned `openai` package in `$BACKHAUL_CACHE/venv-openai`, the same venv
//! and pin as `inference/tests/openai_client.rs` (created on first use by
//! whichever runs first; network access once). `BACKHAUL_OPENAI_PYTHON`
//! names another interpreter with `openai`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cache_dir;

/// The `openai` release the tests are pinned to (as in
/// `inference/tests/openai_client.rs`).
pub const OPENAI_VERSION: &str = "3.54.0";

/// An interpreter with the pinned `openai` package, creating the venv on
/// first use. Blocking.
pub fn python() -> Result<PathBuf> {
    if let Some(python) = std::env::var_os("BACKHAUL_OPENAI_PYTHON").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(python));
    }
    let venv = cache_dir().join("venv-openai");
    let python = venv.join("bin/python");
    let has_pinned = |python: &PathBuf| {
        python.is_file()
            && Command::new(python)
                .args([
                    "-c",
                    "import openai, sys; sys.exit(openai.__version__ != sys.argv[1])",
                ])
                .arg(OPENAI_VERSION)
                .status()
                .is_ok_and(|s| s.success())
    };
    if has_pinned(&python) {
        return Ok(python);
    }
    eprintln!("creating {} with openai=={OPENAI_VERSION}", venv.display());
    let run = |command: &mut Command| -> Result<()> {
        let output = command
            .output()
            .with_context(|| format!("run {command:?}"))?;
        if !output.status.success() {
            bail!(
                "{command:?} failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        &format!("openai=={OPENAI_VERSION}"),
    ]))?;
    if !has_pinned(&python) {
        bail!(
            "openai {OPENAI_VERSION} is not importable from {}",
            python.display()
        );
    }
    Ok(python)
}

/// Runs `script` with the client's interpreter, `BASE_URL` set to
/// `base_url` (`.../v1`) and `env` besides; returns its stdout, or fails
/// with its stdout and stderr.
pub async fn run(script: &str, base_url: &str, env: &[(&str, &str)]) -> Result<String> {
    let python = tokio::task::spawn_blocking(python).await??;
    let mut command = tokio::process::Command::new(python);
    command.arg("-c").arg(script).env("BASE_URL", base_url);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command
        .output()
        .await
        .context("run the OpenAI client script")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "the OpenAI client script failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}
