//! Structured output on a real server with SmolLM2: JSON mode and JSON
//! schemas give parseable JSON, a required or named tool choice gives a
//! `tool_calls` answer whose arguments follow the tool's schema (whole and
//! streamed), a tool result sent back gets a text answer, and what cannot
//! be honoured is refused with a 400 naming the field.

mod common;

use common::*;
use serde_json::{Value, json};

async fn post_chat(handle: &backhaul_inference::ServerHandle, body: Value) -> (u16, Value) {
    let (status, _, text) = http_chat(handle, body).await;
    let value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: {text}"));
    (status.as_u16(), value)
}

async fn post_chat_stream(handle: &backhaul_inference::ServerHandle, body: Value) -> Vec<Value> {
    let (status, _, text) = http_chat(handle, body).await;
    assert_eq!(status, 200, "{text}");
    let payloads = sse_payloads(&text);
    assert_eq!(
        payloads.last().map(String::as_str),
        Some("[DONE]"),
        "{text}"
    );
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|_| panic!("{p}")))
        .collect()
}

fn user(content: &str) -> Value {
    json!([{"role": "user", "content": content}])
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "Current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 40}},
                "required": ["city"],
                "additionalProperties": false,
            },
        }},
        {"type": "function", "function": {
            "name": "get_time",
            "description": "Current time in a time zone",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"type": "string", "enum": ["UTC", "CET", "EST"]}},
                "required": ["zone"],
                "additionalProperties": false,
            },
        }},
    ])
}

#[tokio::test]
async fn json_mode_and_json_schemas_give_parseable_json() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;

    let (status, body) = post_chat(
        &handle,
        json!({
            "messages": user("Describe Paris as a JSON object."),
            "temperature": 0, "max_tokens": 96,
            "response_format": {"type": "json_object"},
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    let content = choice["message"]["content"].as_str().expect("content");
    if choice["finish_reason"] == "stop" {
        let parsed: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
        assert!(parsed.is_object(), "{content}");
    } else {
        // Cut by max_tokens: still the start of a JSON object.
        assert!(content.trim_start().starts_with('{'), "{content}");
    }

    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000000u64},
            "capital": {"type": "boolean"},
        },
        "required": ["city", "population", "capital"],
        "additionalProperties": false,
    });
    let request = json!({
        "messages": user("Give the city, population and whether it is a capital, for Paris."),
        "temperature": 0, "max_tokens": 64,
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "strict": true, "schema": schema}},
    });
    let (status, body) = post_chat(&handle, request.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{e}: {content}"));
    assert!(parsed["city"].is_string(), "{parsed}");
    assert!(parsed["population"].is_u64(), "{parsed}");
    assert!(parsed["capital"].is_boolean(), "{parsed}");
    assert_eq!(parsed.as_object().unwrap().len(), 3, "{parsed}");
    // Usage counts each token once, though under a grammar the engine may
    // sample a token twice (its first pick refused), and the value's end
    // ends the generation.
    let completion_tokens = body["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((5..64).contains(&completion_tokens), "{body}");

    // Streamed: the same JSON, chunk by chunk.
    let mut streamed = request;
    streamed["stream"] = json!(true);
    let chunks = post_chat_stream(&handle, streamed).await;
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content);
}

#[tokio::test]
async fn a_named_or_required_tool_choice_gives_a_call_with_valid_arguments() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;

    let named = json!({
        "messages": user("What is the weather like in Paris?"),
        "temperature": 0, "max_tokens": 48,
        "tools": weather_tools(),
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    });
    let (status, body) = post_chat(&handle, named.clone()).await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    assert_eq!(choice["message"]["content"], Value::Null, "{body}");
    let calls = choice["message"]["tool_calls"]
        .as_array()
        .expect("tool_calls");
    assert_eq!(calls.len(), 1, "{body}");
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{arguments}");
    assert_eq!(arguments.as_object().unwrap().len(), 1, "{arguments}");

    // Streamed: one tool_calls delta, then finish_reason tool_calls; no text.
    let mut streamed = named;
    streamed["stream"] = json!(true);
    let chunks = post_chat_stream(&handle, streamed).await;
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "", "{chunks:?}");
    let deltas: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(deltas.len(), 1, "{chunks:?}");
    assert_eq!(deltas[0]["index"], 0);
    assert_eq!(deltas[0]["function"]["name"], "get_weather");
    assert_eq!(
        deltas[0]["function"]["arguments"], calls[0]["function"]["arguments"],
        "greedy: the same call streamed and whole"
    );
    let finish: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, vec![&json!("tool_calls")]);

    // Required: a call to one of the tools, arguments within its schema.
    let (status, body) = post_chat(
        &handle,
        json!({
            "messages": user("What time is it in Berlin?"),
            "temperature": 0, "max_tokens": 48,
            "tools": weather_tools(), "tool_choice": "required",
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let call = &body["choices"][0]["message"]["tool_calls"][0]["function"];
    let arguments: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    match call["name"].as_str() {
        Some("get_weather") => assert!(arguments["city"].is_string(), "{arguments}"),
        Some("get_time") => assert!(
            ["UTC", "CET", "EST"].contains(&arguments["zone"].as_str().unwrap()),
            "{arguments}"
        ),
        other => panic!("not a declared tool: {other:?}"),
    }

    // tool_choice "none": the tools are ignored and the answer is text.
    let (status, body) = post_chat(
        &handle,
        json!({
            "messages": user("Say hello."), "temperature": 0, "max_tokens": 8,
            "tools": weather_tools(), "tool_choice": "none",
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["choices"][0]["message"]["tool_calls"].is_null(),
        "{body}"
    );
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
}

#[tokio::test]
async fn a_tool_result_sent_back_gets_a_text_answer() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let (status, body) = post_chat(
        &handle,
        json!({
            "temperature": 0, "max_tokens": 24,
            "tools": weather_tools(),
            "tool_choice": "none",
            "messages": [
                {"role": "user", "content": "What is the weather like in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
                }]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"sky\": \"sunny\", \"celsius\": 21}"},
            ],
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.trim().is_empty(), "{body}");
    assert!(
        body["usage"]["prompt_tokens"].as_u64().unwrap() > 20,
        "{body}"
    );
}

#[tokio::test]
async fn what_cannot_be_honoured_is_refused_naming_the_field() {
    let _turn = SERIAL.lock().await;
    let handle = server(&[]).await;
    let hi = user("hi");
    let cases = [
        (
            json!({"messages": hi, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}}}),
            "response_format",
        ),
        (
            json!({"messages": hi, "response_format": {"type": "yaml"}}),
            "response_format",
        ),
        (
            json!({"messages": hi, "tools": weather_tools(), "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"messages": hi, "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"messages": hi, "tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "launch"}}}),
            "tool_choice",
        ),
        (
            json!({"messages": hi, "tools": [{"type": "code_interpreter"}]}),
            "tools",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "42"}]}),
            "messages",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}),
            "messages",
        ),
        (json!({"messages": hi, "logprobs": true}), "logprobs"),
        (json!({"messages": hi, "top_logprobs": 3}), "top_logprobs"),
        (
            json!({"messages": hi, "logit_bias": {"42": 5}}),
            "logit_bias",
        ),
        (
            json!({"messages": hi, "functions": [{"name": "f"}]}),
            "functions",
        ),
        (
            json!({"messages": hi, "modalities": ["text", "audio"]}),
            "modalities",
        ),
        (
            json!({"messages": hi, "reasoning_effort": "high"}),
            "reasoning_effort",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = post_chat(&handle, body.clone()).await;
        assert_eq!(status, 400, "{body}: {error}");
        assert_eq!(error["error"]["param"], field, "{body}: {error}");
        assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    }
    // The no-op values of refused fields are served.
    let (status, body) = post_chat(
        &handle,
        json!({"messages": hi, "max_tokens": 2, "logprobs": false, "logit_bias": {},
               "modalities": ["text"], "response_format": {"type": "text"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
