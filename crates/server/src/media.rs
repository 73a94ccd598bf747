//! Media sent inline (base64, `data:` URLs), checked and stored as content-addressed files.
//!
//! A file named by the SHA-256 of its bytes is written once and never changed, so the same
//! image or recording resent with every turn of a conversation is the same unchanged file to
//! the engine: it is decoded once (the engine caches decoded files) and the prompt positions it
//! fills keep their keys, so the KV cache prefix is reused.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// The image formats the engine decodes, by MIME subtype, with the file extension used.
const IMAGE_TYPES: &[(&str, &str)] = &[
    ("png", "png"),
    ("jpeg", "jpg"),
    ("jpg", "jpg"),
    ("webp", "webp"),
    ("gif", "gif"),
    ("bmp", "bmp"),
    ("x-ms-bmp", "bmp"),
];

/// Audio formats, by `input_audio.format` or MIME subtype, with the file extension used.
const AUDIO_TYPES: &[(&str, &str)] = &[
    ("wav", "wav"),
    ("wave", "wav"),
    ("x-wav", "wav"),
    ("vnd.wave", "wav"),
    ("mp3", "mp3"),
    ("mpeg", "mp3"),
    ("flac", "flac"),
    ("x-flac", "flac"),
    ("ogg", "ogg"),
    ("m4a", "m4a"),
    ("mp4", "m4a"),
    ("x-m4a", "m4a"),
    ("aac", "m4a"),
];

/// An encoded image or recording, with the extension its file gets.
pub struct Media {
    pub bytes: Vec<u8>,
    pub ext: &'static str,
}

/// `image_url.url`: a `data:image/...;base64,` URL.
pub fn image_from_url(url: &str, param: &'static str) -> Result<Media, ApiError> {
    let (mime, bytes) = data_url(url, param, "image", "data:image/png;base64,...")?;
    let subtype = mime.strip_prefix("image/").unwrap_or("");
    if lookup(IMAGE_TYPES, subtype).is_none() {
        return Err(ApiError::invalid_param(
            param,
            format!("{param} must be an image (PNG, JPEG, WebP, GIF or BMP), but its data: URL says `{mime}`"),
        ));
    }
    // The bytes decide the format: a JPEG labelled image/png is still a JPEG.
    let ext = sniff_image(&bytes).ok_or_else(|| {
        ApiError::invalid_param(
            param,
            format!(
                "{param} says `{mime}` but its bytes are not a PNG, JPEG, WebP, GIF or BMP image"
            ),
        )
    })?;
    Ok(Media { bytes, ext })
}

/// `audio_url.url`: a `data:audio/...;base64,` URL.
pub fn audio_from_url(url: &str, param: &'static str) -> Result<Media, ApiError> {
    let (mime, bytes) = data_url(url, param, "audio", "data:audio/wav;base64,...")?;
    let subtype = mime.strip_prefix("audio/").unwrap_or("");
    let ext = lookup(AUDIO_TYPES, subtype).ok_or_else(|| {
        ApiError::invalid_param(
            param,
            format!("{param} must be audio (WAV, MP3, FLAC, OGG or M4A), but its data: URL says `{mime}`"),
        )
    })?;
    audio(bytes, ext, param)
}

/// `input_audio`: base64 `data` in `format`.
pub fn input_audio(data: &str, format: &str, param: &'static str) -> Result<Media, ApiError> {
    let ext = lookup(AUDIO_TYPES, &format.to_ascii_lowercase()).ok_or_else(|| {
        ApiError::invalid_param(
            param,
            format!("input_audio.format `{format}` is not supported; use wav or mp3 (flac, ogg and m4a also work)"),
        )
    })?;
    audio(base64(data, param)?, ext, param)
}

/// An uploaded audio file (transcriptions); `name` is the client's file name.
pub fn uploaded_audio(bytes: Vec<u8>, name: Option<&str>) -> Result<Media, ApiError> {
    let ext = name
        .and_then(|n| Path::new(n).extension()?.to_str())
        .and_then(|e| lookup(AUDIO_TYPES, &e.to_ascii_lowercase()))
        .unwrap_or("wav");
    audio(bytes, ext, "file")
}

fn audio(bytes: Vec<u8>, ext: &'static str, param: &'static str) -> Result<Media, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::invalid_param(
            param,
            format!("{param}: the audio is empty"),
        ));
    }
    Ok(Media { bytes, ext })
}

fn lookup(table: &[(&str, &'static str)], key: &str) -> Option<&'static str> {
    table.iter().find(|(k, _)| *k == key).map(|(_, ext)| *ext)
}

/// Split a base64 `data:` URL into its MIME type and decoded bytes.
fn data_url(
    url: &str,
    param: &'static str,
    what: &str,
    example: &str,
) -> Result<(String, Vec<u8>), ApiError> {
    let url = url.trim();
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(ApiError::invalid_param(
            param,
            format!("{param}: this server never goes to the network, so it does not fetch {what} URLs; send the {what} inline as a data: URL ({example})"),
        ));
    }
    let rest = url.strip_prefix("data:").ok_or_else(|| {
        ApiError::invalid_param(param, format!("{param} must be a data: URL ({example})"))
    })?;
    let (header, data) = rest.split_once(',').ok_or_else(|| {
        ApiError::invalid_param(
            param,
            format!("{param}: the data: URL has no `,` before its data"),
        )
    })?;
    let mime = header
        .strip_suffix(";base64")
        .ok_or_else(|| {
            ApiError::invalid_param(
                param,
                format!("{param}: only base64 data: URLs are accepted ({example})"),
            )
        })?
        .split(';')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    Ok((mime, base64(data, param)?))
}

fn base64(data: &str, param: &'static str) -> Result<Vec<u8>, ApiError> {
    // Some clients wrap base64 in lines.
    let compact: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| {
            ApiError::invalid_param(
                param,
                format!("{param}: the data is not valid base64 ({e})"),
            )
        })
}

/// The image format the bytes start with, as a file extension.
fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else if bytes.starts_with(b"BM") && bytes.len() > 14 {
        Some("bmp")
    } else {
        None
    }
}

/// A folder of content-addressed media files.
pub struct MediaStore {
    dir: PathBuf,
    /// A folder the store made itself is removed with it.
    owned: bool,
}

impl MediaStore {
    pub fn new(dir: Option<PathBuf>) -> std::io::Result<Self> {
        static STORES: AtomicU64 = AtomicU64::new(0);
        let (dir, owned) = match dir {
            Some(dir) => (dir, false),
            None => (
                std::env::temp_dir().join(format!(
                    "gemma-chat-server-{}-{}",
                    std::process::id(),
                    STORES.fetch_add(1, Ordering::Relaxed)
                )),
                true,
            ),
        };
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, owned })
    }

    /// The file holding `media`, written the first time its content is seen.
    pub fn put(&self, media: &Media) -> std::io::Result<PathBuf> {
        let hash = Sha256::digest(&media.bytes);
        let name: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.dir.join(format!("{name}.{}", media.ext));
        if path.is_file() {
            return Ok(path);
        }
        // Written aside and renamed, so a reader never sees half a file.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let partial = self.dir.join(format!(
            ".{name}.{}.partial",
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(&media.bytes)?;
        drop(file);
        std::fs::rename(&partial, &path)?;
        Ok(path)
    }
}

impl Drop for MediaStore {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
