"""An independent LayerNorm reference and the ulp metric the tests measure against.

The reference never calls lnrs. It works in a type wider than the input:
float64 for float32 input (every float32 difference and square is exact or nearly
so there), np.longdouble for float64 input (80-bit extended on x86-64 Linux, 11
more mantissa bits). Statistics are two-pass around a shifted mean: shift by the
wide mean, then correct that mean by the mean of the shifted values, so offset
data keeps its variance.
"""

from __future__ import annotations

import numpy as np

WIDE = {np.dtype(np.float32): np.dtype(np.float64), np.dtype(np.float64): np.dtype(np.longdouble)}

# Below this magnitude errors are measured in ulps of 2**-10, not of the value,
# so that outputs near zero are not held to a relative bound they cannot meet.
ULP_FLOOR = 2.0**-10


def wide_dtype(dtype) -> np.dtype:
    return WIDE[np.dtype(dtype)]


def rows_view(x: np.ndarray, ndims: int) -> np.ndarray:
    """`x` as (rows, cols), the last `ndims` axes flattened."""
    x = np.asarray(x)
    lead = x.shape[: x.ndim - ndims]
    cols = int(np.prod(x.shape[x.ndim - ndims :], dtype=np.int64))
    return x.reshape(int(np.prod(lead, dtype=np.int64)), cols)


def reference_stats(x, ndims: int, eps: float = 1e-5):
    """Per-row (mean, rstd, centred) in the wide type, with lead shape."""
    x = np.asarray(x)
    wide = wide_dtype(x.dtype)
    lead = x.shape[: x.ndim - ndims]
    xr = rows_view(x, ndims).astype(wide)
    n = xr.shape[1]
    m = xr.sum(axis=1, dtype=wide) / wide.type(n)
    d = xr - m[:, None]
    c = d.sum(axis=1, dtype=wide) / wide.type(n)
    mean = m + c
    d = d - c[:, None]
    var = (d * d).sum(axis=1, dtype=wide) / wide.type(n)
    rstd = wide.type(1) / np.sqrt(var + wide.type(eps))
    return mean.reshape(lead), rstd.reshape(lead), d


def reference_layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """(y, mean, rstd) in the wide type; y has x's shape."""
    x = np.asarray(x)
    dims = (normalized_shape,) if np.ndim(normalized_shape) == 0 else tuple(normalized_shape)
    wide = wide_dtype(x.dtype)
    mean, rstd, d = reference_stats(x, len(dims), eps)
    y = d * rstd.reshape(-1)[:, None]
    if weight is not None:
        y = y * np.asarray(weight).astype(x.dtype).astype(wide).reshape(-1)
    if bias is not None:
        y = y + np.asarray(bias).astype(x.dtype).astype(wide).reshape(-1)
    return y.reshape(x.shape), mean, rstd


def ulp_error(y, ref, dtype, floor: float = ULP_FLOOR) -> np.ndarray:
    """|y - ref| in units of the spacing of `dtype` at max(|ref|, floor), elementwise.

    `ref` is in the wide type; the difference is taken there, so it is exact.
    """
    dtype = np.dtype(dtype)
    ref = np.asarray(ref)
    wide = ref.dtype
    diff = np.abs(np.asarray(y).astype(wide) - ref)
    scale = np.maximum(np.abs(ref), wide.type(floor)).astype(dtype)
    return (diff / np.spacing(scale).astype(wide)).astype(np.float64)


def max_ulp(y, ref, dtype, floor: float = ULP_FLOOR) -> float:
    e = ulp_error(y, ref, dtype, floor)
    return float(e.max()) if e.size else 0.0


def affine_ulp_error(y, x, normalized_shape, weight, bias, eps, dtype) -> np.ndarray:
    """ulp error with the floor raised to the size of the addends |xhat·w| and |b|.

    `xhat·w + b` can cancel, and then no method working in the storage type can
    be accurate relative to the (small) result; it can be accurate relative to
    the addends. Used for float64 with both weight and bias.
    """
    ref, _, _ = reference_layer_norm(x, normalized_shape, weight, None, eps)
    yref, _, _ = reference_layer_norm(x, normalized_shape, weight, bias, eps)
    wide = yref.dtype
    b = np.zeros((), wide) if bias is None else np.asarray(bias).astype(dtype).astype(wide)
    scale = np.maximum(np.maximum(np.abs(ref), np.abs(b)), wide.type(ULP_FLOOR))
    diff = np.abs(np.asarray(y).astype(wide) - yref)
    return (diff / np.spacing(scale.astype(dtype)).astype(wide)).astype(np.float64)


def same_bits(a, b) -> bool:
    """Bitwise equality of two arrays, dtype and shape included (NaNs compare by bits)."""
    a, b = np.asarray(a), np.asarray(b)
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()
    )


def reference_layer_norm_backward(dy, x, normalized_shape, weight=None, eps: float = 1e-5):
    """Exact-to-the-wide-type gradients of `sum(layer_norm(x, ...) * dy)`.

    Returns `(dx, dweight, dbias, scales)` in the wide type: `dx` of x's shape,
    `dweight`/`dbias` of shape `normalized_shape` (without a weight, `dweight` is
    what a weight of ones gets), and `scales`, a dict of the magnitudes the
    results are sums of, for error bounds that survive cancellation:
    `dx` -> `rstd·(|g| + mean|g| + |xhat|·mean|g·xhat|)` per element (each of
    `g`, `mean(g)` and `mean(g·xhat)` is rounded relative to those magnitudes
    before any cancellation),
    `dweight` -> `Σ_rows |dy·xhat|`, `dbias` -> `Σ_rows |dy|` per column.
    Statistics are the exact ones of `x` (not a rounded mean/rstd).
    """
    x = np.asarray(x)
    dims = (normalized_shape,) if np.ndim(normalized_shape) == 0 else tuple(normalized_shape)
    wide = wide_dtype(x.dtype)
    _, rstd, d = reference_stats(x, len(dims), eps)
    rstd = rstd.reshape(-1)[:, None]
    n = wide.type(d.shape[1])
    dyr = rows_view(np.asarray(dy).astype(x.dtype), len(dims)).astype(wide)
    if weight is None:
        g = dyr
    else:
        g = dyr * np.asarray(weight).astype(x.dtype).astype(wide).reshape(-1)
    xhat = d * rstd
    a = g.sum(axis=1, dtype=wide)[:, None] / n
    b = (g * xhat).sum(axis=1, dtype=wide)[:, None] / n
    dx = rstd * ((g - a) - xhat * b)
    abs_a = np.abs(g).sum(axis=1, dtype=wide)[:, None] / n
    abs_b = np.abs(g * xhat).sum(axis=1, dtype=wide)[:, None] / n
    dweight = (dyr * xhat).sum(axis=0, dtype=wide)
    dbias = dyr.sum(axis=0, dtype=wide)
    scales = {
        "dx": (rstd * (np.abs(g) + abs_a + np.abs(xhat) * abs_b)).reshape(x.shape),
        "dweight": np.abs(dyr * xhat).sum(axis=0, dtype=wide).reshape(dims),
        "dbias": np.abs(dyr).sum(axis=0, dtype=wide).reshape(dims),
    }
    return dx.reshape(x.shape), dweight.reshape(dims), dbias.reshape(dims), scales


def scaled_ulp_error(y, ref, scale, dtype) -> np.ndarray:
    """|y - ref| in units of the spacing of `dtype` at `scale` (floored at ULP_FLOOR).

    For results that are sums or differences of several terms, `scale` is the
    size of those terms: cancellation then costs nothing in the bound.
    """
    dtype = np.dtype(dtype)
    ref = np.asarray(ref)
    wide = ref.dtype
    diff = np.abs(np.asarray(y).astype(wide) - ref)
    s = np.maximum(np.abs(np.asarray(scale)).astype(wide), wide.type(ULP_FLOOR))
    return (diff / np.spacing(s.astype(dtype)).astype(wide)).astype(np.float64)


# ----------------------------------------------------------------------- RMSNorm


def reference_rms_stats(x, ndims: int, eps: float | None = None):
    """Per-row `rstd = 1/sqrt(mean(x²) + eps)` in the wide type (lead shape), and
    `x` as (rows, cols) in the wide type. `eps=None` is `finfo(x.dtype).eps`, as
    `torch.nn.functional.rms_norm`.

    No rescaling is needed in the wide type for the magnitudes the tests use:
    float32 squares span 1e±90 in float64 and float64 squares 1e±600 in the
    80-bit long double.
    """
    x = np.asarray(x)
    if eps is None:
        eps = float(np.finfo(x.dtype).eps)
    wide = wide_dtype(x.dtype)
    lead = x.shape[: x.ndim - ndims]
    xr = rows_view(x, ndims).astype(wide)
    n = xr.shape[1]
    ms = (xr * xr).sum(axis=1, dtype=wide) / wide.type(n)
    rstd = wide.type(1) / np.sqrt(ms + wide.type(eps))
    return rstd.reshape(lead), xr


def reference_rms_norm(x, normalized_shape, weight=None, eps: float | None = None):
    """(y, rstd) of RMSNorm in the wide type; y has x's shape.

    `y = x / sqrt(mean(x²) + eps) · weight` over the trailing `normalized_shape`
    axes (torch.nn.functional.rms_norm, ONNX RMSNormalization).
    """
    x = np.asarray(x)
    dims = (normalized_shape,) if np.ndim(normalized_shape) == 0 else tuple(normalized_shape)
    wide = wide_dtype(x.dtype)
    rstd, xr = reference_rms_stats(x, len(dims), eps)
    y = xr * rstd.reshape(-1)[:, None]
    if weight is not None:
        y = y * np.asarray(weight).astype(x.dtype).astype(wide).reshape(-1)
    return y.reshape(x.shape), rstd


def reference_rms_norm_backward(dy, x, normalized_shape, weight=None, eps: float | None = None):
    """Exact-to-the-wide-type gradients of `sum(rms_norm(x, ...) * dy)`.

    Returns `(dx, dweight, scales)` in the wide type, with `g = dy·weight`,
    `xhat = x·rstd`: `dx = rstd·(g − xhat·mean(g·xhat))`, `dweight = Σ_rows dy·xhat`
    (what a weight of ones gets without a weight), and `scales` the magnitudes
    they are formed from: `dx` -> `rstd·(|g| + |xhat|·mean|g·xhat|)`,
    `dweight` -> `Σ_rows |dy·xhat|`. rstd is the exact one of `x`.
    """
    x = np.asarray(x)
    dims = (normalized_shape,) if np.ndim(normalized_shape) == 0 else tuple(normalized_shape)
    wide = wide_dtype(x.dtype)
    rstd, xr = reference_rms_stats(x, len(dims), eps)
    rstd = rstd.reshape(-1)[:, None]
    n = wide.type(xr.shape[1])
    dyr = rows_view(np.asarray(dy).astype(x.dtype), len(dims)).astype(wide)
    if weight is None:
        g = dyr
    else:
        g = dyr * np.asarray(weight).astype(x.dtype).astype(wide).reshape(-1)
    xhat = xr * rstd
    b = (g * xhat).sum(axis=1, dtype=wide)[:, None] / n
    dx = rstd * (g - xhat * b)
    abs_b = np.abs(g * xhat).sum(axis=1, dtype=wide)[:, None] / n
    dweight = (dyr * xhat).sum(axis=0, dtype=wide)
    scales = {
        "dx": (rstd * (np.abs(g) + np.abs(xhat) * abs_b)).reshape(x.shape),
        "dweight": np.abs(dyr * xhat).sum(axis=0, dtype=wide).reshape(dims),
    }
    return dx.reshape(x.shape), dweight.reshape(dims), scales


def central_differences(f, a, rel=1e-6):
    """Central differences of scalar f with respect to every element of a (steps of rel
    times the element's magnitude, at least rel)."""
    grad = np.empty(a.shape)
    for i in range(a.size):
        h = rel * max(1.0, abs(a.flat[i]))
        up, down = a.copy(), a.copy()
        up.flat[i] += h
        down.flat[i] -= h
        grad.flat[i] = (f(up) - f(down)) / (up.flat[i] - down.flat[i])
    return grad


def assert_close_fd(got, fd, what):
    """A float64 gradient against central differences of a loss summed exactly."""
    # FD noise: ~1e-16·|loss|/h ≈ 1e-9, truncation ~h² ≈ 1e-12; gradients are O(1).
    atol = 1e-7 * max(1.0, float(np.abs(fd).max()))
    np.testing.assert_allclose(got, fd, rtol=1e-6, atol=atol, err_msg=what)
