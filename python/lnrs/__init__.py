"""lnrs: layer normalisation for NumPy, with Rust SIMD kernels.

Functions
---------
layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None)
layer_norm_forward(...) -> (y, mean, rstd)
layer_norm_backward(dy, x, mean, rstd, normalized_shape, weight=None, *, eps=None)
    -> (dx, dweight, dbias)
rms_norm(x, normalized_shape, weight=None, eps=None, *, out=None)
rms_norm_forward(...) -> (y, rstd)
rms_norm_backward(dy, x, rstd, normalized_shape, weight=None, *, eps=None) -> (dx, dweight)
add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *, out=None,
               sum_out=None) -> (y, x + residual)
add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, *, out=None, sum_out=None)
    -> (y, x + residual)

dtypes: float32, float64, float16 and bfloat16 (ml_dtypes); any array-like, DLPack
or buffer-protocol producer on the CPU.

Modules
-------
lnrs.testing   exact references, ulp errors, adversarial inputs, compare()
lnrs.torch     drop-in torch.nn.LayerNorm / RMSNorm on lnrs kernels (needs torch)
set_num_threads(n), get_num_threads(), simd_level()

Classes
-------
LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, dtype=np.float32)
RMSNorm(normalized_shape, eps=None, elementwise_affine=True, dtype=np.float32)
    (forward / __call__, backward -> dx into weight_grad / bias_grad, zero_grad)

Environment
-----------
LNRS_NUM_THREADS  threads for large inputs (default: the number of cores)
LNRS_SIMD         force a lower SIMD level: scalar, avx2, avx512, neon
"""

from . import _config
from ._config import get_num_threads, set_num_threads, simd_level
from ._functional import layer_norm, layer_norm_backward, layer_norm_forward
from ._fused import add_layer_norm, add_rms_norm
from ._lnrs import __version__
from ._module import LayerNorm, RMSNorm
from ._rms_norm import rms_norm, rms_norm_backward, rms_norm_forward

_config.from_environment()

__all__ = [
    "LayerNorm",
    "RMSNorm",
    "__version__",
    "add_layer_norm",
    "add_rms_norm",
    "get_num_threads",
    "layer_norm",
    "layer_norm_backward",
    "layer_norm_forward",
    "rms_norm",
    "rms_norm_backward",
    "rms_norm_forward",
    "set_num_threads",
    "simd_level",
]
