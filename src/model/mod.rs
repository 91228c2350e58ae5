//! A model file (GGUF) and its weights in f32 (or f64 for gradient checks), dense or, for
//! the CPU engine, with the matrices kept as the file stores them ([`Storage::File`]).

pub mod config;
mod load;
pub mod matrix;
pub mod tiny;

pub use config::{LlamaConfig, RopeStyle};
pub use load::Storage;
pub use matrix::Mat;

use crate::gguf::Gguf;
use crate::{Error, Result};
use num_traits::Float;

/// A parsed GGUF model: the header plus the file's bytes.
pub struct ModelFile {
    pub gguf: Gguf,
    pub bytes: Vec<u8>,
    pub config: LlamaConfig,
}

impl ModelFile {
    /// From the bytes of a GGUF file (the browser's path).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let gguf = Gguf::parse(&bytes)?;
        let config = LlamaConfig::from_gguf(&gguf)?;
        Ok(Self {
            gguf,
            bytes,
            config,
        })
    }

    /// From a file on disk (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(bytes).map_err(|e| match e {
            Error::Gguf(g) => Error::Model(format!("{}: {g}", path.display())),
            other => other,
        })
    }

    /// A tensor dequantized to f32, checked to have `dims` (GGUF order).
    pub fn tensor_f32(&self, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
        // A compressed-model file stores some projections packed (crate::compress::file).
        if self.gguf.tensor(name).is_none() {
            let packed = crate::formats::packed::dense_f32(&self.gguf, &self.bytes, name, dims)?;
            if let Some(w) = packed {
                return Ok(w);
            }
        }
        let info = self
            .gguf
            .tensor(name)
            .ok_or_else(|| Error::Model(format!("missing tensor {name}")))?;
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if info.dims != want {
            return Err(Error::Model(format!(
                "tensor {name} has dims {:?}, expected {want:?}",
                info.dims
            )));
        }
        Ok(self.gguf.tensor_f32(&self.bytes, name)?)
    }

    /// All weights dequantized to f32 (the oracle's, and what compression reads).
    pub fn weights(&self) -> Result<Weights<f32>> {
        self.weights_as(Storage::F32)
    }
}

/// One transformer block. Every matrix is `[out][in]` row-major (y = x·Wᵀ); the norms are
/// always dense.
#[derive(Clone, Debug)]
pub struct LayerWeights<T> {
    pub attn_norm: Vec<T>,
    pub wq: Mat<T>,
    pub wk: Mat<T>,
    pub wv: Mat<T>,
    pub wo: Mat<T>,
    pub ffn_norm: Vec<T>,
    pub w_gate: Mat<T>,
    pub w_up: Mat<T>,
    pub w_down: Mat<T>,
}

#[derive(Clone, Debug)]
pub struct Weights<T> {
    pub config: LlamaConfig,
    /// `[vocab][hidden]`; also the LM head when tied.
    pub tok_embd: Mat<T>,
    pub layers: Vec<LayerWeights<T>>,
    pub output_norm: Vec<T>,
    /// `[vocab][hidden]` when the head is not tied.
    pub output: Option<Mat<T>>,
}

impl<T: Float> Weights<T> {
    /// Every tensor mapped through `f`, keeping the structure (casts, zeroed gradients);
    /// a packed matrix is given to `f` dequantized, so the result is dense.
    pub fn map<U>(&self, f: impl Fn(&[T]) -> Vec<U>) -> Weights<U> {
        let m = |x: &Mat<T>| Mat::Dense(f(&x.values()));
        Weights {
            config: self.config.clone(),
            tok_embd: m(&self.tok_embd),
            layers: self
                .layers
                .iter()
                .map(|l| LayerWeights {
                    attn_norm: f(&l.attn_norm),
                    wq: m(&l.wq),
                    wk: m(&l.wk),
                    wv: m(&l.wv),
                    wo: m(&l.wo),
                    ffn_norm: f(&l.ffn_norm),
                    w_gate: m(&l.w_gate),
                    w_up: m(&l.w_up),
                    w_down: m(&l.w_down),
                })
                .collect(),
            output_norm: f(&self.output_norm),
            output: self.output.as_ref().map(m),
        }
    }

    /// Every matrix (embedding, head when untied, the blocks' projections), in order.
    pub fn matrices(&self) -> Vec<&Mat<T>> {
        let mut v = vec![&self.tok_embd];
        v.extend(&self.output);
        for l in &self.layers {
            v.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        }
        v
    }

    /// Bytes the weights hold (packed matrices at their packed size).
    pub fn bytes(&self) -> usize {
        let norms = self.output_norm.len()
            + self
                .layers
                .iter()
                .map(|l| l.attn_norm.len() + l.ffn_norm.len())
                .sum::<usize>();
        norms * std::mem::size_of::<T>() + self.matrices().iter().map(|m| m.bytes()).sum::<usize>()
    }

    /// The same weights in another precision (f64 for finite-difference checks).
    pub fn cast<U: Float>(&self) -> Weights<U> {
        let cast = |x: T| U::from(x.to_f64().unwrap_or(f64::NAN)).unwrap_or_else(U::nan);
        self.map(|v| v.iter().map(|&x| cast(x)).collect())
    }

    /// The LM head matrix `[vocab][hidden]`.
    pub fn head(&self) -> &Mat<T> {
        self.output.as_ref().unwrap_or(&self.tok_embd)
    }
}
