//! The CPU compute layer: packed weight formats and quantisation at load ([`packed`],
//! [`quantise`]), the decode dot products and the integer row kernels of prefill ([`dot`]), the
//! widened prefill matrix products (the `gemm` crate, or [`amx`] tiles), vectorised
//! element-wise functions ([`activation`]) and the thread pool's busy passes ([`pool`]).  It
//! knows no model: model code composes these.
//!
//! Builds carry no target features; each hot kernel has one version per instruction-set level
//! and [`cpu::level`] picks one at run time, as ggml does under llama.cpp.

pub mod activation;
pub mod amx;
pub mod blocks;
pub mod cpu;
pub mod dot;
pub mod packed;
pub mod pool;
mod quantise;

pub use cpu::{level, Level};
pub use packed::{
    dequantize_into, from_blocks, ggml_bytes, pack, PackedMatmul, RowSource, WeightFormat,
};
