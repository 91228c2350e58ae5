//! Windows and the prefix cache, shared by both backends ([`super::CpuBackend`] and the
//! GPU trainer, [`crate::engine::GpuTrainer`]).
//!
//! Adaptive layer tuning trains one window ([`Span`]) of blocks at a time; the blocks
//! below it are frozen, so the hidden state entering the window changes for a row only
//! when one of them is trained again. [`PrefixCache`] keeps those states in host memory,
//! stamped with per-block optimizer-update counts (`versions`, moved on by
//! [`bump_versions`]) that say when one is stale.

use crate::reference::Span;
use crate::{Error, Result};
use std::collections::HashMap;

/// Hidden states of training and validation rows at some depth, computed by frozen
/// blocks, so a window's forward starts there instead of at the embeddings.
#[derive(Debug, Default)]
pub struct PrefixCache {
    entries: HashMap<Vec<u32>, Prefix>,
    /// Bytes of hidden states held, and the most it may hold.
    pub bytes: u64,
    pub max_bytes: u64,
    /// Rows served from the cache, and rows whose prefix was computed from the embeddings.
    pub hits: u64,
    pub misses: u64,
}

#[derive(Debug)]
struct Prefix {
    depth: usize,
    stamp: u64,
    x: Vec<f32>,
}

/// The stamp of a prefix at `depth`: the blocks below it change only when their
/// optimizer-update count (`versions[l]`) does.
fn stamp(versions: &[u64], depth: usize) -> u64 {
    versions[..depth].iter().sum()
}

/// Counts an optimizer update of the blocks `span` trains (every block without one).
pub(crate) fn bump_versions(versions: &mut [u64], span: Option<&Span>) {
    for (l, ver) in versions.iter_mut().enumerate() {
        if span.is_none_or(|s| s.layers.contains(&l)) {
            *ver += 1;
        }
    }
}

impl PrefixCache {
    /// Host memory the prefix cache may use unless told otherwise.
    pub const DEFAULT_MAX_BYTES: u64 = 2 << 30;

    /// An empty cache that may hold `max_bytes` of hidden states.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            ..Default::default()
        }
    }

    /// The cached hidden state of `tokens` at the deepest valid depth ≤ `start` (blocks
    /// updated as `versions` says), counting a hit, or None (a miss).
    pub(crate) fn lookup(
        &mut self,
        tokens: &[u32],
        start: usize,
        versions: &[u64],
    ) -> Option<(usize, Vec<f32>)> {
        let valid = self
            .entries
            .get(tokens)
            .filter(|p| p.depth <= start && p.stamp == stamp(versions, p.depth));
        match valid {
            Some(p) => {
                self.hits += 1;
                Some((p.depth, p.x.clone()))
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Whether the state of `tokens` (`bytes` long) can be kept: held already or in budget.
    pub(crate) fn has_room(&self, tokens: &[u32], bytes: u64) -> bool {
        self.entries.contains_key(tokens) || self.bytes + bytes <= self.max_bytes
    }

    /// Keeps `x`, the hidden state of `tokens` entering block `depth`, if there is room.
    pub(crate) fn store(&mut self, tokens: &[u32], depth: usize, versions: &[u64], x: &[f32]) {
        let bytes = (x.len() * 4) as u64;
        if !self.has_room(tokens, bytes) {
            return;
        }
        if !self.entries.contains_key(tokens) {
            self.bytes += bytes;
        }
        let p = Prefix {
            depth,
            stamp: stamp(versions, depth),
            x: x.to_vec(),
        };
        self.entries.insert(tokens.to_vec(), p);
    }
}

/// The span trained without a window: every block, to the exit after the last block
/// (`exits` are block counts) or else the model's head.
pub(crate) fn default_span(n_layers: usize, exits: &[usize]) -> Span {
    let exit = exits.iter().rposition(|&a| a == n_layers);
    Span {
        layers: 0..n_layers,
        exit,
    }
}

/// Refuses a window that is empty, runs past the model, or does not end at its exit
/// (at the model's last block without one).
pub(crate) fn check_span(n_layers: usize, exits: &[usize], s: &Span) -> Result<()> {
    let ok = s.layers.start < s.layers.end
        && s.layers.end <= n_layers
        && match s.exit {
            Some(k) => exits.get(k) == Some(&s.layers.end),
            None => s.layers.end == n_layers,
        };
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "window {:?} (exit {:?}) does not fit a model of {n_layers} blocks with exits \
             {exits:?}",
            s.layers, s.exit
        )))
    }
}
