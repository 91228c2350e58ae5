//! GGUF reader against valid and hostile files, through the public API only.
//!
//! A valid file built with `GgufWriter` must parse back identically; every malformed
//! variant must give the specific `GgufErrorKind` at a sensible byte offset, and no input
//! (truncated, corrupted at random) may panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use edge_llm::gguf::quant::{dequantize, quantize};
use edge_llm::gguf::{GgmlType, Gguf, GgufError, GgufErrorKind, GgufWriter, Value};

/// Random-corruption iterations; each parses a ~2 KB file, so this stays fast.
const CORRUPTION_ITERS: u64 = 4000;
const CORRUPTION_SEED: u64 = 0x9E37_79B9_7F4A_7C15;
const HEADER_LEN: usize = 24;

/// A tiny xorshift64 so the random tests need no extra dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn f32(&mut self) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// Every value type: scalars, strings, arrays of each scalar type, arrays of strings,
/// empty arrays and arrays nested up to three deep.
fn all_values() -> Vec<(String, Value)> {
    let scalars = vec![
        ("u8", Value::U8(200)),
        ("i8", Value::I8(-5)),
        ("u16", Value::U16(65000)),
        ("i16", Value::I16(-30000)),
        ("u32", Value::U32(4_000_000_000)),
        ("i32", Value::I32(-2_000_000_000)),
        ("u64", Value::U64(u64::MAX)),
        ("i64", Value::I64(i64::MIN)),
        ("f32", Value::F32(1.5)),
        ("f64", Value::F64(-2.25e300)),
        ("bool_t", Value::Bool(true)),
        ("bool_f", Value::Bool(false)),
        ("str", s("héllo ✓")),
        ("str_empty", s("")),
    ];
    let mut kv: Vec<(String, Value)> = vec![("general.architecture".into(), s("llama"))];
    for (k, v) in &scalars {
        kv.push((format!("t.{k}"), v.clone()));
        kv.push((
            format!("t.arr_{k}"),
            Value::Array(vec![v.clone(), v.clone()]),
        ));
    }
    kv.push((
        "t.arr_strings".into(),
        Value::Array(vec![s("<|im_start|>"), s(""), s("Ġthe"), s("日本")]),
    ));
    kv.push(("t.arr_empty".into(), Value::Array(vec![])));
    kv.push((
        "t.nested".into(),
        Value::Array(vec![
            Value::Array(vec![Value::U32(1), Value::U32(2)]),
            Value::Array(vec![]),
            Value::Array(vec![Value::U32(3)]),
        ]),
    ));
    kv.push((
        "t.nested_strings".into(),
        Value::Array(vec![
            Value::Array(vec![s("a"), s("bc")]),
            Value::Array(vec![s("d")]),
        ]),
    ));
    kv.push((
        "t.nested3".into(),
        Value::Array(vec![Value::Array(vec![Value::Array(vec![
            Value::I64(-1),
            Value::I64(2),
        ])])]),
    ));
    kv
}

struct TensorSpec {
    name: &'static str,
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// One tensor of each type. The last is 32 bytes of F32, so the file ends exactly where
/// its data ends (no trailing padding) and every proper prefix is missing real data.
fn all_tensors() -> Vec<TensorSpec> {
    let mut rng = XorShift(12345);
    let mut t = |name, dims: Vec<u64>, ty| {
        let n: u64 = dims.iter().product();
        let x: Vec<f32> = (0..n).map(|_| rng.f32() * 3.0).collect();
        let data = quantize(ty, &x).unwrap();
        TensorSpec {
            name,
            dims,
            ty,
            data,
        }
    };
    vec![
        t("t.q4_0", vec![64, 2], GgmlType::Q4_0),
        t("t.q4_1", vec![32, 3], GgmlType::Q4_1),
        t("t.q8_0", vec![32, 2], GgmlType::Q8_0),
        t("t.f16", vec![5, 3], GgmlType::F16),
        t("t.f16_4d", vec![2, 2, 2, 2], GgmlType::F16),
        t("t.f32", vec![4, 2], GgmlType::F32),
    ]
}

fn build(version: u32, kv: &[(String, Value)], tensors: &[TensorSpec]) -> Vec<u8> {
    let mut w = GgufWriter::new().version(version);
    for (k, v) in kv {
        w.kv(k, v.clone());
    }
    for t in tensors {
        w.tensor(t.name, &t.dims, t.ty, t.data.clone());
    }
    w.to_bytes()
}

fn valid(version: u32) -> Vec<u8> {
    build(version, &all_values(), &all_tensors())
}

fn parse_err(bytes: &[u8]) -> GgufError {
    match Gguf::parse(bytes) {
        Ok(_) => panic!("hostile file parsed"),
        Err(e) => e,
    }
}

/// Raw little-endian bytes for hand-made headers.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend(b);
        self
    }
    fn str(&mut self, v: &str) -> &mut Self {
        self.u64(v.len() as u64).bytes(v.as_bytes())
    }
    fn pos(&self) -> u64 {
        self.0.len() as u64
    }
    /// Pads with zeros so hostile counts are not rejected merely for a short file.
    fn padded(&self, len: usize) -> Vec<u8> {
        let mut b = self.0.clone();
        b.resize(b.len().max(len), 0);
        b
    }
}

/// Position of the tensor-info entry for `name` (its length prefix) in `b`.
fn info_at(b: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend(name.as_bytes());
    b.windows(needle.len())
        .rposition(|w| w == needle)
        .expect("tensor name in file")
}

/// Position of the offset field of tensor `name` with `n_dims` dims.
fn offset_field_at(b: &[u8], name: &str, n_dims: usize) -> usize {
    info_at(b, name) + 8 + name.len() + 4 + 8 * n_dims + 4
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn valid_files_round_trip_v2_and_v3() {
    let kv = all_values();
    let specs = all_tensors();
    for version in [2, 3] {
        let b = build(version, &kv, &specs);
        let g = Gguf::parse(&b).unwrap();
        assert_eq!(g.version, version);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.metadata, kv);
        for (k, v) in &kv {
            assert_eq!(g.get(k), Some(v), "{k}");
        }
        assert_eq!(g.data_offset % 32, 0);
        assert_eq!(g.file_len, b.len() as u64);
        assert_eq!(g.tensors.len(), specs.len());
        for (t, spec) in g.tensors.iter().zip(&specs) {
            assert_eq!(t.name, spec.name);
            assert_eq!(g.tensor(spec.name), Some(t));
            assert_eq!((&t.dims, t.ty), (&spec.dims, spec.ty));
            assert_eq!(t.offset % 32, 0);
            assert_eq!(g.tensor_data(&b, spec.name).unwrap(), &spec.data[..]);
            let mut want = vec![0.0; t.n_elements() as usize];
            dequantize(spec.ty, &spec.data, &mut want).unwrap();
            assert_eq!(g.tensor_f32(&b, spec.name).unwrap(), want);
        }
        let last = g.tensors.last().unwrap();
        assert_eq!(
            last.offset + last.n_bytes,
            b.len() as u64,
            "no trailing padding"
        );
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let mut kv = all_values();
    kv.push(("general.alignment".into(), Value::U32(64)));
    let b = build(3, &kv, &all_tensors());
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    assert!(g.tensors.iter().all(|t| t.offset % 64 == 0));
    assert_eq!(
        g.tensor_data(&b, "t.f32").unwrap(),
        &all_tensors()[5].data[..]
    );
}

#[test]
fn lookups_and_missing_tensor() {
    let b = valid(3);
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.get("nope"), None);
    assert!(g.tensor("nope").is_none());
    let e = g.tensor_f32(&b, "nope").unwrap_err();
    assert_eq!(e.what, GgufErrorKind::MissingTensor("nope".into()));
    let e = g.tensor_data(&b, "nope").unwrap_err();
    assert_eq!(e.what, GgufErrorKind::MissingTensor("nope".into()));
}

#[test]
fn metadata_only_file_parses() {
    let b = build(3, &all_values(), &[]);
    let g = Gguf::parse(&b).unwrap();
    assert!(g.tensors.is_empty());
}

#[test]
fn wrong_magic() {
    let mut b = valid(3);
    b[3] = b'G';
    let e = parse_err(&b);
    assert_eq!((e.offset, e.what), (0, GgufErrorKind::BadMagic(*b"GGUG")));
}

#[test]
fn unsupported_versions() {
    for v in [0, 1, 4, 99, u32::MAX] {
        let mut b = valid(3);
        b[4..8].copy_from_slice(&v.to_le_bytes());
        let e = parse_err(&b);
        assert_eq!(
            (e.offset, e.what),
            (4, GgufErrorKind::UnsupportedVersion(v))
        );
    }
}

#[test]
fn truncation_at_every_byte_is_an_error() {
    let b = valid(3);
    for n in 0..b.len() {
        let prefix = &b[..n];
        let e = catch_unwind(|| Gguf::parse(prefix))
            .unwrap_or_else(|_| panic!("panic on prefix {n}"))
            .err()
            .unwrap_or_else(|| panic!("prefix of {n} bytes parsed"));
        assert!(e.offset <= n as u64, "prefix {n}: {e}");
        assert!(
            matches!(
                e.what,
                GgufErrorKind::Truncated { .. }
                    | GgufErrorKind::TruncatedFile { .. }
                    | GgufErrorKind::Absurd { .. }
                    | GgufErrorKind::BadTensor { .. }
            ),
            "prefix {n}: {e}"
        );
    }
}

#[test]
fn huge_string_length() {
    // As a key.
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX);
    let e = parse_err(&r.padded(64));
    assert_eq!(e.offset, HEADER_LEN as u64);
    assert!(
        matches!(
            e.what,
            GgufErrorKind::Absurd {
                value: u64::MAX,
                ..
            }
        ),
        "{e}"
    );

    // As a value.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8);
    let at = r.pos();
    r.u64(u64::MAX);
    let e = parse_err(&r.padded(64));
    assert_eq!(e.offset, at);
    assert!(
        matches!(
            e.what,
            GgufErrorKind::Absurd {
                value: u64::MAX,
                ..
            }
        ),
        "{e}"
    );

    // Inside the file but past its end: Truncated.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(8);
    let at = r.pos();
    r.u64(40).bytes(b"short");
    let e = parse_err(&r.0);
    assert_eq!(e.offset, at + 8);
    assert!(
        matches!(e.what, GgufErrorKind::Truncated { need: 35, .. }),
        "{e}"
    );
}

#[test]
fn huge_array_count() {
    for elem_ty in [0u32, 8, 9] {
        let mut r = Raw::header(3, 0, 1);
        r.str("k").u32(9).u32(elem_ty);
        let at = r.pos();
        r.u64(1 << 60);
        let e = parse_err(&r.padded(4096));
        assert_eq!(e.offset, at);
        assert!(
            matches!(e.what, GgufErrorKind::Absurd { value, .. } if value == 1 << 60),
            "{e}"
        );
    }
    // u64::MAX elements of 8 bytes would overflow the size check itself.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(10).u64(u64::MAX);
    assert!(matches!(
        parse_err(&r.padded(64)).what,
        GgufErrorKind::Absurd { .. }
    ));
}

#[test]
fn huge_tensor_and_kv_counts() {
    let r = Raw::header(3, 1 << 62, 0);
    let e = parse_err(&r.padded(4096));
    assert_eq!(e.offset, 8);
    assert!(
        matches!(e.what, GgufErrorKind::Absurd { value, .. } if value == 1 << 62),
        "{e}"
    );

    let r = Raw::header(3, 0, 1 << 62);
    let e = parse_err(&r.padded(4096));
    assert_eq!(e.offset, 16);
    assert!(matches!(e.what, GgufErrorKind::Absurd { .. }), "{e}");

    // A count that fits the file but not once the metadata has been read.
    let mut b = valid(3);
    let count = (b.len() / 40) as u64;
    put_u64(&mut b, 8, count);
    assert!(Gguf::parse(&b).is_err());
}

/// A one-tensor file: name "w", given dims, type and offset, then `data_len` zero bytes.
fn one_tensor(n_dims: u32, dims: &[u64], ty: u32, offset: u64, data_len: usize) -> (Raw, u64) {
    let mut r = Raw::header(3, 1, 0);
    r.str("w");
    r.u32(n_dims);
    let dims_at = r.pos();
    for &d in dims {
        r.u64(d);
    }
    r.u32(ty).u64(offset);
    let pad = (32 - r.0.len() % 32) % 32;
    r.bytes(&vec![0; pad + data_len]);
    (r, dims_at)
}

#[test]
fn valid_one_tensor_file() {
    let (r, _) = one_tensor(2, &[4, 2], 0, 0, 32);
    let g = Gguf::parse(&r.0).unwrap();
    assert_eq!(g.tensor_f32(&r.0, "w").unwrap(), vec![0.0; 8]);
}

#[test]
fn huge_dim() {
    let (r, dims_at) = one_tensor(1, &[1 << 40], 0, 0, 64);
    let e = parse_err(&r.0);
    assert_eq!(e.offset, dims_at);
    assert!(
        matches!(e.what, GgufErrorKind::Absurd { value, .. } if value == 1 << 40),
        "{e}"
    );

    // Small leading dims, then one whose product with them overflows u64.
    let (r, dims_at) = one_tensor(4, &[16, 16, 1 << 62, 1 << 62], 0, 0, 64);
    let e = parse_err(&r.0);
    assert_eq!(e.offset, dims_at + 16);
    assert!(
        matches!(e.what, GgufErrorKind::Absurd { value, .. } if value == 1 << 62),
        "{e}"
    );

    // Fits as a count of elements but not as bytes in this file.
    let (r, dims_at) = one_tensor(1, &[64], 0, 0, 32);
    let e = parse_err(&r.0);
    assert_eq!(e.offset, dims_at);
    assert!(matches!(e.what, GgufErrorKind::BadTensor { .. }), "{e}");
}

#[test]
fn zero_dim() {
    let (r, dims_at) = one_tensor(2, &[4, 0], 0, 0, 32);
    let e = parse_err(&r.0);
    assert_eq!(e.offset, dims_at + 8);
    assert!(matches!(e.what, GgufErrorKind::BadTensor { .. }), "{e}");
}

#[test]
fn bad_n_dims() {
    for n in [0u32, 5, 9, u32::MAX] {
        let (r, dims_at) = one_tensor(n, &[4, 2], 0, 0, 32);
        let e = parse_err(&r.0);
        assert_eq!(e.offset, dims_at - 4, "n_dims {n}");
        assert!(matches!(e.what, GgufErrorKind::BadTensor { .. }), "{e}");
    }
}

#[test]
fn unknown_tensor_type() {
    for ty in [4u32, 7, 12, 0xFFFF] {
        let (r, dims_at) = one_tensor(1, &[32], ty, 0, 64);
        let e = parse_err(&r.0);
        assert_eq!(e.offset, dims_at + 8);
        assert_eq!(
            e.what,
            GgufErrorKind::UnsupportedTensorType {
                tensor: "w".into(),
                ty
            }
        );
    }
}

#[test]
fn block_size_must_divide_first_dim() {
    // 16 × 2 = 32 elements, one Q8_0 block in total but not along dims[0].
    let (r, dims_at) = one_tensor(2, &[16, 2], 8, 0, 64);
    let e = parse_err(&r.0);
    assert_eq!(e.offset, dims_at);
    assert!(matches!(e.what, GgufErrorKind::BadTensor { .. }), "{e}");
}

#[test]
fn unknown_value_type() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k");
    let at = r.pos();
    r.u32(13).u32(0);
    let e = parse_err(&r.padded(64));
    assert_eq!(
        (e.offset, e.what),
        (at, GgufErrorKind::UnknownValueType(13))
    );

    // As an array's element type.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9);
    let at = r.pos();
    r.u32(0xDEAD).u64(1);
    let e = parse_err(&r.padded(64));
    assert_eq!(
        (e.offset, e.what),
        (at, GgufErrorKind::UnknownValueType(0xDEAD))
    );
}

#[test]
fn tensor_offset_past_end() {
    for rel in [1 << 20, u64::MAX - 31] {
        let mut b = valid(3);
        let at = offset_field_at(&b, "t.f32", 2);
        put_u64(&mut b, at, rel);
        let e = parse_err(&b);
        assert_eq!(e.offset, at as u64);
        assert!(
            matches!(&e.what, GgufErrorKind::BadTensor { tensor, .. } if tensor == "t.f32"),
            "{e}"
        );
    }
}

#[test]
fn misaligned_offset() {
    let mut b = valid(3);
    let at = offset_field_at(&b, "t.q8_0", 2);
    put_u64(&mut b, at, 1);
    let e = parse_err(&b);
    assert_eq!(e.offset, at as u64);
    assert!(
        matches!(&e.what, GgufErrorKind::BadTensor { tensor, .. } if tensor == "t.q8_0"),
        "{e}"
    );
}

#[test]
fn overlapping_tensors() {
    let mut b = valid(3);
    let at = offset_field_at(&b, "t.q4_1", 2);
    put_u64(&mut b, at, 0); // same start as t.q4_0
    let e = parse_err(&b);
    assert_eq!(e.offset, at as u64);
    match &e.what {
        GgufErrorKind::BadTensor { tensor, why } => {
            assert_eq!(tensor, "t.q4_1");
            assert!(why.contains("t.q4_0"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn duplicates() {
    let mut w = GgufWriter::new();
    w.kv("a", Value::U8(1))
        .kv("b", Value::U8(2))
        .kv("a", Value::U8(3));
    let b = w.to_bytes();
    let e = parse_err(&b);
    // Header, then "a" (8+1+4+1 bytes) and "b" (14 bytes).
    assert_eq!(
        (e.offset, e.what),
        (24 + 28, GgufErrorKind::DuplicateKey("a".into()))
    );

    let mut w = GgufWriter::new();
    w.tensor("x", &[1], GgmlType::F32, vec![0; 4]);
    w.tensor("x", &[1], GgmlType::F32, vec![0; 4]);
    let b = w.to_bytes();
    let e = parse_err(&b);
    assert_eq!(e.offset, info_at(&b, "x") as u64);
    assert_eq!(e.what, GgufErrorKind::DuplicateTensor("x".into()));
}

#[test]
fn bad_alignment_values() {
    for a in [0u32, 3, 48] {
        let mut w = GgufWriter::new();
        w.kv("general.alignment", Value::U32(a));
        w.tensor("x", &[1], GgmlType::F32, vec![0; 4]);
        let e = parse_err(&w.to_bytes());
        // Header + key (8 + 17) + type (4).
        assert_eq!(
            (e.offset, e.what),
            (24 + 29, GgufErrorKind::BadAlignment(a as u64))
        );
    }
    let mut w = GgufWriter::new();
    w.kv("general.alignment", s("32"));
    let e = parse_err(&w.to_bytes());
    assert!(
        matches!(e.what, GgufErrorKind::WrongValueType { .. }),
        "{e}"
    );
}

#[test]
fn invalid_utf8() {
    let mut r = Raw::header(3, 0, 1);
    r.u64(2).bytes(&[0xFF, 0xFE]).u32(0).bytes(&[0]);
    let e = parse_err(&r.0);
    assert_eq!(e.offset, 24);
    assert!(matches!(e.what, GgufErrorKind::InvalidUtf8 { .. }), "{e}");

    // Inside an array of strings.
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(9).u32(8).u64(2).str("ok");
    let at = r.pos();
    r.u64(3).bytes(&[b'a', 0xC3, b'(']);
    let e = parse_err(&r.0);
    assert_eq!(e.offset, at);
    assert!(matches!(e.what, GgufErrorKind::InvalidUtf8 { .. }), "{e}");

    // In a tensor name.
    let mut b = valid(3);
    let at = info_at(&b, "t.f16");
    b[at + 8] = 0x80;
    let e = parse_err(&b);
    assert_eq!(e.offset, at as u64);
    assert!(matches!(e.what, GgufErrorKind::InvalidUtf8 { .. }), "{e}");
}

#[test]
fn bool_byte_two() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(7);
    let at = r.pos();
    r.bytes(&[2]);
    let e = parse_err(&r.0);
    assert_eq!((e.offset, e.what), (at, GgufErrorKind::BadBool(2)));
}

#[test]
fn nesting_depth_is_limited() {
    fn nest(depth: usize) -> Value {
        (0..depth).fold(Value::U8(7), |v, _| Value::Array(vec![v]))
    }
    let mut w = GgufWriter::new();
    w.kv("ok", nest(4));
    let g = Gguf::parse(&w.to_bytes()).unwrap();
    assert_eq!(g.get("ok"), Some(&nest(4)));

    let mut w = GgufWriter::new();
    w.kv("deep", nest(5));
    let e = parse_err(&w.to_bytes());
    assert_eq!(e.what, GgufErrorKind::TooDeep { depth: 5 });
    assert!(e.offset > 24 && e.offset < 100, "{e}");
}

#[test]
fn random_corruption_never_panics() {
    let valid = valid(3);
    let data_offset = Gguf::parse(&valid).unwrap().data_offset as usize;
    let mut rng = XorShift(CORRUPTION_SEED);
    let (mut ok, mut failed) = (0u32, 0u32);
    for iter in 0..CORRUPTION_ITERS {
        let mut b = valid.clone();
        for _ in 0..1 + rng.below(4) {
            // Mostly the header, where the parser's decisions are made.
            let span = if rng.below(4) == 0 {
                b.len()
            } else {
                data_offset
            };
            let at = rng.below(span);
            b[at] ^= 1 + rng.below(255) as u8;
        }
        if rng.below(8) == 0 {
            b.truncate(rng.below(b.len()));
        }
        let result = catch_unwind(AssertUnwindSafe(|| match Gguf::parse(&b) {
            Ok(g) => {
                for t in &g.tensors {
                    let _ = g.tensor_f32(&b, &t.name);
                }
                for (k, _) in &g.metadata {
                    assert!(g.get(k).is_some());
                }
                true
            }
            Err(e) => {
                assert!(e.offset <= b.len() as u64, "offset past the file: {e}");
                false
            }
        }));
        match result {
            Ok(true) => ok += 1,
            Ok(false) => failed += 1,
            Err(_) => panic!("panic at corruption iteration {iter}"),
        }
    }
    println!("random corruption: {ok} parsed, {failed} rejected");
    assert!(failed > 0 && ok > 0);
}

/// The real model, when fetched (scripts put it under models/cache).
#[test]
fn real_model_header() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        if std::env::var_os("EDGE_LLM_REQUIRE_MODEL").is_some() {
            panic!(
                "EDGE_LLM_REQUIRE_MODEL is set but {} is missing",
                path.display()
            );
        }
        eprintln!("skipping real_model_header: {} not found", path.display());
        return;
    }
    let b = std::fs::read(&path).unwrap();
    let g = Gguf::parse(&b).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.tensors.len(), 272);

    let t = g.tensor("token_embd.weight").unwrap();
    assert_eq!((t.ty, &t.dims[..]), (GgmlType::Q8_0, &[576, 49152][..]));
    let t = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((t.ty, &t.dims[..]), (GgmlType::Q4_1, &[576, 576][..]));
    let t = g.tensor("output_norm.weight").unwrap();
    assert_eq!((t.ty, &t.dims[..]), (GgmlType::F32, &[576][..]));

    let tokens = g
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(tokens.len(), 49152);
    assert!(tokens.iter().all(|v| v.as_str().is_some()));
    assert_eq!(tokens[1].as_str(), Some("<|im_start|>"));
    let merges = g
        .get("tokenizer.ggml.merges")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(merges.len(), 48900);

    let norm = g.tensor_f32(&b, "output_norm.weight").unwrap();
    assert_eq!(norm.len(), 576);
    assert!(norm.iter().all(|v| v.is_finite()));
    let q = g.tensor_f32(&b, "blk.0.attn_q.weight").unwrap();
    assert!(q.iter().all(|v| v.is_finite()));
}

#[test]
fn a_file_cut_after_its_header_is_truncated_not_absurd() {
    // 272 tensors (SmolLM2's count) declared, the file ends 40 bytes later: cut short.
    let e = parse_err(&Raw::header(3, 272, 0).padded(64));
    assert!(matches!(e.what, GgufErrorKind::Truncated { .. }), "{e}");
    assert!(e.to_string().contains("ends too soon"), "{e}");
}

#[test]
fn a_file_cut_in_its_tensor_data_says_how_much_is_there() {
    let b = edge_llm::model::tiny::generate(&edge_llm::model::tiny::TinySpec::default()).unwrap();
    let cut = &b[..b.len() * 3 / 4];
    let e = parse_err(cut);
    assert_eq!(
        e.what,
        GgufErrorKind::TruncatedFile {
            expected: b.len() as u64,
            actual: cut.len() as u64
        },
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!(
            "the file has {} bytes but its tensors need {} (75 %",
            cut.len(),
            b.len()
        )),
        "{e}"
    );
}
