//! Tool calling: `tools`, `tool_choice` and `parallel_tool_calls` in, and
//! `tool_calls` out.
//!
//! How a call is produced depends on `tool_choice`, as in vLLM:
//! - `"none"`: the tools are not shown to the model and nothing is parsed;
//! - `"required"` or a named function: decoding is held to a JSON schema of
//!   a call (`{"name": <a tool>, "arguments": <its parameters>}`), so the
//!   answer is a call with valid arguments whatever the model is;
//! - `"auto"` (the default when tools are given): the tools go to the chat
//!   template, and the answer becomes a call when it is one in a format the
//!   common templates teach ([`extract_calls`]); otherwise it is text.
//!
//! Streaming holds text back only while it could still be a call (it
//! starts with `{`, `[`, or a call marker): a text answer streams as usual,
//! and a call arrives as one `tool_calls` delta when generation ends.

use serde_json::{Map, Value, json};

use crate::{error::InferenceError, json_scan::JsonScan, response_format};

/// OpenAI's limit on `tools`.
pub const MAX_TOOLS: usize = 128;

/// Markers that open a call in the formats [`extract_calls`] reads:
/// Hermes / Qwen / SmolLM3, Mistral, and Llama 3.1.
const CALL_MARKERS: [&str; 3] = ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>"];

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDef {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments object.
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

/// The request's tools and how they may be used.
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub defs: Vec<ToolDef>,
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true): false keeps the first call.
    pub parallel: bool,
}

/// A call the model made, in OpenAI's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments object as JSON text.
    pub arguments: String,
}

impl ToolCall {
    pub fn to_openai_json(&self, index: usize) -> Value {
        json!({
            "index": index,
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }
}

impl Tools {
    /// Reads `tools`, `tool_choice` and `parallel_tool_calls`. `None` when
    /// the request offers no tools.
    pub fn parse(
        tools: Option<&Value>,
        choice: Option<&Value>,
        parallel: Option<bool>,
    ) -> Result<Option<Self>, InferenceError> {
        let defs = match tools.filter(|t| !t.is_null()) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                if items.len() > MAX_TOOLS {
                    return Err(InferenceError::invalid(
                        "tools",
                        format!("at most {MAX_TOOLS} tools are allowed, got {}", items.len()),
                    ));
                }
                let defs = items.iter().map(tool_def).collect::<Result<Vec<_>, _>>()?;
                for (i, def) in defs.iter().enumerate() {
                    if defs[..i].iter().any(|d| d.name == def.name) {
                        return Err(InferenceError::invalid(
                            "tools",
                            format!("function `{}` is defined twice", def.name),
                        ));
                    }
                }
                defs
            }
            Some(_) => return Err(InferenceError::invalid("tools", "must be an array")),
        };
        let choice = parse_choice(choice, &defs)?;
        if defs.is_empty() {
            return Ok(None);
        }
        let tools = Self {
            choice: choice.unwrap_or(ToolChoice::Auto),
            defs,
            parallel: parallel.unwrap_or(true),
        };
        if let Some(schema) = tools.forced_schema() {
            response_format::check_schema("tools", &schema)?;
        }
        Ok(Some(tools))
    }

    /// The tools the chat template should show the model (none for
    /// `tool_choice: "none"`).
    pub fn offered(&self) -> &[ToolDef] {
        match self.choice {
            ToolChoice::None => &[],
            _ => &self.defs,
        }
    }

    /// Whether answers are read for calls.
    pub fn may_call(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The schema decoding is held to when a call is required: one call to
    /// the named function, or to any of the tools.
    pub fn forced_schema(&self) -> Option<Value> {
        let call = |def: &ToolDef| {
            json!({
                "type": "object",
                "properties": {"name": {"const": def.name}, "arguments": def.parameters},
                "required": ["name", "arguments"],
                "additionalProperties": false,
            })
        };
        match &self.choice {
            ToolChoice::None | ToolChoice::Auto => None,
            ToolChoice::Function(name) => self.defs.iter().find(|d| &d.name == name).map(call),
            ToolChoice::Required if self.defs.len() == 1 => Some(call(&self.defs[0])),
            ToolChoice::Required => {
                Some(json!({"anyOf": self.defs.iter().map(call).collect::<Vec<_>>()}))
            }
        }
    }
}

fn tool_def(item: &Value) -> Result<ToolDef, InferenceError> {
    let invalid = |message: &str| InferenceError::invalid("tools", message.to_string());
    match item.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(InferenceError::invalid(
                "tools",
                format!(
                    "tool type `{}` is not supported; only `function`",
                    other.escape_debug()
                ),
            ));
        }
        None => return Err(invalid("each tool needs `type: \"function\"`")),
    }
    let function = item
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("each tool needs a `function` object"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| response_format::valid_name(n))
        .ok_or_else(|| invalid("`function.name` must be 1-64 letters, digits, `_` or `-`"))?;
    let description = match function.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(invalid("`function.description` must be a string")),
    };
    // OpenAI: omitted parameters mean a function without arguments.
    let parameters = match function.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => {
            return Err(invalid(
                "`function.parameters` must be a JSON schema object",
            ));
        }
    };
    Ok(ToolDef {
        name: name.to_string(),
        description,
        parameters,
    })
}

fn parse_choice(
    choice: Option<&Value>,
    defs: &[ToolDef],
) -> Result<Option<ToolChoice>, InferenceError> {
    let invalid = |message: String| InferenceError::invalid("tool_choice", message);
    let choice = match choice.filter(|c| !c.is_null()) {
        None => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(invalid(format!(
                    "unknown value `{}`; expected none, auto, required or a function",
                    other.escape_debug()
                )));
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    invalid(
                        "a named choice is {\"type\": \"function\", \"function\": {\"name\": ...}}"
                            .into(),
                    )
                })?;
            if !defs.iter().any(|d| d.name == name) {
                return Err(invalid(format!(
                    "function `{}` is not one of `tools`",
                    name.escape_debug()
                )));
            }
            ToolChoice::Function(name.to_string())
        }
        Some(_) => return Err(invalid("must be a string or an object".into())),
    };
    // OpenAI refuses a choice that needs tools when none are given.
    if defs.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) {
        return Err(invalid("requires `tools`".into()));
    }
    Ok(Some(choice))
}

/// The calls in a whole answer, if it is one: a call object
/// `{"name": ..., "arguments"|"parameters": {...}}` or an array of them,
/// bare or after `[TOOL_CALLS]` / `<|python_tag|>`, or in one or more
/// `<tool_call>…</tool_call>` blocks (the last may be unclosed: generation
/// can stop at the end-of-turn token). Every call must name a declared
/// tool and carry an arguments object; otherwise the answer is text.
pub fn extract_calls(text: &str, tools: &Tools) -> Option<Vec<ToolCall>> {
    if !tools.may_call() {
        return None;
    }
    let text = text.trim();
    let objects = if let Some(rest) = text.strip_prefix("<tool_call>") {
        let mut objects = Vec::new();
        for block in rest.split("<tool_call>") {
            let block = block.trim();
            let inner = block
                .strip_suffix("</tool_call>")
                .unwrap_or(block)
                .trim_end();
            if inner.contains("</tool_call>") {
                return None; // text after a closed block
            }
            objects.extend(json_calls(inner)?);
        }
        objects
    } else if let Some(rest) = text
        .strip_prefix("[TOOL_CALLS]")
        .or_else(|| text.strip_prefix("<|python_tag|>"))
    {
        json_calls(rest.trim())?
    } else {
        json_calls(text)?
    };
    let mut calls = objects
        .iter()
        .map(|o| call_from(o, tools))
        .collect::<Option<Vec<_>>>()?;
    if calls.is_empty() {
        return None;
    }
    if !tools.parallel {
        calls.truncate(1);
    }
    Some(calls)
}

fn json_calls(text: &str) -> Option<Vec<Value>> {
    match serde_json::from_str::<Value>(text).ok()? {
        Value::Array(items) => Some(items),
        object @ Value::Object(_) => Some(vec![object]),
        _ => None,
    }
}

fn call_from(object: &Value, tools: &Tools) -> Option<ToolCall> {
    let name = object.get("name").and_then(Value::as_str)?;
    let allowed = match &tools.choice {
        ToolChoice::Function(only) => only == name,
        _ => tools.defs.iter().any(|d| d.name == name),
    };
    if !allowed {
        return None;
    }
    let arguments = match object.get("arguments").or_else(|| object.get("parameters")) {
        None => Value::Object(Map::new()),
        Some(args @ Value::Object(_)) => args.clone(),
        // Some templates teach arguments as a JSON string.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s).ok()? {
            args @ Value::Object(_) => args,
            _ => return None,
        },
        Some(_) => return None,
    };
    Some(ToolCall {
        id: format!("call_{}", uuid::Uuid::new_v4().simple()),
        name: name.to_string(),
        arguments: arguments.to_string(),
    })
}

/// Splits a streamed answer into text to send now and a possible call,
/// holding text back only while it could still be a call.
#[derive(Debug)]
pub struct CallDetector {
    tools: Tools,
    held: String,
    state: Detecting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detecting {
    /// Only whitespace so far, or a prefix of a call marker.
    Undecided,
    /// A JSON value at `depth`, which closes when depth returns to 0.
    Json(JsonScan),
    /// Started with a call marker: held to the end.
    Marked,
    /// Text: passed through.
    Text,
}

/// How a streamed answer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Text still held back (empty when all of it was sent).
    Text(String),
    Calls(Vec<ToolCall>),
}

impl CallDetector {
    pub fn new(tools: Tools) -> Self {
        let state = if tools.may_call() {
            Detecting::Undecided
        } else {
            Detecting::Text
        };
        Self {
            tools,
            held: String::new(),
            state,
        }
    }

    /// Takes the next piece of the answer; returns the text to send now.
    pub fn push(&mut self, text: &str) -> Option<String> {
        match &mut self.state {
            Detecting::Text => return Some(text.to_string()),
            Detecting::Marked => {
                self.held.push_str(text);
                return None;
            }
            Detecting::Json(scan) => {
                self.held.push_str(text);
                if !scan.feed(text) {
                    self.state = Detecting::Text;
                    return Some(std::mem::take(&mut self.held));
                }
                return None;
            }
            Detecting::Undecided => self.held.push_str(text),
        }
        let start = self.held.trim_start();
        if start.is_empty() {
            return None;
        }
        if CALL_MARKERS.iter().any(|m| start.starts_with(m)) {
            self.state = Detecting::Marked;
            return None;
        }
        if CALL_MARKERS.iter().any(|m| m.starts_with(start)) {
            return None;
        }
        if start.starts_with(['{', '[']) {
            let mut scan = JsonScan::default();
            if scan.feed(start) {
                self.state = Detecting::Json(scan);
                return None;
            }
        }
        self.state = Detecting::Text;
        Some(std::mem::take(&mut self.held))
    }

    /// The answer is complete: its calls, or the text still held.
    pub fn finish(self) -> Ending {
        if self.state == Detecting::Text {
            return Ending::Text(self.held);
        }
        match extract_calls(&self.held, &self.tools) {
            Some(calls) => Ending::Calls(calls),
            None => Ending::Text(self.held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather_tools(choice: Option<Value>) -> Tools {
        let tools = json!([
            {"type": "function", "function": {
                "name": "get_weather", "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            }},
            {"type": "function", "function": {"name": "get_time"}},
        ]);
        Tools::parse(Some(&tools), choice.as_ref(), None)
            .unwrap()
            .unwrap()
    }

    fn names(calls: &[ToolCall]) -> Vec<(&str, Value)> {
        calls
            .iter()
            .map(|c| (c.name.as_str(), serde_json::from_str(&c.arguments).unwrap()))
            .collect()
    }

    #[test]
    fn tools_default_to_auto_and_absent_tools_are_none() {
        assert_eq!(weather_tools(None).choice, ToolChoice::Auto);
        assert_eq!(Tools::parse(None, None, None).unwrap(), None);
        assert_eq!(
            Tools::parse(Some(&json!([])), Some(&json!("none")), None).unwrap(),
            None
        );
        let tools = weather_tools(None);
        assert_eq!(
            tools.defs[1].parameters,
            json!({"type": "object", "properties": {}})
        );
        assert!(tools.parallel);
    }

    #[test]
    fn malformed_tools_and_choices_name_the_field() {
        let one = |extra: Value| json!([{"type": "function", "function": extra}]);
        for (tools, choice, field, expected) in [
            (json!({}), None, "tools", "must be an array"),
            (
                json!([{"type": "retrieval"}]),
                None,
                "tools",
                "`retrieval` is not supported",
            ),
            (
                json!([{"function": {"name": "f"}}]),
                None,
                "tools",
                "needs `type",
            ),
            (
                one(json!({"name": "bad name"})),
                None,
                "tools",
                "function.name",
            ),
            (
                one(json!({"name": "f", "parameters": []})),
                None,
                "tools",
                "function.parameters",
            ),
            (
                json!([{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]),
                None,
                "tools",
                "defined twice",
            ),
            (
                one(json!({"name": "f"})),
                Some(json!("sometimes")),
                "tool_choice",
                "unknown value",
            ),
            (
                one(json!({"name": "f"})),
                Some(json!({"type": "function", "function": {"name": "g"}})),
                "tool_choice",
                "not one of `tools`",
            ),
            (
                json!([]),
                Some(json!("required")),
                "tool_choice",
                "requires `tools`",
            ),
            (
                one(
                    json!({"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}),
                ),
                Some(json!("required")),
                "tools",
                "cannot be enforced",
            ),
        ] {
            let error = Tools::parse(Some(&tools), choice.as_ref(), None)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(&format!("`{field}`")),
                "{tools} {choice:?}: {error}"
            );
            assert!(error.contains(expected), "{tools} {choice:?}: {error}");
        }
    }

    #[test]
    fn the_tool_limit_is_inclusive() {
        let many = |n: usize| {
            Value::Array(
                (0..n)
                    .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
                    .collect(),
            )
        };
        assert!(Tools::parse(Some(&many(MAX_TOOLS)), None, None).is_ok());
        let error = Tools::parse(Some(&many(MAX_TOOLS + 1)), None, None).unwrap_err();
        assert!(error.to_string().contains("at most 128 tools"), "{error}");
    }

    #[test]
    fn only_required_and_named_choices_constrain_decoding() {
        assert_eq!(weather_tools(None).forced_schema(), None);
        assert_eq!(weather_tools(Some(json!("none"))).forced_schema(), None);
        let named = weather_tools(Some(
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ))
        .forced_schema()
        .unwrap();
        assert_eq!(named["properties"]["name"], json!({"const": "get_weather"}));
        assert_eq!(
            named["properties"]["arguments"]["required"],
            json!(["city"])
        );
        let required = weather_tools(Some(json!("required")))
            .forced_schema()
            .unwrap();
        assert_eq!(required["anyOf"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn calls_are_read_in_the_formats_templates_teach() {
        let tools = weather_tools(None);
        let paris = ("get_weather", json!({"city": "Paris"}));
        for text in [
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#,
            r#"  {"name": "get_weather", "parameters": {"city": "Paris"}}"#,
            r#"{"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}"#,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
            r#"[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}]"#,
            r#"<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}"#,
        ] {
            let calls = extract_calls(text, &tools).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(names(&calls), vec![paris.clone()], "{text}");
            assert!(calls[0].id.starts_with("call_"));
        }
        let two = extract_calls(
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>\n<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call>",
            &tools,
        )
        .unwrap();
        assert_eq!(
            names(&two),
            vec![
                ("get_weather", json!({"city": "Oslo"})),
                ("get_time", json!({}))
            ]
        );
        assert_ne!(two[0].id, two[1].id);
    }

    #[test]
    fn text_that_is_not_a_call_stays_text() {
        let tools = weather_tools(None);
        for text in [
            "The weather in Paris is mild.",
            r#"{"name": "get_stock", "arguments": {}}"#,
            r#"{"answer": 42}"#,
            r#"{"name": "get_weather", "arguments": [1]}"#,
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}} and more"#,
            "<tool_call>{\"name\": \"get_weather\"}</tool_call> then text",
            "[1, 2, 3]",
        ] {
            assert_eq!(extract_calls(text, &tools), None, "{text}");
        }
        let none = weather_tools(Some(json!("none")));
        assert_eq!(
            extract_calls(r#"{"name": "get_weather", "arguments": {}}"#, &none),
            None
        );
        let only_time = weather_tools(Some(
            json!({"type": "function", "function": {"name": "get_time"}}),
        ));
        assert_eq!(
            extract_calls(r#"{"name": "get_weather", "arguments": {}}"#, &only_time),
            None
        );
    }

    #[test]
    fn parallel_false_keeps_the_first_call() {
        let mut tools = weather_tools(None);
        tools.parallel = false;
        let calls = extract_calls(
            r#"[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]"#,
            &tools,
        )
        .unwrap();
        assert_eq!(names(&calls), vec![("get_time", json!({}))]);
    }

    fn stream(tools: Tools, pieces: &[&str]) -> (String, Ending) {
        let mut detector = CallDetector::new(tools);
        let mut sent = String::new();
        for piece in pieces {
            if let Some(text) = detector.push(piece) {
                sent.push_str(&text);
            }
        }
        (sent, detector.finish())
    }

    #[test]
    fn streamed_text_is_not_held_back() {
        let mut detector = CallDetector::new(weather_tools(None));
        assert_eq!(detector.push("  "), None);
        assert_eq!(detector.push("The"), Some("  The".into()));
        assert_eq!(detector.push(" sky"), Some(" sky".into()));
        assert_eq!(detector.finish(), Ending::Text(String::new()));
    }

    #[test]
    fn a_streamed_call_arrives_whole_at_the_end() {
        let (sent, ending) = stream(
            weather_tools(None),
            &[
                "<tool",
                "_call>{\"name\": \"get_weather\", ",
                "\"arguments\": {\"city\": \"Pa",
                "ris\"}}",
            ],
        );
        assert_eq!(sent, "");
        let Ending::Calls(calls) = ending else {
            panic!("{ending:?}")
        };
        assert_eq!(
            names(&calls),
            vec![("get_weather", json!({"city": "Paris"}))]
        );
        let (sent, ending) = stream(
            weather_tools(None),
            &[
                "{\"name\": \"get_time\",",
                " \"arguments\": {\"tz\": \"}{\\\"\"}}",
                "\n",
            ],
        );
        assert_eq!(sent, "");
        assert!(
            matches!(ending, Ending::Calls(ref c) if c[0].name == "get_time"),
            "{ending:?}"
        );
    }

    #[test]
    fn json_followed_by_text_is_released_as_text() {
        let (sent, ending) = stream(weather_tools(None), &["{\"a\": 1}", " is JSON", "."]);
        assert_eq!(sent, "{\"a\": 1} is JSON.");
        assert_eq!(ending, Ending::Text(String::new()));
        // A marker prefix that turns out to be text.
        let (sent, ending) = stream(weather_tools(None), &["<to", "day>"]);
        assert_eq!(sent, "<today>");
        assert_eq!(ending, Ending::Text(String::new()));
    }

    #[test]
    fn held_text_that_is_no_call_is_returned_at_the_end() {
        let (sent, ending) = stream(weather_tools(None), &["{\"answer\":", " 42}"]);
        assert_eq!(sent, "");
        assert_eq!(ending, Ending::Text("{\"answer\": 42}".into()));
        let (sent, ending) = stream(
            weather_tools(Some(json!("none"))),
            &["{\"name\": \"get_time\"}"],
        );
        assert_eq!(sent, "{\"name\": \"get_time\"}");
        assert_eq!(ending, Ending::Text(String::new()));
    }
}
