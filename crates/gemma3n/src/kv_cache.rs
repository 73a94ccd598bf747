//! Key/value cache of the decoder layers that compute their own keys and values.
//!
//! Full-attention layers keep every position.  Sliding-window layers keep a ring of the last
//! `2 × window` positions: a step needs only the `window - 1` before it, and the slack lets a new
//! turn cut the cache back by up to `window + 1` positions and still reuse it.
//!
//! Layers past `first_kv_shared_layer` own no cache: they read the keys and values their donor
//! used in the same step ([`LayerCache::current`]).

use candle_core::{Result, Tensor};

/// Keys and values `[B, kv_heads, S, head_dim]` of consecutive positions `first..first + S`.
#[derive(Debug, Clone)]
pub struct KvView {
    pub keys: Tensor,
    pub values: Tensor,
    pub first: usize,
}

/// One layer's `[B, kv_heads, capacity, head_dim]` buffers; position `p` lives in slot
/// `p % ring` (`ring` is unbounded for full-attention layers, so slot = position).
#[derive(Debug, Clone)]
pub struct LayerCache {
    keys: Option<Tensor>,
    values: Option<Tensor>,
    /// Positions held: `held_from..len`.
    held_from: usize,
    len: usize,
    /// Attention span of a sliding layer; `None` for full attention.
    window: Option<usize>,
    ring: usize,
    /// What the last `append` returned, for the KV-shared layers of the same step.
    step: Option<KvView>,
}

const SEQ_DIM: usize = 2;
const GROW_STEP: usize = 256;

impl LayerCache {
    fn new(window: Option<usize>) -> Self {
        Self {
            keys: None,
            values: None,
            held_from: 0,
            len: 0,
            window,
            ring: window.map_or(usize::MAX, |w| 2 * w.max(1)),
            step: None,
        }
    }

    /// First position a query at `pos` attends to.
    fn first_needed(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }

    /// Append this step's keys and values (`[B, kv_heads, T, head_dim]`); returns those of every
    /// position this step's queries can see, oldest first.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<KvView> {
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let start = self.len;
        let t = k.dim(SEQ_DIM)?;
        let end = start + t;
        let first = self.first_needed(start);
        let view = if self.window.is_none() {
            self.write(&k, &v, start)?;
            let (keys, values) = (self.keys.as_ref(), self.values.as_ref());
            KvView {
                keys: keys.unwrap().narrow(SEQ_DIM, 0, end)?,
                values: values.unwrap().narrow(SEQ_DIM, 0, end)?,
                first: 0,
            }
        } else {
            // Read what is kept before writing: the new positions may reuse its slots.
            let keys = self.chronological(self.keys.as_ref(), &k, first, start)?;
            let values = self.chronological(self.values.as_ref(), &v, first, start)?;
            self.write(&k, &v, start)?;
            KvView {
                keys,
                values,
                first,
            }
        };
        self.len = end;
        self.held_from = self.held_from.max(end.saturating_sub(self.ring));
        self.step = Some(view.clone());
        Ok(view)
    }

    /// Cached positions `first..start` followed by `new`.
    fn chronological(
        &self,
        buffer: Option<&Tensor>,
        new: &Tensor,
        first: usize,
        start: usize,
    ) -> Result<Tensor> {
        let Some(buffer) = buffer.filter(|_| first < start) else {
            return Ok(new.clone());
        };
        let (from, n) = (first % self.ring, start - first);
        let head = (self.ring - from).min(n);
        let mut parts = vec![buffer.narrow(SEQ_DIM, from, head)?];
        if head < n {
            parts.push(buffer.narrow(SEQ_DIM, 0, n - head)?);
        }
        parts.push(new.clone());
        Tensor::cat(&parts, SEQ_DIM)
    }

    /// Store positions `start..start + T` (only the last `ring` of them if more).
    fn write(&mut self, k: &Tensor, v: &Tensor, start: usize) -> Result<()> {
        let t = k.dim(SEQ_DIM)?;
        let end = start + t;
        let needed = end.min(self.ring);
        let capacity = self.keys.as_ref().map_or(0, |b| b.dims()[SEQ_DIM]);
        if needed > capacity {
            let grown = (needed.div_ceil(GROW_STEP) * GROW_STEP).min(self.ring);
            self.keys = Some(grow(self.keys.as_ref(), k, grown)?);
            self.values = Some(grow(self.values.as_ref(), v, grown)?);
        }
        let from = end.saturating_sub(self.ring).max(start);
        let (slot, n) = (from % self.ring, end - from);
        let head = (self.ring - slot).min(n);
        for (buffer, src) in [(&self.keys, k), (&self.values, v)] {
            let buffer = buffer.as_ref().unwrap();
            let src = src.narrow(SEQ_DIM, from - start, n)?;
            buffer.slice_set(&src.narrow(SEQ_DIM, 0, head)?.contiguous()?, SEQ_DIM, slot)?;
            if head < n {
                buffer.slice_set(
                    &src.narrow(SEQ_DIM, head, n - head)?.contiguous()?,
                    SEQ_DIM,
                    0,
                )?;
            }
        }
        Ok(())
    }

    /// The keys and values of the current step, as the last `append` returned them.
    pub fn current(&self) -> Result<KvView> {
        match &self.step {
            Some(view) => Ok(view.clone()),
            None => candle_core::bail!("reading a KV cache its donor layer has not filled"),
        }
    }

    /// Whether a step starting at `pos` finds every earlier position it attends to.
    fn can_resume_at(&self, pos: usize) -> bool {
        pos <= self.len && self.held_from <= self.first_needed(pos)
    }

    fn bytes(&self) -> usize {
        [&self.keys, &self.values]
            .into_iter()
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }
}

fn grow(old: Option<&Tensor>, like: &Tensor, capacity: usize) -> Result<Tensor> {
    let mut shape = like.dims().to_vec();
    shape[SEQ_DIM] = capacity;
    let buffer = Tensor::zeros(shape, like.dtype(), like.device())?;
    if let Some(old) = old {
        buffer.slice_set(old, SEQ_DIM, 0)?;
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
    /// A cache with one entry per layer that computes its own keys and values: `Some(window)` for
    /// sliding-window layers (kept rolling), `None` for full-attention layers.
    pub fn new(windows: &[Option<usize>]) -> Self {
        Self {
            layers: windows.iter().map(|&w| LayerCache::new(w)).collect(),
            seq_len: 0,
        }
    }

    /// Number of positions already processed.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Keep the first `len` positions (to reuse a shared prompt prefix) and return how many are
    /// kept: `len` (capped at `seq_len`), or 0 when a sliding layer has already dropped keys that
    /// the position after them attends to, in which case the cache is cleared.
    pub fn truncate(&mut self, len: usize) -> usize {
        let len = len.min(self.seq_len);
        let len = if self.layers.iter().all(|l| l.can_resume_at(len)) {
            len
        } else {
            0
        };
        for layer in &mut self.layers {
            layer.len = len;
            layer.held_from = layer.held_from.min(len);
            layer.step = None;
        }
        self.seq_len = len;
        len
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Bytes held by the key/value buffers.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }

    pub(crate) fn layer_mut(&mut self, layer: usize) -> &mut LayerCache {
        &mut self.layers[layer]
    }

    pub(crate) fn layer(&self, layer: usize) -> &LayerCache {
        &self.layers[layer]
    }

    /// Close a step of `tokens` positions; the per-step views are no longer needed.
    pub(crate) fn advance(&mut self, tokens: usize) {
        self.seq_len += tokens;
        for layer in &mut self.layers {
            layer.step = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// `[1, 1, n, 1]` holding the positions `from..from + n`.
    fn positions(from: usize, n: usize) -> Tensor {
        let v: Vec<f32> = (from..from + n).map(|p| p as f32).collect();
        Tensor::from_vec(v, (1, 1, n, 1), &Device::Cpu).unwrap()
    }

    fn held(view: &KvView) -> Vec<usize> {
        let v: Vec<f32> = view.keys.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(|p| p as usize).collect()
    }

    /// Whatever the chunking, a sliding layer returns exactly the positions its queries see.
    #[test]
    fn rolling_layer_returns_the_window_in_order() {
        let w = 4;
        for chunks in [vec![1; 30], vec![3, 9, 1, 1, 2, 20, 1], vec![25, 1, 1]] {
            let mut layer = LayerCache::new(Some(w));
            let mut pos = 0;
            for t in chunks {
                let view = layer
                    .append(&positions(pos, t), &positions(pos, t))
                    .unwrap();
                let first = (pos + 1).saturating_sub(w);
                assert_eq!(view.first, first);
                assert_eq!(held(&view), (first..pos + t).collect::<Vec<_>>());
                pos += t;
            }
            assert!(
                layer.bytes() <= 2 * w * 2 * 4,
                "ring grew to {}",
                layer.bytes()
            );
        }
    }

    #[test]
    fn truncate_reports_what_a_rolling_layer_can_still_serve() {
        let mut cache = Cache::new(&[Some(4), None]);
        for pos in 0..20 {
            for l in 0..2 {
                let p = positions(pos, 1);
                cache.layer_mut(l).append(&p, &p).unwrap();
            }
            cache.advance(1);
        }
        // The ring holds 12..20; resuming at 15 needs 12.., at 14 would need 11.
        assert_eq!(cache.truncate(15), 15);
        let p = positions(15, 1);
        assert_eq!(
            held(&cache.layer_mut(0).append(&p, &p).unwrap()),
            [12, 13, 14, 15]
        );
        assert_eq!(cache.truncate(14), 0);
        assert_eq!(cache.seq_len(), 0);
    }
}
