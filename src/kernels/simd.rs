//! Run-time SIMD dispatch.
//!
//! Kernels are written once as plain Rust over fixed-width lane arrays and marked
//! `#[inline(always)]`; [`dispatch`] calls them through a function compiled with
//! the chosen target features, so LLVM vectorises the same source for AVX-512,
//! AVX2+FMA, NEON or the baseline. Every level adds in the same order, and fused
//! multiply-adds are written out (`mul_add`, always correctly rounded), so all
//! levels give bitwise identical results and differ in speed only. The price:
//! on an x86-64 CPU without FMA (before 2013) the baseline level computes each
//! fused multiply-add in software, several times slower.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level, from the baseline up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The target's baseline (SSE2 on x86-64, NEON on aarch64).
    Scalar = 0,
    Neon = 1,
    Avx2 = 2,
    Avx512 = 3,
}

impl Level {
    pub const ALL: [Level; 4] = [Level::Scalar, Level::Neon, Level::Avx2, Level::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Neon => "neon",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Whether this CPU can run the level.
    pub fn is_supported(self) -> bool {
        match self {
            Level::Scalar => true,
            #[cfg(target_arch = "aarch64")]
            Level::Neon => true,
            #[cfg(target_arch = "x86_64")]
            Level::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every level this CPU supports, lowest first.
pub fn supported_levels() -> Vec<Level> {
    Level::ALL
        .into_iter()
        .filter(|l| l.is_supported())
        .collect()
}

/// The best level this CPU supports.
pub fn detect() -> Level {
    *supported_levels()
        .last()
        .expect("the scalar level is always supported")
}

const UNSET: u8 = u8::MAX;
static ACTIVE: AtomicU8 = AtomicU8::new(UNSET);

/// The level kernels run at: the best available unless [`set_active`] chose a lower one.
pub fn active() -> Level {
    match ACTIVE.load(Ordering::Relaxed) {
        UNSET => {
            let level = detect();
            ACTIVE.store(level as u8, Ordering::Relaxed);
            level
        }
        v => Level::ALL[v as usize],
    }
}

/// Force a level; fails when this CPU cannot run it.
pub fn set_active(level: Level) -> Result<(), String> {
    if !level.is_supported() {
        let names: Vec<_> = supported_levels().iter().map(|l| l.name()).collect();
        return Err(format!(
            "SIMD level {level:?} is not supported by this CPU; supported: {}",
            names.join(", ")
        ));
    }
    ACTIVE.store(level as u8, Ordering::Relaxed);
    Ok(())
}

/// A unit of kernel work whose body is `#[inline(always)]`, so that it is
/// compiled anew inside each target-feature wrapper below.
pub trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn run_avx512<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn run_avx2<K: Kernel>(k: K) -> K::Output {
    k.run()
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
fn run_neon<K: Kernel>(k: K) -> K::Output {
    k.run()
}

/// Run `k` at `level`. A level the CPU lacks falls back to the scalar path,
/// so a stale or forged level can never reach an illegal instruction.
pub fn dispatch<K: Kernel>(level: Level, k: K) -> K::Output {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if level.is_supported() => {
            // SAFETY: the CPU supports every feature run_avx512 enables.
            unsafe { run_avx512(k) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 if level.is_supported() => {
            // SAFETY: the CPU supports every feature run_avx2 enables.
            unsafe { run_avx2(k) }
        }
        #[cfg(target_arch = "aarch64")]
        Level::Neon => {
            // SAFETY: NEON is part of the aarch64 baseline.
            unsafe { run_neon(k) }
        }
        _ => k.run(),
    }
}
