//! The CPU GEMM over packed weights (`cpu::sgemm_rows` through each format's `RowSource`)
//! against the format's own dequantizer and a plain f64 loop, for every format the CPU
//! engine reads in place: GGUF Q4_0/Q4_1/Q8_0/F16 blocks, the packed 2/3/4/8-bit
//! `QuantMatrix` (groups 32/64/128, symmetric and not), and 2:4 and unstructured sparse with
//! f32/int8/int4 values. Both orientations (x·Wᵀ and dy·W), overwriting (β = 0 over NaN)
//! and accumulating, C row-major and transposed, on shapes that divide no tile (depths past
//! one packed block, widths past one column block, the few-row dot path). Then the whole
//! model: the tiny model with its Q4_1/Q8_0 (and compressed) matrices held packed gives the
//! losses, logits and LoRA gradients of the same model dequantized to f32.

mod common;

use edge_llm::cpu::{sgemm_rows, DenseRows, Op, RowSource};
use edge_llm::formats::packed::Packed;
use edge_llm::formats::quant::{quantize, GgufBlockMatrix};
use edge_llm::formats::rows::{CpuWeight, GgufRows};
use edge_llm::formats::sparse::{
    prune_magnitude, prune_magnitude_2of4, Sparse24Matrix, UnstructuredMatrix, ValueType,
};
use edge_llm::gguf::{quant as gq, GgmlType};
use edge_llm::model::{Mat, Storage};
use edge_llm::reference::{Lora, Transformer};
use edge_llm::tolerance::Tol;

/// |got − want| ≤ rel·(|α|·Σₚ|aᵢₚ·bₚⱼ| + |β·c|): the bound of tests/cpu_gemm.rs (f32
/// products summed in blocks of ≤ 384 with FMA), since the decoded panels are f32 values
/// the plain loop reads too; a wrong block, offset or scale gives errors of the order of
/// the scale.
const GEMM_TOL: Tol<f64> = Tol::relative(1e-5);

/// W shapes (rows, cols): cols multiples of 32 for the GGUF blocks; rows 401 and cols 416
/// pass one depth block (KC 384), cols 800 one column block (NC 768), rows 770 both ways.
const GGUF_SHAPES: [(usize, usize); 6] = [
    (1, 32),
    (17, 96),
    (33, 416),
    (401, 64),
    (13, 800),
    (770, 32),
];
/// The other formats take any width.
const SHAPES: [(usize, usize); 6] = [(1, 1), (17, 50), (33, 417), (401, 37), (13, 801), (5, 3)];
/// Rows of A: 1–4 take the dot path of x·Wᵀ, the rest the packed GEMM.
const MS: [usize; 4] = [1, 3, 5, 70];

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Checks `sgemm_rows` over `w` against the plain loop over `dense` (its dequantized
/// values), every orientation, β and C layout, for every m.
fn check_source(name: &str, w: &dyn RowSource, dense: &[f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    assert_eq!(dense.len(), rows * cols, "{name}: dequantized size");
    for op in [Op::Nt, Op::Nn] {
        for m in MS {
            // C = α·A·op(W) + β·C: A m×k, C m×n.
            let (k, n) = match op {
                Op::Nt => (cols, rows),
                Op::Nn => (rows, cols),
            };
            let b = |p: usize, j: usize| match op {
                Op::Nt => dense[j * cols + p],
                Op::Nn => dense[p * cols + j],
            } as f64;
            let a = values(m * k, (m * 7 + k) as u64);
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.0), (-1.0, 0.25)] {
                for c_transposed in [false, true] {
                    let (rsc, csc) = if c_transposed { (1, m) } else { (n, 1) };
                    let c0 = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        values(m * n, 5)
                    };
                    let mut c = c0.clone();
                    sgemm_rows(
                        op,
                        m,
                        alpha,
                        (&a, k as isize, 1),
                        w,
                        beta,
                        (&mut c, rsc as isize, csc as isize),
                    );
                    for i in 0..m {
                        for j in 0..n {
                            let (mut sum, mut scale) = (0f64, 0f64);
                            for p in 0..k {
                                let prod = a[i * k + p] as f64 * b(p, j);
                                sum += prod;
                                scale += prod.abs();
                            }
                            let old = if beta == 0.0 {
                                0.0
                            } else {
                                beta as f64 * c0[i * rsc + j * csc] as f64
                            };
                            let want = alpha as f64 * sum + old;
                            let scale = alpha.abs() as f64 * scale + old.abs();
                            let got = c[i * rsc + j * csc] as f64;
                            assert!(
                                GEMM_TOL.allows((got - want).abs(), scale),
                                "{name} {op:?} m {m} {rows}×{cols} α {alpha} β {beta} \
                                 c_transposed {c_transposed}: C[{i}][{j}] = {got}, want {want}"
                            );
                        }
                    }
                }
            }
        }
    }
    // Row segments at every offset class (inside a block, across blocks, to the end)
    // decode to exactly the dequantized values.
    let mut out = vec![0.0f32; cols];
    for r in [0, rows / 2, rows - 1] {
        for (c0, len) in [
            (0, cols),
            (cols / 3, cols - cols / 3),
            (1, cols / 2),
            (cols - 1, 1),
        ] {
            if c0 + len > cols || len == 0 {
                continue;
            }
            w.row_into(r, c0, &mut out[..len]);
            let want = &dense[r * cols + c0..r * cols + c0 + len];
            assert!(
                out[..len]
                    .iter()
                    .zip(want)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{name}: row {r} columns {c0}..{} differ from the dequantized values",
                c0 + len
            );
        }
    }
}

#[test]
fn dense_rows_match_the_plain_loop() {
    for (rows, cols) in SHAPES {
        let w = values(rows * cols, 3);
        check_source("dense", &DenseRows { w: &w, rows, cols }, &w);
    }
}

#[test]
fn gguf_blocks_match_the_readers_dequantizer() {
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_1,
        GgmlType::Q4_0,
        GgmlType::F16,
    ] {
        for (rows, cols) in GGUF_SHAPES {
            let w = values(rows * cols, (rows + cols) as u64);
            let bytes = gq::quantize(ty, &w).unwrap();
            let mut dense = vec![0.0f32; rows * cols];
            gq::dequantize(ty, &bytes, &mut dense).unwrap();
            if ty != GgmlType::F16 {
                // The GPU's block reader agrees on what the blocks hold.
                let g = GgufBlockMatrix::from_bytes(ty, rows, cols, &bytes).unwrap();
                assert_eq!(g.dequantize().unwrap(), dense);
            }
            let src = GgufRows::new(ty, rows, cols, bytes).unwrap();
            check_source(&format!("{} {rows}×{cols}", ty.name()), &src, &dense);
            let cw = CpuWeight::Gguf(src);
            assert_eq!(cw.dequantize(), dense);
            assert_eq!(
                cw.bytes(),
                gq::n_bytes(ty, (rows * cols) as u64).unwrap() as usize
            );
        }
    }
}

#[test]
fn gguf_rows_refuse_a_wrong_length_or_type() {
    assert!(GgufRows::new(GgmlType::Q8_0, 2, 32, vec![0; 67]).is_err());
    assert!(GgufRows::new(GgmlType::Q8_0, 2, 33, vec![0; 68]).is_err());
    assert!(GgufRows::new(GgmlType::F32, 1, 32, vec![0; 128]).is_err());
}

#[test]
fn quant_matrices_match_their_dequantizer() {
    for (bits, group, symmetric) in [
        (2, 32, false),
        (3, 64, true),
        (4, 128, false),
        (4, 32, true),
        (8, 64, true),
    ] {
        for (rows, cols) in SHAPES {
            let w = values(rows * cols, (bits as usize * 13 + cols) as u64);
            let q = quantize(&w, rows, cols, bits, group, symmetric).unwrap();
            let dense = q.dequantize();
            let name = format!("quant {bits}-bit g{group} sym {symmetric} {rows}×{cols}");
            check_source(&name, &q, &dense);
            assert_eq!(CpuWeight::Packed(Packed::Quant(q)).dequantize(), dense);
        }
    }
}

#[test]
fn sparse_matrices_match_their_dense_form() {
    for ty in ValueType::ALL {
        for (rows, cols) in SHAPES {
            let w = values(rows * cols, (rows * 3 + cols) as u64);
            let s24 = Sparse24Matrix::pack(&prune_magnitude_2of4(&w, rows, cols), rows, cols, ty)
                .unwrap();
            let dense = s24.to_dense();
            check_source(&format!("2:4 {ty:?} {rows}×{cols}"), &s24, &dense);
            assert_eq!(CpuWeight::Packed(Packed::Sparse24(s24)).dequantize(), dense);
            // Sparsity 0.6 takes the dense GEMM over decoded panels, 0.9 the kernel over
            // the stored entries (cpu::sparse).
            for sparsity in [0.6, 0.9] {
                let pruned = prune_magnitude(&w, rows, cols, sparsity);
                let u = UnstructuredMatrix::pack(&pruned, rows, cols, ty).unwrap();
                let dense = u.to_dense();
                let name = format!("unstructured {sparsity} {ty:?} {rows}×{cols}");
                check_source(&name, &u, &dense);
            }
            let pruned = prune_magnitude(&w, rows, cols, 0.6);
            let u = UnstructuredMatrix::pack(&pruned, rows, cols, ty).unwrap();
            // The transposed copy (scales indexed through the original) reads the same.
            let t = u.transposed();
            check_source(
                &format!("unstructured ᵀ {ty:?} {cols}×{rows}"),
                &t,
                &t.to_dense(),
            );
        }
    }
}

/// Any column range of an unstructured row reads as the dense form's (on x86-64 with
/// AVX-512, the expand-load path; elsewhere the entry walk): ranges that start and end
/// inside 32-column blocks, span several, and sit at the row's end.
#[test]
fn unstructured_rows_read_any_column_range() {
    let (rows, cols) = (7, 801);
    let w = values(rows * cols, 11);
    for ty in [ValueType::Int4, ValueType::Int8, ValueType::F32] {
        for sparsity in [0.0, 0.3, 0.6, 0.97] {
            let u = UnstructuredMatrix::pack(
                &prune_magnitude(&w, rows, cols, sparsity),
                rows,
                cols,
                ty,
            )
            .unwrap();
            let dense = u.to_dense();
            for (c0, len) in [
                (0, 801),
                (0, 1),
                (5, 27),
                (31, 2),
                (40, 300),
                (63, 65),
                (770, 31),
                (800, 1),
            ] {
                for r in 0..rows {
                    let mut out = vec![f32::NAN; len];
                    u.row_into(r, c0, &mut out);
                    assert_eq!(
                        out,
                        dense[r * cols + c0..r * cols + c0 + len],
                        "{ty:?} sparsity {sparsity} row {r} columns {c0}+{len}"
                    );
                }
            }
        }
    }
}

/// Losses within this of the f32 model's: the packed model decodes the very values the
/// f32 model holds, so only the summation order of a few products may differ (the dot
/// path of 1–4 rows); 1e-5 relative is ~80 ε.
const SAME_MODEL: Tol<f64> = Tol::relative(1e-5);

fn compare_models(what: &str, file: &edge_llm::model::ModelFile) {
    let packed = file.weights_as(Storage::File).unwrap();
    let dense = file.weights_as(Storage::F32).unwrap();
    assert!(
        packed.matrices().iter().any(|m| m.packed().is_some()),
        "{what}: nothing was kept packed"
    );
    assert!(
        packed.bytes() < dense.bytes(),
        "{what}: packed is not smaller"
    );
    assert_eq!(
        packed.bytes() as u64,
        file.weight_bytes(Storage::File),
        "{what}: plan"
    );
    assert_eq!(
        dense.bytes() as u64,
        file.weight_bytes(Storage::F32),
        "{what}: f32 plan"
    );
    for (p, d) in packed.matrices().into_iter().zip(dense.matrices()) {
        assert_eq!(
            p.values().as_ref(),
            d.dense().unwrap(),
            "{what}: dequantized matrix"
        );
    }
    let lora = Lora::new(&file.config, common::train_lora_config(), 3);
    // A LoRA whose B is not zero, so the adapters' gradients depend on the base path.
    let mut lora = lora;
    for t in lora.tensors_mut() {
        for (i, x) in t.iter_mut().enumerate() {
            *x += 0.01 * ((i % 7) as f32 - 3.0);
        }
    }
    let mut a = Transformer::new(packed);
    let mut b = Transformer::new(dense);
    a.lora = Some(lora.clone());
    b.lora = Some(lora);
    let tokens = common::tokens(40);
    let targets: Vec<Option<u32>> = tokens[1..].iter().map(|&t| Some(t)).chain([None]).collect();
    let (fa, fb) = (
        a.forward_train(&tokens, Some(5)),
        b.forward_train(&tokens, Some(5)),
    );
    let (la, lb) = (a.loss(&fa, &targets) as f64, b.loss(&fb, &targets) as f64);
    assert!(SAME_MODEL.close(la, lb), "{what}: loss {la} vs {lb}");
    let (ga, gb) = (
        a.backward(&fa, &targets, false),
        b.backward(&fb, &targets, false),
    );
    let (mut ga, mut gb) = (ga.lora.unwrap(), gb.lora.unwrap());
    for (x, y) in ga.tensors_mut().into_iter().zip(gb.tensors_mut()) {
        let scale = y.iter().fold(0f32, |s, v| s.max(v.abs())) as f64;
        let err = x
            .iter()
            .zip(y.iter())
            .fold(0f32, |s, (p, q)| s.max((p - q).abs())) as f64;
        assert!(
            common::GRAD_TOL.allows(err as f32, scale as f32),
            "{what}: LoRA gradient {err} of {scale}"
        );
    }
    // Decoding (one token at a time through the KV cache: the dot path).
    let (mut ca, mut cb) = (
        edge_llm::reference::KvCache::new(file.config.n_layers),
        edge_llm::reference::KvCache::new(file.config.n_layers),
    );
    for &t in &tokens[..6] {
        let (x, y) = (a.logits(&[t], Some(&mut ca)), b.logits(&[t], Some(&mut cb)));
        common::assert_logits_close(what, &x, &y);
    }
}

#[test]
fn the_tiny_model_packed_equals_it_dequantized() {
    // Q4_1 projections and a Q8_0 embedding (the tiny model's own file).
    compare_models("tiny Q4_1/Q8_0", &common::tiny_file());
    for ty in [GgmlType::Q4_0, GgmlType::F16] {
        let f = common::with_head_type(&common::tiny_file(), ty);
        compare_models(&format!("tiny, {} head", ty.name()), &f);
    }
    // Every compressed format (2:4, unstructured, quantized; int8 and int4).
    let f = common::mixed_sparse_file(&common::tiny_file_with_layers(3));
    compare_models("tiny compressed", &f);
}

#[test]
fn a_packed_matrix_is_dense_when_mapped() {
    let w = common::tiny_file().weights_as(Storage::File).unwrap();
    assert!(matches!(w.layers[0].wq, Mat::Packed(_)));
    let w64 = w.cast::<f64>();
    assert!(w64.matrices().iter().all(|m| m.dense().is_some()));
    let back: Vec<f32> = w64.layers[0]
        .wq
        .dense()
        .unwrap()
        .iter()
        .map(|&x| x as f32)
        .collect();
    assert_eq!(back, w.layers[0].wq.values().as_ref());
}
