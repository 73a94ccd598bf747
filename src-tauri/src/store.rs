//! Chat history in SQLite (WAL) and attachments as files named by their content hash.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::backend::ReplyStats;
use crate::error::{AppError, AppResult};
use engine::SamplingParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentKind {
    Image,
    Audio,
}

/// A stored file: `<hash>.<ext>` in the attachments folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    pub hash: String,
    pub kind: AttachmentKind,
    pub mime: String,
    pub name: String,
}

impl Attachment {
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.hash, extension(&self.mime))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// Where a message is in its life: replies are `streaming` until they end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Streaming,
    Done,
    Stopped,
    Error,
    /// The app quit while the reply was streaming; the text so far is kept.
    Interrupted,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub id: i64,
    pub role: Role,
    pub text: String,
    pub attachments: Vec<Attachment>,
    pub status: Status,
    pub stats: Option<ReplyStats>,
    pub error: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationSummary {
    pub id: i64,
    pub title: String,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conversation {
    pub id: i64,
    pub title: String,
    pub system_prompt: String,
    pub sampling: Option<SamplingParams>,
    pub created_at: i64,
    pub updated_at: i64,
    pub messages: Vec<StoredMessage>,
}

pub struct Store {
    db: Mutex<Connection>,
    attachments_dir: PathBuf,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    sampling TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    -- AUTOINCREMENT: a deleted reply's id is never reused for a new one.
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    attachments TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL,
    stats TEXT,
    error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
";

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

fn enum_text<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("unit variants serialise as strings")
}

fn enum_parse<T: for<'de> Deserialize<'de>>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl Store {
    /// Open (or create) `chats.db` and the attachments folder in `data_dir`.
    pub fn open(data_dir: &Path) -> AppResult<Self> {
        std::fs::create_dir_all(data_dir.join("attachments")).map_err(|e| {
            AppError::Io(format!(
                "cannot create the data folder {}: {e}",
                data_dir.display()
            ))
        })?;
        let db = Connection::open(data_dir.join("chats.db"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        db.execute_batch(SCHEMA)?;
        // A reply that was streaming when the app last stopped will never finish.
        db.execute(
            "UPDATE messages SET status = 'interrupted' WHERE status = 'streaming'",
            [],
        )?;
        Ok(Self {
            db: Mutex::new(db),
            attachments_dir: data_dir.join("attachments"),
        })
    }

    fn db(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite itself consistent.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn attachments_dir(&self) -> &Path {
        &self.attachments_dir
    }

    pub fn list_conversations(&self, query: &str) -> AppResult<Vec<ConversationSummary>> {
        let db = self.db();
        let pattern = format!(
            "%{}%",
            query
                .trim()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        let mut stmt = db.prepare(
            "SELECT id, title, updated_at FROM conversations c
             WHERE ?1 = '%%' OR title LIKE ?1 ESCAPE '\\'
                OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id
                           AND m.text LIKE ?1 ESCAPE '\\')
             ORDER BY updated_at DESC, id DESC",
        )?;
        let rows = stmt.query_map([pattern], |r| {
            Ok(ConversationSummary {
                id: r.get(0)?,
                title: r.get(1)?,
                updated_at: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn create_conversation(&self, title: &str) -> AppResult<ConversationSummary> {
        let db = self.db();
        let now = now_ms();
        db.execute(
            "INSERT INTO conversations (title, created_at, updated_at) VALUES (?1, ?2, ?2)",
            params![title, now],
        )?;
        Ok(ConversationSummary {
            id: db.last_insert_rowid(),
            title: title.to_owned(),
            updated_at: now,
        })
    }

    fn changed(n: usize, id: i64) -> AppResult<()> {
        if n == 0 {
            return Err(AppError::NotFound(format!(
                "conversation {id} does not exist"
            )));
        }
        Ok(())
    }

    pub fn rename_conversation(&self, id: i64, title: &str) -> AppResult<()> {
        let n = self.db().execute(
            "UPDATE conversations SET title = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, title, now_ms()],
        )?;
        Self::changed(n, id)
    }

    pub fn delete_conversation(&self, id: i64) -> AppResult<()> {
        let n = self
            .db()
            .execute("DELETE FROM conversations WHERE id = ?1", [id])?;
        Self::changed(n, id)
    }

    pub fn set_system_prompt(&self, id: i64, prompt: &str) -> AppResult<()> {
        let n = self.db().execute(
            "UPDATE conversations SET system_prompt = ?2 WHERE id = ?1",
            params![id, prompt],
        )?;
        Self::changed(n, id)
    }

    pub fn set_sampling(&self, id: i64, sampling: Option<&SamplingParams>) -> AppResult<()> {
        let n = self.db().execute(
            "UPDATE conversations SET sampling = ?2 WHERE id = ?1",
            params![id, sampling.map(to_json)],
        )?;
        Self::changed(n, id)
    }

    pub fn conversation(&self, id: i64) -> AppResult<Conversation> {
        let db = self.db();
        let head = db
            .query_row(
                "SELECT title, system_prompt, sampling, created_at, updated_at
                 FROM conversations WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()?
            .ok_or_else(|| AppError::NotFound(format!("conversation {id} does not exist")))?;
        let mut stmt = db.prepare(
            "SELECT id, role, text, attachments, status, stats, error, created_at
             FROM messages WHERE conversation_id = ?1 ORDER BY id",
        )?;
        let messages = stmt
            .query_map([id], |r| {
                Ok(StoredMessage {
                    id: r.get(0)?,
                    role: enum_parse(&r.get::<_, String>(1)?)?,
                    text: r.get(2)?,
                    attachments: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                    status: enum_parse(&r.get::<_, String>(4)?)?,
                    stats: r
                        .get::<_, Option<String>>(5)?
                        .and_then(|s| serde_json::from_str(&s).ok()),
                    error: r.get(6)?,
                    created_at: r.get(7)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(Conversation {
            id,
            title: head.0,
            system_prompt: head.1,
            sampling: head.2.and_then(|s| serde_json::from_str(&s).ok()),
            created_at: head.3,
            updated_at: head.4,
            messages,
        })
    }

    pub fn add_message(
        &self,
        conversation_id: i64,
        role: Role,
        text: &str,
        attachments: &[Attachment],
        status: Status,
    ) -> AppResult<i64> {
        let db = self.db();
        let now = now_ms();
        let n = db.execute(
            "UPDATE conversations SET updated_at = ?2 WHERE id = ?1",
            params![conversation_id, now],
        )?;
        Self::changed(n, conversation_id)?;
        db.execute(
            "INSERT INTO messages (conversation_id, role, text, attachments, status, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                conversation_id,
                enum_text(&role),
                text,
                to_json(&attachments),
                enum_text(&status),
                now
            ],
        )?;
        Ok(db.last_insert_rowid())
    }

    /// Save a reply's text so far (or its end); a deleted message is silently skipped.
    pub fn update_reply(
        &self,
        id: i64,
        text: &str,
        status: Status,
        stats: Option<&ReplyStats>,
        error: Option<&str>,
    ) -> AppResult<()> {
        self.db().execute(
            "UPDATE messages SET text = ?2, status = ?3, stats = ?4, error = ?5 WHERE id = ?1",
            params![id, text, enum_text(&status), stats.map(to_json), error],
        )?;
        Ok(())
    }

    pub fn set_message_text(&self, id: i64, text: &str) -> AppResult<()> {
        self.db().execute(
            "UPDATE messages SET text = ?2 WHERE id = ?1",
            params![id, text],
        )?;
        Ok(())
    }

    /// Delete the messages of a conversation that come after `id`.
    pub fn delete_messages_after(&self, conversation_id: i64, id: i64) -> AppResult<()> {
        self.db().execute(
            "DELETE FROM messages WHERE conversation_id = ?1 AND id > ?2",
            params![conversation_id, id],
        )?;
        Ok(())
    }

    pub fn setting(&self, key: &str) -> AppResult<Option<String>> {
        Ok(self
            .db()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    pub fn set_setting(&self, key: &str, value: &str) -> AppResult<()> {
        self.db().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Store `bytes` under their SHA-256, after checking they are an image or audio file.
    pub fn save_attachment(&self, name: &str, bytes: &[u8]) -> AppResult<Attachment> {
        let (kind, mime) = sniff(bytes).ok_or_else(|| {
            AppError::Attachment(format!(
                "{name} is not a supported image (PNG, JPEG, GIF, WebP, BMP) or audio file \
                 (WAV, MP3, FLAC, Ogg, M4A)"
            ))
        })?;
        let hash = format!("{:x}", Sha256::digest(bytes));
        let attachment = Attachment {
            hash,
            kind,
            mime: mime.to_owned(),
            name: name.to_owned(),
        };
        let path = self.attachments_dir.join(attachment.file_name());
        if !path.exists() {
            // Write then rename, so a crash never leaves a truncated file under a valid hash.
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(attachment)
    }

    /// The stored file of an attachment hash; only names produced by `save_attachment`.
    pub fn attachment_path(&self, file_name: &str) -> AppResult<PathBuf> {
        let valid = file_name.split_once('.').is_some_and(|(hash, ext)| {
            hash.len() == 64
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric())
        });
        let path = self.attachments_dir.join(file_name);
        if !valid || !path.is_file() {
            return Err(AppError::NotFound(format!("no attachment {file_name}")));
        }
        Ok(path)
    }
}

/// Recognise a file by its first bytes.
fn sniff(b: &[u8]) -> Option<(AttachmentKind, &'static str)> {
    use AttachmentKind::*;
    let at = |offset: usize, magic: &[u8]| b.get(offset..offset + magic.len()) == Some(magic);
    Some(if at(0, b"\x89PNG\r\n\x1a\n") {
        (Image, "image/png")
    } else if at(0, b"\xff\xd8\xff") {
        (Image, "image/jpeg")
    } else if at(0, b"GIF8") {
        (Image, "image/gif")
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        (Image, "image/webp")
    } else if at(0, b"BM") && b.len() > 26 {
        (Image, "image/bmp")
    } else if at(0, b"RIFF") && at(8, b"WAVE") {
        (Audio, "audio/wav")
    } else if at(0, b"fLaC") {
        (Audio, "audio/flac")
    } else if at(0, b"OggS") {
        (Audio, "audio/ogg")
    } else if at(4, b"ftyp") {
        (Audio, "audio/mp4")
    } else if at(0, b"ID3") || (b.len() > 2 && b[0] == 0xff && b[1] & 0xe0 == 0xe0) {
        (Audio, "audio/mpeg")
    } else {
        return None;
    })
}

fn extension(mime: &str) -> &'static str {
    match mime {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        "image/bmp" => "bmp",
        "audio/wav" => "wav",
        "audio/flac" => "flac",
        "audio/ogg" => "ogg",
        "audio/mp4" => "m4a",
        "audio/mpeg" => "mp3",
        _ => "bin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../tests/fixtures/C")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn history_survives_reopening_and_streaming_replies_become_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let (conv, reply) = {
            let store = Store::open(dir.path()).unwrap();
            let conv = store.create_conversation("Trip").unwrap().id;
            store
                .add_message(conv, Role::User, "hi", &[], Status::Done)
                .unwrap();
            let reply = store
                .add_message(conv, Role::Assistant, "", &[], Status::Streaming)
                .unwrap();
            store
                .update_reply(reply, "Hel", Status::Streaming, None, None)
                .unwrap();
            (conv, reply)
        };
        let store = Store::open(dir.path()).unwrap();
        let c = store.conversation(conv).unwrap();
        assert_eq!(c.title, "Trip");
        assert_eq!(c.messages.len(), 2);
        assert_eq!(c.messages[1].id, reply);
        assert_eq!(c.messages[1].text, "Hel");
        assert_eq!(c.messages[1].status, Status::Interrupted);
        let mode: String = store
            .db()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn search_matches_titles_and_message_text_literally() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.create_conversation("Cooking").unwrap().id;
        let b = store.create_conversation("Physics").unwrap().id;
        store
            .add_message(b, Role::User, "what is 100% of a quark", &[], Status::Done)
            .unwrap();
        let ids = |q: &str| -> Vec<i64> {
            store
                .list_conversations(q)
                .unwrap()
                .iter()
                .map(|c| c.id)
                .collect()
        };
        assert_eq!(ids("cook"), vec![a]);
        assert_eq!(ids("QUARK"), vec![b]);
        assert_eq!(ids("100%"), vec![b]);
        assert_eq!(ids("%"), vec![b]);
        assert_eq!(ids(""), vec![b, a]);
        store.delete_conversation(b).unwrap();
        assert_eq!(ids(""), vec![a]);
        assert_eq!(store.conversation(b).unwrap_err().kind(), "notFound");
        assert_eq!(
            store.rename_conversation(b, "x").unwrap_err().kind(),
            "notFound"
        );
    }

    #[test]
    fn attachments_are_stored_by_hash_and_sniffed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let png = store
            .save_attachment("image.png", &fixture("image.png"))
            .unwrap();
        assert_eq!(
            (png.kind, png.mime.as_str()),
            (AttachmentKind::Image, "image/png")
        );
        assert_eq!(png.hash.len(), 64);
        let again = store
            .save_attachment("copy.png", &fixture("image.png"))
            .unwrap();
        assert_eq!(again.hash, png.hash);
        let wav = store
            .save_attachment("a.wav", &fixture("audio_16k_mono.wav"))
            .unwrap();
        assert_eq!(wav.kind, AttachmentKind::Audio);
        let path = store.attachment_path(&wav.file_name()).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), fixture("audio_16k_mono.wav"));
        let err = store.save_attachment("notes.txt", b"hello").unwrap_err();
        assert_eq!(err.kind(), "attachment");
        assert!(err.to_string().contains("notes.txt"));
        assert_eq!(
            store.attachment_path("../chats.db").unwrap_err().kind(),
            "notFound"
        );
    }
}
