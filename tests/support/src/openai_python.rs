//! The official OpenAI Python client, unchanged, as a user runs it: the
//! pinned `openai` package in `$BACKHAUL_CACHE/venv-openai`, created on
//! first use (network access once) by whichever test needs it first.
//! `BACKHAUL_OPENAI_PYTHON` names another interpreter with `openai`.

use std::path::PathBuf;
use std::process::Command;

/// The `openai` release the tests are pinned to (scripts/check-openai-fields.sh
/// reads it here).
pub const OPENAI_VERSION: &str = "3.54.0";

fn cache_dir() -> PathBuf {
    std::env::var_os("BACKHAUL_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/backhaul"),
        PathBuf::from,
    )
}

/// An interpreter with the pinned `openai` package, creating the venv on
/// first use. Blocking.
pub fn python() -> Result<PathBuf, String> {
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
    let run = |command: &mut Command| -> Result<(), String> {
        let output = command
            .output()
            .map_err(|e| format!("run {command:?}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{command:?} failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
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
        return Err(format!(
            "openai {OPENAI_VERSION} is not importable from {}",
            python.display()
        ));
    }
    Ok(python)
}
