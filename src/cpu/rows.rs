//! The contract between the GEMM and a weight stored in any format: a [`RowSource`] decodes
//! a segment of one row of W as f32 (the formats implement it in `crate::formats::rows`),
//! and [`Op`] says which product [`super::sgemm_rows`] makes with W.

/// A matrix W `[rows][cols]` read a row segment at a time. Implementations must write
/// exactly the values the format stands for, whatever the segment (any `c0`, any length),
/// since a panel may start or end inside a block of the format.
pub trait RowSource: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// `out[i] = W[r][c0 + i]` for every `i < out.len()` (`r < rows`,
    /// `c0 + out.len() ≤ cols`).
    fn row_into(&self, r: usize, c0: usize, out: &mut [f32]);

    /// The share of W's entries the format stores (1 for a dense one). Below
    /// [`super::sparse::DENSITY_MAX`], products with W take its stored entries only
    /// ([`RowSource::entries`]).
    fn density(&self) -> f32 {
        1.0
    }

    /// Appends to `out` the stored entries of row `r` in columns `c0..c1`, ascending, as
    /// (column − c0, value): those of [`RowSource::row_into`] that the format stores
    /// (a stored zero may be included; an entry left out must be zero).
    fn entries(&self, r: usize, c0: usize, c1: usize, out: &mut Vec<(u32, f32)>) {
        let mut row = vec![0.0f32; c1 - c0];
        self.row_into(r, c0, &mut row);
        out.extend(
            row.iter()
                .enumerate()
                .filter(|(_, &v)| v != 0.0)
                .map(|(c, &v)| (c as u32, v)),
        );
    }
}

/// Which product [`sgemm_rows`] makes with W.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// C = α·A·Wᵀ + β·C: A is m×cols, C m×rows (the forward y = x·Wᵀ).
    Nt,
    /// C = α·A·W + β·C: A is m×rows, C m×cols (the input gradient dx = dy·W).
    Nn,
}

/// A row-major f32 matrix as a [`RowSource`] (the dense case, and the tests' reference).
pub struct DenseRows<'a> {
    pub w: &'a [f32],
    pub rows: usize,
    pub cols: usize,
}

impl RowSource for DenseRows<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn cols(&self) -> usize {
        self.cols
    }
    fn row_into(&self, r: usize, c0: usize, out: &mut [f32]) {
        let at = r * self.cols + c0;
        out.copy_from_slice(&self.w[at..at + out.len()]);
    }
}
