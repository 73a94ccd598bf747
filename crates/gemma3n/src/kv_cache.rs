//! Key/value cache of the decoder layers that compute their own keys and values.
//!
//! Layers past `first_kv_shared_layer` own no cache: they read their donor's entry, which the
//! donor has already extended with the current step's tokens when they run.

use candle_core::{Result, Tensor};

/// Growable `[B, kv_heads, S, head_dim]` buffer; appends write in place, truncation is O(1).
#[derive(Debug, Clone)]
pub struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    len: usize,
}

const SEQ_DIM: usize = 2;
const GROW_STEP: usize = 256;

impl LayerCache {
    fn new() -> Self {
        Self {
            keys: None,
            values: None,
            len: 0,
        }
    }

    /// Append this step's keys and values; returns everything cached so far.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let new = k.dim(SEQ_DIM)?;
        let needed = self.len + new;
        let capacity = self.keys.as_ref().map_or(0, |t| t.dims()[SEQ_DIM]);
        if needed > capacity {
            let grown = needed.div_ceil(GROW_STEP) * GROW_STEP;
            self.keys = Some(grow(self.keys.as_ref(), k, self.len, grown)?);
            self.values = Some(grow(self.values.as_ref(), v, self.len, grown)?);
        }
        let (keys, values) = (self.keys.as_ref().unwrap(), self.values.as_ref().unwrap());
        keys.slice_set(&k.contiguous()?, SEQ_DIM, self.len)?;
        values.slice_set(&v.contiguous()?, SEQ_DIM, self.len)?;
        self.len = needed;
        self.current()
    }

    pub fn current(&self) -> Result<(Tensor, Tensor)> {
        match (&self.keys, &self.values) {
            (Some(k), Some(v)) => Ok((
                k.narrow(SEQ_DIM, 0, self.len)?,
                v.narrow(SEQ_DIM, 0, self.len)?,
            )),
            _ => candle_core::bail!("reading an empty KV cache"),
        }
    }
}

fn grow(old: Option<&Tensor>, like: &Tensor, len: usize, capacity: usize) -> Result<Tensor> {
    let mut shape = like.dims().to_vec();
    shape[SEQ_DIM] = capacity;
    let buffer = Tensor::zeros(shape, like.dtype(), like.device())?;
    if let Some(old) = old {
        if len > 0 {
            buffer.slice_set(&old.narrow(SEQ_DIM, 0, len)?, SEQ_DIM, 0)?;
        }
    }
    Ok(buffer)
}

/// The cache of a whole decoder, plus the number of positions it covers.
#[derive(Debug, Clone)]
pub struct Cache {
    layers: Vec<LayerCache>,
    seq_len: usize,
}

impl Cache {
    /// A cache for a decoder whose first `owning_layers` layers compute their own keys/values.
    pub fn new(owning_layers: usize) -> Self {
        Self {
            layers: (0..owning_layers).map(|_| LayerCache::new()).collect(),
            seq_len: 0,
        }
    }

    /// Number of positions already processed.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Forget everything after the first `len` positions (to reuse a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.seq_len);
        for layer in &mut self.layers {
            layer.len = layer.len.min(len);
        }
        self.seq_len = len;
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut LayerCache {
        &mut self.layers[layer]
    }

    pub(crate) fn layer(&self, layer: usize) -> &LayerCache {
        &self.layers[layer]
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.seq_len += tokens;
    }
}
