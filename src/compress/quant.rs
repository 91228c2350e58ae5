//! Packed quantized weights (being written).
