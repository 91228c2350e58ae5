//! The GGUF header parser. Files may be hostile: every count, length and offset is
//! checked against the bytes that remain before it is used or allocated for, and all
//! arithmetic on file values is checked.

use std::collections::HashMap;

use super::quant;
use super::{GgmlType, GgufError, GgufErrorKind, TensorInfo, Value};

/// The most tensors, keys or array items a real file holds (the largest models have a few
/// thousand tensors): a count above it that passes the file's end is corrupt, not cut short.
const PLAUSIBLE_COUNT: u64 = 1 << 20;
/// The largest file the tensors may say they need for a shortfall to read as a file cut
/// short (1 TiB); beyond it, an offset is corrupt.
const PLAUSIBLE_FILE_BYTES: u64 = 1 << 40;

/// Used when `general.alignment` is absent (the GGUF default).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Arrays may hold arrays; this bounds the recursion (llama.cpp itself allows none).
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Most array elements in all the metadata together. Each decoded [`Value`] takes up to
/// 32 bytes for 1 byte of file, so this caps that blow-up (512 MiB) while leaving room for
/// any real vocabulary (SmolLM2 has about 150k elements, 256k-token vocabularies 800k).
pub const MAX_METADATA_ARRAY_ELEMS: u64 = 1 << 24;

/// Smallest possible encodings, used to reject counts no file of this size can hold.
const MIN_KV_BYTES: u64 = 8 + 4 + 1; // key length, value type, 1-byte value
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 8 + 4 + 8; // name length, n_dims, 1 dim, type, offset
/// The densest supported type (Q4_0: 32 weights in 18 bytes) holds fewer than 2 elements
/// per byte, so a tensor with more than `2 × file length` elements cannot fit.
const MAX_ELEMS_PER_BYTE: u64 = 2;

/// A parsed GGUF header. Tensor data stays in the caller's bytes (see [`Gguf::tensor_data`]).
///
/// `metadata` and `tensors` are in file order; lookups by name go through indexes built at
/// parse time, so do not edit those two vectors if you still use [`Gguf::get`]/[`Gguf::tensor`].
#[derive(Clone, Debug)]
pub struct Gguf {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    /// Start of the data section (absolute, aligned).
    pub data_offset: u64,
    /// Length of the file that was parsed.
    pub file_len: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

fn err(offset: u64, what: GgufErrorKind) -> GgufError {
    GgufError { offset, what }
}

fn bad_tensor(offset: u64, tensor: &str, why: String) -> GgufError {
    err(
        offset,
        GgufErrorKind::BadTensor {
            tensor: tensor.to_owned(),
            why,
        },
    )
}

/// A bounds-checked little-endian reader over the file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array elements still allowed (see [`MAX_METADATA_ARRAY_ELEMS`]).
    elems_left: u64,
}

impl<'a> Cursor<'a> {
    fn pos(&self) -> u64 {
        self.pos as u64
    }

    fn len(&self) -> u64 {
        self.buf.len() as u64
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    /// The next `n` bytes, or Truncated (at the current position) naming `field`.
    fn take(&mut self, n: u64, field: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let rem = self.remaining();
        let truncated = |need| {
            err(
                self.pos(),
                GgufErrorKind::Truncated {
                    field: field(),
                    need,
                },
            )
        };
        if n > rem {
            return Err(truncated(n - rem));
        }
        // n ≤ remaining, so it fits in usize and the range is inside the buffer.
        let end = self.pos.saturating_add(n as usize);
        let s = self.buf.get(self.pos..end).ok_or_else(|| truncated(n))?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, field: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let at = self.pos();
        let s = self.take(N as u64, field)?;
        <[u8; N]>::try_from(s).map_err(|_| {
            err(
                at,
                GgufErrorKind::Truncated {
                    field: field(),
                    need: N as u64,
                },
            )
        })
    }

    fn u8(&mut self, field: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &dyn Fn() -> String) -> Result<u16, GgufError> {
        self.array(field).map(u16::from_le_bytes)
    }
    fn u32(&mut self, field: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(field).map(u32::from_le_bytes)
    }
    fn u64(&mut self, field: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(field).map(u64::from_le_bytes)
    }

    /// A count that, with each item taking at least `min_item` bytes, must fit in the bytes
    /// that remain: beyond them, a count a real file could hold ([`PLAUSIBLE_COUNT`]) means
    /// the file was cut short (Truncated), a larger one a corrupt header (Absurd; both at
    /// `at`, where the count was read).
    fn check_count(
        &self,
        at: u64,
        count: u64,
        min_item: u64,
        field: &dyn Fn() -> String,
    ) -> Result<usize, GgufError> {
        let absurd = || {
            err(
                at,
                GgufErrorKind::Absurd {
                    field: field(),
                    value: count,
                },
            )
        };
        match count.checked_mul(min_item) {
            Some(n) if n <= self.remaining() => usize::try_from(count).map_err(|_| absurd()),
            Some(n) if count <= PLAUSIBLE_COUNT => Err(err(
                at,
                GgufErrorKind::Truncated {
                    field: field(),
                    need: n - self.remaining(),
                },
            )),
            _ => Err(absurd()),
        }
    }

    /// A string: u64 length then UTF-8 bytes. A length beyond the whole file is Absurd,
    /// one beyond the remaining bytes Truncated.
    fn string(&mut self, field: &dyn Fn() -> String) -> Result<String, GgufError> {
        let at = self.pos();
        let len = self.u64(&|| format!("length of {}", field()))?;
        if len > self.len() {
            return Err(err(
                at,
                GgufErrorKind::Absurd {
                    field: format!("length of {}", field()),
                    value: len,
                },
            ));
        }
        let bytes = self.take(len, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(err(at, GgufErrorKind::InvalidUtf8 { field: field() })),
        }
    }
}

/// Smallest encoding of a value of type `ty`, or None for an unknown type.
fn min_value_bytes(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,     // string: its length
        9 => 4 + 8, // array: element type and count
        _ => return None,
    })
}

/// Reads a value of type `ty` (already read, at `ty_at`). `depth` is the number of arrays
/// around it; `key` names the metadata entry for error messages.
fn read_value(
    c: &mut Cursor<'_>,
    ty: u32,
    ty_at: u64,
    depth: u32,
    key: &str,
) -> Result<Value, GgufError> {
    let field = || format!("value of '{key}'");
    Ok(match ty {
        0 => Value::U8(c.u8(&field)?),
        1 => Value::I8(c.u8(&field)? as i8),
        2 => Value::U16(c.u16(&field)?),
        3 => Value::I16(c.u16(&field)? as i16),
        4 => Value::U32(c.u32(&field)?),
        5 => Value::I32(c.u32(&field)? as i32),
        6 => Value::F32(f32::from_bits(c.u32(&field)?)),
        7 => {
            let at = c.pos();
            match c.u8(&field)? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(err(at, GgufErrorKind::BadBool(b))),
            }
        }
        8 => Value::String(c.string(&field)?),
        9 => {
            let depth = depth + 1;
            if depth > MAX_ARRAY_DEPTH {
                return Err(err(ty_at, GgufErrorKind::TooDeep { depth }));
            }
            let elem_at = c.pos();
            let elem = c.u32(&|| format!("array element type of '{key}'"))?;
            let min = min_value_bytes(elem)
                .ok_or_else(|| err(elem_at, GgufErrorKind::UnknownValueType(elem)))?;
            let count_at = c.pos();
            let count = c.u64(&|| format!("array length of '{key}'"))?;
            let n = c.check_count(count_at, count, min, &|| format!("array length of '{key}'"))?;
            c.elems_left = c.elems_left.checked_sub(count).ok_or_else(|| {
                err(
                    count_at,
                    GgufErrorKind::Absurd {
                        field: format!("array length of '{key}' (too many elements in all)"),
                        value: count,
                    },
                )
            })?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(c, elem, elem_at, depth, key)?);
            }
            Value::Array(items)
        }
        10 => Value::U64(c.u64(&field)?),
        11 => Value::I64(c.u64(&field)? as i64),
        12 => Value::F64(f64::from_bits(c.u64(&field)?)),
        _ => return Err(err(ty_at, GgufErrorKind::UnknownValueType(ty))),
    })
}

/// A tensor-table entry before the data section's position is known.
struct RawTensor {
    info: TensorInfo,
    /// Offset field's relative value and where it was read, for later errors.
    rel: u64,
    rel_at: u64,
}

/// Where the tensors' data ends (relative to the data section) when they lie end to end
/// from its start, each at the next multiple of the alignment after the one before; None
/// when they do not (or a sum overflows).
fn contiguous_end(raw: &[RawTensor], alignment: u64) -> Option<u64> {
    let mut spans: Vec<(u64, u64)> = raw.iter().map(|t| (t.rel, t.info.n_bytes)).collect();
    spans.sort_unstable();
    let mut end = 0u64;
    for (i, &(rel, n)) in spans.iter().enumerate() {
        let expect = if i == 0 {
            0
        } else {
            end.checked_next_multiple_of(alignment)?
        };
        if rel != expect {
            return None;
        }
        end = rel.checked_add(n)?;
    }
    (!spans.is_empty()).then_some(end)
}

fn read_tensor_info(c: &mut Cursor<'_>, i: usize, alignment: u64) -> Result<RawTensor, GgufError> {
    let file_len = c.len();
    let name = c.string(&|| format!("name of tensor #{i}"))?;
    let f = |what: &str| format!("{what} of tensor '{name}'");

    let nd_at = c.pos();
    let n_dims = c.u32(&|| f("n_dims"))?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(bad_tensor(
            nd_at,
            &name,
            format!("n_dims = {n_dims} (must be 1 to {MAX_DIMS})"),
        ));
    }
    let dims_at = c.pos();
    let mut dims = Vec::with_capacity(n_dims as usize);
    let mut n_elems = 1u64;
    for d in 0..n_dims {
        let at = c.pos();
        let dim = c.u64(&|| f("dims"))?;
        if dim == 0 {
            return Err(bad_tensor(at, &name, format!("dims[{d}] is 0")));
        }
        n_elems = n_elems
            .checked_mul(dim)
            .filter(|&n| n <= file_len.saturating_mul(MAX_ELEMS_PER_BYTE))
            .ok_or_else(|| {
                err(
                    at,
                    GgufErrorKind::Absurd {
                        field: format!("dims[{d}] of tensor '{name}'"),
                        value: dim,
                    },
                )
            })?;
        dims.push(dim);
    }

    let ty_at = c.pos();
    let ty_id = c.u32(&|| f("type"))?;
    let ty = GgmlType::from_id(ty_id).ok_or_else(|| {
        err(
            ty_at,
            GgufErrorKind::UnsupportedTensorType {
                tensor: name.clone(),
                ty: ty_id,
            },
        )
    })?;
    let block = ty.block_elems() as u64;
    if dims.first().is_none_or(|d0| d0 % block != 0) {
        return Err(bad_tensor(
            dims_at,
            &name,
            format!(
                "dims[0] = {} is not a multiple of the {} block size {block}",
                dims.first().copied().unwrap_or(0),
                ty.name()
            ),
        ));
    }
    let n_bytes = quant::n_bytes(ty, n_elems)
        .filter(|&n| n <= file_len)
        .ok_or_else(|| {
            bad_tensor(
                dims_at,
                &name,
                format!("{n_elems} {} elements do not fit in the file", ty.name()),
            )
        })?;

    let rel_at = c.pos();
    let rel = c.u64(&|| f("offset"))?;
    if rel % alignment != 0 {
        return Err(bad_tensor(
            rel_at,
            &name,
            format!("offset {rel} is not a multiple of the alignment {alignment}"),
        ));
    }
    Ok(RawTensor {
        info: TensorInfo {
            name,
            dims,
            ty,
            offset: 0,
            n_bytes,
        },
        rel,
        rel_at,
    })
}

/// The `general.alignment` value: a power-of-two unsigned integer.
fn alignment_of(v: &Value, at: u64) -> Result<u64, GgufError> {
    match v {
        Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => {}
        _ => {
            return Err(err(
                at,
                GgufErrorKind::WrongValueType {
                    key: "general.alignment".into(),
                    expected: "an unsigned integer",
                    found: v.type_name(),
                },
            ))
        }
    }
    let a = v.as_u64().unwrap_or(0);
    if a.is_power_of_two() {
        Ok(a)
    } else {
        Err(err(at, GgufErrorKind::BadAlignment(a)))
    }
}

impl Gguf {
    /// Parses the header of a GGUF v2/v3 file and checks every tensor's extent against
    /// `bytes`. The error says what is wrong and at which byte offset.
    pub fn parse(bytes: &[u8]) -> Result<Gguf, GgufError> {
        Self::parse_with_budget(bytes, MAX_METADATA_ARRAY_ELEMS)
    }

    /// [`Gguf::parse`] with a given metadata array-element budget (small in tests).
    fn parse_with_budget(bytes: &[u8], max_array_elems: u64) -> Result<Gguf, GgufError> {
        let mut c = Cursor {
            buf: bytes,
            pos: 0,
            elems_left: max_array_elems,
        };
        let file_len = c.len();

        let magic: [u8; 4] = c.array(&|| "magic".into())?;
        if &magic != b"GGUF" {
            return Err(err(0, GgufErrorKind::BadMagic(magic)));
        }
        let version = c.u32(&|| "version".into())?;
        if version != 2 && version != 3 {
            return Err(err(4, GgufErrorKind::UnsupportedVersion(version)));
        }
        let tc_at = c.pos();
        let tensor_count = c.u64(&|| "tensor count".into())?;
        let kc_at = c.pos();
        let kv_count = c.u64(&|| "metadata count".into())?;
        // Both tables follow; each must fit in what remains on its own.
        c.check_count(tc_at, tensor_count, MIN_TENSOR_INFO_BYTES, &|| {
            "tensor count".into()
        })?;
        let n_kv = c.check_count(kc_at, kv_count, MIN_KV_BYTES, &|| "metadata count".into())?;

        let mut metadata = Vec::with_capacity(n_kv);
        let mut key_index = HashMap::with_capacity(n_kv);
        let mut alignment = DEFAULT_ALIGNMENT;
        for i in 0..n_kv {
            let key_at = c.pos();
            let key = c.string(&|| format!("metadata key #{i}"))?;
            if key_index.contains_key(&key) {
                return Err(err(key_at, GgufErrorKind::DuplicateKey(key)));
            }
            let ty_at = c.pos();
            let ty = c.u32(&|| format!("value type of '{key}'"))?;
            let val_at = c.pos();
            let value = read_value(&mut c, ty, ty_at, 0, &key)?;
            if key == "general.alignment" {
                alignment = alignment_of(&value, val_at)?;
            }
            key_index.insert(key.clone(), i);
            metadata.push((key, value));
        }

        // Re-checked against what remains after the metadata, before allocating.
        let n_tensors = c.check_count(tc_at, tensor_count, MIN_TENSOR_INFO_BYTES, &|| {
            "tensor count".into()
        })?;
        let mut raw = Vec::with_capacity(n_tensors);
        let mut tensor_index = HashMap::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name_at = c.pos();
            let t = read_tensor_info(&mut c, i, alignment)?;
            if tensor_index.contains_key(&t.info.name) {
                return Err(err(name_at, GgufErrorKind::DuplicateTensor(t.info.name)));
            }
            tensor_index.insert(t.info.name.clone(), i);
            raw.push(t);
        }

        // The data section starts at the next multiple of the alignment. With no tensors
        // the file may end before it (llama.cpp does not require that padding).
        let info_end = c.pos();
        let data_offset = info_end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| err(info_end, GgufErrorKind::BadAlignment(alignment)))?;

        // The tensors laid end to end from the data section's start (as writers lay them)
        // and the last one ending past the file: a file cut short, said as such rather than
        // as one tensor's bad offset (a corrupt offset breaks the layout).
        if let Some(expected) = contiguous_end(&raw, alignment)
            .and_then(|end| data_offset.checked_add(end))
            .filter(|&e| e > file_len && e <= PLAUSIBLE_FILE_BYTES)
        {
            return Err(err(
                file_len,
                GgufErrorKind::TruncatedFile {
                    expected,
                    actual: file_len,
                },
            ));
        }
        for t in &mut raw {
            let start = data_offset.checked_add(t.rel);
            let end = start.and_then(|s| s.checked_add(t.info.n_bytes));
            match (start, end) {
                (Some(s), Some(e)) if e <= file_len => t.info.offset = s,
                _ => {
                    return Err(bad_tensor(
                        t.rel_at,
                        &t.info.name,
                        format!(
                            "data at {data_offset} + {} ({} bytes) runs past the end of the file ({file_len} bytes)",
                            t.rel, t.info.n_bytes
                        ),
                    ))
                }
            }
        }
        let mut order: Vec<usize> = (0..raw.len()).collect();
        order.sort_by_key(|&i| raw.get(i).map_or(0, |t| t.info.offset));
        for w in order.windows(2) {
            if let (Some(a), Some(b)) = (
                w.first().and_then(|&i| raw.get(i)),
                w.get(1).and_then(|&i| raw.get(i)),
            ) {
                // Both ends were checked above, so this cannot overflow.
                let a_end = a.info.offset.saturating_add(a.info.n_bytes);
                if a_end > b.info.offset {
                    return Err(bad_tensor(
                        b.rel_at,
                        &b.info.name,
                        format!("data overlaps tensor '{}'", a.info.name),
                    ));
                }
            }
        }

        Ok(Gguf {
            version,
            alignment,
            metadata,
            tensors: raw.into_iter().map(|t| t.info).collect(),
            data_offset,
            file_len,
            key_index,
            tensor_index,
        })
    }

    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.key_index.get(key)?;
        self.metadata.get(i).map(|(_, v)| v)
    }

    /// A tensor's table entry by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.tensor_index.get(name)?;
        self.tensors.get(i)
    }

    fn tensor_or_missing(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        // There is no place in the file to point at: offset 0.
        self.tensor(name)
            .ok_or_else(|| err(0, GgufErrorKind::MissingTensor(name.to_owned())))
    }

    /// The raw encoded bytes of a tensor. `bytes` should be the file that was parsed; a
    /// shorter one gives Truncated rather than a panic.
    pub fn tensor_data<'a>(&self, bytes: &'a [u8], name: &str) -> Result<&'a [u8], GgufError> {
        let t = self.tensor_or_missing(name)?;
        let range = usize::try_from(t.offset)
            .ok()
            .zip(usize::try_from(t.offset.saturating_add(t.n_bytes)).ok())
            .and_then(|(s, e)| bytes.get(s..e));
        range.ok_or_else(|| {
            err(
                t.offset,
                GgufErrorKind::Truncated {
                    field: format!("data of tensor '{name}'"),
                    need: t
                        .offset
                        .saturating_add(t.n_bytes)
                        .saturating_sub(bytes.len() as u64),
                },
            )
        })
    }

    /// A tensor dequantized to f32, in file order (`dims[0]` fastest).
    pub fn tensor_f32(&self, bytes: &[u8], name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self.tensor_or_missing(name)?;
        let data = self.tensor_data(bytes, name)?;
        // n_bytes ≤ file length was checked at parse, which bounds the element count.
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad_tensor(t.offset, name, "element count overflows".into()))?;
        let mut out = vec![0.0f32; n];
        quant::dequantize(t.ty, data, &mut out).map_err(|why| bad_tensor(t.offset, name, why))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    fn small() -> Vec<u8> {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", Value::String("llama".into()));
        w.kv("n", Value::U32(5));
        w.tensor(
            "a",
            &[2, 2],
            GgmlType::F32,
            [1.0f32, 2.0, 3.0, 4.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        );
        w.tensor("b", &[32], GgmlType::Q8_0, vec![0; 34]);
        w.to_bytes()
    }

    #[test]
    fn parses_what_the_writer_wrote() {
        let b = small();
        let g = Gguf::parse(&b).unwrap();
        assert_eq!((g.version, g.alignment, g.tensors.len()), (3, 32, 2));
        assert_eq!(g.get("n"), Some(&Value::U32(5)));
        assert_eq!(
            g.get("general.architecture").and_then(Value::as_str),
            Some("llama")
        );
        assert_eq!(g.get("missing"), None);
        assert_eq!(g.data_offset % 32, 0);
        assert_eq!(g.tensor_f32(&b, "a").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(g.tensor_f32(&b, "b").unwrap(), vec![0.0; 32]);
        let b_info = g.tensor("b").unwrap();
        assert_eq!((b_info.offset - g.data_offset, b_info.n_bytes), (32, 34));
    }

    #[test]
    fn missing_tensor_and_short_bytes_are_errors() {
        let b = small();
        let g = Gguf::parse(&b).unwrap();
        let e = g.tensor_f32(&b, "nope").unwrap_err();
        assert_eq!(e.what, GgufErrorKind::MissingTensor("nope".into()));
        let e = g.tensor_data(&b[..b.len() - 40], "b").unwrap_err();
        assert!(matches!(e.what, GgufErrorKind::Truncated { .. }), "{e}");
    }

    #[test]
    fn error_display_names_offset() {
        let e = Gguf::parse(b"GGUF\x01\0\0\0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "GGUF unsupported version 1 (2 and 3 are supported) at byte 4"
        );
    }

    #[test]
    fn array_element_budget_is_enforced() {
        // Two arrays of u8 that fit the file but together exceed the budget.
        const BUDGET: u64 = 100;
        let half = (BUDGET / 2 + 1) as usize;
        let mut w = GgufWriter::new();
        w.kv("a", Value::Array(vec![Value::U8(0); half]));
        w.kv("b", Value::Array(vec![Value::U8(0); half]));
        let b = w.to_bytes();
        assert!(Gguf::parse(&b).is_ok());
        let e = Gguf::parse_with_budget(&b, BUDGET).unwrap_err();
        assert!(matches!(e.what, GgufErrorKind::Absurd { .. }), "{e}");
        let b_count_at = 24 + (8 + 1 + 4 + 4 + 8) + half + (8 + 1 + 4 + 4);
        assert_eq!(e.offset, b_count_at as u64);
    }

    #[test]
    fn every_prefix_is_an_error() {
        let b = small();
        for n in 0..b.len() - 30 {
            // The last tensor's 34 bytes are followed by 30 bytes of padding.
            assert!(Gguf::parse(&b[..n]).is_err(), "prefix {n}");
        }
    }
}
