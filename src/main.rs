//! The native command-line interface; everything it does lives in the library
//! (`edge_llm::cli`), which drives the same engine core as the web app.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    std::process::exit(edge_llm::cli::main());
}

#[cfg(target_arch = "wasm32")]
fn main() {}
