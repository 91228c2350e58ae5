//! Splitting work over threads: rayon's pool natively, one thread on wasm32.

/// How many parts work is split into: rayon's threads natively, 1 on wasm32 and inside
/// work already running on the pool (whose caller split it already).
pub fn threads() -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        if rayon::current_thread_index().is_some() {
            1
        } else {
            rayon::current_num_threads().max(1)
        }
    }
    #[cfg(target_arch = "wasm32")]
    {
        1
    }
}

/// Runs `f(i)` for every i in 0..n, on parallel threads where there are any (in no
/// particular order; on one thread, in order).
pub fn for_each(n: usize, f: impl Fn(usize) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        if n > 1 && threads() > 1 {
            use rayon::prelude::*;
            (0..n).into_par_iter().for_each(f);
            return;
        }
    }
    (0..n).for_each(f);
}

/// The i-th of `parts` near-equal ranges of 0..n (the first ones one longer).
pub fn part(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let (q, r) = (n / parts, n % parts);
    let start = i * q + i.min(r);
    start..start + q + usize::from(i < r)
}

/// Splits `out` into chunks of `chunk` elements and runs `f(index, chunk)` on each, in
/// parallel where there are threads.
pub fn chunks_mut<T: Send>(out: &mut [T], chunk: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    #[cfg(not(target_arch = "wasm32"))]
    {
        if out.len() > chunk && threads() > 1 {
            use rayon::prelude::*;
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| f(i, c));
            return;
        }
    }
    out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
}
