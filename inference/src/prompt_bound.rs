//! How many bytes of prompt text can possibly fit the context window, so
//! that validation can refuse an oversized prompt before anything tokenizes
//! it (tokenization runs on the engine's loop and stalls running streams
//! while it lasts).
//!
//! A token never stands for more input bytes than its vocabulary entry is
//! long in UTF-8: byte-level BPE spells each byte as one or two-byte
//! characters (`Ġ` for a space), SentencePiece spells a space as the
//! three-byte `▁` and a fallback byte as the six-byte `<0xNN>`. Normalizers
//! can contract text a little (NFC/NFKC compose characters), hence
//! [`SAFETY_FACTOR`]. So a prompt of more than
//! `context_length × longest_token × SAFETY_FACTOR` bytes has more tokens
//! than the context window holds, whatever the tokenizer does with it.

use std::{fs::File, io::BufReader, path::Path};

use serde_json::Value;

use crate::model_source::LocalModel;

/// Margin for normalizers that contract text before it is split.
pub const SAFETY_FACTOR: usize = 2;

/// The byte bound for a model with this vocabulary and context window, or
/// `None` when the vocabulary could not be read (then only the token count
/// decides).
pub fn max_prompt_bytes(local: &LocalModel, context_length: usize) -> Option<usize> {
    let longest = match local {
        LocalModel::Gguf { dir, files } => longest_gguf_token(&dir.join(files.first()?)),
        LocalModel::Plain { dir } => longest_tokenizer_json_token(&dir.join("tokenizer.json")),
    };
    match longest {
        Ok(longest) => Some(
            context_length
                .saturating_mul(longest.max(1))
                .saturating_mul(SAFETY_FACTOR),
        ),
        Err(error) => {
            tracing::warn!(%error, "cannot read the vocabulary; prompts are bounded by their token count only");
            None
        }
    }
}

/// The longest entry of `tokenizer.ggml.tokens` in a GGUF file's metadata.
fn longest_gguf_token(path: &Path) -> Result<usize, String> {
    use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let content =
        Content::read(&mut BufReader::new(file)).map_err(|e| format!("{}: {e}", path.display()))?;
    let Some(GgufValue::Array(tokens)) = content.metadata.get("tokenizer.ggml.tokens") else {
        return Err(format!("{}: no tokenizer.ggml.tokens", path.display()));
    };
    tokens
        .iter()
        .filter_map(|t| match t {
            GgufValue::String(s) => Some(s.len()),
            _ => None,
        })
        .max()
        .ok_or_else(|| format!("{}: empty vocabulary", path.display()))
}

/// The longest vocabulary entry or added token in a `tokenizer.json`:
/// `model.vocab` is an object (BPE, WordPiece) or `[piece, score]` pairs
/// (Unigram).
fn longest_tokenizer_json_token(path: &Path) -> Result<usize, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let json: Value = serde_json::from_reader(BufReader::new(file))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    longest_in_tokenizer(&json).ok_or_else(|| format!("{}: no vocabulary", path.display()))
}

fn longest_in_tokenizer(json: &Value) -> Option<usize> {
    let vocab = match &json["model"]["vocab"] {
        Value::Object(map) => map.keys().map(String::len).max(),
        Value::Array(pairs) => pairs
            .iter()
            .filter_map(|p| p.get(0).and_then(Value::as_str).map(str::len))
            .max(),
        _ => None,
    }?;
    let added = json["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["content"].as_str().map(str::len))
        .max()
        .unwrap_or(0);
    Some(vocab.max(added))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bpe_unigram_and_added_tokens_are_measured() {
        let bpe = json!({"model": {"vocab": {"a": 0, "ĠĠĠĠ": 1}}, "added_tokens": []});
        assert_eq!(longest_in_tokenizer(&bpe), Some(8));
        let unigram = json!({"model": {"vocab": [["▁the", -1.0], ["x", -2.0]]}});
        assert_eq!(longest_in_tokenizer(&unigram), Some(6));
        let added =
            json!({"model": {"vocab": {"a": 0}}, "added_tokens": [{"content": "<|im_start|>"}]});
        assert_eq!(longest_in_tokenizer(&added), Some(12));
        assert_eq!(longest_in_tokenizer(&json!({"model": {}})), None);
    }

    #[test]
    fn the_bound_scales_with_the_context_window() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer.json"),
            json!({"model": {"vocab": {"abc": 0}}}).to_string(),
        )
        .unwrap();
        let local = LocalModel::Plain {
            dir: dir.path().to_path_buf(),
        };
        assert_eq!(max_prompt_bytes(&local, 100), Some(100 * 3 * SAFETY_FACTOR));
        let missing = LocalModel::Plain {
            dir: dir.path().join("nowhere"),
        };
        assert_eq!(max_prompt_bytes(&missing, 100), None);
    }
}
