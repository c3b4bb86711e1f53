//! The official OpenAI Python client, unchanged, as a user runs it: the
//! pinned `openai` package in `$BACKHAUL_CACHE/venv-openai`, the venv and
//! pin `inference/tests/openai_client.rs` uses too (testkit's
//! `openai_python`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// The `openai` release the tests are pinned to (one pin, in testkit).
pub use backhaul_testkit::openai_python::OPENAI_VERSION;

/// An interpreter with the pinned `openai` package, creating the venv on
/// first use. Blocking.
pub fn python() -> Result<PathBuf> {
    backhaul_testkit::openai_python::python().map_err(anyhow::Error::msg)
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
