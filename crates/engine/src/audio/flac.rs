//! A check of a FLAC stream's metadata blocks before symphonia reads them.
//!
//! symphonia 0.5 allocates the lengths a Vorbis comment or a picture block claims for its
//! strings and image before reading them, so a few damaged bytes make it ask for up to 4 GB
//! (found by the `audio` fuzz target).  Every length is checked here against the bytes that
//! are actually there; a stream that passes reads within its file's size.  Its probe finds a
//! FLAC stream wherever its marker first appears (after an ID3v2 tag, or after other bytes), so
//! the check runs where the probe hands the stream over: [`probe`] registers it ahead of
//! symphonia's own FLAC reader.

use std::io::{Read, Seek, SeekFrom};
use std::sync::OnceLock;

use symphonia::core::errors::{Error as SymphoniaError, Result as SymphoniaResult};
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::probe::{Descriptor, Instantiate, Probe, QueryDescriptor};
use symphonia::default::formats::FlacReader;

/// FLAC's metadata block types whose contents symphonia sizes from lengths inside them.
const APPLICATION: u8 = 2;
const VORBIS_COMMENT: u8 = 4;
const PICTURE: u8 = 6;

/// symphonia's probe with every format it supports, FLAC behind [`check_stream`].
pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let mut probe = Probe::default();
        // The first registered reader whose marker matches is the one used.
        probe.register_all::<CheckedFlac>();
        symphonia::default::register_enabled_formats(&mut probe);
        probe
    })
}

/// A damaged FLAC stream, as the probe reports it (inside its I/O error).
#[derive(Debug)]
pub struct Damaged(pub String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// symphonia's FLAC reader, entered only once the metadata has passed [`check_stream`].
struct CheckedFlac;

impl QueryDescriptor for CheckedFlac {
    fn query() -> &'static [Descriptor] {
        &[Descriptor {
            short_name: "flac",
            long_name: "Free Lossless Audio Codec Native, metadata checked",
            extensions: &["flac"],
            mime_types: &["audio/flac"],
            markers: &[b"fLaC"],
            score: Self::score,
            inst: Instantiate::Format(open_checked),
        }]
    }

    fn score(_context: &[u8]) -> u8 {
        255
    }
}

fn open_checked(
    mut source: MediaSourceStream,
    options: &FormatOptions,
) -> SymphoniaResult<Box<dyn FormatReader>> {
    let start = source.stream_position()?;
    let len = source.byte_len().unwrap_or(u64::MAX);
    if let Err(reason) = check_stream(&mut source, start, len) {
        let damaged = std::io::Error::new(std::io::ErrorKind::InvalidData, Damaged(reason));
        return Err(SymphoniaError::IoError(damaged));
    }
    source.seek(SeekFrom::Start(start))?;
    Ok(Box::new(FlacReader::try_new(source, options)?))
}

/// Refuse a FLAC stream starting at `start` (its `fLaC` marker) whose metadata claims more bytes
/// than the file (`len` bytes) holds; a sound stream passes.  The stream is left at an
/// unspecified position.
pub fn check_stream<F: Read + Seek>(file: &mut F, start: u64, len: u64) -> Result<(), String> {
    let mut marker = [0u8; 4];
    file.seek(SeekFrom::Start(start)).map_err(read_error)?;
    if file.read_exact(&mut marker).is_err() || &marker != b"fLaC" {
        return Err(damaged("the stream does not start with its fLaC marker"));
    }
    let mut pos = start + 4;
    loop {
        let mut header = [0u8; 4];
        file.read_exact(&mut header)
            .map_err(|_| damaged("the metadata ends before its last block"))?;
        pos += 4;
        let (is_last, block_type) = (header[0] & 0x80 != 0, header[0] & 0x7f);
        let block_len = u32::from_be_bytes([0, header[1], header[2], header[3]]);
        let left = len.saturating_sub(pos);
        if u64::from(block_len) > left {
            return Err(damaged(&format!(
                "the {} block claims {block_len} bytes, {left} remain in the file",
                block_name(block_type)
            )));
        }
        match block_type {
            APPLICATION if block_len < 4 => {
                return Err(damaged(
                    "an application block is shorter than its identifier",
                ));
            }
            VORBIS_COMMENT | PICTURE => {
                // At most 16 MB (a 24-bit length), and no more than the file holds.
                let mut body = vec![0u8; block_len as usize];
                file.read_exact(&mut body).map_err(read_error)?;
                if block_type == VORBIS_COMMENT {
                    check_vorbis_comment(&body)?;
                } else {
                    check_picture(&body)?;
                }
            }
            _ => {
                file.seek(SeekFrom::Current(i64::from(block_len)))
                    .map_err(read_error)?;
            }
        }
        pos += u64::from(block_len);
        if is_last {
            return Ok(());
        }
    }
}

/// Lengths inside a block body, each checked against what follows it.
struct Body<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(damaged(&format!(
                "the {field} in the {} block claims {n} bytes, {} remain in the block",
                self.what,
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u32(&mut self, field: &str, big_endian: bool) -> Result<usize, String> {
        let bytes: [u8; 4] = self.take(4, field)?.try_into().expect("four bytes");
        let value = if big_endian {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        };
        Ok(value as usize)
    }

    /// A length field followed by that many bytes.
    fn skip_counted(&mut self, field: &str, big_endian: bool) -> Result<(), String> {
        let n = self.u32(field, big_endian)?;
        self.take(n, field).map(drop)
    }
}

/// Vendor string, comment count, then each comment: all lengths little-endian.
fn check_vorbis_comment(body: &[u8]) -> Result<(), String> {
    let mut body = Body {
        rest: body,
        what: "Vorbis comment",
    };
    body.skip_counted("vendor string", false)?;
    let count = body.u32("comment count", false)?;
    for _ in 0..count {
        body.skip_counted("comment", false)?;
    }
    Ok(())
}

/// Picture type, media type, description, four numbers, image data: big-endian lengths.
fn check_picture(body: &[u8]) -> Result<(), String> {
    let mut body = Body {
        rest: body,
        what: "picture",
    };
    body.take(4, "picture type")?;
    body.skip_counted("media type", true)?;
    body.skip_counted("description", true)?;
    body.take(16, "image size fields")?;
    body.skip_counted("image data", true)
}

/// The metadata block types of the FLAC format.
fn block_name(block_type: u8) -> String {
    let name = match block_type {
        0 => "stream info",
        1 => "padding",
        APPLICATION => "application",
        3 => "seek table",
        VORBIS_COMMENT => "Vorbis comment",
        5 => "cue sheet",
        PICTURE => "picture",
        other => return format!("metadata (type {other})"),
    };
    name.into()
}

fn damaged(reason: &str) -> String {
    format!("damaged FLAC file: {reason}")
}

fn read_error(e: std::io::Error) -> String {
    format!("cannot read the file: {e}")
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    /// `fLaC`, a STREAMINFO block, then `block` as the last one.
    fn flac_with(block_type: u8, body: &[u8]) -> Vec<u8> {
        let mut file = b"fLaC".to_vec();
        file.extend([0, 0, 0, 34]);
        file.extend([0u8; 34]);
        let len = body.len() as u32;
        file.push(0x80 | block_type);
        file.extend(&len.to_be_bytes()[1..]);
        file.extend(body);
        file
    }

    fn check(file: &[u8]) -> Result<(), String> {
        check_stream(&mut Cursor::new(file), 0, file.len() as u64)
    }

    fn comment_block(comment_len: u32, comment: &[u8]) -> Vec<u8> {
        let mut body = 6u32.to_le_bytes().to_vec();
        body.extend(b"vendor");
        body.extend(1u32.to_le_bytes());
        body.extend(comment_len.to_le_bytes());
        body.extend(comment);
        body
    }

    #[test]
    fn sound_metadata_and_other_files_pass() {
        assert_eq!(
            check(&flac_with(VORBIS_COMMENT, &comment_block(5, b"A=bcd"))),
            Ok(())
        );
        assert_eq!(check(&flac_with(1, &[0u8; 100])), Ok(()));
        // A stream after other bytes (an ID3v2 tag of 3 bytes, here) is checked where it starts.
        let mut tagged = b"ID3\x04\x00\x00\x00\x00\x00\x03abc".to_vec();
        tagged.extend(flac_with(VORBIS_COMMENT, &comment_block(5, b"A=bcd")));
        let len = tagged.len() as u64;
        assert_eq!(check_stream(&mut Cursor::new(&tagged), 13, len), Ok(()));
        assert!(check_stream(&mut Cursor::new(&tagged), 0, len).is_err());
    }

    #[test]
    fn lengths_beyond_the_data_are_damage() {
        let cases = [
            (
                flac_with(VORBIS_COMMENT, &comment_block(u32::MAX, b"A=bcd")),
                "the comment in the Vorbis comment block claims 4294967295 bytes, 5 remain",
            ),
            (flac_with(2, &[1, 2]), "application block"),
            (
                flac_with(PICTURE, &[0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff]),
                "the media type in the picture block claims 4294967295 bytes",
            ),
        ];
        for (file, needle) in cases {
            let err = check(&file).unwrap_err();
            assert!(err.starts_with("damaged FLAC file: "), "{err}");
            assert!(err.contains(needle), "{err}");
        }
        // A block longer than the file, and metadata that stops before its last block.
        let mut long = flac_with(1, &[0u8; 10]);
        long.truncate(long.len() - 1);
        assert!(check(&long)
            .unwrap_err()
            .contains("the padding block claims 10 bytes, 9 remain in the file"));
        let mut unfinished = flac_with(1, &[]);
        unfinished[42] &= 0x7f;
        assert!(check(&unfinished)
            .unwrap_err()
            .contains("ends before its last block"));
    }
}
