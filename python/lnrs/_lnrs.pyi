"""The native module: kernels behind the public API. The norm functions take
kernel-ready arguments and return None for anything else, which the Python layer
then converts or reports."""

import numpy as np

__version__: str

def layer_norm_forward(
    x: object,
    normalized_shape: object,
    weight: object,
    bias: object,
    eps: object,
    out: object,
    stats: bool,
) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The whole forward call for kernel-ready arguments; None for anything else."""

def rms_norm_forward(
    x: object,
    normalized_shape: object,
    weight: object,
    eps: object,
    out: object,
    stats: bool,
) -> np.ndarray | tuple[np.ndarray, np.ndarray] | None:
    """RMSNorm's forward for kernel-ready arguments; None for anything else."""

def add_norm_forward(
    rms: bool,
    x: object,
    residual: object,
    normalized_shape: object,
    weight: object,
    bias: object,
    eps: object,
    out: object,
    sum_out: object,
) -> tuple[np.ndarray, np.ndarray] | None:
    """(y, x + residual) for kernel-ready arguments; None for anything else."""

def norm_backward(
    dy: object,
    x: object,
    mean: object,
    rstd: object,
    normalized_shape: object,
    weight: object,
    eps: object = None,
) -> tuple[np.ndarray, ...] | None:
    """(dx, dweight, dbias) for LayerNorm, (dx, dweight) for RMSNorm (mean None),
    for kernel-ready arguments; None for anything else."""

def triad(x: np.ndarray, y: np.ndarray, a: float, b: float) -> None: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def simd_level() -> str: ...
def set_simd_level(name: str) -> None: ...
def supported_simd_levels() -> list[str]: ...
