//! Incremental detokenisation: text is released only once it forms complete UTF-8 characters,
//! so byte-fallback tokens that split a character never show up as broken glyphs.

use tokenizers::Tokenizer;

pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Tokens before `prefix` are final; decoding restarts at `prefix` to keep context for the
    /// tokenizer's decoder (spaces, byte fallback).
    prefix: usize,
    /// Tokens before `read` have been released as text.
    read: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
        }
    }

    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// Add a token; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let before = self.decode(&self.ids[self.prefix..self.read]);
        let now = self.decode(&self.ids[self.prefix..]);
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.starts_with(&before) {
            let delta = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.ids.len();
            Some(delta)
        } else {
            None
        }
    }

    /// Whatever is still held back at the end of generation (an incomplete character).
    pub fn finish(&mut self) -> Option<String> {
        let before = self.decode(&self.ids[self.prefix..self.read]);
        let now = self.decode(&self.ids[self.prefix..]);
        self.read = self.ids.len();
        self.prefix = self.read;
        (now.len() > before.len() && now.starts_with(&before))
            .then(|| now[before.len()..].to_string())
    }
}
