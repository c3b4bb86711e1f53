//! `response_format`: JSON mode and JSON schemas, enforced while decoding.
//!
//! Both become a JSON schema that mistral.rs hands to llguidance, which
//! masks every token that would leave the schema's language: the answer is
//! valid JSON by construction (unless `max_tokens` cuts it short, which the
//! finish reason `length` says). `json_object` is the schema
//! `{"type": "object"}`.
//!
//! A schema is compiled here, at validation, with llguidance's own compiler
//! (the one the engine runs, without a tokenizer): a schema it cannot
//! enforce is a `400` naming `response_format` before the request takes a
//! slot, rather than an engine error after it was admitted and tokenized.

use llguidance::{GrammarBuilder, JsonCompileOptions, api::ParserLimits};
use serde_json::{Value, json};

use crate::error::InferenceError;

/// What the answer must be.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ResponseFormat {
    /// Free text (no `response_format`, or `{"type": "text"}`).
    #[default]
    Text,
    /// Any JSON object (`{"type": "json_object"}`).
    JsonObject,
    /// JSON valid under `schema` (`{"type": "json_schema", "json_schema": {...}}`).
    JsonSchema { name: String, schema: Value },
}

impl ResponseFormat {
    /// Reads OpenAI's `response_format` object.
    pub fn parse(value: Option<&Value>) -> Result<Self, InferenceError> {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(Self::Text);
        };
        let kind = value.get("type").and_then(Value::as_str).ok_or_else(|| {
            invalid("must be an object with a `type`: text, json_object or json_schema")
        })?;
        let format = match kind {
            "text" => Self::Text,
            "json_object" => Self::JsonObject,
            "json_schema" => {
                let spec = value
                    .get("json_schema")
                    .filter(|s| s.is_object())
                    .ok_or_else(|| invalid("`json_schema` must be an object with a `name`"))?;
                let name = spec
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|n| valid_name(n))
                    .ok_or_else(|| {
                        invalid("`json_schema.name` must be 1-64 letters, digits, `_` or `-`")
                    })?;
                // OpenAI: no schema means any JSON value.
                let schema = match spec.get("schema") {
                    None | Some(Value::Null) => json!({}),
                    Some(schema @ (Value::Object(_) | Value::Bool(_))) => schema.clone(),
                    Some(_) => return Err(invalid("`json_schema.schema` must be a JSON schema")),
                };
                Self::JsonSchema {
                    name: name.to_string(),
                    schema,
                }
            }
            other => {
                return Err(invalid(format!(
                    "unknown type `{}`; expected text, json_object or json_schema",
                    other.escape_debug()
                )));
            }
        };
        if let Some(schema) = format.schema() {
            check_schema("response_format", &schema)?;
        }
        Ok(format)
    }

    /// The schema decoding is held to; `None` for free text.
    pub fn schema(&self) -> Option<Value> {
        match self {
            Self::Text => None,
            Self::JsonObject => Some(json!({"type": "object"})),
            Self::JsonSchema { schema, .. } => Some(schema.clone()),
        }
    }
}

/// The schema as the engine gets it: compact JSON (`", "` and `": "`
/// between items, no other whitespace) unless the schema sets its own
/// llguidance options (`x-guidance`). With free whitespace a small model
/// can emit newlines until `max_tokens` runs out.
pub fn for_engine(schema: Value) -> Value {
    match schema {
        Value::Bool(true) => for_engine(json!({})),
        Value::Object(mut schema) => {
            schema.entry("x-guidance").or_insert_with(|| {
                json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "})
            });
            Value::Object(schema)
        }
        other => other,
    }
}

/// Compiles `schema` as the engine will, so one it cannot enforce (an
/// unsupported keyword, a broken `$ref`, a grammar over llguidance's
/// limits) is refused with the compiler's reason, naming `field`.
pub fn check_schema(field: &'static str, schema: &Value) -> Result<(), InferenceError> {
    let builder = GrammarBuilder::new(None, ParserLimits::default());
    JsonCompileOptions::default()
        .json_to_llg_with_overrides(builder, for_engine(schema.clone()))
        .map(drop)
        .map_err(|e| {
            InferenceError::invalid(field, format!("the JSON schema cannot be enforced: {e}"))
        })
}

/// OpenAI's rule for schema and function names.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn invalid(message: impl Into<String>) -> InferenceError {
    InferenceError::invalid("response_format", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<ResponseFormat, String> {
        ResponseFormat::parse(Some(&value)).map_err(|e| e.to_string())
    }

    #[test]
    fn text_and_absent_are_free_text() {
        assert_eq!(ResponseFormat::parse(None).unwrap(), ResponseFormat::Text);
        assert_eq!(
            ResponseFormat::parse(Some(&Value::Null)).unwrap(),
            ResponseFormat::Text
        );
        assert_eq!(
            parse(json!({"type": "text"})).unwrap(),
            ResponseFormat::Text
        );
        assert_eq!(ResponseFormat::Text.schema(), None);
    }

    #[test]
    fn json_object_is_any_object() {
        let format = parse(json!({"type": "json_object"})).unwrap();
        assert_eq!(format.schema(), Some(json!({"type": "object"})));
    }

    #[test]
    fn a_json_schema_is_kept_whole() {
        let schema = json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
            "additionalProperties": false,
        });
        let format = parse(json!({"type": "json_schema", "json_schema": {
            "name": "forecast", "strict": true, "schema": schema.clone(),
        }}))
        .unwrap();
        assert_eq!(format.schema(), Some(schema));
        let no_schema =
            parse(json!({"type": "json_schema", "json_schema": {"name": "any"}})).unwrap();
        assert_eq!(no_schema.schema(), Some(json!({})));
    }

    #[test]
    fn malformed_formats_name_the_field_and_the_fault() {
        for (value, expected) in [
            (json!("json"), "must be an object with a `type`"),
            (json!({"type": "yaml"}), "unknown type `yaml`"),
            (
                json!({"type": "json_schema"}),
                "`json_schema` must be an object",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"schema": {}}}),
                "`json_schema.name`",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a b"}}),
                "`json_schema.name`",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "n", "schema": 3}}),
                "must be a JSON schema",
            ),
        ] {
            let error = parse(value.clone()).unwrap_err();
            assert!(error.contains("`response_format`"), "{value}: {error}");
            assert!(error.contains(expected), "{value}: {error}");
        }
    }

    #[test]
    fn a_schema_the_engine_cannot_enforce_is_refused_up_front() {
        let error = parse(json!({"type": "json_schema", "json_schema": {
            "name": "broken", "schema": {"$ref": "#/$defs/missing"},
        }}))
        .unwrap_err();
        assert!(error.contains("cannot be enforced"), "{error}");
        let error = parse(json!({"type": "json_schema", "json_schema": {
            "name": "broken", "schema": {"type": "object", "properties": {"a": {"type": "nonsense"}}},
        }}))
        .unwrap_err();
        assert!(error.contains("cannot be enforced"), "{error}");
    }

    #[test]
    fn the_engine_gets_compact_json_unless_the_schema_says_otherwise() {
        let compact = for_engine(json!({"type": "object"}));
        assert_eq!(compact["x-guidance"]["whitespace_flexible"], false);
        assert_eq!(for_engine(json!(true))["x-guidance"]["key_separator"], ": ");
        let own = json!({"type": "object", "x-guidance": {"whitespace_flexible": true}});
        assert_eq!(for_engine(own.clone()), own);
        let error = parse(json!({"type": "json_schema", "json_schema": {
            "name": "opts", "schema": {"x-guidance": {"no_such_option": 1}},
        }}))
        .unwrap_err();
        assert!(error.contains("cannot be enforced"), "{error}");
    }

    #[test]
    fn names_follow_openai_rules() {
        assert!(valid_name("get_weather-2"));
        assert!(valid_name(&"a".repeat(64)));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(!valid_name(""));
        assert!(!valid_name("get weather"));
        assert!(!valid_name("wetter.heute"));
    }
}
