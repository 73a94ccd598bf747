//! MatFormer slices: the smaller models nested inside Gemma 3n E4B.
//!
//! E4B was trained so that the first `w` units of each layer's feed-forward block still form a
//! working block, and so that some layers can be left out.  A [`Slice`] names the width of every
//! kept layer and the layers to skip; a [`SlicePlan`] checks it against a model and says what
//! becomes of the config and of every tensor.  The rules are those of Google's MatFormer Lab
//! notebook (gemma-cookbook, `Gemma/[Gemma_3n]MatFormer_Lab.ipynb`):
//! - `gate_proj` and `up_proj` keep their first `w` rows, `down_proj` its first `w` columns;
//! - the kept layers are renumbered in order, and `layer_types`,
//!   `activation_sparsity_pattern` and `intermediate_size` keep their entries;
//! - the layers whose keys and values the shared layers read cannot be skipped, and each skipped
//!   layer among the shared ones shortens `num_kv_shared_layers` by one;
//! - `embed_tokens_per_layer` and `per_layer_model_projection` keep the kept layers' slices.
//!
//! The notebook writes E4B's numbers in (layer 20 is the first shared one, the first ten layers
//! are sparse); here they come from the config, which gives the same result on E4B.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::DType;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Gemma3nConfig, TextConfig};
use crate::loader::{Checkpoint, Part};
use crate::{Error, Result};

/// Google's recommended slices of E4B, as published: `configs.csv` of the Hugging Face dataset
/// `google/gemma3n-slicing-configs` (also shown in the MatFormer Lab notebook).
const PUBLISHED_TABLE: &str = include_str!("../data/gemma3n-slicing-configs.csv");

const LAYERS: &str = "model.language_model.layers.";
const PER_LAYER_TABLE: &str = "model.language_model.embed_tokens_per_layer.weight";
const PER_LAYER_PROJECTION: &str = "model.language_model.per_layer_model_projection.weight";

/// Which layers of a model to keep, and how wide each kept feed-forward block is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    /// Feed-forward width of each kept layer, in order; a single value applies to all of them.
    pub ffn_dims: Vec<usize>,
    /// Layers of the full model to leave out, in its numbering.
    #[serde(default)]
    pub skip_layers: Vec<usize>,
}

/// One row of the published table.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedSlice {
    /// A short name: `E4B`, `E2B`, `E2.98B-layer`, `E3.24B-block`, ...
    pub id: String,
    /// The name as published (`Config for E2.98B (layer-level)`).
    pub name: String,
    /// Effective parameters (the decoder without its two embedding tables), in billions.
    pub effective_params_b: f64,
    /// MMLU accuracy of the pre-trained model at this slice, as published.
    pub mmlu: String,
    pub slice: Slice,
}

#[derive(Deserialize)]
struct TableRow {
    name: String,
    #[serde(rename = "# Layers")]
    layers: usize,
    #[serde(rename = "# Effective Params (B)")]
    effective_params_b: f64,
    #[serde(rename = "MMLU PT accuracy")]
    mmlu: String,
    #[serde(rename = "FFN Hidden Dims")]
    ffn_dims: String,
    #[serde(rename = "Layers Skipped")]
    skipped: String,
}

/// The published slices, in the table's order.
pub fn published() -> &'static [PublishedSlice] {
    static TABLE: OnceLock<Vec<PublishedSlice>> = OnceLock::new();
    TABLE.get_or_init(|| {
        // The table is compiled in; `published_table_parses` checks every row.
        parse_table(PUBLISHED_TABLE).expect("the published slicing table parses")
    })
}

fn parse_table(text: &str) -> Result<Vec<PublishedSlice>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for row in reader.deserialize::<TableRow>() {
        let row = row.map_err(|e| Error::Config(format!("slicing table: {e}")))?;
        let slice = Slice {
            ffn_dims: parse_widths(&row.ffn_dims)?,
            skip_layers: parse_layers(&row.skipped)?,
        };
        if slice.ffn_dims.len() != row.layers {
            return Err(Error::Config(format!(
                "slicing table: {} lists {} widths for {} layers",
                row.name,
                slice.ffn_dims.len(),
                row.layers
            )));
        }
        rows.push(PublishedSlice {
            id: short_id(&row.name),
            name: row.name,
            effective_params_b: row.effective_params_b,
            mmlu: row.mmlu,
            slice,
        });
    }
    Ok(rows)
}

/// `Main model` → `E4B`, `Config for official E2B Model` → `E2B`,
/// `Config for E2.98B (layer-level)` → `E2.98B-layer`.
fn short_id(name: &str) -> String {
    if name.eq_ignore_ascii_case("Main model") {
        return "E4B".into();
    }
    let name = name.trim_start_matches("Config for ");
    let name = name
        .trim_start_matches("official ")
        .trim_end_matches(" Model");
    match name.split_once(" (") {
        Some((size, level)) => format!("{size}-{}", level.trim_end_matches("-level)")),
        None => name.to_string(),
    }
}

/// A table of slices a model folder may carry, in the published table's layout; it replaces
/// Google's for that model (a fine-tuned MatFormer, or a test checkpoint).
pub const FOLDER_TABLE: &str = "slicing-configs.csv";

/// The slices offered for the model in `dir` (`cfg` is its config): those of its own table, or
/// else of Google's, that fit it.
pub fn offered(dir: &Path, cfg: &TextConfig) -> Result<Vec<PublishedSlice>> {
    let own = dir.join(FOLDER_TABLE);
    let table = if own.is_file() {
        let text = std::fs::read_to_string(&own)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", own.display())))?;
        parse_table(&text)?
    } else {
        published().to_vec()
    };
    Ok(table
        .into_iter()
        .filter(|p| SlicePlan::new(cfg, &p.slice).is_ok())
        .collect())
}

/// A slice offered for the model in `dir` by its short id or full name.
pub fn find_for(dir: &Path, cfg: &TextConfig, name: &str) -> Result<Slice> {
    lookup(&offered(dir, cfg)?, name, "this model offers")
}

/// How big a model (or a slice of it) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Size {
    pub layers: usize,
    /// Parameters without the two embedding tables, as the published table counts them (the
    /// unused key/value weights of KV-shared layers included, as in the checkpoints).
    pub effective_params: u64,
    /// Weights of the decoder's matrices that each decoded token reads (the LM head apart).
    pub matrix_params: u64,
    /// The tied LM head, `vocab × hidden`.
    pub head_params: u64,
}

impl Size {
    /// The size of the model `cfg` describes, cut by `plan` when given.
    pub fn of(cfg: &TextConfig, plan: Option<&SlicePlan>) -> Self {
        let (kept, widths, shared): (Vec<usize>, Vec<usize>, usize) = match plan {
            Some(p) => (p.kept.clone(), p.ffn_dims.clone(), p.num_kv_shared_layers),
            None => (
                (0..cfg.num_hidden_layers).collect(),
                cfg.intermediate_sizes(),
                cfg.num_kv_shared_layers,
            ),
        };
        let (d, p, n) = (
            cfg.hidden_size as u64,
            cfg.hidden_size_per_layer_input as u64,
            cfg.altup_num_inputs as u64,
        );
        let (q, kv) = (
            (cfg.num_attention_heads * cfg.head_dim) as u64,
            (cfg.num_key_value_heads * cfg.head_dim) as u64,
        );
        let layers = kept.len() as u64;
        let owning = layers - shared as u64;
        let matrices_but_kv =
            |w: u64| 2 * d * q + 3 * d * w + 2 * d * cfg.laurel_rank as u64 + 2 * d * p;
        let ffn: u64 = widths.iter().map(|&w| w as u64).sum();
        let per_layer_fixed = matrices_but_kv(0)
            + 2 * cfg.head_dim as u64 // q_norm, k_norm
            + 7 * d // four block norms, LAuReL's and the per-layer input's, AltUp's output scale
            + n * n + n * n * n + d * n + d; // AltUp's coefficients, router and its norm
        let global = layers * p * d + p + 2 * (n - 1) * d * d + d;
        Self {
            layers: kept.len(),
            effective_params: layers * (per_layer_fixed + 2 * d * kv) + 3 * d * ffn + global,
            matrix_params: layers * matrices_but_kv(0)
                + 3 * d * ffn
                + owning * 2 * d * kv
                + layers * p * d
                + 2 * (n - 1) * d * d,
            head_params: cfg.vocab_size as u64 * d,
        }
    }

    /// Bytes of weights one decoded token reads, with the matrices in `format`.
    pub fn bytes_per_token(&self, format: crate::WeightFormat) -> u64 {
        format.bytes(self.matrix_params, false) + format.bytes(self.head_params, true)
    }
}

/// A published slice by its short id or its full name (any case).
pub fn find(name: &str) -> Result<Slice> {
    lookup(published(), name, "the published ones are")
}

/// The slice `name` (short id or full name, any case) of `table`; an unknown name is refused
/// with the ids there are.
fn lookup(table: &[PublishedSlice], name: &str, listing: &str) -> Result<Slice> {
    let name = name.trim();
    table
        .iter()
        .find(|p| p.id.eq_ignore_ascii_case(name) || p.name.eq_ignore_ascii_case(name))
        .map(|p| p.slice.clone())
        .ok_or_else(|| {
            let ids: Vec<&str> = table.iter().map(|p| p.id.as_str()).collect();
            let ids = if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            };
            Error::Config(format!("unknown slice {name:?}; {listing} {ids}"))
        })
}

/// Feed-forward widths as the table writes them (`[2_048 * 4, 2_048 * 8]`) or plainly
/// (`8192,16384`): a list of products of integers.
pub fn parse_widths(text: &str) -> Result<Vec<usize>> {
    list_items(text)
        .map(|item| {
            item.split('*')
                .try_fold(1usize, |product, factor| {
                    let factor = factor.trim().replace('_', "");
                    factor
                        .parse::<usize>()
                        .ok()
                        .and_then(|f| product.checked_mul(f))
                })
                .filter(|&w| w > 0)
                .ok_or_else(|| Error::Config(format!("bad feed-forward width {item:?}")))
        })
        .collect()
}

/// Layer indices: `[20, 21, 22]` or `20,21,22`, ranges allowed (`20-24`); empty means none.
pub fn parse_layers(text: &str) -> Result<Vec<usize>> {
    let bad = |item: &str| Error::Config(format!("bad layer index {item:?}"));
    let mut layers = Vec::new();
    for item in list_items(text) {
        let index = |s: &str| s.trim().parse::<usize>().map_err(|_| bad(item));
        match item.split_once('-') {
            Some((first, last)) => layers.extend(index(first)?..=index(last)?),
            None => layers.push(index(item)?),
        }
    }
    Ok(layers)
}

fn list_items(text: &str) -> impl Iterator<Item = &str> {
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A slice checked against one model: what it keeps of the config and of each tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePlan {
    /// The full model's index of each kept layer, in order.
    kept: Vec<usize>,
    ffn_dims: Vec<usize>,
    num_kv_shared_layers: usize,
    per_layer_dim: usize,
}

impl SlicePlan {
    pub fn new(cfg: &TextConfig, slice: &Slice) -> Result<Self> {
        let n = cfg.num_hidden_layers;
        let bad = |why: String| Error::Config(format!("cannot slice this model: {why}"));
        let skip: BTreeSet<usize> = slice.skip_layers.iter().copied().collect();
        if let Some(&l) = skip.iter().find(|&&l| l >= n) {
            return Err(bad(format!(
                "it has {n} layers (0 to {}), so layer {l} cannot be skipped",
                n - 1
            )));
        }
        let kept: Vec<usize> = (0..n).filter(|l| !skip.contains(l)).collect();
        if kept.is_empty() {
            return Err(bad("a slice must keep at least one layer".into()));
        }
        let first_shared = cfg.first_kv_shared_layer();
        let donors: BTreeSet<usize> = (first_shared..n).filter_map(|l| cfg.kv_donor(l)).collect();
        if let Some(d) = donors.intersection(&skip).next() {
            return Err(bad(format!(
                "layer {d} holds the keys and values that later layers share, so it cannot be skipped"
            )));
        }
        let ffn_dims = match slice.ffn_dims[..] {
            [w] => vec![w; kept.len()],
            _ if slice.ffn_dims.len() == kept.len() => slice.ffn_dims.clone(),
            _ => {
                return Err(bad(format!(
                    "{} feed-forward widths given for the {} layers it keeps",
                    slice.ffn_dims.len(),
                    kept.len()
                )))
            }
        };
        let full = cfg.intermediate_sizes();
        for (new, (&old, &w)) in kept.iter().zip(&ffn_dims).enumerate() {
            if w == 0 || w > full[old] {
                return Err(bad(format!(
                    "layer {old} (kept as layer {new}) is {} wide, so it cannot be made {w} wide",
                    full[old]
                )));
            }
        }
        let shared_skipped = skip.iter().filter(|&&l| l >= first_shared).count();
        Ok(Self {
            kept,
            ffn_dims,
            num_kv_shared_layers: cfg.num_kv_shared_layers - shared_skipped,
            per_layer_dim: cfg.hidden_size_per_layer_input,
        })
    }

    /// The full model's index of each kept layer.
    pub fn kept_layers(&self) -> &[usize] {
        &self.kept
    }

    /// How many of the kept layers read another layer's keys and values.
    pub fn num_kv_shared_layers(&self) -> usize {
        self.num_kv_shared_layers
    }

    /// Rewrite a `text_config` object (of the model `cfg` describes) into the slice's own.
    pub fn apply_to_config(&self, cfg: &TextConfig, text_config: &mut Map<String, Value>) {
        let types = cfg.layer_types();
        let sparsity = cfg.activation_sparsity();
        let kept =
            |f: &dyn Fn(usize) -> Value| Value::Array(self.kept.iter().map(|&l| f(l)).collect());
        let entries = [
            ("num_hidden_layers", Value::from(self.kept.len())),
            ("intermediate_size", Value::from(self.ffn_dims.clone())),
            (
                "num_kv_shared_layers",
                Value::from(self.num_kv_shared_layers),
            ),
            (
                "layer_types",
                kept(&|l| serde_json::to_value(types[l]).unwrap_or_default()),
            ),
            (
                "activation_sparsity_pattern",
                kept(&|l| Value::from(sparsity[l])),
            ),
        ];
        for (key, value) in entries {
            text_config.insert(key.to_string(), value);
        }
    }

    /// The whole `config.json` of the sliced model, from the full model's (`json`).
    pub fn sliced_config(&self, cfg: &TextConfig, mut json: Value) -> Result<Value> {
        let text_config = json
            .get_mut("text_config")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| Error::Config("config.json has no text_config object".into()))?;
        self.apply_to_config(cfg, text_config);
        Ok(json)
    }

    /// What the slice keeps of the stored tensor `name`: its new name and the part kept (`None`:
    /// all of it), or nothing for a skipped layer's tensors.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Option<(String, Option<Part>)> {
        let (rows, cols) = match shape {
            [rows, cols] => (*rows, *cols),
            _ => (0, 0),
        };
        let part = |rows: Vec<Range<usize>>, cols: Vec<Range<usize>>| {
            let whole = rows.iter().map(|r| r.len()).sum::<usize>()
                == shape.first().copied().unwrap_or(0)
                && cols.iter().map(|c| c.len()).sum::<usize>()
                    == shape.get(1).copied().unwrap_or(0);
            (!whole).then_some(Part { rows, cols })
        };
        let layer = name.strip_prefix(LAYERS).and_then(|rest| {
            let (index, tail) = rest.split_once('.')?;
            Some((index.parse::<usize>().ok()?, tail))
        });
        if let Some((old, tail)) = layer {
            // A skipped layer's tensors are left out.
            let new = self.kept.iter().position(|&l| l == old)?;
            let w = self.ffn_dims[new];
            let kept = match tail {
                "mlp.gate_proj.weight" | "mlp.up_proj.weight" => part(whole(w), whole(cols)),
                "mlp.down_proj.weight" => part(whole(rows), whole(w)),
                _ => None,
            };
            return Some((format!("{LAYERS}{new}.{tail}"), kept));
        }
        let kept = match name {
            PER_LAYER_TABLE => part(whole(rows), self.per_layer_ranges()),
            PER_LAYER_PROJECTION => part(self.per_layer_ranges(), whole(cols)),
            _ => None,
        };
        Some((name.to_string(), kept))
    }

    /// The kept layers' slices of a per-layer axis (`P` values per layer), neighbours merged.
    fn per_layer_ranges(&self) -> Vec<Range<usize>> {
        let p = self.per_layer_dim;
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for &l in &self.kept {
            match ranges.last_mut() {
                Some(r) if r.end == l * p => r.end += p,
                _ => ranges.push(l * p..(l + 1) * p),
            }
        }
        ranges
    }
}

/// The one range `0..n`.
fn whole(n: usize) -> Vec<Range<usize>> {
    std::iter::once(0..n).collect()
}

/// Shards of an exported checkpoint hold up to this many bytes (each is built in memory).
const SHARD_BYTES: usize = 2 << 30;

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub files: Vec<PathBuf>,
    pub tensors: usize,
    pub bytes: usize,
    pub layers: usize,
}

/// Write `slice` of the Hugging Face checkpoint folder `src` to the new folder `out`, in the same
/// layout: `config.json` rewritten, the weights cut (only the kept parts are read), every other
/// file (tokenizer, processor, template, generation config) copied.  transformers loads the result
/// as it is, as it loads the MatFormer Lab notebook's output.
pub fn export(src: &Path, slice: &Slice, out: &Path) -> Result<Exported> {
    if crate::gguf::is_gguf(src) {
        return Err(Error::Checkpoint(format!(
            "{} is a GGUF file; a slice is exported from a Hugging Face checkpoint folder",
            src.display()
        )));
    }
    let json = Gemma3nConfig::read_json(&src.join("config.json"))?;
    let full = Gemma3nConfig::from_value(json.clone())?;
    let plan = SlicePlan::new(&full.text_config, slice)?;
    let sliced = plan.sliced_config(&full.text_config, json)?;
    Gemma3nConfig::from_value(sliced.clone())?;
    let checkpoint = Checkpoint::open(src)?.sliced(&plan)?;

    let io = |what: &str, path: &Path, e: std::io::Error| {
        Error::Checkpoint(format!("cannot {what} {}: {e}", path.display()))
    };
    if out.exists() {
        let mut entries = out.read_dir().map_err(|e| io("read", out, e))?;
        if entries.next().is_some() {
            return Err(Error::Checkpoint(format!(
                "{} already exists and is not empty; choose a new folder",
                out.display()
            )));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| io("create", out, e))?;
    for entry in src.read_dir().map_err(|e| io("read", src, e))? {
        let path = entry.map_err(|e| io("read", src, e))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        // The full model's own table of slices does not describe the slice.
        if path.is_file() && !weights && name != "config.json" && name != FOLDER_TABLE {
            std::fs::copy(&path, out.join(name)).map_err(|e| io("copy", &path, e))?;
        }
    }
    let config = serde_json::to_string_pretty(&sliced).unwrap_or_default() + "\n";
    let config_path = out.join("config.json");
    std::fs::write(&config_path, config).map_err(|e| io("write", &config_path, e))?;

    // Tensors in name order, cut into shards of at most SHARD_BYTES.
    let mut names: Vec<&str> = checkpoint.names().collect();
    names.sort_unstable();
    let mut shards: Vec<Vec<&str>> = vec![Vec::new()];
    let mut filled = 0;
    for name in &names {
        let bytes = checkpoint.tensor_bytes(name).unwrap_or(0);
        if filled + bytes > SHARD_BYTES && filled > 0 {
            shards.push(Vec::new());
            filled = 0;
        }
        filled += bytes;
        shards.last_mut().expect("one shard at least").push(name);
    }
    let file_name = |i: usize| match shards.len() {
        1 => "model.safetensors".to_string(),
        n => format!("model-{:05}-of-{n:05}.safetensors", i + 1),
    };
    let mut weight_map = Map::new();
    let mut total = 0;
    let mut files = Vec::with_capacity(shards.len());
    for (i, shard) in shards.iter().enumerate() {
        let tensors = shard
            .iter()
            .map(|&name| Ok((name.to_string(), checkpoint.stored_bytes(name)?)))
            .collect::<Result<Vec<_>>>()?;
        let views = tensors
            .iter()
            .map(|(name, (dtype, shape, bytes))| {
                let view = TensorView::new(safetensors_dtype(*dtype), shape.clone(), bytes)
                    .map_err(|e| Error::Checkpoint(format!("{name}: {e}")))?;
                Ok((name.as_str(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let path = out.join(file_name(i));
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(metadata), &path)
            .map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", path.display())))?;
        for (name, (_, _, bytes)) in &tensors {
            weight_map.insert(name.clone(), Value::from(file_name(i)));
            total += bytes.len();
        }
        files.push(path);
    }
    if shards.len() > 1 {
        let index =
            serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        let path = out.join("model.safetensors.index.json");
        let text = serde_json::to_string_pretty(&index).unwrap_or_default() + "\n";
        std::fs::write(&path, text).map_err(|e| io("write", &path, e))?;
    }
    Ok(Exported {
        files,
        tensors: names.len(),
        bytes: total,
        layers: plan.kept.len(),
    })
}

fn safetensors_dtype(dtype: DType) -> Dtype {
    match dtype {
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
        _ => Dtype::F32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_table_parses() {
        let table = published();
        assert_eq!(table.len(), 16);
        let ids: Vec<&str> = table.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(&ids[..4], ["E4B", "E2B", "E1.96B-layer", "E2.54B-layer"]);
        assert!(ids.contains(&"E3.79B-block"));
        let e2b = &table[1];
        assert_eq!(e2b.slice.ffn_dims, vec![8192; 30]);
        assert_eq!(e2b.slice.skip_layers, vec![20, 21, 22, 23, 24]);
        assert_eq!(e2b.effective_params_b, 1.91);
        assert_eq!(table[0].slice.ffn_dims, vec![16384; 35]);
        assert!(table[0].slice.skip_layers.is_empty());
        let unique: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len(), "short ids are unique");
    }

    /// E4B's text config (35 layers, 16384-wide feed-forward blocks, 15 KV-shared layers).
    fn e4b() -> TextConfig {
        serde_json::from_value(serde_json::json!({
            "vocab_size": 262400, "vocab_size_per_layer_input": 262144, "hidden_size": 2048,
            "hidden_size_per_layer_input": 256, "intermediate_size": 16384,
            "num_hidden_layers": 35, "num_attention_heads": 8, "num_key_value_heads": 2,
            "head_dim": 256, "sliding_window": 512, "altup_num_inputs": 4,
            "num_kv_shared_layers": 15, "laurel_rank": 64
        }))
        .unwrap()
    }

    /// The sizes computed from the config are the published ones, for every row of the table:
    /// E2B to the parameter (the MatFormer Lab notebook prints 1,905,495,648), E4B likewise; the
    /// published 35-layer mixes are rounded 0.01 to 0.02 B above what their checkpoints hold.
    #[test]
    fn computed_sizes_match_the_published_table() {
        let cfg = e4b();
        let full = Size::of(&cfg, None);
        assert_eq!(full.effective_params, 3_980_491_248);
        for p in published() {
            let plan = SlicePlan::new(&cfg, &p.slice).unwrap();
            let size = Size::of(&cfg, Some(&plan));
            let billions = size.effective_params as f64 / 1e9;
            assert!(
                (billions - p.effective_params_b).abs() < 0.021,
                "{}: {billions:.3} B computed, {} B published",
                p.id,
                p.effective_params_b
            );
            assert_eq!(size.layers, p.slice.ffn_dims.len());
        }
        let e2b = SlicePlan::new(&cfg, &find("E2B").unwrap()).unwrap();
        assert_eq!(Size::of(&cfg, Some(&e2b)).effective_params, 1_905_495_648);
        // A slice reads fewer bytes per token, in every format.
        let e2b = Size::of(&cfg, Some(&e2b));
        assert!(
            e2b.bytes_per_token(crate::WeightFormat::Q4K)
                < full.bytes_per_token(crate::WeightFormat::Q4K)
        );
    }

    #[test]
    fn e4b_plans_follow_the_notebook() {
        let cfg = e4b();
        let plan = SlicePlan::new(&cfg, &find("E2B").unwrap()).unwrap();
        assert_eq!(plan.num_kv_shared_layers, 10);
        assert_eq!(plan.kept.len(), 30);
        assert_eq!(plan.kept[20], 25);
        let mut json = serde_json::json!({"num_hidden_layers": 35});
        plan.apply_to_config(&cfg, json.as_object_mut().unwrap());
        let sparse = json["activation_sparsity_pattern"].as_array().unwrap();
        assert_eq!(
            sparse.iter().filter(|v| v.as_f64() == Some(0.95)).count(),
            10
        );
        assert_eq!(json["num_hidden_layers"], 30);
        // Layers 18 and 19 hold the keys and values of the shared layers.
        for reserved in [18, 19] {
            let slice = Slice {
                ffn_dims: vec![8192],
                skip_layers: vec![reserved],
            };
            assert!(SlicePlan::new(&cfg, &slice).is_err());
        }
        // Only the kept rows and columns of the feed-forward and per-layer tensors are kept.
        let (name, part) = plan
            .tensor(
                "model.language_model.layers.25.mlp.down_proj.weight",
                &[2048, 16384],
            )
            .unwrap();
        assert_eq!(name, "model.language_model.layers.20.mlp.down_proj.weight");
        assert_eq!(part.unwrap().cols, vec![0..8192]);
        assert!(plan
            .tensor(
                "model.language_model.layers.22.mlp.up_proj.weight",
                &[16384, 2048]
            )
            .is_none());
        let (_, part) = plan
            .tensor(
                "model.language_model.embed_tokens_per_layer.weight",
                &[262144, 8960],
            )
            .unwrap();
        assert_eq!(part.unwrap().cols, vec![0..5120, 6400..8960]);
    }

    #[test]
    fn slices_are_found_by_id_or_name() {
        assert_eq!(find("e2b").unwrap(), published()[1].slice);
        assert_eq!(
            find("Config for E2.98B (block-level)").unwrap(),
            find("E2.98B-block").unwrap()
        );
        let err = find("E9B").unwrap_err().to_string();
        assert!(err.contains("E9B") && err.contains("E2.49B-block"), "{err}");
    }

    #[test]
    fn widths_and_layers_parse_in_either_spelling() {
        assert_eq!(
            parse_widths("[2_048 * 4, 8192, 16_384]").unwrap(),
            [8192, 8192, 16384]
        );
        assert!(parse_widths("8192, x").is_err());
        assert!(parse_widths("0").is_err());
        assert_eq!(parse_layers("[20, 21]").unwrap(), [20, 21]);
        assert_eq!(parse_layers("3-5,9").unwrap(), [3, 4, 5, 9]);
        assert!(parse_layers("").unwrap().is_empty());
        assert!(parse_layers("a").is_err());
    }
}
