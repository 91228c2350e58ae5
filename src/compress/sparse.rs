//! Sparse weights (being written).
