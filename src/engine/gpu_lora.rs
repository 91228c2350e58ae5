//! An inference model's LoRA adapter on the GPU ([`GpuLora`]): per block and projection
//! the A and B matrices, the shared u scratch and the early exits, with the checks that an
//! adapter fits the buffers made for it.

use crate::kernels::context::GpuContext;
use crate::model::LlamaConfig;
use crate::reference::{Lora, Proj};
use crate::{Error, Result};

use super::weights::PROJ_NAMES;

pub(crate) struct GpuLora {
    pub(crate) scale: f32,
    pub(crate) rank: usize,
    /// `pairs[l][proj.index()]` = (A `[rank][k]`, B `[n][rank]`).
    pub(crate) pairs: Vec<Vec<Option<(wgpu::Buffer, wgpu::Buffer)>>>,
    /// u = x·Aᵀ, `[max_t][rank]` (the exits' adapters use it too).
    pub(crate) u: wgpu::Buffer,
    /// Early exits, shallow to deep.
    pub(crate) exits: Vec<GpuExit>,
}

/// An early exit: after block `after`, z = x + s·B·A·x (A `[rank][d]`, B `[d][rank]`).
pub(crate) struct GpuExit {
    pub(crate) after: usize,
    pub(crate) a: wgpu::Buffer,
    pub(crate) b: wgpu::Buffer,
}

/// Checks that `lora` has the structure the GPU buffers were made for.
pub(crate) fn check_lora(
    c: &LlamaConfig,
    lora: &Lora<f32>,
    rank: usize,
    pairs: &[Vec<Option<(wgpu::Buffer, wgpu::Buffer)>>],
) -> Result<()> {
    let bad = |why: String| Err(Error::Invalid(format!("LoRA adapter: {why}")));
    if lora.layers.len() != c.n_layers || lora.config.rank != rank {
        return bad(format!(
            "{} layers of rank {}, expected {} of rank {rank}",
            lora.layers.len(),
            lora.config.rank,
            c.n_layers
        ));
    }
    for (l, (ll, gl)) in lora.layers.iter().zip(pairs).enumerate() {
        for p in Proj::ALL {
            let (k, n) = p.shape(c);
            match (&ll[p.index()], &gl[p.index()]) {
                (None, None) => {}
                (Some(q), Some(_)) if q.rank == rank && q.k == k && q.n == n => {
                    if q.a.len() != rank * k || q.b.len() != n * rank {
                        return bad(format!("layer {l} {p:?}: A/B lengths do not match"));
                    }
                }
                _ => return bad(format!("layer {l} {p:?}: not the planned shape/targets")),
            }
        }
    }
    let mut prev = 0;
    for (k, e) in lora.exits.iter().enumerate() {
        let q = &e.pair;
        if e.after <= prev || e.after > c.n_layers {
            return bad(format!(
                "exit {k} after block {}: exits must ascend within 1..={}",
                e.after, c.n_layers
            ));
        }
        prev = e.after;
        let d = c.hidden;
        let lens_ok = q.a.len() == rank * d && q.b.len() == d * rank;
        if q.rank != rank || q.k != d || q.n != d || !lens_ok {
            return bad(format!(
                "exit {k} (after block {}): not a rank-{rank} adapter on the {d}-wide hidden state",
                e.after
            ));
        }
    }
    Ok(())
}

pub(crate) fn upload_lora(
    ctx: &GpuContext,
    c: &LlamaConfig,
    lora: &Lora<f32>,
    max_t: usize,
    track: &mut impl FnMut(wgpu::Buffer) -> wgpu::Buffer,
) -> Result<GpuLora> {
    let rank = lora.config.rank;
    let mut pairs = Vec::with_capacity(c.n_layers);
    for (l, ll) in lora.layers.iter().enumerate() {
        let mut row = Vec::with_capacity(7);
        for p in Proj::ALL {
            let targeted = lora.config.targets.contains(&p);
            let pair = match (&ll[p.index()], targeted) {
                (Some(q), true) => {
                    let what = format!("lora {} (layer {l})", PROJ_NAMES[p.index()]);
                    let a = track(ctx.storage(&format!("{what} A"), bytemuck::cast_slice(&q.a))?);
                    let b = track(ctx.storage(&format!("{what} B"), bytemuck::cast_slice(&q.b))?);
                    Some((a, b))
                }
                (None, false) => None,
                _ => {
                    return Err(Error::Invalid(format!(
                        "LoRA adapter: layer {l} {p:?} presence disagrees with its targets"
                    )))
                }
            };
            row.push(pair);
        }
        pairs.push(row);
    }
    check_lora(c, lora, rank, &pairs)?;
    let u = track(ctx.storage_zeroed("lora u", (max_t * rank * 4) as u64)?);
    let mut exits = Vec::with_capacity(lora.exits.len());
    for (k, e) in lora.exits.iter().enumerate() {
        let a = track(ctx.storage(
            &format!("exit {k} adapter A"),
            bytemuck::cast_slice(&e.pair.a),
        )?);
        let b = track(ctx.storage(
            &format!("exit {k} adapter B"),
            bytemuck::cast_slice(&e.pair.b),
        )?);
        exits.push(GpuExit {
            after: e.after,
            a,
            b,
        });
    }
    Ok(GpuLora {
        scale: lora.scale(),
        rank,
        pairs,
        u,
        exits,
    })
}
