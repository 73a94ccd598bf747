//! Finding, validating and memory-mapping a checkpoint's weight files.
//!
//! A model folder holds either one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`; a llama.cpp GGUF file is indexed under the same tensor names
//! (see `gguf.rs`).  Every file is checked before use so that a missing shard, a truncated
//! download or a tensor of an unsupported type is reported by name instead of surfacing as a
//! confusing failure deep inside model construction.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::matformer::SlicePlan;
use crate::quant::{QLinear, WeightFormat};
use crate::{Error, Result};
use kernels::{dequantize_into, ggml_bytes};

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

/// How a tensor's values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Float(DType),
    /// ggml blocks of a GGUF file, row by row.
    Blocks(GgmlDType),
}

impl Encoding {
    /// Bytes of one row of `cols` values; `None` when the blocks do not divide the row.
    fn row_bytes(self, cols: usize) -> Option<usize> {
        match self {
            Self::Float(dtype) => Some(dtype.size_in_bytes() * cols),
            Self::Blocks(dtype) => ggml_bytes(dtype, cols),
        }
    }
}

/// Where one tensor lives inside a checkpoint.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub file: usize,
    /// Byte range of the stored tensor inside the file.
    pub start: usize,
    pub end: usize,
    pub encoding: Encoding,
    /// The shape the model sees (of the kept part, when there is one).
    pub shape: Vec<usize>,
    /// Set when only part of the stored 2-D tensor is used (a MatFormer slice).
    pub part: Option<Arc<StoredPart>>,
}

/// Rows and columns (element ranges, in order) kept of a stored `[rows, cols]` tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub rows: Vec<Range<usize>>,
    pub cols: Vec<Range<usize>>,
}

/// A [`Part`] resolved to bytes: where each kept column range sits inside a stored row.
#[derive(Debug)]
pub(crate) struct StoredPart {
    rows: Vec<Range<usize>>,
    row_bytes: usize,
    col_spans: Vec<ColSpan>,
}

/// One kept column range of a row: `bytes` at `offset` in the stored row, decoded into the
/// values `at..at + len` of the kept row.
#[derive(Debug, Clone, Copy)]
struct ColSpan {
    offset: usize,
    bytes: usize,
    at: usize,
    len: usize,
}

impl Entry {
    /// Bytes holding the values the model sees.
    fn bytes(&self) -> usize {
        match &self.part {
            None => self.end - self.start,
            Some(p) => {
                let rows: usize = p.rows.iter().map(|r| r.len()).sum();
                rows * p.col_spans.iter().map(|c| c.bytes).sum::<usize>()
            }
        }
    }

    /// (file offset, length) of the bytes the model sees, in order; neighbours are merged.
    fn spans(&self) -> Vec<(usize, usize)> {
        let Some(p) = &self.part else {
            return vec![(self.start, self.end - self.start)];
        };
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for row in p.rows.iter().flat_map(|r| r.clone()) {
            for c in &p.col_spans {
                let at = self.start + row * p.row_bytes + c.offset;
                match spans.last_mut() {
                    Some((start, len)) if *start + *len == at => *len += c.bytes,
                    _ => spans.push((at, c.bytes)),
                }
            }
        }
        spans
    }

    /// This tensor narrowed to `part` (a 2-D tensor, kept whole so far).  Columns of ggml blocks
    /// can only be cut at block boundaries.
    pub(crate) fn with_part(&self, name: &str, part: Part) -> Result<Entry> {
        let bad = |why: String| Error::Checkpoint(format!("cannot slice {name}: {why}"));
        let [rows, cols] = self.shape[..] else {
            return Err(bad(format!("it has shape {:?}, not 2-D", self.shape)));
        };
        if self.part.is_some() {
            return Err(bad("it is already sliced".into()));
        }
        let within = |r: &Range<usize>, n: usize| r.start < r.end && r.end <= n;
        if let Some(r) = part.rows.iter().find(|r| !within(r, rows)) {
            return Err(bad(format!("rows {r:?} are outside its {rows} rows")));
        }
        if let Some(c) = part.cols.iter().find(|c| !within(c, cols)) {
            return Err(bad(format!("columns {c:?} are outside its {cols} columns")));
        }
        let row_bytes = self
            .encoding
            .row_bytes(cols)
            .ok_or_else(|| bad(format!("its rows do not fit {:?} blocks", self.encoding)))?;
        let mut col_spans = Vec::with_capacity(part.cols.len());
        let mut at = 0;
        for c in &part.cols {
            let (Some(offset), Some(bytes)) = (
                self.encoding.row_bytes(c.start),
                self.encoding.row_bytes(c.len()),
            ) else {
                return Err(bad(format!(
                    "columns {c:?} do not fall on the boundaries of its {:?} blocks",
                    self.encoding
                )));
            };
            col_spans.push(ColSpan {
                offset,
                bytes,
                at,
                len: c.len(),
            });
            at += c.len();
        }
        let kept_rows = part.rows.iter().map(|r| r.len()).sum();
        Ok(Entry {
            shape: vec![kept_rows, at],
            part: Some(Arc::new(StoredPart {
                rows: part.rows,
                row_bytes,
                col_spans,
            })),
            ..self.clone()
        })
    }
}

/// The validated, memory-mapped weight files of one checkpoint.
///
/// Tensors are read with positioned file reads rather than through the maps, so that loading
/// (and converting or quantising) the weights does not leave the whole file resident in the
/// process; the maps serve the large embedding tables, which are only gathered row by row.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    maps: Arc<Vec<Mmap>>,
    handles: Arc<Vec<File>>,
    index: Arc<HashMap<String, Entry>>,
    progress: Option<Arc<ReadProgress>>,
}

/// Called with the fraction (0..=1) of the weights read so far while a model loads.
pub type ProgressFn = Arc<dyn Fn(f32) + Send + Sync>;

/// Bytes read against the bytes a load is expected to read; reports stop at [`Self::finish`] so
/// that towers loaded later do not move a finished bar.
struct ReadProgress {
    total: u64,
    done: AtomicU64,
    report: Mutex<Option<ProgressFn>>,
}

impl fmt::Debug for ReadProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadProgress")
            .field("total", &self.total)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ReadProgress {
    fn add(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if let Some(report) = self
            .report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            report((done as f64 / self.total.max(1) as f64).min(1.0) as f32);
        }
    }

    fn finish(&self) {
        if let Some(report) = self.report.lock().unwrap_or_else(|e| e.into_inner()).take() {
            report(1.0);
        }
    }
}

impl Checkpoint {
    /// Locate the weight files in `dir` (or take the GGUF file `dir`), map them and validate
    /// their headers against their sizes.
    pub fn open(dir: &Path) -> Result<Self> {
        if crate::gguf::is_gguf(dir) {
            return Ok(crate::gguf::open(dir)?.0);
        }
        let files = weight_files(dir)?;
        let mut maps = Vec::with_capacity(files.len());
        let mut handles = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, path) in files.iter().enumerate() {
            let (file, mmap) = map_file(path)?;
            index_file(i, path, &mmap, &mut index)?;
            maps.push(mmap);
            handles.push(file);
        }
        Ok(Self::from_parts(dir, files, maps, handles, index))
    }

    pub(crate) fn from_parts(
        dir: &Path,
        files: Vec<PathBuf>,
        maps: Vec<Mmap>,
        handles: Vec<File>,
        index: HashMap<String, Entry>,
    ) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files,
            maps: Arc::new(maps),
            handles: Arc::new(handles),
            index: Arc::new(index),
            progress: None,
        }
    }

    /// `<vb>.weight` `[out_dim, in_dim]` as a linear layer.  A matrix a GGUF file stores in
    /// ggml blocks keeps them (on the CPU); everything else is loaded in `fmt`.
    pub fn linear(
        &self,
        in_dim: usize,
        out_dim: usize,
        fmt: WeightFormat,
        vb: VarBuilder,
    ) -> candle_core::Result<QLinear> {
        let name = format!("{}.weight", vb.prefix());
        let entry = self.index.get(&name).filter(|_| vb.device().is_cpu());
        let Some((e, Encoding::Blocks(dtype))) = entry.map(|e| (e, e.encoding)) else {
            return QLinear::load(in_dim, out_dim, fmt, vb);
        };
        if e.shape != [out_dim, in_dim] {
            candle_core::bail!(
                "tensor {name} has shape {:?}, the config implies {:?}",
                e.shape,
                [out_dim, in_dim]
            );
        }
        let linear = QLinear::from_blocks(dtype, out_dim, in_dim, &self.mapped(e));
        release(&self.maps[e.file], e.start, e.end - e.start);
        self.note_read(e.bytes());
        linear
    }

    /// The bytes of `e` from the map: borrowed when stored whole, gathered when sliced.
    fn mapped(&self, e: &Entry) -> Cow<'_, [u8]> {
        let map = &self.maps[e.file];
        match e.part {
            None => Cow::Borrowed(&map[e.start..e.end]),
            Some(_) => {
                let mut bytes = Vec::with_capacity(e.bytes());
                for (at, len) in e.spans() {
                    bytes.extend_from_slice(&map[at..at + len]);
                }
                Cow::Owned(bytes)
            }
        }
    }

    /// The same weights seen through a MatFormer slice: skipped layers gone, kept ones
    /// renumbered, feed-forward blocks and per-layer tables narrowed (nothing is read here).
    pub fn sliced(&self, plan: &SlicePlan) -> Result<Self> {
        let mut index = HashMap::with_capacity(self.index.len());
        for (name, e) in self.index.iter() {
            let Some((renamed, part)) = plan.tensor(name, &e.shape) else {
                continue;
            };
            let entry = match part {
                None => e.clone(),
                Some(part) => e.with_part(name, part)?,
            };
            index.insert(renamed, entry);
        }
        Ok(Self {
            index: Arc::new(index),
            ..self.clone()
        })
    }

    /// Report reads to `report` as a fraction of the bytes of the tensors `counted` selects,
    /// until [`Self::finish_progress`].
    pub fn with_progress(mut self, counted: impl Fn(&str) -> bool, report: ProgressFn) -> Self {
        let total = self
            .index
            .iter()
            .filter(|(name, _)| counted(name))
            .map(|(_, e)| e.bytes() as u64)
            .sum();
        self.progress = Some(Arc::new(ReadProgress {
            total,
            done: AtomicU64::new(0),
            report: Mutex::new(Some(report)),
        }));
        self
    }

    /// Count bytes consumed other than through a tensor read (a table packed from the map).
    pub fn note_read(&self, bytes: usize) {
        if let Some(p) = &self.progress {
            p.add(bytes as u64);
        }
    }

    /// Report completion and stop reporting.
    pub fn finish_progress(&self) {
        if let Some(p) = &self.progress {
            p.finish();
        }
    }

    /// A var builder over the checkpoint; tensors are read and converted to `dtype` when fetched.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        Ok(VarBuilder::from_backend(
            Box::new(self.clone()),
            dtype,
            device.clone(),
        ))
    }

    /// The memory-mapped table `name` (`[rows, cols]`), for row gathers without loading it.
    pub fn table(&self, name: &str) -> Result<EmbeddingTable> {
        let e = self.entry(name).map_err(Error::Candle)?;
        let [rows, cols] = e.shape[..] else {
            return Err(Error::Checkpoint(format!(
                "{name} has shape {:?}; expected a 2-D table",
                e.shape
            )));
        };
        let Some(row_bytes) = e.encoding.row_bytes(cols) else {
            return Err(Error::Checkpoint(format!(
                "{name}: rows of {cols} values do not fit {:?} blocks",
                e.encoding
            )));
        };
        let (row_bytes, col_spans) = match &e.part {
            None => (
                row_bytes,
                vec![ColSpan {
                    offset: 0,
                    bytes: row_bytes,
                    at: 0,
                    len: cols,
                }],
            ),
            Some(p) if p.rows.len() == 1 && p.rows[0] == (0..rows) => {
                (p.row_bytes, p.col_spans.clone())
            }
            Some(_) => {
                return Err(Error::Checkpoint(format!(
                    "{name}: a table can only be sliced by columns"
                )))
            }
        };
        Ok(EmbeddingTable {
            maps: self.maps.clone(),
            file: e.file,
            start: e.start,
            rows,
            cols,
            row_bytes,
            col_spans,
            encoding: e.encoding,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The shape a file's header gives `name`.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|e| e.shape.as_slice())
    }

    /// Every tensor name in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    fn entry(&self, name: &str) -> candle_core::Result<&Entry> {
        self.index.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!("tensor {name} is not in the checkpoint"))
        })
    }

    fn read(&self, name: &str) -> candle_core::Result<Tensor> {
        let e = self.entry(name)?;
        match e.encoding {
            Encoding::Float(DType::BF16) => self.read_as::<half::bf16>(name, e),
            Encoding::Float(DType::F16) => self.read_as::<half::f16>(name, e),
            Encoding::Float(_) => self.read_as::<f32>(name, e),
            // Decoded straight from the map (blocks need their alignment), then let go.
            Encoding::Blocks(dtype) => {
                let mut values = vec![0f32; e.shape.iter().product()];
                dequantize_into(dtype, &self.mapped(e), &mut values);
                release(&self.maps[e.file], e.start, e.end - e.start);
                self.note_read(e.bytes());
                Tensor::from_vec(values, e.shape.as_slice(), &Device::Cpu)
            }
        }
    }

    /// Read straight into the tensor's own buffer: one allocation and no copy, which matters
    /// when gigabytes of weights pass through here (safetensors data is little-endian, as are
    /// the hosts candle supports).
    fn read_as<T: candle_core::WithDType>(
        &self,
        name: &str,
        e: &Entry,
    ) -> candle_core::Result<Tensor> {
        let mut data = vec![T::zero(); e.bytes() / std::mem::size_of::<T>()];
        // SAFETY: `T` is a plain number type, so its buffer may be viewed and written as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                data.as_mut_ptr() as *mut u8,
                std::mem::size_of_val(data.as_slice()),
            )
        };
        self.read_spans(name, e, bytes)?;
        Tensor::from_vec(data, e.shape.as_slice(), &Device::Cpu)
    }

    /// Read the bytes the model sees of `e` into `out` (`e.bytes()` long).
    fn read_spans(&self, name: &str, e: &Entry, out: &mut [u8]) -> candle_core::Result<()> {
        let mut rest = out;
        for (at, len) in e.spans() {
            let (chunk, tail) = rest.split_at_mut(len);
            read_at(&self.handles[e.file], chunk, at as u64)
                .map_err(|err| candle_core::Error::Msg(format!("reading {name}: {err}")))?;
            rest = tail;
        }
        self.note_read(e.bytes());
        Ok(())
    }

    /// A floating-point tensor as stored (the kept part of it, in a slice): dtype, shape and
    /// little-endian bytes, for writing a checkpoint back out.
    pub fn stored_bytes(&self, name: &str) -> Result<(DType, Vec<usize>, Vec<u8>)> {
        let e = self.entry(name).map_err(Error::Candle)?;
        let Encoding::Float(dtype) = e.encoding else {
            return Err(Error::Checkpoint(format!(
                "{name} is stored in ggml blocks, not as floating-point values"
            )));
        };
        let mut bytes = vec![0u8; e.bytes()];
        self.read_spans(name, e, &mut bytes)?;
        Ok((dtype, e.shape.clone(), bytes))
    }

    /// Bytes of the values of `name` as the model sees it.
    pub fn tensor_bytes(&self, name: &str) -> Option<usize> {
        self.index.get(name).map(Entry::bytes)
    }
}

impl SimpleBackend for Checkpoint {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!(
                "tensor {name} has shape {:?}, the config implies {:?}",
                t.shape(),
                s
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.read(name)?.to_dtype(dtype)?.to_device(dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// A `[rows, cols]` table left in the memory-mapped checkpoint; rows are converted to f32 as they
/// are gathered, so only the pages of the rows used ever become resident.
#[derive(Debug, Clone)]
pub struct EmbeddingTable {
    maps: Arc<Vec<Mmap>>,
    file: usize,
    start: usize,
    rows: usize,
    cols: usize,
    /// Bytes of one stored row, and the parts of it that make up a row of the table.
    row_bytes: usize,
    col_spans: Vec<ColSpan>,
    encoding: Encoding,
}

impl EmbeddingTable {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Size of the values the table holds (of its kept columns, when sliced).
    pub fn bytes(&self) -> usize {
        self.rows * self.col_spans.iter().map(|c| c.bytes).sum::<usize>()
    }

    /// The whole table, when a GGUF file stores it in ggml blocks (`dtype`, bytes), unsliced.
    pub(crate) fn blocks(&self) -> Option<(GgmlDType, &[u8])> {
        if self.bytes() != self.rows * self.row_bytes {
            return None;
        }
        match self.encoding {
            Encoding::Blocks(dtype) => {
                let len = self.rows * self.row_bytes;
                Some((dtype, &self.maps[self.file][self.start..self.start + len]))
            }
            Encoding::Float(_) => None,
        }
    }

    /// Drop the table's pages from this process (they stay in the page cache); later gathers
    /// fault in only the rows they touch.  Used after reading the whole table once.
    pub fn release_pages(&self) {
        release(
            &self.maps[self.file],
            self.start,
            self.rows * self.row_bytes,
        );
    }

    /// Write row `row` as f32 into `out` (`cols` long).
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        let stored = self.start + row * self.row_bytes;
        for c in &self.col_spans {
            let at = stored + c.offset;
            let bytes = &self.maps[self.file][at..at + c.bytes];
            decode_into(self.encoding, bytes, &mut out[c.at..c.at + c.len]);
        }
    }

    /// Rows `ids` (`[..]` u32, any shape) as an f32 tensor `[.., cols]` on `device`.
    pub fn gather(&self, ids: &Tensor, device: &Device) -> candle_core::Result<Tensor> {
        let host: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let mut out = vec![0f32; host.len() * self.cols];
        for (&id, dst) in host.iter().zip(out.chunks_exact_mut(self.cols)) {
            if id as usize >= self.rows {
                candle_core::bail!("id {id} is outside the table of {} rows", self.rows);
            }
            self.row_into(id as usize, dst);
        }
        let mut shape = ids.dims().to_vec();
        shape.push(self.cols);
        Tensor::from_vec(out, shape, &Device::Cpu)?.to_device(device)
    }
}

/// Decode stored values (`encoding`) into f32.
fn decode_into(encoding: Encoding, bytes: &[u8], out: &mut [f32]) {
    let dtype = match encoding {
        Encoding::Blocks(dtype) => return dequantize_into(dtype, bytes, out),
        Encoding::Float(dtype) => dtype,
    };
    match dtype {
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        _ => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

/// Drop `len` bytes at `start` of a map from this process (they stay in the page cache).
fn release(map: &Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    {
        // SAFETY: the map is read-only and file-backed, so dropped pages are re-read from the
        // file on the next access; no data can be lost.
        let _ =
            unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
    }
    #[cfg(not(unix))]
    let _ = (map, start, len);
}

fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Err(Error::Checkpoint(format!(
            "model folder {} does not exist",
            dir.display()
        )));
    }
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index)
            .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", index.display())))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::Checkpoint(format!("{} is not valid JSON: {e}", index.display()))
        })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::Checkpoint(format!("{} has no weight_map", index.display())))?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let mut files = Vec::with_capacity(shards.len());
        for shard in shards {
            let path = dir.join(shard);
            if !path.is_file() {
                return Err(Error::Checkpoint(format!(
                    "shard {shard} listed in {INDEX_FILE} is missing from {}",
                    dir.display()
                )));
            }
            files.push(path);
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::Checkpoint(format!(
        "no {SINGLE_FILE} or {INDEX_FILE} in {}",
        dir.display()
    )))
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

pub(crate) fn map_file(path: &Path) -> Result<(File, Mmap)> {
    let file = File::open(path)
        .map_err(|e| Error::Checkpoint(format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: read-only map of a file we only read; it must not be modified while the model
    // lives, the contract of every memory-mapped checkpoint loader.
    let mmap = unsafe { Mmap::map(&file) }
        .map_err(|e| Error::Checkpoint(format!("cannot map {}: {e}", path.display())))?;
    Ok((file, mmap))
}

fn index_file(
    file: usize,
    path: &Path,
    mmap: &Mmap,
    index: &mut HashMap<String, Entry>,
) -> Result<()> {
    let tensors = SafeTensors::deserialize(mmap).map_err(|e| {
        Error::Checkpoint(format!(
            "{} is not a valid safetensors file (truncated or corrupt download?): {e}",
            path.display()
        ))
    })?;
    let base = mmap.as_ptr() as usize;
    for (name, view) in tensors.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            other => {
                return Err(Error::Checkpoint(format!(
                    "tensor {name} in {} has dtype {other:?}; expected f32, bf16 or f16",
                    path.display()
                )))
            }
        };
        let start = view.data().as_ptr() as usize - base;
        index.insert(
            name,
            Entry {
                file,
                start,
                end: start + view.data().len(),
                encoding: Encoding::Float(dtype),
                shape: view.shape().to_vec(),
                part: None,
            },
        );
    }
    Ok(())
}
