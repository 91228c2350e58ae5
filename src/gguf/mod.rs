//! GGUF: the llama.cpp model file format, versions 2 and 3.
//!
//! [`Gguf::parse`] reads the header (metadata and tensor table) from a byte slice, which is
//! what the browser has; on native targets `crate::model::ModelFile::open` reads the file
//! into memory first (this module does no file I/O, so it builds for wasm32 unchanged).
//! Every count, length and offset is checked against the bytes that remain before it is
//! used, so a truncated, corrupt or hostile file gives a [`GgufError`] naming the problem
//! and its byte offset, never a panic and never an allocation sized by an unchecked field.
//!
//! [`quant`] holds the block formats (F16, Q8_0, Q4_0, Q4_1) and [`write`] a writer used by
//! the tiny-model generator and the tests.

pub mod quant;
pub mod reader;
pub mod write;

pub use reader::Gguf;
pub use write::GgufWriter;

use std::fmt;

/// Tensor element types this project reads. Values are the ggml type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q8_0 = 8,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            _ => return None,
        })
    }
    /// Elements per block (1 for the float types).
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
        }
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
        }
    }
}

/// A metadata value. Arrays hold values of one type.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type that fits in u64 (negative values give None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::U64(v) => i64::try_from(v).ok(),
            Value::I64(v) => Some(v),
            _ => self.as_u64().map(|v| v as i64).or(match *self {
                Value::I8(v) => Some(v as i64),
                Value::I16(v) => Some(v as i64),
                Value::I32(v) => Some(v as i64),
                _ => None,
            }),
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// A short description of the type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (contiguous) dimension, so a 2-D weight
    /// `[out][in]` has `dims = [in, out]`.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the file (already made absolute and checked).
    pub offset: u64,
    /// Bytes of data, checked to lie inside the file.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// What went wrong while reading a GGUF file, and at which byte offset.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct GgufError {
    pub offset: u64,
    pub what: GgufErrorKind,
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.what {
            // Not a GGUF file at all (a text file, another format): said plainly, with
            // what it starts with where that is readable.
            GgufErrorKind::BadMagic(m) => {
                let start = if m.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                    format!("\"{}\"", String::from_utf8_lossy(m))
                } else {
                    format!("the bytes {m:02x?}")
                };
                write!(
                    f,
                    "not a GGUF model file: it starts with {start}, where a GGUF file starts \
                     with \"GGUF\""
                )
            }
            what => write!(f, "GGUF {what} at byte {}", self.offset),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum GgufErrorKind {
    /// The first four bytes are not "GGUF".
    BadMagic([u8; 4]),
    UnsupportedVersion(u32),
    /// Needed `need` more bytes to read `field` but the file ends.
    Truncated {
        field: String,
        need: u64,
    },
    /// The header is whole but the tensors' data runs past the end: the file was cut short.
    TruncatedFile {
        expected: u64,
        actual: u64,
    },
    /// A count or length larger than the file could possibly hold.
    Absurd {
        field: String,
        value: u64,
    },
    InvalidUtf8 {
        field: String,
    },
    UnknownValueType(u32),
    UnsupportedTensorType {
        tensor: String,
        ty: u32,
    },
    BadTensor {
        tensor: String,
        why: String,
    },
    DuplicateKey(String),
    DuplicateTensor(String),
    BadAlignment(u64),
    MissingTensor(String),
    /// A bool stored as a byte other than 0 or 1.
    BadBool(u8),
    /// Arrays nested deeper than the reader allows (a bound on recursion, not a format rule).
    TooDeep {
        depth: u32,
    },
    /// A key the reader interprets (e.g. `general.alignment`) has a value of the wrong type.
    WrongValueType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
}

impl fmt::Display for GgufErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "bad magic {m:02x?}"),
            Self::UnsupportedVersion(v) => {
                write!(f, "unsupported version {v} (2 and 3 are supported)")
            }
            Self::Truncated { field, need } => write!(
                f,
                "truncated: {field} needs {need} more bytes than the file has (the file \
                 ends too soon: a download or copy cut short?)"
            ),
            Self::TruncatedFile { expected, actual } => write!(
                f,
                "truncated: the file has {actual} bytes but its tensors need {expected} \
                 ({:.0} % of it is there: a download or copy cut short?)",
                100.0 * *actual as f64 / (*expected).max(1) as f64
            ),
            Self::Absurd { field, value } => write!(f, "absurd {field} = {value}"),
            Self::InvalidUtf8 { field } => write!(f, "invalid UTF-8 in {field}"),
            Self::UnknownValueType(t) => write!(f, "unknown metadata value type {t}"),
            Self::UnsupportedTensorType { tensor, ty } => {
                write!(f, "tensor '{tensor}' has unsupported type {ty}")
            }
            Self::BadTensor { tensor, why } => write!(f, "tensor '{tensor}': {why}"),
            Self::DuplicateKey(k) => write!(f, "duplicate metadata key '{k}'"),
            Self::DuplicateTensor(t) => write!(f, "duplicate tensor '{t}'"),
            Self::BadAlignment(a) => write!(f, "bad general.alignment {a}"),
            Self::MissingTensor(t) => write!(f, "missing tensor '{t}'"),
            Self::BadBool(b) => write!(f, "bool byte {b} (must be 0 or 1)"),
            Self::TooDeep { depth } => write!(f, "arrays nested {depth} deep (too deep)"),
            Self::WrongValueType {
                key,
                expected,
                found,
            } => {
                write!(f, "'{key}' is {found}, expected {expected}")
            }
        }
    }
}
