//! What to compress to and how to calibrate ([`CompressOptions`], the flags of `edge-llm
//! compress` and the page's settings) and how LUC picks per-layer sparsity
//! ([`SparsityRule`]): read by [`super::allocation`] and [`super::pipeline`].

use super::policy::{Allocation, Pattern, PruneMethod, QuantMethod};
use super::profile::ProfileOptions;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How LUC chooses per-layer sparsities from the profile (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SparsityRule {
    /// Least-error's choice shrunk toward uniform by its cross-fitted gain.
    #[default]
    #[serde(rename = "shrunk")]
    Shrunk,
    /// Least estimated loss change at the target mean ([`allocate_sparsity`]).
    #[serde(rename = "least-error")]
    LeastError,
    /// Outlier-weighted layerwise sparsity (OWL).
    #[serde(rename = "owl")]
    Owl,
    /// The reference rule: sparsity linear in 1 − normalised sensitivity
    /// ([`sparsity_from_sensitivity`]).
    #[serde(rename = "reference")]
    Reference,
}

/// What to compress to and how to calibrate: the flags of `edge-llm compress` (and the
/// page's settings), with the same defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressOptions {
    /// Target mean sparsity (2:4: 0.5 or 0).
    pub sparsity: f64,
    /// Code width (uniform) or target mean bits per weight (LUC): 2, 3, 4 or 8.
    pub bits: f64,
    /// `luc` (per-layer numbers from the profile) or `uniform`.
    pub allocation: Allocation,
    pub method: PruneMethod,
    pub pattern: Pattern,
    /// Dense-layer quantization: GPTQ (RTN kept where better) or round-to-nearest.
    pub quant: QuantMethod,
    /// Columns per quantization scale: 32, 64 or 128.
    pub group: usize,
    pub symmetric: bool,
    /// Calibration rows, spread evenly over the data.
    pub calib_rows: usize,
    /// Tokens per calibration row.
    pub seq_len: usize,
    /// Rows whose loss is measured per layer and level when profiling (0: no Δloss).
    pub loss_rows: usize,
    /// Rows whose loss gradients make the profile's Fisher estimate (0: none).
    pub fisher_rows: usize,
    /// Pruning method of the profile's sparsity levels.
    pub profile_method: PruneMethod,
    /// How LUC turns the profile into per-layer sparsities.
    pub sparsity_rule: SparsityRule,
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            sparsity: 0.0,
            bits: 4.0,
            allocation: Allocation::Luc,
            method: PruneMethod::SparseGpt,
            pattern: Pattern::Unstructured,
            quant: QuantMethod::Gptq,
            group: 32,
            symmetric: true,
            calib_rows: 128,
            seq_len: 256,
            loss_rows: 0,
            fisher_rows: 16,
            profile_method: PruneMethod::Wanda,
            sparsity_rule: SparsityRule::default(),
        }
    }
}

impl CompressOptions {
    /// Parses the page's JSON (missing fields take the defaults; unknown ones are refused).
    pub fn from_json(text: &str) -> Result<Self> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        let o: Self = serde_json::from_str(text)
            .map_err(|e| Error::Invalid(format!("compression options: {e}")))?;
        if o.allocation == Allocation::Manual {
            return Err(Error::Invalid(
                "compression options: allocation is uniform or luc (a hand-made allocation is a \
                 policy file)"
                    .into(),
            ));
        }
        if o.calib_rows == 0 || o.seq_len < 2 {
            return Err(Error::Invalid(
                "compression options: calib_rows must be at least 1 and seq_len at least 2".into(),
            ));
        }
        Ok(o)
    }

    /// How the profile is measured (the cache key's settings). Its quantization levels
    /// use this compression's group and symmetry: the bit allocation must see the errors
    /// of the quantizer that will run (from a Q4_1 model, 4-bit asymmetric groups of 32
    /// are exact while symmetric ones are not, and a profile measured symmetric sent
    /// layers to 8 and 3 bits at a mean of 4).
    pub fn profile_options(&self) -> ProfileOptions {
        ProfileOptions {
            method: self.profile_method,
            loss_rows: self.loss_rows,
            fisher_rows: self.fisher_rows,
            group: self.group,
            symmetric: self.symmetric,
        }
    }

    /// Whether the policy comes from a profile (LUC without a user policy).
    pub fn needs_profile(&self, user_policy: bool) -> bool {
        !user_policy && self.allocation == Allocation::Luc
    }
}
