//! (being written by the GGUF helper)
