//! Where a streamed JSON value ends, without parsing it.
//!
//! Used twice: to tell a tool call from text while an answer streams
//! ([`crate::tool_calls::CallDetector`]), and to end a generation held to a
//! JSON schema once its value is complete ([`crate::relay`]). The second
//! is needed because mistral.rs 0.8.1 ends a constrained sequence with
//! llguidance's end-of-sequence token, which is not always the model's
//! (SmolLM2: `<|endoftext|>` against `<|im_end|>`), so without it the
//! engine keeps sampling invisible tokens until `max_tokens`.

/// Enough of a JSON lexer to know where a value ends: nesting depth and
/// whether the cursor is in a string. Linear in the answer, where
/// re-parsing the held text at every token would be quadratic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JsonScan {
    depth: usize,
    in_string: bool,
    escaped: bool,
    closed: bool,
}

impl JsonScan {
    /// Feeds `text`; false when non-whitespace follows the closed value.
    pub fn feed(&mut self, text: &str) -> bool {
        for c in text.chars() {
            if self.closed {
                if !c.is_whitespace() {
                    return false;
                }
                continue;
            }
            if self.in_string {
                match (self.escaped, c) {
                    (true, _) => self.escaped = false,
                    (false, '\\') => self.escaped = true,
                    (false, '"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => self.in_string = true,
                '{' | '[' => self.depth += 1,
                '}' | ']' => {
                    self.depth = self.depth.saturating_sub(1);
                    self.closed = self.depth == 0;
                }
                _ => {}
            }
        }
        true
    }

    /// Whether an object or array opened and has closed.
    pub fn closed(&self) -> bool {
        self.closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(pieces: &[&str]) -> (bool, bool) {
        let mut scan = JsonScan::default();
        let ok = pieces.iter().all(|p| scan.feed(p));
        (ok, scan.closed())
    }

    #[test]
    fn a_value_closes_when_its_outer_bracket_does() {
        assert_eq!(scan(&["{\"a\": [1, {\"b\"", ": 2}]", "}"]), (true, true));
        assert_eq!(scan(&["[[]", "]  \n"]), (true, true));
        assert_eq!(scan(&["{\"a\": [1, 2]"]), (true, false));
    }

    #[test]
    fn brackets_and_escaped_quotes_inside_strings_do_not_count() {
        assert_eq!(scan(&[r#"{"s": "}]\"{"#, r#"", "t": "\\"}"#]), (true, true));
        assert_eq!(scan(&[r#"{"s": "\"}"#]), (true, false));
    }

    #[test]
    fn text_after_the_value_is_reported() {
        assert_eq!(scan(&["{}", " and more"]), (false, true));
    }
}
