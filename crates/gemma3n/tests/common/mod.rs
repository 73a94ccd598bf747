//! Shared helpers for the parity tests: fixture paths, golden tensors, numeric comparison.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

/// `tests/fixtures/<variant>` at the repository root.
pub fn fixture_dir(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(variant)
}

pub fn model_dir(variant: &str) -> PathBuf {
    fixture_dir(variant).join("model")
}

/// The golden tensors of one variant, read one at a time (the file mixes dtypes candle may not load).
pub struct Golden {
    st: MmapedSafetensors,
}

impl Golden {
    pub fn open(variant: &str) -> Self {
        let path = fixture_dir(variant).join("golden.safetensors");
        let st = unsafe { MmapedSafetensors::new(&path) }.expect("golden.safetensors");
        Self { st }
    }

    pub fn get(&self, name: &str) -> Tensor {
        self.st
            .load(name, &Device::Cpu)
            .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"))
    }

    pub fn f32(&self, name: &str) -> Tensor {
        self.get(name).to_dtype(DType::F32).unwrap()
    }

    /// A bool tensor (candle cannot load those) as u8, 1 = true.
    pub fn mask(&self, name: &str) -> Tensor {
        let view = self
            .st
            .get(name)
            .unwrap_or_else(|e| panic!("golden tensor {name}: {e}"));
        assert_eq!(
            format!("{:?}", view.dtype()),
            "BOOL",
            "{name} is not a bool tensor"
        );
        Tensor::from_vec(view.data().to_vec(), view.shape(), &Device::Cpu).unwrap()
    }

    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.get(name)
            .to_dtype(DType::I64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }
}

/// Largest absolute difference; panics on a shape mismatch.
pub fn max_abs_diff(actual: &Tensor, expected: &Tensor) -> f32 {
    assert_eq!(actual.dims(), expected.dims(), "shape mismatch");
    let a = actual.to_dtype(DType::F32).unwrap();
    let e = expected.to_dtype(DType::F32).unwrap();
    (a - e)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Assert `actual` is within `tol` (absolute) of `expected`; prints and returns the difference.
pub fn assert_close(what: &str, actual: &Tensor, expected: &Tensor, tol: f32) -> f32 {
    let d = max_abs_diff(actual, expected);
    eprintln!("{what}: max abs diff {d:.3e} (tolerance {tol:.1e})");
    assert!(d <= tol, "{what}: max abs diff {d} exceeds {tol}");
    d
}

/// Intermediate activations: within `rel` times the golden's largest magnitude.
pub fn assert_close_rel(what: &str, actual: &Tensor, expected: &Tensor, rel: f32) -> f32 {
    let tol = rel * max_abs(expected).max(1e-6);
    assert_close(what, actual, expected, tol)
}
