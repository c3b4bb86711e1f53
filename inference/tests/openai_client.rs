//! The official OpenAI Python client, unchanged, against a real server:
//! streamed and whole chat completions, legacy completions, models, errors
//! it raises as the right exception, and its API key as the server's bearer
//! token (a wrong one raises `AuthenticationError`).
//!
//! Needs `python3` (with `venv`). The first run creates
//! `$BACKHAUL_CACHE/venv-openai` and installs the pinned `openai` package
//! into it (network access once); later runs reuse it.
//! `BACKHAUL_OPENAI_PYTHON` names another interpreter with `openai`.

mod common;

use std::{path::PathBuf, process::Command};

use common::*;

const SCRIPT: &str = r#"
import os, sys, openai
client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["API_KEY"], max_retries=0)
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
wrong = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key="not-the-token", max_retries=0)
try:
    wrong.chat.completions.create(model="smollm2", messages=messages, max_tokens=4)
    sys.exit("wrong API key accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.code == "invalid_api_key", e
print("openai client ok:", repr(streamed))
"#;

/// An interpreter with the pinned `openai` package (testkit's).
fn python() -> PathBuf {
    backhaul_testkit::openai_python::python().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn the_openai_python_client_works_unchanged() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let python = tokio::task::spawn_blocking(python).await.unwrap();
    let base_url = format!("http://{}/v1", handle.http_addr);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("-c")
            .arg(SCRIPT)
            .env("BASE_URL", base_url)
            .env("API_KEY", TOKEN)
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
