//! Incremental detokenisation at the byte level: each token contributes its bytes (byte-fallback
//! tokens exactly one), and text is released as soon as it forms complete UTF-8 characters.
//! Bytes that can never become valid are shown as U+FFFD; nothing is held back or lost.

use std::collections::HashSet;

use tokenizers::Tokenizer;

pub struct TextStream<'a> {
    tokenizer: &'a Tokenizer,
    /// Control tokens, which are not shown.
    hidden: &'a HashSet<u32>,
    pending: Vec<u8>,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a Tokenizer, hidden: &'a HashSet<u32>) -> Self {
        Self {
            tokenizer,
            hidden,
            pending: Vec::new(),
        }
    }

    fn token_bytes(&self, id: u32) -> Vec<u8> {
        if let Some(byte) = self.tokenizer.id_to_token(id).and_then(|t| byte_token(&t)) {
            return vec![byte];
        }
        self.tokenizer
            .decode(&[id], false)
            .unwrap_or_default()
            .into_bytes()
    }

    /// Add a token; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        if self.hidden.contains(&id) {
            return None;
        }
        self.pending.extend(self.token_bytes(id));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for its next bytes.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// Whatever is still held back at the end of generation (an incomplete character).
    pub fn finish(&mut self) -> Option<String> {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        (!rest.is_empty()).then_some(rest)
    }
}

/// `<0xAB>` byte-fallback tokens.
fn byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}
