//! A GGUF writer for the tiny-model generator and the tests.
//!
//! It writes what it is given without validating it (duplicate keys, a bad
//! `general.alignment`, data of the wrong length), so tests can build hostile files with it;
//! parse the output with [`super::Gguf::parse`] to check it. The layout matches llama.cpp's
//! `gguf_write_to_file`: each tensor's data starts at an aligned offset and is padded with
//! zeros to the alignment, including the last one.

use super::{GgmlType, Value};

/// Used when `general.alignment` is not set (the GGUF default).
pub const DEFAULT_ALIGNMENT: u64 = 32;
const MAGIC: &[u8; 4] = b"GGUF";

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// Builds a GGUF file in memory: `new()`, then `kv`/`tensor` calls, then `to_bytes()`.
pub struct GgufWriter {
    version: u32,
    /// Padding unit for the data: `general.alignment` when set to a power of two, else 32.
    alignment: u64,
    kvs: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// Version 3, alignment 32, no metadata, no tensors.
    pub fn new() -> Self {
        Self {
            version: 3,
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// The header version: 2 or 3 (other values are written as given, for tests).
    pub fn version(mut self, v: u32) -> Self {
        self.version = v;
        self
    }

    /// Appends a metadata pair. Array elements must all have the first element's type
    /// (an empty array is written as an array of u8). Setting `general.alignment` to a
    /// power of two also changes the padding; any other value is written but ignored.
    pub fn kv(&mut self, key: &str, v: Value) -> &mut Self {
        if key == "general.alignment" {
            if let Some(a) = v.as_u64().filter(|a| a.is_power_of_two()) {
                self.alignment = a;
            }
        }
        self.kvs.push((key.to_owned(), v));
        self
    }

    /// Appends a tensor. `dims` are in GGUF order (`dims[0]` innermost); `data` is its raw
    /// encoded bytes (see [`super::quant::quantize`]).
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ty,
            data,
        });
        self
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kvs.len() as u64).to_le_bytes());
        for (k, v) in &self.kvs {
            write_str(&mut out, k);
            out.extend_from_slice(&value_type_id(v).to_le_bytes());
            write_value(&mut out, v);
        }
        let mut rel = 0u64;
        for t in &self.tensors {
            write_str(&mut out, &t.name);
            out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(t.ty as u32).to_le_bytes());
            out.extend_from_slice(&rel.to_le_bytes());
            rel = align_up(rel + t.data.len() as u64, self.alignment);
        }
        pad(&mut out, self.alignment);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
            pad(&mut out, self.alignment);
        }
        out
    }
}

/// `x` rounded up to a multiple of `a` (a power of two).
fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn pad(out: &mut Vec<u8>, alignment: u64) {
    let len = align_up(out.len() as u64, alignment) as usize;
    out.resize(len, 0);
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// The GGUF value type id of `v`.
pub fn value_type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// The payload of `v` (without its type id).
fn write_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            let elem = items.first().map_or(0, value_type_id);
            debug_assert!(
                items.iter().all(|i| value_type_id(i) == elem),
                "GGUF arrays hold one element type"
            );
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                write_value(out, i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_kv_layout() {
        let mut w = GgufWriter::new().version(2);
        w.kv("a", Value::U32(7));
        let b = w.to_bytes();
        let mut want = b"GGUF".to_vec();
        want.extend(2u32.to_le_bytes());
        want.extend(0u64.to_le_bytes()); // tensors
        want.extend(1u64.to_le_bytes()); // kvs
        want.extend(1u64.to_le_bytes());
        want.push(b'a');
        want.extend(4u32.to_le_bytes());
        want.extend(7u32.to_le_bytes());
        want.resize(64, 0); // 45 bytes padded to 32
        assert_eq!(b, want);
    }

    #[test]
    fn tensor_data_is_aligned_and_padded() {
        let mut w = GgufWriter::new();
        w.kv("general.alignment", Value::U32(64));
        w.tensor("x", &[3], GgmlType::F32, vec![1; 12]);
        w.tensor("y", &[1], GgmlType::F32, vec![2; 4]);
        let b = w.to_bytes();
        assert_eq!(b.len() % 64, 0);
        // Second tensor's relative offset (last 8 bytes of its info) is 64.
        let y_info = b
            .windows(9)
            .position(|s| s == b"\x01\0\0\0\0\0\0\0y")
            .unwrap();
        let off_at = y_info + 9 + 4 + 8 + 4;
        assert_eq!(b[off_at..off_at + 8], 64u64.to_le_bytes());
    }

    #[test]
    fn bad_alignment_is_written_but_not_used() {
        let mut w = GgufWriter::new();
        w.kv("general.alignment", Value::U32(3));
        w.tensor("x", &[1], GgmlType::F32, vec![0; 4]);
        assert_eq!(w.to_bytes().len() % 32, 0);
    }
}
