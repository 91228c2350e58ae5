//! PEFT adapters (being written).
