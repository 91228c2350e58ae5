//! Tokenizer (placeholder during bring-up; being written).
use crate::gguf::Gguf;
use crate::Result;

pub struct Tokenizer {}

impl Tokenizer {
    pub fn from_gguf(_g: &Gguf) -> Result<Self> {
        todo!()
    }
    pub fn encode(&self, _text: &str) -> Result<Vec<u32>> {
        todo!()
    }
    pub fn decode(&self, _ids: &[u32]) -> Result<String> {
        todo!()
    }
    pub fn chat_prompt(&self, _user: &str) -> String {
        todo!()
    }
}
