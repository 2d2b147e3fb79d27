//! `cargo bench`: the kernels alone, per SIMD level, on one thread and on all.
//! Prints nanoseconds per element and GB/s of the bytes each call must move.

use _lnrs::kernels::element::{Element, Param};
use _lnrs::kernels::layer_norm::{layer_norm_forward, Forward, Input};
use _lnrs::kernels::layer_norm_backward::{layer_norm_backward, Backward};
use _lnrs::kernels::simd::{supported_levels, Level};
use _lnrs::kernels::stats::Norm;
use _lnrs::kernels::triad::triad;
use _lnrs::parallel;
use half::{bf16, f16};
use std::time::Instant;

fn best_of<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn forward<T: Element>(level: Level, rows: usize, cols: usize) -> f64 {
    let x: Vec<T> = (0..rows * cols)
        .map(|i| T::from_f64(((i * 7919) % 1000) as f64 * 1e-3))
        .collect();
    let w = vec![T::from_f64(1.5); cols];
    let b = vec![T::from_f64(0.25); cols];
    let mut y = vec![T::ZERO; rows * cols];
    let mut mean = vec![T::Stat::ZERO; rows];
    let mut rstd = vec![T::Stat::ZERO; rows];
    let args = Forward {
        norm: Norm::Layer,
        x: Input::Separate(&x),
        residual: None,
        cols,
        weight: Some(Param::Storage(&w)),
        bias: Some(Param::Storage(&b)),
        eps: 1e-5,
    };
    let reps = (2e8 / (rows * cols) as f64).clamp(3.0, 200.0) as usize;
    best_of(reps, || {
        layer_norm_forward(level, args, &mut y, None, &mut mean, &mut rstd).unwrap()
    })
}

fn backward<T: Element>(level: Level, rows: usize, cols: usize) -> f64 {
    let x: Vec<T> = (0..rows * cols)
        .map(|i| T::from_f64(((i * 7919) % 1000) as f64 * 1e-3))
        .collect();
    let dy: Vec<T> = (0..rows * cols)
        .map(|i| T::from_f64(((i * 104729) % 997) as f64 * 1e-3))
        .collect();
    let w = vec![T::from_f64(1.5); cols];
    let mean = vec![T::Stat::from_f64(0.5); rows];
    let rstd = vec![T::Stat::from_f64(3.4); rows];
    let (mut dx, mut dw, mut db) = (
        vec![T::ZERO; rows * cols],
        vec![T::Stat::ZERO; cols],
        vec![T::Stat::ZERO; cols],
    );
    let args = Backward {
        dy: &dy,
        x: &x,
        mean: Some(&mean),
        rstd: &rstd,
        cols,
        weight: Some(Param::Storage(&w)),
        eps: None,
    };
    let reps = (2e8 / (rows * cols) as f64).clamp(3.0, 200.0) as usize;
    best_of(reps, || {
        layer_norm_backward(level, args, &mut dx, &mut dw, &mut db).unwrap()
    })
}

fn limit<T: Element>(level: Level, rows: usize, cols: usize) -> f64 {
    let x: Vec<T> = (0..rows * cols)
        .map(|i| T::from_f64(i as f64 * 1e-3))
        .collect();
    let mut y = vec![T::ZERO; rows * cols];
    let reps = (2e8 / (rows * cols) as f64).clamp(3.0, 200.0) as usize;
    best_of(reps, || triad(level, &x, &mut y, cols, 1.5, 0.25).unwrap())
}

/// The op's time and the triad's over the same bytes: on the storage type, or
/// for the half types (which the triad does not take) on f32 with half the
/// columns, as `python -m lnrs bench` does.
fn run<T: Element>(
    op: fn(Level, usize, usize) -> f64,
    level: Level,
    rows: usize,
    cols: usize,
) -> (f64, f64) {
    let limit = if std::mem::size_of::<T>() == 2 {
        limit::<f32>(level, rows, cols / 2)
    } else {
        limit::<T>(level, rows, cols)
    };
    (op(level, rows, cols), limit)
}

/// `cargo bench --bench kernels [-- FILTER...]`: only the cases whose label
/// (e.g. "forward f32 8192x4096 avx512 threads 2") contains every FILTER.
fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |label: &str| filters.iter().all(|f| label.contains(f.as_str()));
    let shapes = [(512, 768), (4096, 1024), (8192, 4096)];
    for threads in [1, parallel::num_threads()] {
        parallel::set_num_threads(threads).unwrap();
        for level in supported_levels() {
            for (rows, cols) in shapes {
                for (op, arrays, name, size) in [
                    ("forward", 2, "f32", 4),
                    ("forward", 2, "f64", 8),
                    ("forward", 2, "f16", 2),
                    ("forward", 2, "bf16", 2),
                    ("backward", 3, "f32", 4),
                    ("backward", 3, "f64", 8),
                    ("backward", 3, "f16", 2),
                    ("backward", 3, "bf16", 2),
                ] {
                    let label = format!("{op} {name} {rows}x{cols} {level} threads {threads}");
                    if !wanted(&label) {
                        continue;
                    }
                    let (t, triad) = match (op, name) {
                        ("forward", "f32") => run::<f32>(forward::<f32>, level, rows, cols),
                        ("forward", "f64") => run::<f64>(forward::<f64>, level, rows, cols),
                        ("forward", "f16") => run::<f16>(forward::<f16>, level, rows, cols),
                        ("forward", _) => run::<bf16>(forward::<bf16>, level, rows, cols),
                        (_, "f32") => run::<f32>(backward::<f32>, level, rows, cols),
                        (_, "f64") => run::<f64>(backward::<f64>, level, rows, cols),
                        (_, "f16") => run::<f16>(backward::<f16>, level, rows, cols),
                        _ => run::<bf16>(backward::<bf16>, level, rows, cols),
                    };
                    let n = (rows * cols) as f64;
                    let gbs = (arrays * size) as f64 * n / t / 1e9;
                    // The triad moves 2 arrays; its GB/s is the limit for any count.
                    let limit_gbs = (2 * size) as f64 * n / triad / 1e9;
                    println!(
                        "{label:<42} {:8.3} ms {:6.3} ns/elem {gbs:6.1} GB/s  {:4.2} of triad ({limit_gbs:.1} GB/s)",
                        t * 1e3,
                        t * 1e9 / n,
                        gbs / limit_gbs
                    );
                }
            }
        }
    }
}
