//! The native command-line interface; everything it does lives in the library
//! (`edge_llm::cli`), which drives the same engine core as the web app.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`edge-llm … | head`) panics;
    // restore the default, under which the process ends quietly like any Unix filter.
    #[cfg(unix)]
    // SAFETY: called once, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Every CPU path (training, evaluation, compression) allocates large buffers per op.
    edge_llm::cpu::keep_freed_memory();
    std::process::exit(edge_llm::cli::main());
}

#[cfg(target_arch = "wasm32")]
fn main() {}
