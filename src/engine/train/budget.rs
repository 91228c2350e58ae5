//! Budget fitting: the options whose memory plan fits a byte budget and the device's
//! limits ([`fit_budget`]), and the report of a fitted plan.

use super::plan::head_split;
use super::{GpuTrainer, TrainOptions};
use crate::engine::plan::{Category, MemoryPlan, PlanEntry};
use crate::engine::WeightFormat;
use crate::model::{LlamaConfig, ModelFile};
use crate::reference::{LoraConfig, Span};
use crate::{Error, Result};
use serde::Serialize;

/// How [`fit_budget`] decided.
#[derive(Clone, Debug)]
pub struct Fit {
    pub options: TrainOptions,
    pub plan: MemoryPlan,
    /// What was changed from the requested options to fit, in words (empty: nothing).
    pub changes: Vec<String>,
    /// When rows had to be shortened (`options.seq_len` below the requested length): the
    /// factor to multiply gradient accumulation by, so an optimizer step still sees as many
    /// tokens. 1 otherwise.
    pub accum_factor: usize,
}

/// A fitted plan as `edge-llm plan --json` prints it and the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FitReport<'a> {
    pub total_bytes: u64,
    pub budget_bytes: Option<u64>,
    pub changes: &'a [String],
    pub seq_len: usize,
    pub accum_factor: usize,
    pub recompute: bool,
    pub format: String,
    /// Chunks the LM head is held in (each in the file's format), and vocabulary rows per
    /// chunk and per logits chunk.
    pub head_chunks: usize,
    pub logits_chunk: usize,
    pub buffers: usize,
    /// Non-empty categories, in [`Category::ALL`] order.
    pub by_category: Vec<CategoryBytes>,
    /// The largest buffers, largest first.
    pub largest: Vec<&'a PlanEntry>,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
}

/// Bytes of one category of a plan.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct CategoryBytes {
    pub category: Category,
    pub bytes: u64,
}

impl Fit {
    /// The report of this fit for model `c` on a device with `limits`, listing the `top`
    /// largest buffers.
    pub fn report(
        &self,
        c: &LlamaConfig,
        limits: &wgpu::Limits,
        budget: Option<u64>,
        top: usize,
    ) -> Result<FitReport<'_>> {
        let split = head_split(c, &self.options, limits)?;
        let mut largest: Vec<_> = self.plan.entries.iter().collect();
        largest.sort_by_key(|e| std::cmp::Reverse(e.bytes));
        largest.truncate(top);
        Ok(FitReport {
            total_bytes: self.plan.total(),
            budget_bytes: budget,
            changes: &self.changes,
            seq_len: self.options.seq_len,
            accum_factor: self.accum_factor,
            recompute: self.options.recompute,
            format: format!("{:?}", self.options.format),
            head_chunks: split.chunks,
            logits_chunk: split.chunk,
            buffers: self.plan.entries.len(),
            by_category: self
                .plan
                .by_category()
                .into_iter()
                .filter(|&(_, bytes)| bytes > 0)
                .map(|(category, bytes)| CategoryBytes { category, bytes })
                .collect(),
            largest,
            max_storage_buffer_binding_size: limits.max_storage_buffer_binding_size,
            max_buffer_size: limits.max_buffer_size,
        })
    }
}

/// Logits chunk widths tried, widest first, when the budget is tight.
const BUDGET_CHUNKS: [usize; 2] = [1024, 256];

/// The shortest rows [`fit_budget`] chunks sequences into before it refuses.
pub const MIN_CHUNKED_SEQ: usize = 32;

/// The options that fit `budget` bytes of GPU memory (and the device's limits): `opts` if
/// it fits, else, cumulatively, with layer recompute, packed weights, narrower logits
/// chunks, and finally shorter rows (sequence chunking: the data is packed into the longest
/// rows of at least [`MIN_CHUNKED_SEQ`] tokens that fit, and [`Fit::accum_factor`] says how
/// much more gradient accumulation keeps the tokens per optimizer step). When nothing fits,
/// the error names the smallest plan's size and what would fit. Nothing is allocated.
pub fn fit_budget(
    file: &ModelFile,
    lora: &LoraConfig,
    opts: &TrainOptions,
    limits: &wgpu::Limits,
    budget: Option<u64>,
) -> Result<Fit> {
    fit_budget_windows(file, lora, opts, limits, budget, None)
}

/// [`fit_budget`] for adaptive layer tuning over `windows` (planned as
/// [`GpuTrainer::plan_windows`]); None: every block, as [`GpuTrainer::plan`].
pub fn fit_budget_windows(
    file: &ModelFile,
    lora: &LoraConfig,
    opts: &TrainOptions,
    limits: &wgpu::Limits,
    budget: Option<u64>,
    windows: Option<&[Span]>,
) -> Result<Fit> {
    let plan_of = |o: &TrainOptions| match windows {
        Some(w) => GpuTrainer::plan_windows(file, lora, o, limits, w),
        None => GpuTrainer::plan(file, lora, o, limits),
    };
    let plan = plan_of(opts)?;
    plan.check(limits)?;
    let Some(budget) = budget else {
        return Ok(Fit {
            options: opts.clone(),
            plan,
            changes: Vec::new(),
            accum_factor: 1,
        });
    };
    let mut tries = vec![(opts.clone(), Vec::<String>::new())];
    let mut cur = opts.clone();
    let mut changes = Vec::new();
    if !cur.recompute {
        cur.recompute = true;
        changes.push("layer recompute on".to_string());
        tries.push((cur.clone(), changes.clone()));
    }
    if cur.format != WeightFormat::Packed {
        cur.format = WeightFormat::Packed;
        changes.push("packed weights".to_string());
        tries.push((cur.clone(), changes.clone()));
    }
    for chunk in BUDGET_CHUNKS {
        if head_split(&file.config, &cur, limits)?.chunk > chunk {
            cur.vocab_chunk = chunk;
            changes.push(format!("logits chunk {chunk}"));
            tries.push((cur.clone(), changes.clone()));
        }
    }
    let mut smallest = None;
    for (o, ch) in tries {
        let p = plan_of(&o)?;
        if p.check(limits).is_ok() && p.total() <= budget {
            return Ok(Fit {
                options: o,
                plan: p,
                changes: ch,
                accum_factor: 1,
            });
        }
        smallest = Some((o, p, ch));
    }
    let (o, p, ch) = smallest.expect("at least one candidate");
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    // The longest sequence the smallest settings fit in the budget.
    let fits = |t: usize| -> bool {
        let o = TrainOptions {
            seq_len: t,
            ..o.clone()
        };
        plan_of(&o).is_ok_and(|p| p.check(limits).is_ok() && p.total() <= budget)
    };
    let longest = fits(1).then(|| {
        let (mut lo, mut hi) = (1, o.seq_len);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    });
    if let Some(t) = longest.filter(|&t| t >= MIN_CHUNKED_SEQ) {
        let factor = o.seq_len.div_ceil(t);
        let options = TrainOptions { seq_len: t, ..o };
        let plan = plan_of(&options)?;
        let mut changes = ch;
        changes.push(format!(
            "rows of {t} tokens instead of {} with {factor}× gradient accumulation",
            opts.seq_len
        ));
        return Ok(Fit {
            options,
            plan,
            changes,
            accum_factor: factor,
        });
    }
    let advice = if let Some(lo) = longest {
        format!(
            "--seq-len {lo} would fit, or a budget of at least {} bytes",
            p.total()
        )
    } else {
        let small = TrainOptions {
            seq_len: 1,
            ..o.clone()
        };
        let one = plan_of(&small)?;
        let w = one.by_category()[0].1;
        format!(
            "even --seq-len 1 needs {} bytes ({}; the frozen weights alone {})",
            one.total(),
            mib(one.total()),
            mib(w)
        )
    };
    Err(Error::Invalid(format!(
        "memory budget of {budget} bytes ({}) is too small to tune at --seq-len {}: the \
         smallest plan (layer recompute, packed weights, logits chunk {}) needs {} bytes \
         ({}); {advice}",
        mib(budget),
        o.seq_len,
        o.vocab_chunk
            .min(head_split(&file.config, &o, limits)?.chunk),
        p.total(),
        mib(p.total())
    )))
}
