//! A bounds check of a GGUF file's header, run before candle parses it.
//!
//! candle's reader allocates what the header's length fields claim before it reads the data
//! (strings, arrays, dimension lists) and divides by `general.alignment`, so a damaged or hostile
//! file could make it allocate terabytes or panic.  This walk checks every length against the
//! bytes actually present, so that everything candle then allocates is bounded by the file size.

/// Arrays of arrays deeper than this are refused (llama.cpp writes none; each level recurses).
const MAX_NESTING: usize = 4;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

const STRING: u32 = 8;
const ARRAY: u32 = 9;

/// Bytes of a fixed-size GGUF value type; `None` for strings and arrays.
fn scalar_size(value_type: u32) -> Option<usize> {
    Some(match value_type {
        0 | 1 | 7 => 1, // u8, i8, bool
        2 | 3 => 2,     // u16, i16
        4..=6 => 4,     // u32, i32, f32
        10..=12 => 8,   // u64, i64, f64
        _ => return None,
    })
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// GGUF v1 stores lengths and counts in 32 bits, later versions in 64.
    wide: bool,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} at byte {} runs past the end of the file (truncated download?)",
                self.pos
            ));
        }
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A length or count field, as a `usize` (saturating: it is compared with the file size).
    fn count(&mut self, what: &str) -> Result<usize, String> {
        let n = if self.wide {
            self.u64(what)?
        } else {
            self.u32(what)? as u64
        };
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn string(&mut self, what: &str) -> Result<&'a [u8], String> {
        let len = self.count(what)?;
        self.take(len, what)
    }

    /// Skip one value of `value_type`; returns the value of an unsigned or non-negative integer.
    fn value(&mut self, value_type: u32, key: &str, depth: usize) -> Result<Option<u64>, String> {
        if let Some(size) = scalar_size(value_type) {
            let b = self.take(size, key)?;
            let mut le = [0u8; 8];
            le[..size].copy_from_slice(b);
            let signed_negative = matches!(value_type, 1 | 3 | 5 | 11) && b[size - 1] & 0x80 != 0;
            let integer = !matches!(value_type, 6 | 7 | 12) && !signed_negative;
            return Ok(integer.then(|| u64::from_le_bytes(le)));
        }
        match value_type {
            STRING => self.string(key).map(|_| None),
            ARRAY => {
                if depth >= MAX_NESTING {
                    return Err(format!("{key} nests arrays more than {MAX_NESTING} deep"));
                }
                let element_type = self.u32(key)?;
                let len = self.count(key)?;
                // Every element takes at least this many bytes, so the count is bounded by them.
                let length_field = if self.wide { 8 } else { 4 };
                let min_size = match element_type {
                    STRING => length_field,
                    ARRAY => 4 + length_field,
                    other => scalar_size(other)
                        .ok_or_else(|| format!("{key} holds values of unknown type {other}"))?,
                };
                if len > self.remaining() / min_size {
                    return Err(format!(
                        "{key} claims {len} values, more than the rest of the file holds"
                    ));
                }
                if let Some(size) = scalar_size(element_type) {
                    self.take(len * size, key)?;
                } else {
                    for _ in 0..len {
                        self.value(element_type, key, depth + 1)?;
                    }
                }
                Ok(None)
            }
            other => Err(format!("{key} has a value of unknown type {other}")),
        }
    }
}

/// Check the header of the GGUF file `bytes` (magic, metadata, tensor descriptions).
pub(crate) fn check(bytes: &[u8]) -> Result<(), String> {
    let mut r = Reader {
        bytes,
        pos: 0,
        wide: true,
    };
    if r.take(4, "the magic number")? != b"GGUF" {
        return Err("not a GGUF file (it does not start with \"GGUF\")".into());
    }
    match r.u32("the version")? {
        1 => r.wide = false,
        2 | 3 => {}
        v => return Err(format!("GGUF version {v} is not supported (1 to 3 are)")),
    }
    let tensors = r.count("the tensor count")?;
    let entries = r.count("the metadata count")?;
    for _ in 0..entries {
        let key = String::from_utf8_lossy(r.string("a metadata key")?).into_owned();
        let value_type = r.u32(&key)?;
        let value = r.value(value_type, &key, 0)?;
        if key == "general.alignment" {
            // candle rounds the data offset up to it; 0 would divide by zero.
            if let Some(alignment) = value.filter(|&a| !a.is_power_of_two()) {
                return Err(format!(
                    "general.alignment {alignment} is not a power of two"
                ));
            }
        }
    }
    for _ in 0..tensors {
        let name = String::from_utf8_lossy(r.string("a tensor name")?).into_owned();
        let dims = r.u32(&name)?;
        if dims > MAX_DIMS {
            return Err(format!(
                "tensor {name} has {dims} dimensions; ggml tensors have at most {MAX_DIMS}"
            ));
        }
        let mut elements = Some(1usize);
        for _ in 0..dims {
            let dim = if r.wide {
                r.u64(&name)?
            } else {
                r.u32(&name)? as u64
            };
            elements = usize::try_from(dim)
                .ok()
                .and_then(|d| elements?.checked_mul(d));
        }
        if elements.is_none() {
            return Err(format!(
                "tensor {name} has more elements than memory can address"
            ));
        }
        let kind = r.u32(&name)?;
        if let Some(type_name) = unreadable_type_name(kind) {
            return Err(format!(
                "tensor {name} is stored as {type_name}, a block type Gemma Chat cannot run; \
                 use a file of a K-quant or legacy preset (e.g. Q4_K_M, Q5_K_M, Q8_0)"
            ));
        }
        r.take(8, &name)?; // data offset
    }
    Ok(())
}

/// ggml's name for a block type candle 0.9 cannot read (its i-quants, ternary and FP4 types).
pub(super) fn unreadable_type_name(kind: u32) -> Option<String> {
    let name = match kind {
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24..=28 => "an integer or f64 type",
        29 => "IQ1_M",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        0..=3 | 6..=15 | 30 => return None,
        other => return Some(format!("ggml type {other}")),
    };
    Some(format!("{name} (ggml type {kind})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v3 header with the given metadata entries (already encoded) and no tensors.
    fn header(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((entries.len() as u64).to_le_bytes());
        for e in entries {
            b.extend(e);
        }
        b
    }

    fn entry(key: &str, value_type: u32, value: &[u8]) -> Vec<u8> {
        let mut b = (key.len() as u64).to_le_bytes().to_vec();
        b.extend(key.as_bytes());
        b.extend(value_type.to_le_bytes());
        b.extend(value);
        b
    }

    #[test]
    fn a_well_formed_header_passes() {
        let mut array = 4u32.to_le_bytes().to_vec(); // u32 elements
        array.extend(2u64.to_le_bytes());
        array.extend([1, 0, 0, 0, 2, 0, 0, 0]);
        let file = header(&[
            entry("general.architecture", STRING, b"\x07\0\0\0\0\0\0\0gemma3n"),
            entry("general.alignment", 4, &32u32.to_le_bytes()),
            entry("gemma3n.feed_forward_length", ARRAY, &array),
        ]);
        assert_eq!(check(&file), Ok(()));
    }

    #[test]
    fn lengths_beyond_the_file_are_refused_before_anything_is_allocated() {
        let huge_string = entry("k", STRING, &(1u64 << 62).to_le_bytes());
        let err = check(&header(&[huge_string])).unwrap_err();
        assert!(err.contains("runs past the end"), "{err}");

        let mut huge_array = STRING.to_le_bytes().to_vec();
        huge_array.extend(u64::MAX.to_le_bytes());
        let err = check(&header(&[entry("k", ARRAY, &huge_array)])).unwrap_err();
        assert!(err.contains("claims 18446744073709551615 values"), "{err}");
    }

    #[test]
    fn a_zero_alignment_is_refused() {
        let file = header(&[entry("general.alignment", 4, &0u32.to_le_bytes())]);
        assert_eq!(
            check(&file),
            Err("general.alignment 0 is not a power of two".into())
        );
    }

    #[test]
    fn deeply_nested_arrays_are_refused() {
        let mut value = Vec::new();
        for _ in 0..=MAX_NESTING {
            value.extend(ARRAY.to_le_bytes());
            value.extend(1u64.to_le_bytes());
        }
        value.extend(0u32.to_le_bytes());
        value.extend(0u64.to_le_bytes());
        let err = check(&header(&[entry("k", ARRAY, &value)])).unwrap_err();
        assert!(err.contains("nests arrays"), "{err}");
    }
}
