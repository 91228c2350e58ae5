//! The CPU reference's calibration passes: the rows compression calibrates on, and the
//! statistics of the model over them ([`crate::reference::stats`]). The GPU engine makes the
//! same statistics (`crate::engine::GpuTrainer::for_statistics`); `pipeline` picks one.

use crate::data::Dataset;
use crate::reference::stats::{no_fisher_rows, BlockFisher, Hessian, LayerHessians};
use crate::reference::{Proj, Transformer};
use crate::tokenizer::Tokenizer;
use crate::train::examples::{make_examples, pack};
use crate::train::{DataStats, Row};
use crate::{Error, Result};

/// Calibration rows from a dataset: its examples packed into rows of `seq_len` inputs
/// (as training does), then `n` of them spread evenly over the data (all if fewer).
pub fn calibration_rows(
    ds: &Dataset,
    tok: &Tokenizer,
    n: usize,
    seq_len: usize,
) -> Result<Vec<Row>> {
    let mut stats = DataStats::default();
    let rows = pack(&make_examples(ds, tok, seq_len, &mut stats)?, seq_len);
    if rows.is_empty() || n == 0 {
        return Err(Error::Data(
            "calibration: the data gives no row to calibrate on".into(),
        ));
    }
    let total = rows.len();
    let take = n.min(total);
    Ok((0..take).map(|i| rows[i * total / take].clone()).collect())
}

/// XᵀX of every projection input of every block over the calibration rows (one training
/// forward per row; memory: the block's activations of one row at a time).
pub fn collect_hessians(
    model: &Transformer<f32>,
    rows: &[Row],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<LayerHessians>> {
    let c = &model.w.config;
    let mut hs: Vec<LayerHessians> = (0..c.n_layers)
        .map(|_| LayerHessians {
            n1: Hessian::new(c.hidden),
            attn: Hessian::new(c.q_dim()),
            n2: Hessian::new(c.hidden),
            act: Hessian::new(c.ffn),
        })
        .collect();
    for (i, row) in rows.iter().enumerate() {
        let m = row.tokens.len();
        let acts = model.forward_train(&row.tokens, None);
        for (h, a) in hs.iter_mut().zip(&acts.layers) {
            h.n1.add(&a.n1, m)?;
            h.attn.add(&a.attn, m)?;
            h.n2.add(&a.n2, m)?;
            h.act.add(&a.act, m)?;
        }
        progress(i + 1, rows.len());
    }
    Ok(hs)
}

/// The diagonal empirical Fisher of every block's projection weights over `rows` (one
/// training forward and one backward with base-weight gradients per row; rows without a
/// target are skipped). Memory: one f32 per block weight, plus one row's gradients.
pub fn fisher_diagonal(
    model: &Transformer<f32>,
    rows: &[Row],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<BlockFisher>> {
    let c = &model.w.config;
    let mut f: Vec<BlockFisher> = (0..c.n_layers)
        .map(|_| {
            Proj::ALL
                .iter()
                .map(|p| {
                    let (k, n) = p.shape(c);
                    vec![0.0f32; k * n]
                })
                .collect()
        })
        .collect();
    let mut used = 0usize;
    for (i, row) in rows.iter().enumerate() {
        if row.n_targets() > 0 {
            let acts = model.forward_train(&row.tokens, None);
            let g = model.backward(&acts, &row.targets, true);
            let base = g.base.ok_or_else(|| {
                Error::Invalid("fisher: the backward pass gave no weight gradients".into())
            })?;
            for (fl, gl) in f.iter_mut().zip(&base.layers) {
                for (fp, p) in fl.iter_mut().zip(Proj::ALL) {
                    for (a, &b) in fp.iter_mut().zip(p.weight(gl).values().iter()) {
                        *a += b * b;
                    }
                }
            }
            used += 1;
        }
        progress(i + 1, rows.len());
    }
    if used == 0 {
        return Err(no_fisher_rows());
    }
    let inv = 1.0 / used as f32;
    f.iter_mut().flatten().flatten().for_each(|v| *v *= inv);
    Ok(f)
}
