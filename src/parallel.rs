//! How work is split over threads.
//!
//! `set_num_threads(n)` (the Python layer reads `LNRS_NUM_THREADS`; the default
//! is the number of cores) means n threads compute: the calling thread and
//! n − 1 helpers in one rayon pool. The caller never just waits: it starts on
//! the work at once and helpers join as they wake, taking tasks from a shared
//! counter; a helper that wakes after the last task was taken leaves without
//! touching anything. Waking a sleeping thread costs tens of microseconds on a
//! virtual machine, so a plain fork-join would lose that on every mid-sized call.
//!
//! Rows go out in contiguous blocks; every row is computed the same way
//! whichever block or thread it lands in, and reductions over rows use blocks
//! fixed by the shape alone, so results never depend on the thread count.

use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Below this many elements a call runs on the calling thread alone: even a
/// helper that is awake costs a few microseconds to hand work to.
pub const INLINE_MAX_ELEMENTS: usize = 1 << 14;

/// Each task gets at least this many elements, and there are at most
/// `TASKS_PER_THREAD` tasks per thread, to balance load without tiny tasks.
const MIN_TASK_ELEMENTS: usize = 1 << 13;
const TASKS_PER_THREAD: usize = 4;

/// The threads that compute: the caller plus `helpers`.
pub struct Workers {
    threads: usize,
    helpers: Option<ThreadPool>,
}

impl Workers {
    fn new(threads: usize) -> Result<Self, String> {
        let helpers = match threads {
            0 => return Err("the thread count must be at least 1, got 0".into()),
            1 => None,
            n => Some(
                ThreadPoolBuilder::new()
                    .num_threads(n - 1)
                    .thread_name(|i| format!("lnrs-{i}"))
                    .build()
                    .map_err(|e| format!("could not start {threads} threads: {e}"))?,
            ),
        };
        Ok(Workers { threads, helpers })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// `f(item)` for every item, on the caller and the helpers.
    pub fn run<W: Send, F: Fn(W) + Sync>(&self, items: Vec<W>, f: F) {
        let helpers = match &self.helpers {
            Some(h) if items.len() > 1 => h,
            _ => return items.into_iter().for_each(f),
        };
        let n = items.len();
        let slots: Vec<Mutex<Option<W>>> = items.into_iter().map(|w| Mutex::new(Some(w))).collect();
        let task = |i: usize| {
            let item = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(item) = item {
                f(item);
            }
        };
        let task: &(dyn Fn(usize) + Sync) = &task;
        // SAFETY: the lifetime is erased so that helper jobs can hold the
        // pointer. A job calls it only for an index it claimed below `n`, and
        // this function returns only after all `n` claimed tasks are done, so
        // no call can outlive `slots` or `f`.
        let task: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(task) };
        let shared = Arc::new(Shared {
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            n,
            task,
        });
        for _ in 0..helpers.current_num_threads().min(n - 1) {
            let shared = Arc::clone(&shared);
            helpers.spawn(move || shared.work());
        }
        shared.work();
        let mut spins = 0u32;
        while shared.done.load(Ordering::Acquire) < n {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if shared.panicked.load(Ordering::Relaxed) {
            panic!("an lnrs worker thread panicked");
        }
    }
}

/// The task counter a call's caller and helpers share.
struct Shared {
    next: AtomicUsize,
    done: AtomicUsize,
    panicked: AtomicBool,
    n: usize,
    task: *const (dyn Fn(usize) + Sync + 'static),
}

// SAFETY: `task` points to a `Sync` closure that `Workers::run` keeps alive
// until every task it can be called for is done (see there).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            // SAFETY: `i < n` was claimed, so the closure is alive (see `run`).
            let task = unsafe { &*self.task };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::Release);
        }
    }
}

fn slot() -> &'static RwLock<Option<Arc<Workers>>> {
    static WORKERS: OnceLock<RwLock<Option<Arc<Workers>>>> = OnceLock::new();
    WORKERS.get_or_init(|| RwLock::new(None))
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The workers, one thread per core unless set. Callers keep their `Arc`, so
/// a concurrent `set_num_threads` never pulls threads from under them.
pub fn workers() -> Arc<Workers> {
    if let Some(w) = slot().read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return Arc::clone(w);
    }
    let mut slot = slot().write().unwrap_or_else(|e| e.into_inner());
    if slot.is_none() {
        let workers = Workers::new(default_threads()).or_else(|_| Workers::new(1));
        *slot = Some(Arc::new(workers.expect("one thread needs no pool")));
    }
    Arc::clone(slot.as_ref().expect("just set"))
}

/// From now on use `threads` threads (≥ 1), the caller included.
pub fn set_num_threads(threads: usize) -> Result<(), String> {
    let new = Arc::new(Workers::new(threads)?);
    *slot().write().unwrap_or_else(|e| e.into_inner()) = Some(new);
    Ok(())
}

pub fn num_threads() -> usize {
    workers().threads()
}

/// The workers for `elements` of work over `rows` rows, or None to run inline.
fn workers_for(rows: usize, elements: usize) -> Option<Arc<Workers>> {
    if elements <= INLINE_MAX_ELEMENTS || rows < 2 {
        return None;
    }
    Some(workers()).filter(|w| w.threads() > 1)
}

/// Rows per task: enough tasks to balance the threads, none tiny.
fn rows_per_task(threads: usize, rows: usize, total: usize) -> usize {
    let tasks = (threads * TASKS_PER_THREAD)
        .min(total.div_ceil(MIN_TASK_ELEMENTS))
        .clamp(1, rows);
    rows.div_ceil(tasks)
}

/// Outputs that split at row boundaries, so that threads can take blocks of rows.
pub trait Rows: Send + Sized {
    /// The first `n` rows, and the rest.
    fn split_rows(self, n: usize) -> (Self, Self);
}

/// A slice holding `.1` elements per row.
pub struct PerRow<'a, Y>(pub &'a mut [Y], pub usize);

impl<Y: Send> Rows for PerRow<'_, Y> {
    fn split_rows(self, n: usize) -> (Self, Self) {
        let (a, b) = self.0.split_at_mut(n * self.1);
        (PerRow(a, self.1), PerRow(b, self.1))
    }
}

impl<R: Rows> Rows for Option<R> {
    fn split_rows(self, n: usize) -> (Self, Self) {
        match self {
            Some(r) => {
                let (a, b) = r.split_rows(n);
                (Some(a), Some(b))
            }
            None => (None, None),
        }
    }
}

impl<A: Rows, B: Rows> Rows for (A, B) {
    fn split_rows(self, n: usize) -> (Self, Self) {
        let ((a1, a2), (b1, b2)) = (self.0.split_rows(n), self.1.split_rows(n));
        ((a1, b1), (a2, b2))
    }
}

impl<A: Rows, B: Rows, C: Rows> Rows for (A, B, C) {
    fn split_rows(self, n: usize) -> (Self, Self) {
        let ((a1, a2), (b1, b2), (c1, c2)) = (
            self.0.split_rows(n),
            self.1.split_rows(n),
            self.2.split_rows(n),
        );
        ((a1, b1, c1), (a2, b2, c2))
    }
}

/// Call `f(first_row, parts)` over contiguous blocks of the `rows` rows of
/// `parts` (with `cols` elements of work per row). Small work runs inline on
/// the calling thread.
pub fn for_row_blocks<R: Rows, F: Fn(usize, R) + Sync>(rows: usize, cols: usize, parts: R, f: F) {
    let total = rows * cols;
    let Some(workers) = workers_for(rows, total) else {
        return f(0, parts);
    };
    let block = rows_per_task(workers.threads(), rows, total);
    let mut items = Vec::with_capacity(rows.div_ceil(block));
    let (mut rest, mut first) = (parts, 0);
    while first < rows {
        let n = block.min(rows - first);
        let (head, tail) = rest.split_rows(n);
        items.push((first, head));
        (rest, first) = (tail, first + n);
    }
    workers.run(items, |(first, part)| f(first, part));
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
    let blocks = y
        .chunks_mut(block_rows * cols)
        .zip(partials.chunks_mut(partial_len))
        .enumerate();
    match workers_for(rows, rows * cols) {
        None => blocks.for_each(|(i, (y, p))| f(i * block_rows, y, p)),
        Some(workers) => workers.run(blocks.collect(), |(i, (y, p))| f(i * block_rows, y, p)),
    }
}

/// The workers when rows are too few to keep every thread busy and each is
/// long enough to share: then threads split each row instead.
pub fn workers_for_long_rows(rows: usize, cols: usize, long_row: usize) -> Option<Arc<Workers>> {
    if cols < long_row {
        return None;
    }
    Some(workers()).filter(|w| w.threads() > 1 && rows < w.threads())
}

/// `f(offset, piece)` of each `block`-sized piece of `x` (the last may be
/// shorter), computed by `workers` and returned in order.
pub fn map_blocks<T, R, F>(workers: &Workers, x: &[T], block: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &[T]) -> R + Sync,
{
    let mut results: Vec<Option<R>> = std::iter::repeat_with(|| None)
        .take(x.len().div_ceil(block))
        .collect();
    let items: Vec<_> = x
        .chunks(block)
        .zip(results.iter_mut())
        .enumerate()
        .collect();
    workers.run(items, |(i, (x, r))| *r = Some(f(i * block, x)));
    results
        .into_iter()
        .map(|r| r.expect("every block ran"))
        .collect()
}

/// `f(offset, piece)` for each `block`-sized piece of `y`, by `workers`.
pub fn for_blocks_mut<Y, F>(workers: &Workers, y: &mut [Y], block: usize, f: F)
where
    Y: Send,
    F: Fn(usize, &mut [Y]) + Sync,
{
    let items: Vec<_> = y.chunks_mut(block).enumerate().collect();
    workers.run(items, |(i, y)| f(i * block, y));
}

/// `f(offset, a_piece, b_piece, c_piece)` over the i-th pieces of three slices,
/// each cut into pieces of its own size (`offset` counts `a`'s elements), by
/// `workers`.
pub fn for_blocks_mut3<A, B, C, F>(
    workers: &Workers,
    (a, block): (&mut [A], usize),
    (b, b_block): (&mut [B], usize),
    (c, c_block): (&mut [C], usize),
    f: F,
) where
    A: Send,
    B: Send,
    C: Send,
    F: Fn(usize, &mut [A], &mut [B], &mut [C]) + Sync,
{
    let items: Vec<_> = a
        .chunks_mut(block)
        .zip(b.chunks_mut(b_block))
        .zip(c.chunks_mut(c_block))
        .enumerate()
        .collect();
    workers.run(items, |(i, ((a, b), c))| f(i * block, a, b, c));
}

/// Tests that set the thread count hold this, so that they see their own count.
#[cfg(test)]
pub fn thread_count_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_whatever_the_thread_count() {
        for threads in [1, 2, 5] {
            let workers = Workers::new(threads).unwrap();
            let mut out = vec![0u32; 1000];
            let items: Vec<_> = out.chunks_mut(7).enumerate().collect();
            workers.run(items, |(i, c)| {
                c.iter_mut().for_each(|v| *v += i as u32 + 1)
            });
            for (i, c) in out.chunks(7).enumerate() {
                assert!(c.iter().all(|&v| v == i as u32 + 1));
            }
        }
    }

    #[test]
    fn map_blocks_keeps_order() {
        let workers = Workers::new(3).unwrap();
        let x: Vec<u64> = (0..100).collect();
        let sums = map_blocks(&workers, &x, 10, |o, b| (o, b.iter().sum::<u64>()));
        assert_eq!(sums[3], (30, (30..40).sum()));
        assert_eq!(sums.len(), 10);
    }
}
