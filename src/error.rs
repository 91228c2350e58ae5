//! The crate's error type. Every fallible public function returns [`Result`]; the CLI and
//! the web shell print the `Display` form, which is one line naming the problem.

use crate::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The file is valid GGUF but not a model this project can run.
    #[error("model: {0}")]
    Model(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A data file that cannot be used, with the file/line where that is known.
    #[error("data: {0}")]
    Data(String),
    #[error("GPU: {0}")]
    Gpu(String),
    #[error("{0}")]
    Io(String),
    /// A bad argument from the user (CLI flag, API parameter).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
