//! The official OpenAI Python client, unchanged, against a real server:
//! streamed and whole chat completions, legacy completions, models, and an
//! error it raises as the right exception.
//!
//! Ignored by default because it needs Python with the `openai` package:
//!
//! ```sh
//! python3 -m venv "$BACKHAUL_CACHE/venv-openai"
//! "$BACKHAUL_CACHE/venv-openai/bin/pip" install openai
//! cargo test -p backhaul-inference --test openai_client -- --ignored
//! ```
//!
//! `BACKHAUL_OPENAI_PYTHON` names another interpreter.

mod common;

use std::{path::PathBuf, process::Command};

use common::*;

const SCRIPT: &str = r#"
import os, sys, openai
client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key="unused", max_retries=0)
messages = [{"role": "user", "content": "What is the capital of France?"}]

stream = client.chat.completions.create(
    model="smollm2", messages=messages, temperature=0, max_tokens=16, stream=True,
    stream_options={"include_usage": True})
streamed, usage, finish = "", None, None
for chunk in stream:
    if chunk.choices:
        streamed += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
assert streamed, "no streamed text"
assert usage is not None and usage.completion_tokens > 0, usage
assert finish in ("stop", "length"), finish

whole = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=16)
assert whole.choices[0].message.content == streamed, (whole.choices[0].message.content, streamed)

completion = client.completions.create(model="smollm2", prompt="Once upon a time", max_tokens=5, temperature=0)
assert completion.choices[0].finish_reason == "length", completion
assert completion.usage.completion_tokens == 5, completion.usage

assert [m.id for m in client.models.list().data] == ["smollm2"]

try:
    client.chat.completions.create(model="nope", messages=messages)
    sys.exit("unknown model accepted")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e
try:
    client.chat.completions.create(model="smollm2", messages=[])
    sys.exit("empty messages accepted")
except openai.BadRequestError as e:
    assert e.param == "messages", e
print("openai client ok:", repr(streamed))
"#;

fn python() -> PathBuf {
    if let Ok(python) = std::env::var("BACKHAUL_OPENAI_PYTHON") {
        return PathBuf::from(python);
    }
    let cache = std::env::var("BACKHAUL_CACHE").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/backhaul"),
        PathBuf::from,
    );
    cache.join("venv-openai/bin/python")
}

#[tokio::test]
#[ignore = "needs Python with the openai package (see the file's docs)"]
async fn the_openai_python_client_works_unchanged() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let python = python();
    assert!(
        python.is_file(),
        "{} not found: create the venv as this file's docs say, or set BACKHAUL_OPENAI_PYTHON",
        python.display()
    );
    let base_url = format!("http://{}/v1", handle.http_addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("-c")
            .arg(SCRIPT)
            .env("BASE_URL", base_url)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "OpenAI client script failed:\n{stdout}\n{stderr}"
    );
    eprintln!("{stdout}");
}
