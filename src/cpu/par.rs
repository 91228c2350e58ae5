//! Splitting work over threads: rayon's pool natively and in the threaded wasm32 build
//! (feature `threads`: Web Workers sharing the memory, through wasm-bindgen-rayon), one
//! thread in the plain wasm32 build.
//!
//! A split op inside a task of another split op runs on its task's thread (one level of
//! parallelism: the heads of attention, or the columns of one product, never both).

#[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
thread_local! {
    /// Whether this thread is running one task of a split op.
    static IN_TASK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` as a task of a split op (nested splits inside it run on this thread).
#[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
fn task<R>(f: impl FnOnce() -> R) -> R {
    let was = IN_TASK.replace(true);
    let r = f();
    IN_TASK.set(was);
    r
}

/// Runs `f` on a thread of the pool, so that the ops it splits start their first part on
/// the thread already running (and, with rayon's work stealing, all of it when the other
/// threads are slow to wake) instead of waking every thread and waiting for them: a
/// worker's wake-up on this 2-vCPU VM costs about a fifth of a 0.8 ms product.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        rayon::scope(|_| f())
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        f()
    }
}

/// How many parts work is split into: rayon's threads (natively, or the page's workers), 1 in
/// the plain wasm32 build and inside a
/// task of a split op.
pub fn threads() -> usize {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        if IN_TASK.get() {
            1
        } else {
            rayon::current_num_threads().max(1)
        }
    }
    #[cfg(all(target_arch = "wasm32", not(feature = "threads")))]
    {
        1
    }
}

/// Runs `f(i)` for every i in 0..n, on parallel threads where there are any (in no
/// particular order; on one thread, in order).
pub fn for_each(n: usize, f: impl Fn(usize) + Sync + Send) {
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        if n > 1 && threads() > 1 {
            use rayon::prelude::*;
            (0..n).into_par_iter().for_each(|i| task(|| f(i)));
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
    #[cfg(any(not(target_arch = "wasm32"), feature = "threads"))]
    {
        if out.len() > chunk && threads() > 1 {
            use rayon::prelude::*;
            out.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(i, c)| task(|| f(i, c)));
            return;
        }
    }
    out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
}

/// Runs `f(i, a_i, b_i)` for every row i of `a` (`[m][wa]`) and `b` (`[m][wb]`), with the
/// rows split into one contiguous band per thread.
pub fn rows2<A: Send, B: Send>(
    a: &mut [A],
    wa: usize,
    b: &mut [B],
    wb: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    assert!(wa > 0 && wb > 0, "rows2: zero width");
    let band = (a.len() / wa).div_ceil(threads()).max(1);
    let mut bands: Vec<(&mut [A], &mut [B])> = a
        .chunks_mut(band * wa)
        .zip(b.chunks_mut(band * wb))
        .collect();
    chunks_mut(&mut bands, 1, |c, part| {
        let (ab, bb) = &mut part[0];
        let rows = ab.chunks_mut(wa).zip(bb.chunks_mut(wb));
        for (i, (ar, br)) in rows.enumerate() {
            f(c * band + i, ar, br);
        }
    });
}

/// Runs `f(i, a_i)` for every row i of `a` (`[m][w]`), one band of rows per thread.
pub fn rows<A: Send>(a: &mut [A], w: usize, f: impl Fn(usize, &mut [A]) + Sync + Send) {
    assert!(w > 0, "rows: zero width");
    let band = (a.len() / w).div_ceil(threads()).max(1);
    chunks_mut(a, band * w, |c, part| {
        for (i, r) in part.chunks_mut(w).enumerate() {
            f(c * band + i, r);
        }
    });
}
