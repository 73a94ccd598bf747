//! The tokenizer of a GGUF file that carries no `tokenizer.json`: Gemma's SentencePiece
//! vocabulary from `tokenizer.ggml.*`, rebuilt as the BPE tokenizer Hugging Face derives from the
//! same `tokenizer.model` (merges from the vocabulary, byte fallback, `' '` -> `'▁'`).

use gemma3n::gguf::Vocabulary;
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::{Error, Result};

const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// A Gemma tokenizer equivalent to the checkpoint's `tokenizer.json`.
pub fn tokenizer_from_vocabulary(vocab: &Vocabulary) -> Result<Tokenizer> {
    if vocab.model != "llama" {
        return Err(Error::Tokenizer(format!(
            "the GGUF's tokenizer is of type {:?}; only SentencePiece (llama) vocabularies are \
             supported: put the model's tokenizer.json beside the file",
            vocab.model
        )));
    }
    // The converter writes user-defined pieces with '▁' turned back into spaces.
    let pieces: Vec<String> = vocab
        .tokens
        .iter()
        .zip(&vocab.token_types)
        .map(|(t, &kind)| {
            if kind == USER_DEFINED {
                t.replace(' ', "▁")
            } else {
                t.clone()
            }
        })
        .collect();
    let mut ids = serde_json::Map::new();
    for (id, piece) in pieces.iter().enumerate() {
        ids.entry(piece.clone()).or_insert(json!(id));
    }
    // Hugging Face's rule: every split of a piece into two pieces of the vocabulary is a merge,
    // ranked by the merged piece's id, then by where it splits.
    let mut merges = Vec::new();
    for piece in &pieces {
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if ids.contains_key(left) && ids.contains_key(right) {
                merges.push(json!([left, right]));
            }
        }
    }
    let added: Vec<Value> = pieces
        .iter()
        .zip(&vocab.token_types)
        .enumerate()
        .filter(|(_, (_, &kind))| matches!(kind, UNKNOWN | CONTROL | USER_DEFINED))
        .map(|(id, (piece, &kind))| {
            json!({"id": id, "content": piece, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": kind != USER_DEFINED})
        })
        .collect();
    let unk = vocab
        .unk_id
        .map(|id| pieces[id as usize].clone())
        .unwrap_or_else(|| "<unk>".into());
    let post_processor = match vocab.bos_id.filter(|_| vocab.add_bos) {
        Some(bos) => {
            let bos_piece = &pieces[bos as usize];
            json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_piece, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_piece, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_piece, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_piece.as_str(): {"id": bos_piece, "ids": [bos], "tokens": [bos_piece]}}
            })
        }
        None => Value::Null,
    };
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                          "behavior": "MergedWithPrevious", "invert": false},
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}
        ]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                  "vocab": ids, "merges": merges}
    });
    spec.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| Error::Tokenizer(format!("cannot build the GGUF's tokenizer: {e}")))
}
