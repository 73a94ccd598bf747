//! From a conversation to token ids: render the chat template, expand each media placeholder
//! into the processor's exact token sequence, tokenise without adding special tokens.

use std::collections::HashSet;
use std::path::Path;

use gemma3n::Gemma3nConfig;
use tokenizers::Tokenizer;

use crate::chat::{self, ChatTemplate, Message, Part, Role};
use crate::stream::TextStream;
use crate::{Error, Result};

/// Private-use characters that cannot come from a tokenizer vocabulary's control tokens; they
/// delimit user text while rendering a conversation that quotes control-token strings.
const QUOTE_OPEN: char = '\u{F8F0}';
const QUOTE_CLOSE: char = '\u{F8F1}';

pub struct PromptEncoder {
    tokenizer: Tokenizer,
    /// The same tokenizer with special-token matching switched off, for quoted user text.
    literal_tokenizer: Tokenizer,
    template: ChatTemplate,
    /// Each modality's placeholder and the run it expands to, for the modalities whose tokens
    /// the vocabulary has (a text-only GGUF of the released 262,144-token vocabulary has none).
    media_expansions: Vec<(String, String)>,
    /// Every special added token's text (`<start_of_turn>`, `<image_soft_token>`, ...).
    control_strings: Vec<String>,
    /// Their ids, hidden from streamed text.
    control_ids: HashSet<u32>,
    bos_id: u32,
}

/// A tokenised prompt and the text it came from.
#[derive(Debug, Clone)]
pub struct EncodedPrompt {
    pub ids: Vec<u32>,
    pub text: String,
}

impl PromptEncoder {
    pub fn from_model_dir(dir: &Path, cfg: &Gemma3nConfig) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("cannot load {}: {e}", path.display())))?;
        let template = ChatTemplate::from_model_dir(dir)?;
        Self::new(tokenizer, template, cfg)
    }

    /// For a GGUF file: `tokenizer.json` and the chat template beside it when there are any,
    /// otherwise the file's own vocabulary and `tokenizer.chat_template`.
    pub fn from_gguf(path: &Path, cfg: &Gemma3nConfig) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        if dir.join("tokenizer.json").is_file() {
            return Self::from_model_dir(dir, cfg);
        }
        let vocab = gemma3n::gguf::vocabulary(path)?.ok_or_else(|| {
            Error::ModelFiles(format!(
                "{} carries no tokenizer and there is no tokenizer.json beside it",
                path.display()
            ))
        })?;
        let tokenizer = crate::gguf_tokenizer::tokenizer_from_vocabulary(&vocab)?;
        let template = match ChatTemplate::from_model_dir(dir) {
            Err(Error::ModelFiles(missing)) => {
                let source = vocab.chat_template.clone().ok_or_else(|| {
                    Error::ModelFiles(format!("{missing}, and the GGUF file carries none"))
                })?;
                let bos = vocab
                    .bos_id
                    .map(|id| vocab.tokens[id as usize].clone())
                    .unwrap_or_else(|| "<bos>".into());
                ChatTemplate::new(source, bos)?
            }
            other => other?,
        };
        Self::new(tokenizer, template, cfg)
    }

    pub fn new(tokenizer: Tokenizer, template: ChatTemplate, cfg: &Gemma3nConfig) -> Result<Self> {
        let media_expansions = [
            (
                cfg.image_token_id,
                cfg.boi_token_id,
                cfg.eoi_token_id,
                cfg.vision_soft_tokens_per_image,
            ),
            (
                cfg.audio_token_id,
                cfg.boa_token_id,
                cfg.eoa_token_id,
                cfg.audio_soft_tokens_per_image,
            ),
        ]
        .into_iter()
        .filter_map(|(soft, begin, end, count)| {
            let [soft, begin, end] = [soft, begin, end].map(|id| tokenizer.id_to_token(id));
            let soft = soft?;
            Some((
                soft.clone(),
                format!("\n\n{}{}{}\n\n", begin?, soft.repeat(count), end?),
            ))
        })
        .collect();
        let bos_id = tokenizer.token_to_id(template.bos_token()).ok_or_else(|| {
            Error::Tokenizer(format!(
                "BOS token {} is not in the vocabulary",
                template.bos_token()
            ))
        })?;
        let specials: Vec<(u32, String)> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        let control_ids = specials.iter().map(|(id, _)| *id).collect();
        let control_strings = specials.into_iter().map(|(_, s)| s).collect();
        let mut literal_tokenizer = tokenizer.clone();
        literal_tokenizer.set_encode_special_tokens(true);
        Ok(Self {
            tokenizer,
            literal_tokenizer,
            template,
            media_expansions,
            control_strings,
            control_ids,
            bos_id,
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// A streaming detokeniser that hides control tokens.
    pub fn text_stream(&self) -> TextStream<'_> {
        TextStream::new(&self.tokenizer, &self.control_ids)
    }

    /// The rendered template before placeholder expansion.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        chat::validate(messages)?;
        self.template.render(messages, add_generation_prompt)
    }

    /// Token ids for `messages` (each audio part standing for one clip), ending with the
    /// generation prompt.
    pub fn encode(&self, messages: &[Message]) -> Result<EncodedPrompt> {
        chat::validate(messages)?;
        let quotes_control_tokens = messages.iter().flat_map(|m| &m.content).any(|p| {
            matches!(p, Part::Text { text } if self.control_strings.iter().any(|c| text.contains(c.as_str())))
        });
        let (text, mut ids) = if quotes_control_tokens {
            self.encode_quoting_user_text(messages)?
        } else {
            let text = self.expand(&self.template.render(messages, true)?);
            let ids = self.tokenize(&self.tokenizer, &text)?;
            (text, ids)
        };
        if ids.first() != Some(&self.bos_id) {
            ids.insert(0, self.bos_id);
        }
        Ok(EncodedPrompt { ids, text })
    }

    fn expand(&self, rendered: &str) -> String {
        self.media_expansions
            .iter()
            .fold(rendered.to_owned(), |text, (placeholder, run)| {
                text.replace(placeholder, run)
            })
    }

    fn tokenize(&self, tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
        Ok(tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Render with every text part replaced by a quoted index, then tokenise template text with
    /// special tokens and the user's text as plain text, so that typed control-token strings can
    /// neither forge a turn nor a media slot.
    fn encode_quoting_user_text(&self, messages: &[Message]) -> Result<(String, Vec<u32>)> {
        let mut texts = Vec::new();
        let quoted: Vec<Message> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                // The template trims every text except the system prompt.
                let keep_whitespace = i == 0 && m.role == Role::System;
                let content = m
                    .content
                    .iter()
                    .map(|p| match p {
                        Part::Text { text } => {
                            let t = if keep_whitespace {
                                text.as_str()
                            } else {
                                text.trim()
                            };
                            texts.push(t.to_owned());
                            Part::Text {
                                text: format!("{QUOTE_OPEN}{}{QUOTE_CLOSE}", texts.len() - 1),
                            }
                        }
                        other => other.clone(),
                    })
                    .collect();
                Message {
                    role: m.role,
                    content,
                }
            })
            .collect();
        let rendered = self.expand(&self.template.render(&quoted, true)?);
        let (mut text, mut ids) = (String::new(), Vec::new());
        for (k, piece) in rendered.split([QUOTE_OPEN, QUOTE_CLOSE]).enumerate() {
            // Odd pieces are the quoted indices.
            if k % 2 == 1 {
                let user = piece
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| texts.get(i))
                    .ok_or_else(|| Error::Template("unexpected quoting marker".into()))?;
                ids.extend(self.tokenize(&self.literal_tokenizer, user)?);
                text.push_str(user);
            } else {
                ids.extend(self.tokenize(&self.tokenizer, piece)?);
                text.push_str(piece);
            }
        }
        Ok((text, ids))
    }
}
