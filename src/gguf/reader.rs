//! (being written by the GGUF helper)
use super::{GgufError, TensorInfo, Value};

pub struct Gguf {
    pub version: u32,
    pub alignment: u64,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub data_offset: u64,
}

impl Gguf {
    pub fn parse(_bytes: &[u8]) -> Result<Gguf, GgufError> {
        todo!()
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    pub fn tensor_f32(&self, _bytes: &[u8], _name: &str) -> Result<Vec<f32>, GgufError> {
        todo!()
    }
}
