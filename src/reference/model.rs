//! (being written)
pub struct Activations;
pub struct Grads;
pub struct KvCache;
pub struct Lora;
pub struct LoraConfig;
pub struct Transformer;
