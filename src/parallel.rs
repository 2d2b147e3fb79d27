//! How rows are split over threads.
//!
//! One rayon pool for the whole process, sized by `set_num_threads` (the Python
//! layer reads `LNRS_NUM_THREADS`), else the number of cores. Rows go out in
//! contiguous blocks; every row is computed the same way whichever block or
//! thread it lands in, so results never depend on the thread count.

use rayon::prelude::*;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::{Arc, OnceLock, RwLock};

/// Below this many elements a call runs on the calling thread: handing work to
/// the pool costs a few microseconds, as much as normalising ~16K floats.
pub const INLINE_MAX_ELEMENTS: usize = 1 << 14;

/// Each parallel task gets at least this many elements, and there are at most
/// `TASKS_PER_THREAD` tasks per thread, to balance load without tiny tasks.
const MIN_TASK_ELEMENTS: usize = 1 << 13;
const TASKS_PER_THREAD: usize = 4;

fn pool_slot() -> &'static RwLock<Option<Arc<ThreadPool>>> {
    static POOL: OnceLock<RwLock<Option<Arc<ThreadPool>>>> = OnceLock::new();
    POOL.get_or_init(|| RwLock::new(None))
}

fn build(threads: usize) -> Result<Arc<ThreadPool>, String> {
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("lnrs-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| format!("could not start {threads} threads: {e}"))
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The pool, started with one thread per core on first use. Callers keep their
/// `Arc`, so a concurrent `set_num_threads` never pulls a pool from under them.
pub fn pool() -> Arc<ThreadPool> {
    if let Some(p) = pool_slot()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        return Arc::clone(p);
    }
    let mut slot = pool_slot().write().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        *slot = Some(build(default_threads()).expect("starting the default thread pool"));
    }
    Arc::clone(slot.as_ref().expect("just set"))
}

/// Replace the pool with one of `threads` threads (≥ 1).
pub fn set_num_threads(threads: usize) -> Result<(), String> {
    if threads == 0 {
        return Err("the thread count must be at least 1, got 0".into());
    }
    let new = build(threads)?;
    *pool_slot().write().unwrap_or_else(|e| e.into_inner()) = Some(new);
    Ok(())
}

pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// The pool to use for `elements` of work over `rows` rows, or None to run
/// inline on the calling thread.
fn pool_for(rows: usize, elements: usize) -> Option<Arc<ThreadPool>> {
    if elements <= INLINE_MAX_ELEMENTS || rows < 2 {
        return None;
    }
    Some(pool()).filter(|p| p.current_num_threads() > 1)
}

/// Call `f(first_row, y_rows, a_rows, b_rows)` over contiguous blocks of rows,
/// where `y` has `cols` elements per row and `a`, `b` one per row. Small work
/// runs inline on the calling thread.
pub fn for_row_blocks<Y, A, B, F>(
    rows: usize,
    cols: usize,
    y: &mut [Y],
    a: &mut [A],
    b: &mut [B],
    f: F,
) where
    Y: Send,
    A: Send,
    B: Send,
    F: Fn(usize, &mut [Y], &mut [A], &mut [B]) + Sync,
{
    let total = rows * cols;
    let Some(pool) = pool_for(rows, total) else {
        f(0, y, a, b);
        return;
    };
    let block = rows_per_task(&pool, rows, total);
    pool.install(|| {
        y.par_chunks_mut(block * cols)
            .zip(a.par_chunks_mut(block))
            .zip(b.par_chunks_mut(block))
            .enumerate()
            .for_each(|(i, ((y, a), b))| f(i * block, y, a, b));
    });
}

/// Rows per parallel task: enough tasks to balance the threads, none tiny.
fn rows_per_task(pool: &ThreadPool, rows: usize, total: usize) -> usize {
    let tasks = (pool.current_num_threads() * TASKS_PER_THREAD)
        .min(total.div_ceil(MIN_TASK_ELEMENTS))
        .clamp(1, rows);
    rows.div_ceil(tasks)
}

/// `for_row_blocks` for an output alone.
pub fn for_rows<Y, F>(rows: usize, cols: usize, y: &mut [Y], f: F)
where
    Y: Send,
    F: Fn(usize, &mut [Y]) + Sync,
{
    let Some(pool) = pool_for(rows, rows * cols) else {
        f(0, y);
        return;
    };
    let block = rows_per_task(&pool, rows, rows * cols);
    pool.install(|| {
        y.par_chunks_mut(block * cols)
            .enumerate()
            .for_each(|(i, y)| f(i * block, y));
    });
}

/// At most this many fixed blocks for reductions over rows.
const MAX_FIXED_BLOCKS: usize = 64;

/// Rows per block for a reduction over `rows × cols`: a function of the shape
/// alone, never of the thread count, so that the partial sums, and the order
/// they are merged in, are the same however many threads run.
pub fn fixed_block_rows(rows: usize, cols: usize) -> usize {
    rows.div_ceil(MAX_FIXED_BLOCKS)
        .max(MIN_TASK_ELEMENTS.div_ceil(cols.max(1)))
        .clamp(1, rows.max(1))
}

/// Call `f(first_row, y_rows, partial)` for each block of `block_rows` rows, with
/// `partial` that block's own `partial_len` slice of `partials`. Blocks run in
/// parallel when the work is large enough, inline otherwise; either way each
/// block computes the same values.
pub fn for_fixed_blocks<Y, F>(
    rows: usize,
    cols: usize,
    block_rows: usize,
    y: &mut [Y],
    partials: &mut [f64],
    partial_len: usize,
    f: F,
) where
    Y: Send,
    F: Fn(usize, &mut [Y], &mut [f64]) + Sync,
{
    let Some(pool) = pool_for(rows, rows * cols) else {
        let blocks = y
            .chunks_mut(block_rows * cols)
            .zip(partials.chunks_mut(partial_len));
        blocks
            .enumerate()
            .for_each(|(i, (y, p))| f(i * block_rows, y, p));
        return;
    };
    pool.install(|| {
        y.par_chunks_mut(block_rows * cols)
            .zip(partials.par_chunks_mut(partial_len))
            .enumerate()
            .for_each(|(i, (y, p))| f(i * block_rows, y, p));
    });
}

/// `f(offset, piece)` of each `block`-sized piece of `x` (the last may be
/// shorter), computed on `pool` and returned in order.
pub fn map_blocks<T, R, F>(pool: &ThreadPool, x: &[T], block: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &[T]) -> R + Sync,
{
    pool.install(|| {
        x.par_chunks(block)
            .enumerate()
            .map(|(i, x)| f(i * block, x))
            .collect()
    })
}

/// `f(offset, a_piece, b_piece, c_piece)` over equal `block`-sized pieces of
/// three slices of one length, on `pool`.
pub fn for_blocks_mut3<A, B, C, F>(
    pool: &ThreadPool,
    a: &mut [A],
    b: &mut [B],
    c: &mut [C],
    block: usize,
    f: F,
) where
    A: Send,
    B: Send,
    C: Send,
    F: Fn(usize, &mut [A], &mut [B], &mut [C]) + Sync,
{
    pool.install(|| {
        a.par_chunks_mut(block)
            .zip(b.par_chunks_mut(block))
            .zip(c.par_chunks_mut(block))
            .enumerate()
            .for_each(|(i, ((a, b), c))| f(i * block, a, b, c));
    });
}

/// `f(offset, y_piece)` for each `block`-sized piece of `y`, on `pool`.
pub fn for_blocks_mut<Y, F>(pool: &ThreadPool, y: &mut [Y], block: usize, f: F)
where
    Y: Send,
    F: Fn(usize, &mut [Y]) + Sync,
{
    pool.install(|| {
        y.par_chunks_mut(block)
            .enumerate()
            .for_each(|(i, y)| f(i * block, y));
    });
}

/// The pool when rows are too few to keep every thread busy and each is long
/// enough to share: then threads split each row instead.
pub fn pool_for_long_rows(rows: usize, cols: usize, long_row: usize) -> Option<Arc<ThreadPool>> {
    if cols < long_row {
        return None;
    }
    Some(pool()).filter(|p| p.current_num_threads() > 1 && rows < p.current_num_threads())
}

/// Tests that set the thread count hold this, so that they see their own count.
#[cfg(test)]
pub fn thread_count_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
