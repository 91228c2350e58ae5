//! (being written by the GGUF helper)
pub struct GgufWriter;
