//! A frozen weight matrix of the CPU engine: dense values, or the file's own packed form
//! ([`CpuWeight`]: GGUF blocks, or a compressed file's quantized or sparse projection)
//! that the CPU GEMM reads in place.

use crate::formats::rows::CpuWeight;
use num_traits::Float;
use std::borrow::Cow;
use std::sync::Arc;

/// A weight `[out][in]` (or a norm's vector) as the reference holds it.
#[derive(Clone, Debug, PartialEq)]
pub enum Mat<T> {
    Dense(Vec<T>),
    /// Read through [`crate::cpu::sgemm_rows`]; shared (frozen) between clones.
    Packed(Arc<CpuWeight>),
}

impl<T> From<Vec<T>> for Mat<T> {
    fn from(v: Vec<T>) -> Self {
        Mat::Dense(v)
    }
}

impl<T: Float> Mat<T> {
    /// Values held (rows × cols for a matrix).
    pub fn len(&self) -> usize {
        match self {
            Mat::Dense(v) => v.len(),
            Mat::Packed(p) => {
                let (r, c) = p.shape();
                r * c
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values when dense (every gradient, every f64 model, the f32 oracle).
    pub fn dense(&self) -> Option<&[T]> {
        match self {
            Mat::Dense(v) => Some(v),
            Mat::Packed(_) => None,
        }
    }

    pub fn dense_mut(&mut self) -> Option<&mut [T]> {
        match self {
            Mat::Dense(v) => Some(v),
            Mat::Packed(_) => None,
        }
    }

    /// A gradient's values: gradients are always dense ([`super::Weights::map`] makes
    /// them), so a packed one here is a bug.
    pub fn grad_mut(&mut self) -> &mut [T] {
        self.dense_mut()
            .expect("a gradient tensor is dense (made by Weights::map)")
    }

    /// The values: borrowed when dense, dequantized (and cast) when packed.
    pub fn values(&self) -> Cow<'_, [T]> {
        match self {
            Mat::Dense(v) => Cow::Borrowed(v),
            Mat::Packed(p) => Cow::Owned(
                p.dequantize()
                    .into_iter()
                    .map(|x| T::from(x).unwrap_or_else(T::nan))
                    .collect(),
            ),
        }
    }

    /// The packed form, if any.
    pub fn packed(&self) -> Option<&CpuWeight> {
        match self {
            Mat::Dense(_) => None,
            Mat::Packed(p) => Some(p),
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Mat::Dense(v) => v.len() * std::mem::size_of::<T>(),
            Mat::Packed(p) => p.bytes(),
        }
    }
}
