"""Tools for testing the numerical stability of a LayerNorm: an exact reference,
an ulp metric, adversarial inputs, and a harness that runs any implementation
over them.

Functions
---------
reference_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> (y, mean, rstd)
reference_layer_norm_half(x, ...) -> (y, mean, rstd)     float16 / bfloat16 x
reference_rms_norm(x, normalized_shape, weight=None, eps=None) -> (y, rstd)    any of the four
reference_layer_norm_backward(dy, x, normalized_shape, weight=None, eps=1e-5)
    -> (dx, dweight, dbias)
reference_rms_norm_backward(dy, x, normalized_shape, weight=None, eps=None) -> (dx, dweight)
ulp_error(y, reference, *, per_row=False, floor=2**-10)
adversarial_inputs(dtype=np.float32, seed=0, *, quick=False) -> {name: Case}    any of the four
adversarial_inputs_half(dtype=np.float16, ...): the same, for the half types only
compare(fn, cases=None, dtype=np.float32, *, norm="layer") -> {name: CaseResult}
goal_ulp(dtype) -> lnrs's goal for y in ulps (GOAL_ULP, bfloat16 included)

Adapters for :func:`compare` (``fn(x, normalized_shape, weight, bias, eps) -> y``)
---------------------------------------------------------------------------------
lnrs_fn, numpy_fn, torch_fn, onnxruntime_fn; peer_fn(name) returns one of them, or
None when its package is not installed. RMSNorm (``fn(x, normalized_shape, weight,
eps) -> y``, ``compare(..., norm="rms")``): lnrs_rms_fn, numpy_rms_fn, torch_rms_fn,
onnxruntime_rms_fn (opset 23); peer_fn(name, "rms"). An adapter raises
:class:`NotSupported` for a dtype or operation its peer lacks.

Half types
----------
float16 and bfloat16 (``ml_dtypes.bfloat16``, known by name: this module never
imports ml_dtypes) are read exactly through float32; the exact result is rounded
once to the half type (to nearest, ties to even, with the half type's subnormals
and overflow) by integer arithmetic, or from the correctly rounded float64 value
where that is not exactly halfway between two half-type neighbours (the only place
where rounding twice can differ from rounding once); ``mean``/``rstd`` are float32.
``ulp_error`` measures bfloat16 in its own spacing.

What "exact" means
------------------
The reference treats every input as the real number its bits denote (``x``,
``weight``, ``bias``, and ``eps`` as the Python float given, not rounded to
``x``'s dtype) and evaluates, in exact real arithmetic, per row of ``n``
elements::

    mean = Σx / n
    var  = Σ(x - mean)² / n                 (biased)
    rstd = 1 / sqrt(var + eps)
    y    = (x - mean) · rstd · weight + bias

Each returned number is that real value correctly rounded (to nearest, ties to
even, with subnormals, overflow to ±inf) to the output dtype: ``y`` to ``x``'s
dtype, ``mean``/``rstd`` to float32 for float32 input and float64 for float64
input. There is no tolerance and no "longdouble is probably enough": sums are
exact integers (every float is an integer times a power of two), ``sqrt`` is an
integer square root refined until the rounding is decided, and quotients are
rounded by integer division. The cost is Python integer arithmetic on NumPy
object arrays, about 1 µs an element (a row of 2**20 float32 in under a second).

Conventions where the formula has no real value: a row holding NaN or ±Inf gives
NaN for its ``y`` and ``rstd``, and for its ``mean`` the IEEE sum of the row over
``n`` (±Inf, or NaN); a row with ``var + eps == 0`` (a constant row with
``eps = 0``) gives NaN ``y`` (0/0) and ``rstd = inf``. Other rows are unaffected.
Non-finite ``weight``/``bias`` entries are applied in IEEE float64 arithmetic to a
float64 ``xhat`` (so ``inf · 0`` is NaN): those columns are not exact.

The ulp metric
--------------
``ulp_error`` measures ``|y - ref|`` in units of the spacing of ``y``'s dtype at
``max(|ref|, 2**-10)``: relative accuracy for outputs of normal size, absolute
accuracy of ``2**-10``'s spacing for outputs near zero (where the cancellation
in ``x - mean`` or ``xhat·w + b`` makes relative accuracy unreachable for any
method working in the storage type).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import numpy as np

from . import _checks, _rms_norm
from ._torch_views import numpy_view, tensor_view

__all__ = [
    "Case",
    "CaseResult",
    "GOAL_ULP",
    "GOAL_ULP_HALF",
    "NotSupported",
    "PEERS",
    "RMS_PEERS",
    "ULP_FLOOR",
    "adversarial_inputs",
    "adversarial_inputs_half",
    "case_floor",
    "compare",
    "goal_ulp",
    "lnrs_fn",
    "lnrs_rms_fn",
    "numpy_fn",
    "numpy_rms_fn",
    "onnxruntime_fn",
    "onnxruntime_rms_fn",
    "peer_fn",
    "reference_layer_norm",
    "reference_layer_norm_backward",
    "reference_layer_norm_half",
    "reference_rms_norm",
    "reference_rms_norm_backward",
    "torch_fn",
    "torch_rms_fn",
    "ulp_error",
]

#: Outputs smaller than this are measured in ulps of this value (see :func:`ulp_error`).
ULP_FLOOR = 2.0**-10

#: lnrs's accuracy goal for ``y``, in ulps (:func:`ulp_error`), per input dtype
#: (bfloat16, which needs ml_dtypes: :func:`goal_ulp`).
GOAL_ULP = {np.dtype(np.float32): 2.0, np.dtype(np.float64): 16.0, np.dtype(np.float16): 1.0}

#: The goal for the half types: within 1 ulp of the exactly rounded result.
GOAL_ULP_HALF = 1.0


def goal_ulp(dtype) -> float:
    """lnrs's accuracy goal for ``y`` in ulps for input ``dtype``, bfloat16 included."""
    dt = np.dtype(dtype)
    return GOAL_ULP_HALF if _is_bfloat16(dt) else GOAL_ULP[dt]


# (significand bits, including the hidden one; exponent of the smallest normal; of the largest)
_FORMATS = {np.dtype(np.float32): (24, -126, 127), np.dtype(np.float64): (53, -1022, 1023)}

# Extra bits of a square root beyond the output's significand in the first attempt:
# the rounding is undecided (and retried with more) with a chance of about 2**-_GUARD.
_GUARD = 40


def _format(dtype) -> tuple[int, int, int]:
    dt = np.dtype(dtype)
    if dt not in _FORMATS:
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    return _FORMATS[dt]


# The half types: outputs only (their values are read exactly through float32).
_HALF_FORMATS = {"float16": (11, -14, 15), "bfloat16": (8, -126, 127)}


def _is_bfloat16(dtype) -> bool:
    """ml_dtypes' bfloat16, known by name so that lnrs.testing never imports ml_dtypes."""
    return _checks.is_bfloat16(np.dtype(dtype))


def _is_half(dtype) -> bool:
    return _checks.is_half(np.dtype(dtype))


def _format_any(dtype) -> tuple[int, int, int]:
    """:func:`_format`, and the half types as outputs."""
    dt = np.dtype(dtype)
    if _is_half(dt):
        return _HALF_FORMATS[dt.name]
    return _format(dt)


def _largest(p: int, emax: int) -> float:
    """The largest finite value of a binary format with p significand bits and largest
    exponent emax."""
    return (2.0 - 2.0 ** (1 - p)) * 2.0**emax


def _stat_dtype(dtype) -> np.dtype:
    """The dtype of mean/rstd (and of the exact reading of x) for input `dtype`."""
    dt = np.dtype(dtype)
    return np.dtype(np.float32) if _is_half(dt) else dt


# --------------------------------------------------------------------------------------
# Exact rounding of rationals
# --------------------------------------------------------------------------------------


def _round_ratio(num: int, den: int, dtype) -> float:
    """num/den (den > 0) correctly rounded to `dtype` (to nearest, ties to even,
    with subnormals and overflow to inf), returned as a Python float."""
    p, emin, emax = _format_any(dtype)
    if num == 0:
        return 0.0
    neg = num < 0
    a = -num if neg else num
    # e with 2**e <= a/den < 2**(e+1)
    e = a.bit_length() - den.bit_length()
    if (a << max(-e, 0)) < (den << max(e, 0)):
        e -= 1
    q = max(e, emin) - (p - 1)  # exponent of the last significand bit
    if q >= 0:
        m, rem = divmod(a, den << q)
        twice, half = rem << 1, den << q
    else:
        m, rem = divmod(a << -q, den)
        twice, half = rem << 1, den
    if twice > half or (twice == half and m & 1):
        m += 1
    if m.bit_length() + q > emax + 1:
        value = math.inf
    else:
        value = math.ldexp(m, q)
    return -value if neg else value


def _round_quotients(num: np.ndarray, den, dtype) -> np.ndarray:
    """Elementwise num/den of Python-int object arrays (den > 0), correctly rounded to `dtype`.

    Python's int/int is correctly rounded to float64; float32 goes through float64
    and only a float64 result that lands exactly on a float32 rounding boundary
    (where double rounding could differ) is redone exactly.
    """
    dt = np.dtype(dtype)
    num, den = np.broadcast_arrays(np.asarray(num, dtype=object), np.asarray(den, dtype=object))
    try:
        q = np.asarray(num / den, dtype=object).astype(np.float64)
    except OverflowError:
        q = np.array(
            [_round_ratio(int(a), int(b), np.float64) for a, b in zip(num.ravel(), den.ravel())],
            dtype=np.float64,
        ).reshape(num.shape)
    if dt == np.float64:
        return q
    if _is_half(dt):
        return _round_quotients_half(q, num, den, dt)
    with np.errstate(over="ignore", invalid="ignore"):
        y = q.astype(np.float32)
        y64 = y.astype(np.float64)
        below = np.nextafter(y, np.float32(-np.inf)).astype(np.float64)
        above = np.nextafter(y, np.float32(np.inf)).astype(np.float64)
        boundary = (q == (y64 + below) / 2) | (q == (y64 + above) / 2)
    # Near the overflow threshold the boundary to inf is not a float32 midpoint.
    redo = boundary | (np.abs(q) >= float(np.finfo(np.float32).max))
    for i in zip(*np.nonzero(redo)):
        y[i] = _round_ratio(int(num[i]), int(den[i]), np.float32)
    return y


def _round_float64(q: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """float64 values rounded to the half type `dtype` by hand (to nearest, ties to
    even, with subnormals and overflow to inf), and where each was exactly halfway
    between two neighbours of that type (a tie, or a double-rounding hazard).

    Exact: scaling by powers of two and ``np.rint`` (ties to even) are exact in
    float64 for these magnitudes; the result converts to ``dtype`` without rounding
    (so ml_dtypes' own conversion, which may round twice, is never relied on).
    """
    p, emin, emax = _format_any(dtype)
    q = np.asarray(q, dtype=np.float64)
    finite = np.isfinite(q)
    qf = np.where(finite, q, 0.0)
    _, ex = np.frexp(qf)  # |q| in [2**(ex-1), 2**ex)
    scale = np.maximum(ex - 1, emin) - (p - 1)  # exponent of the spacing at q
    r = np.ldexp(qf, -scale)
    k = np.rint(r)
    tie = np.abs(r - np.trunc(r)) == 0.5
    y = np.ldexp(k, scale)
    top = _largest(p, emax)
    y = np.where(np.abs(y) > top, np.copysign(np.inf, qf), y)
    y = np.where(finite, y, q)
    return y.astype(dtype), tie & finite


def _round_quotients_half(q: np.ndarray, num, den, dtype) -> np.ndarray:
    """The half-type branch of :func:`_round_quotients`: `q`, the float64 quotients
    (correctly rounded), rounded once more; only a `q` that lands exactly halfway
    between two half-type neighbours (where the two roundings could differ from one
    rounding of the exact quotient) is redone exactly."""
    y, tie = _round_float64(q, dtype)
    p, _, emax = _format_any(dtype)
    redo = tie | (np.abs(q) >= _largest(p, emax))
    for i in zip(*np.nonzero(redo)):
        y[i] = _round_ratio(int(num[i]), int(den[i]), dtype)
    return y


def _root(r2n: int, r2d: int, bits: int) -> tuple[int, int, int, bool]:
    """sqrt(r2n / r2d) for r2n, r2d > 0 in lowest terms, as (rn, rd, e, exact):
    the root equals rn/rd·2**e when exact, else lies strictly between
    rn·2**e and (rn + 1)·2**e with rn >= 2**bits (rd = 1)."""
    sn, sd = math.isqrt(r2n), math.isqrt(r2d)
    if sn * sn == r2n and sd * sd == r2d:
        return sn, sd, 0, True
    # A non-square ratio has an irrational root: no scaled floor of it is exact.
    shift = max(0, bits + 2 - (r2n.bit_length() - r2d.bit_length()) // 2)
    return math.isqrt((r2n << (2 * shift)) // r2d), 1, -shift, False


@dataclass
class _Affine:
    """Integer factors for round(c·root·2**ec/dc + b·2**eb) of one row:
    lo = (c·f1 + b·f2)/den and hi = lo + c·f3/den bracket the value (f3 = 0: exact)."""

    f1: int
    f2: int
    f3: int
    den: int


def _affine(root: tuple[int, int, int, bool], ec: int, dc: int, eb: int | None) -> _Affine:
    rn, rd, e0, exact = root
    ec = ec + e0
    lo_exp = ec if eb is None else min(ec, eb)
    up = max(lo_exp, 0)
    f1 = rn << (ec - lo_exp + up)
    f2 = 0 if eb is None else (dc * rd) << (eb - lo_exp + up)
    f3 = 0 if exact else 1 << (ec - lo_exp + up)
    return _Affine(f1, f2, f3, (dc * rd) << max(-lo_exp, 0))


def _round_affine_scalar(c, b, r2, ec, dc, eb, dtype, bits) -> float:
    """The retry path of :func:`_round_affine`: more root bits until decided."""
    b = 0 if b is None else int(b)
    while True:
        bits *= 2
        f = _affine(_root(r2.numerator, r2.denominator, bits), ec, dc, eb)
        lo = c * f.f1 + b * f.f2
        y_lo = _round_ratio(lo, f.den, dtype)
        if f.f3 == 0 or _round_ratio(lo + c * f.f3, f.den, dtype) == y_lo:
            return y_lo
        if bits > 1 << 16:  # pragma: no cover - an exact tie of an irrational value
            raise ArithmeticError("lnrs.testing: rounding undecided after 65536 bits")


def _round_affine(C, B, r2s, ecs, dcs, eb, dtype) -> np.ndarray:
    """round(C·sqrt(r2)·2**ec/dc + B·2**eb) for each row of the object array C.

    r2s, ecs, dcs: per row (Fraction > 0, int, int > 0); B: an object row vector
    (or None) with a common exponent eb.
    """
    p = _format_any(dtype)[0]
    bits = p + _GUARD
    rows = C.shape[0]
    fs = [
        _affine(_root(r2.numerator, r2.denominator, bits), ec, dc, None if B is None else eb)
        for r2, ec, dc in zip(r2s, ecs, dcs)
    ]

    def col(name):
        out = np.empty((rows, 1), dtype=object)
        out[:, 0] = [getattr(f, name) for f in fs]
        return out

    f1, f2, f3, den = col("f1"), col("f2"), col("f3"), col("den")
    lo = C * f1
    if B is not None:
        lo = lo + B * f2
    y = _round_quotients(lo, den, dtype)
    hi = _round_quotients(lo + C * f3, den, dtype)
    for i, j in zip(*np.nonzero(y != hi)):
        y[i, j] = _round_affine_scalar(
            int(C[i, j]), None if B is None else B[j], r2s[i], ecs[i], dcs[i], eb, dtype, bits
        )
    return y


# --------------------------------------------------------------------------------------
# Floats as exact integers
# --------------------------------------------------------------------------------------


def _ints(a: np.ndarray, common: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Finite floats of a 2-D array as (X, e): object array of Python ints and
    per-row exponents with a[i, j] == X[i, j]·2**e[i] exactly (one exponent for
    the whole array when `common`)."""
    p = _format(a.dtype)[0]
    m, ex = np.frexp(a)
    mant = np.ldexp(m.astype(np.float64), p).astype(np.int64)
    exp = ex.astype(np.int64) - p
    nonzero = mant != 0
    big = np.iinfo(np.int64).max
    emin = np.where(nonzero, exp, big).min(axis=None if common else 1, keepdims=True)
    emin = np.where(emin == big, 0, emin)
    shift = np.where(nonzero, exp - emin, 0)
    X = mant.astype(object) << shift.astype(object)
    e = np.broadcast_to(emin, (a.shape[0], 1))[:, 0]
    return X, e


def _vector_ints(v: np.ndarray | None, dtype) -> tuple[np.ndarray | None, int]:
    """A weight or bias (flattened, finite entries; others read as 0) as (ints, exponent)."""
    if v is None:
        return None, 0
    v = np.asarray(v).astype(dtype, copy=False).reshape(1, -1)
    v = np.where(np.isfinite(v), v, 0).astype(dtype)
    X, e = _ints(v, common=True)
    return X[0], int(e[0])


def _as_dims(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    return tuple(int(d) for d in normalized_shape)


def _rows(x: np.ndarray, dims: tuple[int, ...]) -> np.ndarray:
    if not dims or x.shape[x.ndim - len(dims) :] != dims:
        raise ValueError(
            f"normalized_shape {dims} must equal the trailing dimensions of x, "
            f"but x has shape {x.shape}"
        )
    n = math.prod(dims)
    return x.reshape(math.prod(x.shape[: x.ndim - len(dims)]), n)


def _float_input(x, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if x.dtype not in _FORMATS:
        raise TypeError(f"{name} must have dtype float32 or float64, got {x.dtype}")
    return x


def _param(v, name, dims, dtype) -> np.ndarray | None:
    if v is None:
        return None
    v = np.asarray(v)
    if v.shape != dims:
        raise ValueError(f"{name} must have shape {dims} (normalized_shape), got {v.shape}")
    return v.astype(dtype).reshape(-1)


def _row_moments(X: np.ndarray, e: np.ndarray, eps: float, centred: bool = True):
    """Per row: S = ΣX, and as a Fraction var + eps (`centred`) or Σx²/n + eps."""
    n = X.shape[1]
    S = list(X.sum(axis=1)) if n else [0] * X.shape[0]
    Q = list((X * X).sum(axis=1)) if n else [0] * X.shape[0]
    feps = Fraction(eps)
    veps = []
    for s, q, ei in zip(S, Q, e):
        t = n * q - s * s if centred else n * q  # n²·(var or Σx²/n) / 4**e
        var = Fraction(t, n * n) * (Fraction(4) ** int(ei)) if n else Fraction(0)
        veps.append(var + feps)
    return S, veps


def _nonfinite_mean(x_row: np.ndarray) -> float:
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.sum(x_row.astype(np.float64)) / max(x_row.size, 1))


# --------------------------------------------------------------------------------------
# The reference
# --------------------------------------------------------------------------------------


def reference_layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """LayerNorm evaluated exactly and rounded once: ``(y, mean, rstd)``.

    Parameters
    ----------
    x : array_like of float32 or float64
    normalized_shape : int or sequence of int
        The trailing dimensions of ``x`` that make a row.
    weight, bias : array_like, optional
        Of shape ``normalized_shape``; converted to ``x``'s dtype first (as lnrs does).
    eps : float
        Used as the exact value of the Python float given (not rounded to ``x``'s dtype).

    Returns
    -------
    y : ndarray
        ``x``'s shape and dtype, each element the correctly rounded value of
        ``(x - mean)·rstd·weight + bias`` computed in exact real arithmetic.
    mean, rstd : ndarray
        Of shape ``x.shape[:-len(normalized_shape)]``, correctly rounded to
        float32 (float32 input) or float64 (float64 input).

    Notes
    -----
    See the module docstring for what "exact" means and for the NaN/Inf conventions.
    Speed: about 1 µs an element and a few µs a row, whatever the values (a row of
    2**20 float32 in under a second).
    """
    return _reference_layer_norm(_float_input(x), normalized_shape, weight, bias, eps)


def _eps_value(eps) -> float:
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    return eps


def _reference_layer_norm(x: np.ndarray, normalized_shape, weight, bias, eps):
    """The reference for any of float32, float64, float16, bfloat16 ``x``: a half
    type is read exactly as float32 (its statistics dtype), its weight and bias
    taken in float32 (as lnrs takes them), and ``y`` rounded once to the half type."""
    dt = x.dtype
    wide = _stat_dtype(dt)  # x's values are read exactly in this dtype; mean/rstd's dtype
    dims = _as_dims(normalized_shape)
    xr = _rows(x, dims)
    rows, n = xr.shape
    eps = _eps_value(eps)
    w = _param(weight, "weight", dims, wide)
    b = _param(bias, "bias", dims, wide)
    lead = x.shape[: x.ndim - len(dims)]
    y = np.full((rows, n), np.nan, dtype=dt)
    mean = np.full(rows, np.nan, dtype=wide)
    rstd = np.full(rows, np.nan, dtype=wide)
    if rows == 0 or n == 0:
        return y.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)

    finite = np.isfinite(xr).all(axis=1)
    for i in np.nonzero(~finite)[0]:
        mean[i] = _nonfinite_mean(xr[i])
    W, ew = _vector_ints(w, wide)
    B, eb = _vector_ints(b, wide)
    # Rows in blocks of about 2**16 elements (bounded memory for the object arrays).
    block = max(1, (1 << 16) // n)
    good = np.nonzero(finite)[0]
    for start in range(0, good.size, block):
        idx = good[start : start + block]
        X, e = _ints(xr[idx].astype(wide, copy=False))
        S, veps = _row_moments(X, e, eps)
        for k, i in enumerate(idx):
            mean[i] = _round_ratio(S[k] << max(int(e[k]), 0), n << max(-int(e[k]), 0), wide)
            if veps[k] == 0:
                rstd[i] = np.inf
            else:
                rstd[i] = _round_root(1 / veps[k], wide)
        ok = [k for k in range(len(idx)) if veps[k] != 0]
        if not ok:
            continue
        Sc = np.empty((len(ok), 1), dtype=object)
        Sc[:, 0] = [S[k] for k in ok]
        rows_ok = idx[ok]
        # Columns in chunks too, for single long rows.
        for c0 in range(0, n, 1 << 16):
            c1 = min(n, c0 + (1 << 16))
            C = X[ok, c0:c1] * n - Sc  # n·(x - mean) / 2**e
            if W is not None:
                C = C * W[c0:c1]
            y[rows_ok, c0:c1] = _round_affine(
                C,
                None if B is None else B[c0:c1],
                [1 / veps[k] for k in ok],
                [int(e[k]) + ew for k in ok],
                [n] * len(ok),
                eb,
                dt,
            )
    _apply_nonfinite_params(y, xr, mean, rstd, w, b, finite)
    return y.reshape(x.shape), mean.reshape(lead), rstd.reshape(lead)


def _round_root(r2: Fraction, dtype) -> float:
    """sqrt(r2) correctly rounded to `dtype`."""
    bits = _format(dtype)[0] + _GUARD
    while True:
        rn, rd, e0, exact = _root(r2.numerator, r2.denominator, bits)
        lo = _round_ratio(rn << max(e0, 0), rd << max(-e0, 0), dtype)
        if exact or _round_ratio((rn + 1) << max(e0, 0), rd << max(-e0, 0), dtype) == lo:
            return lo
        bits *= 2


def _apply_nonfinite_params(y, xr, mean, rstd, w, b, finite) -> None:
    """IEEE float64 arithmetic on a float64 xhat for columns with non-finite weight/bias."""
    bad = np.zeros(xr.shape[1], dtype=bool)
    if w is not None:
        bad |= ~np.isfinite(w)
    if b is not None:
        bad |= ~np.isfinite(b)
    if not bad.any():
        return
    with np.errstate(all="ignore"):
        d = xr[:, bad].astype(np.float64) - mean.astype(np.float64)[:, None]
        xhat = d * rstd.astype(np.float64)[:, None]
        # Only the sign and zero-ness of xhat matter next to an infinity.
        tiny = np.where(d > 0, 1e-300, np.where(d < 0, -1e-300, 0.0))
        xhat = np.where((xhat == 0) & (d != 0), tiny, xhat)
        wb = 1.0 if w is None else w[bad].astype(np.float64)
        bb = 0.0 if b is None else b[bad].astype(np.float64)
        v = xhat * wb + bb
    v[~finite] = np.nan
    y[:, bad] = v.astype(y.dtype)


def _half_input(x, name: str = "x") -> np.ndarray:
    x = np.asarray(x)
    if not _is_half(x.dtype):
        raise TypeError(f"{name} must have dtype float16 or bfloat16, got {x.dtype}")
    return x


def reference_layer_norm_half(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """:func:`reference_layer_norm` for float16 and bfloat16 (ml_dtypes) input:
    ``(y, mean, rstd)``.

    ``x``'s values are read exactly (through float32), ``weight`` and ``bias`` are
    taken in float32 (as lnrs takes them beside half input: a half-type weight is
    exact in float32, a float32 one is used as it is), ``y`` is the exact value
    correctly rounded once to ``x``'s dtype (to nearest, ties to even, with the half
    type's subnormals and overflow to inf), and ``mean``/``rstd`` are float32,
    correctly rounded. bfloat16 is rounded by this module from the exact rational,
    never by ml_dtypes' conversions.
    """
    return _reference_layer_norm(_half_input(x), normalized_shape, weight, bias, eps)


def reference_rms_norm(x, normalized_shape, weight=None, eps: float | None = None):
    """RMSNorm evaluated exactly and rounded once: ``(y, rstd)``.

    Per row of ``n`` elements, in exact real arithmetic::

        rstd = 1 / sqrt(Σx² / n + eps)
        y    = x · rstd · weight

    Parameters
    ----------
    x : array_like of float32, float64, float16 or bfloat16 (ml_dtypes)
    normalized_shape : int or sequence of int
        The trailing dimensions of ``x`` that make a row.
    weight : array_like, optional
        Of shape ``normalized_shape``; converted to ``x``'s dtype first for float32
        and float64 input, to float32 for half input (as lnrs does).
    eps : float, optional
        The exact value of the Python float given; default ``np.finfo(x.dtype).eps``
        (``2**-7`` for bfloat16), as ``lnrs.rms_norm`` and ``torch.nn.functional.rms_norm``.

    Returns
    -------
    y : ndarray
        ``x``'s shape and dtype, each element correctly rounded (to nearest, ties
        to even, with subnormals and overflow to ±inf).
    rstd : ndarray
        Of shape ``x.shape[:-len(normalized_shape)]``: float32 for float32 and half
        input, float64 for float64, correctly rounded.

    Notes
    -----
    Rows that hold non-finite values follow IEEE arithmetic, as PyTorch, ONNX and
    lnrs do: a row with a NaN gives NaN ``y`` and ``rstd``; a row with ±Inf (and no
    NaN) has a mean square of Inf, so ``rstd = 0`` and ``y = x·0·weight`` (0 for
    finite ``x``, NaN at the infinities). A row with ``Σx²/n + eps == 0`` (zeros
    with ``eps = 0``) gives ``rstd = inf`` and NaN ``y`` (0·inf). Non-finite
    ``weight`` entries are applied in IEEE float64 arithmetic, as in
    :func:`reference_layer_norm`.
    """
    x = np.asarray(x)
    if x.dtype not in _FORMATS and not _is_half(x.dtype):
        raise TypeError(f"x must have dtype float32, float64, float16 or bfloat16, got {x.dtype}")
    dt = x.dtype
    wide = _stat_dtype(dt)
    eps = _eps_value(_rms_norm._eps(x, eps))
    dims = _as_dims(normalized_shape)
    xr = _rows(x, dims)
    rows, n = xr.shape
    w = _param(weight, "weight", dims, wide)
    lead = x.shape[: x.ndim - len(dims)]
    y = np.full((rows, n), np.nan, dtype=dt)
    rstd = np.full(rows, np.nan, dtype=wide)
    if rows == 0 or n == 0:
        return y.reshape(x.shape), rstd.reshape(lead)

    finite = np.isfinite(xr).all(axis=1)
    infinite = ~finite & ~np.isnan(xr).any(axis=1)
    if infinite.any():  # IEEE: mean square inf, rstd 0, y = x·0·w
        rstd[infinite] = 0.0
        with np.errstate(invalid="ignore"):
            v = xr[infinite].astype(np.float64) * 0.0
            if w is not None:
                v = v * w.astype(np.float64)
        y[infinite] = v.astype(dt)
    W, ew = _vector_ints(w, wide)
    block = max(1, (1 << 16) // n)
    good = np.nonzero(finite)[0]
    for start in range(0, good.size, block):
        idx = good[start : start + block]
        X, e = _ints(xr[idx].astype(wide, copy=False))
        _, veps = _row_moments(X, e, eps, centred=False)
        for k, i in enumerate(idx):
            rstd[i] = np.inf if veps[k] == 0 else _round_root(1 / veps[k], wide)
        ok = [k for k in range(len(idx)) if veps[k] != 0]
        if not ok:
            continue
        rows_ok = idx[ok]
        for c0 in range(0, n, 1 << 16):
            c1 = min(n, c0 + (1 << 16))
            C = X[ok, c0:c1]
            if W is not None:
                C = C * W[c0:c1]
            y[rows_ok, c0:c1] = _round_affine(
                C,
                None,
                [1 / veps[k] for k in ok],
                [int(e[k]) + ew for k in ok],
                [1] * len(ok),
                0,
                dt,
            )
    if w is not None and not np.isfinite(w).all():
        zero = np.zeros(rows, dtype=np.float64)
        # Rows with NaN/Inf get NaN there: x·0·w is NaN where w is not finite.
        _apply_nonfinite_params(y, xr, zero, rstd, w, None, finite)
    return y.reshape(x.shape), rstd.reshape(lead)


def reference_layer_norm_backward(dy, x, normalized_shape, weight=None, eps: float = 1e-5):
    """Exact gradients of ``sum(dy · layer_norm(x, normalized_shape, weight, ., eps))``.

    Returns
    -------
    dx : ndarray
        ``x``'s shape and dtype: ``rstd·(g - mean(g) - xhat·mean(g·xhat))`` with
        ``g = dy·weight``, evaluated exactly (the statistics are the exact ones of
        ``x``, not rounded) and correctly rounded.
    dweight : ndarray
        ``Σ_rows dy·xhat`` (what a weight of ones gets when ``weight`` is None),
        correctly rounded: each row's irrational ``rstd`` is bracketed ever more
        tightly until the rounding of the bracketed sum is decided (up to 2**14
        bits; a sum that is exactly a rounding boundary, which only an exact
        cancellation of irrational terms could produce, is returned at that
        precision).
    dbias : ndarray
        ``Σ_rows dy``, correctly rounded.

    Notes
    -----
    Non-finite values: a row whose ``x`` or ``dy`` holds NaN/Inf, or whose
    ``var + eps`` is 0, gets NaN ``dx``; any such ``x`` row makes ``dweight`` NaN;
    a column of ``dy`` holding NaN/Inf gets the IEEE float64 sum as ``dbias``; a
    non-finite weight makes every ``dx`` NaN.
    """
    x = _float_input(x)
    dims = _as_dims(normalized_shape)
    dx, dweight, dbias = _reference_backward(dy, x, dims, weight, _eps_value(eps), centred=True)
    return dx.reshape(x.shape), dweight.reshape(dims), dbias.reshape(dims)


def reference_rms_norm_backward(dy, x, normalized_shape, weight=None, eps: float | None = None):
    """Exact gradients of ``sum(dy · rms_norm(x, normalized_shape, weight, eps))``:
    ``(dx, dweight)``, as ``lnrs.rms_norm_backward`` returns them.

    Parameters
    ----------
    dy, x : array_like of float32 or float64
        Of one shape; ``dy`` is converted to ``x``'s dtype.
    normalized_shape, weight :
        As :func:`reference_rms_norm`.
    eps : float, optional
        The exact value of the Python float given; default ``np.finfo(x.dtype).eps``,
        as ``lnrs.rms_norm``.

    Returns
    -------
    dx : ndarray
        ``x``'s shape and dtype: ``rstd·(g - xhat·mean(g·xhat))`` with ``g = dy·weight``,
        ``xhat = x·rstd`` and ``rstd = 1/sqrt(Σx²/n + eps)`` exact, correctly rounded.
    dweight : ndarray
        ``normalized_shape``, ``x``'s dtype: ``Σ_rows dy·xhat`` (also when ``weight``
        is None), correctly rounded as in :func:`reference_layer_norm_backward`.

    Notes
    -----
    Non-finite values as in :func:`reference_layer_norm_backward`, with
    ``Σx²/n + eps`` in place of ``var + eps``.
    """
    x = _float_input(x)
    dims = _as_dims(normalized_shape)
    eps = _eps_value(_rms_norm._eps(x, eps))
    dx, dweight, _ = _reference_backward(dy, x, dims, weight, eps, centred=False)
    return dx.reshape(x.shape), dweight.reshape(dims)


def _reference_backward(dy, x: np.ndarray, dims, weight, eps: float, centred: bool):
    """The backward of LayerNorm (`centred`) or RMSNorm as (rows, n) ``dx``, ``dweight``
    and ``dbias`` (None for RMSNorm).

    Both are ``dx = rstd·(g - [mean(g)] - xhat·mean(g·xhat))`` and ``dweight =
    Σ_rows dy·xhat`` with ``xhat = D·2**e·rstd/n``, where the integers ``D`` are
    ``n·(x - mean)/2**e`` (LayerNorm) or ``n·x/2**e`` (RMSNorm).
    """
    dt = x.dtype
    xr = _rows(x, dims)
    dy = np.asarray(dy)
    if dy.shape != x.shape:
        raise ValueError(f"dy must have shape {x.shape} (that of x), got {dy.shape}")
    dyr = dy.astype(dt).reshape(xr.shape)
    rows, n = xr.shape
    w = _param(weight, "weight", dims, dt)
    dx = np.full((rows, n), np.nan, dtype=dt)
    dweight = np.full(n, np.nan, dtype=dt)
    dbias = np.zeros(n, dtype=dt) if centred else None
    if rows == 0 or n == 0:
        return dx, dweight, dbias

    xfin = np.isfinite(xr).all(axis=1)
    dyfin_row = np.isfinite(dyr).all(axis=1)
    # dy as exact integers with one exponent for all of dy
    DY, edy = _ints(np.where(np.isfinite(dyr), dyr, 0).astype(dt).reshape(1, -1), common=True)
    DY = DY.reshape(rows, n)
    edy = int(edy[0])
    if centred:
        dbias[:] = _dbias(DY, edy, dyr)

    X, e = _ints(np.where(xfin[:, None], xr, 0).astype(dt))
    S, veps = _row_moments(X, e, eps, centred)
    good = xfin & dyfin_row & np.array([v != 0 for v in veps])
    if w is not None and not np.isfinite(w).all():
        good[:] = False
    W, ew = _vector_ints(w, dt)
    D = X * n - _column(S) if centred else X * n
    G = DY if W is None else DY * W  # g / 2**(edy + ew)

    gi = np.nonzero(good)[0]
    if gi.size:
        J = G[gi].sum(axis=1) if centred else [0] * gi.size  # n·mean(g) / 2**(edy + ew)
        H = (G[gi] * D[gi]).sum(axis=1)
        a1, b1, g1, dens, r2s = [], [], [], [], []
        for k, i in enumerate(gi):
            u = 1 / veps[i]  # rstd²
            # xhat·mean(g·xhat) = D·kappa·rstd·2**(edy + ew)
            kappa = u * Fraction(int(H[k])) * Fraction(4) ** int(e[i]) / n**3
            kn, kd = kappa.numerator, kappa.denominator
            a1.append(n * kd)
            b1.append(-int(J[k]) * kd)
            g1.append(-n * kn)
            dens.append(n * kd)
            r2s.append(u)
        N = G[gi] * _column(a1) + _column(b1) + D[gi] * _column(g1)
        dx[gi] = _round_affine(N, None, r2s, [edy + ew] * len(gi), dens, 0, dt)

    if xfin.all() and all(v != 0 for v in veps):
        dweight[:] = _dweight(DY, D, e, edy, veps, n, dt)
    return dx, dweight, dbias


def _dbias(DY, edy: int, dyr: np.ndarray) -> np.ndarray:
    """Σ_rows dy, exact column sums correctly rounded; IEEE float64 sums for the
    columns holding NaN/Inf (read as 0 in `DY`)."""
    dt = dyr.dtype
    n = DY.shape[1]
    dbias = _round_quotients(
        DY.sum(axis=0) * (1 << max(edy, 0)), np.full(n, 1 << max(-edy, 0), dtype=object), dt
    )
    bad = ~np.isfinite(dyr).all(axis=0)
    if bad.any():
        with np.errstate(all="ignore"):
            dbias[bad] = dyr[:, bad].astype(np.float64).sum(axis=0).astype(dt)
    return dbias


def _column(values) -> np.ndarray:
    out = np.empty((len(values), 1), dtype=object)
    out[:, 0] = values
    return out


def _dweight(DY, D, e, edy, veps, n, dt) -> np.ndarray:
    """Σ_rows dy·xhat = Σ_r DY·D·2**(edy + e_r)·rstd_r / n, bracketed and rounded.

    With one scale 2**-P for all rows, rstd_r·2**P lies in [R_r, R_r + 1] (R_r exact
    when the bracket has width 0); the sum is bracketed by taking each term's
    bound on the side its sign calls for, and P grows until both ends round alike.
    """
    emin = int(min(e))
    A = DY * D * _column([1 << (int(ei) - emin) for ei in e])
    neg = np.where(A < 0, A, 0)
    pos = np.where(A > 0, A, 0)
    r2 = [1 / v for v in veps]
    smallest = min((q.numerator.bit_length() - q.denominator.bit_length()) // 2 for q in r2)
    bits = _format(dt)[0] + _GUARD
    while True:
        P = max(0, bits + 2 - smallest)
        R, inexact = [], []
        for q in r2:
            scaled = q.numerator << (2 * P)
            s = math.isqrt(scaled // q.denominator)
            R.append(s)
            inexact.append(0 if s * s * q.denominator == scaled else 1)
        width = _column(inexact)
        base = (A * _column(R)).sum(axis=0)
        lo = base + (neg * width).sum(axis=0)
        hi = base + (pos * width).sum(axis=0)
        ex = edy + emin - P
        den = np.full(A.shape[1], n << max(-ex, 0), dtype=object)
        y_lo = _round_quotients(lo * (1 << max(ex, 0)), den, dt)
        if bits > 1 << 14 or np.array_equal(
            y_lo, _round_quotients(hi * (1 << max(ex, 0)), den, dt)
        ):
            return y_lo
        bits *= 4


# --------------------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------------------


def ulp_error(y, reference, *, per_row: bool | int = False, floor: float = ULP_FLOOR):
    """``|y - reference|`` in units of the spacing of ``y``'s dtype at ``max(|reference|, floor)``.

    Parameters
    ----------
    y : array_like of float32 or float64 (or float16, or ml_dtypes' bfloat16)
        The result under test; its dtype sets the unit.
    reference : array_like
        The exact result (as :func:`reference_layer_norm` returns), same shape.
    per_row : bool or int
        False: the maximum over all elements, a float. True: the maximum over the
        last axis, an array of shape ``y.shape[:-1]``; an int ``k``: over the last
        ``k`` axes (use ``len(normalized_shape)`` for multi-axis rows).
    floor : float
        Magnitudes below ``floor`` are measured at ``floor`` (default ``2**-10``).

    Non-finite values: where both are NaN, or both the same infinity, the error is
    0; where exactly one is non-finite or they differ (NaN against Inf, +Inf
    against -Inf) it is ``inf``. The difference is taken in a type wider than
    ``y``'s, so it is exact (float32) or nearly so (float64, longdouble).
    """
    y = np.asarray(y)
    ref = np.asarray(reference)
    if y.shape != ref.shape:
        raise ValueError(f"y has shape {y.shape} but reference has shape {ref.shape}")
    if _is_bfloat16(y.dtype):
        return _ulp_error_bfloat16(y, ref, per_row, floor)
    dt = y.dtype if y.dtype.kind == "f" else np.dtype(np.float64)
    wide = np.dtype(np.longdouble) if dt.itemsize >= 8 else np.dtype(np.float64)
    with np.errstate(all="ignore"):
        yw, rw = y.astype(wide), ref.astype(wide)
        finite = np.isfinite(yw) & np.isfinite(rw)
        scale = np.maximum(np.abs(rw), wide.type(floor))
        scale = np.minimum(scale, wide.type(np.finfo(dt).max)).astype(dt)
        unit = np.spacing(scale).astype(wide)
        return _reduce_ulps(yw, rw, finite, unit, per_row)


def _ulp_error_bfloat16(y, ref, per_row, floor):
    """:func:`ulp_error` for ml_dtypes' bfloat16, which NumPy's finfo and spacing
    do not know: the spacing is computed from the format (8 significand bits)."""
    p, emin, emax = _HALF_FORMATS["bfloat16"]
    top = _largest(p, emax)
    with np.errstate(all="ignore"):
        yw, rw = y.astype(np.float64), ref.astype(np.float64)
        finite = np.isfinite(yw) & np.isfinite(rw)
        scale = np.minimum(np.maximum(np.abs(np.where(finite, rw, 0.0)), floor), top)
        scale = _round_float64(scale, y.dtype)[0].astype(np.float64)
        _, ex = np.frexp(scale)
        unit = np.ldexp(1.0, np.maximum(ex - 1, emin) - (p - 1))
        return _reduce_ulps(yw, rw, finite, unit, per_row)


def _reduce_ulps(yw, rw, finite, unit, per_row):
    with np.errstate(all="ignore"):
        err = np.where(finite, np.abs(yw - rw) / unit, 0).astype(np.float64)
        same = (np.isnan(yw) & np.isnan(rw)) | (yw == rw)
    err = np.where(finite | same, err, np.inf)
    if per_row is False or per_row is None:
        return float(err.max()) if err.size else 0.0
    k = 1 if per_row is True else int(per_row)
    if not 1 <= k <= err.ndim:
        raise ValueError(f"per_row must be True or 1..{err.ndim}, got {per_row!r}")
    axes = tuple(range(err.ndim - k, err.ndim))
    if err.size == 0:
        return np.zeros(err.shape[: err.ndim - k])
    return err.max(axis=axes)


# --------------------------------------------------------------------------------------
# Adversarial inputs
# --------------------------------------------------------------------------------------


@dataclass(eq=False)
class Case:
    """One named input: call ``fn(*case.args)``, the arguments in LayerNorm order.

    ``tags`` name what the case tests: ``"exact"`` (every output must equal
    ``bias`` exactly: constant and one-element rows), ``"nonfinite"`` (some rows hold
    NaN/Inf; the others must not be touched), ``"affine"``, ``"long"``, …
    """

    name: str
    x: np.ndarray
    normalized_shape: tuple[int, ...]
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    eps: float = 1e-5
    description: str = ""
    tags: frozenset = frozenset()
    _ref: Any = field(default=None, repr=False)
    _rms_ref: Any = field(default=None, repr=False)

    @property
    def args(self) -> tuple:
        return (self.x, self.normalized_shape, self.weight, self.bias, self.eps)

    @property
    def rms_args(self) -> tuple:
        """The arguments in RMSNorm order, ``(x, normalized_shape, weight, eps)``: no bias."""
        return (self.x, self.normalized_shape, self.weight, self.eps)

    def reference(self):
        """``reference_layer_norm`` of this case, ``(y, mean, rstd)``, computed once
        (:func:`reference_layer_norm_half` for float16 and bfloat16 cases)."""
        if self._ref is None:
            if _is_half(self.x.dtype):
                self._ref = reference_layer_norm_half(*self.args)
            else:
                self._ref = reference_layer_norm(*self.args)
        return self._ref

    def rms_reference(self):
        """``reference_rms_norm`` of this case, ``(y, rstd)``, computed once."""
        if self._rms_ref is None:
            self._rms_ref = reference_rms_norm(*self.rms_args)
        return self._rms_ref


@dataclass(frozen=True)
class _Magnitudes:
    """The values that fit :func:`adversarial_inputs`' cases to one dtype's range."""

    offsets: tuple  # offset_*: c + N(0,1)
    affine: tuple  # offset_*_affine
    spread: tuple  # tiny_spread: values c of the dtype
    big: tuple  # squares_overflow_*: s·N(0,1)
    uniform: float  # squares_overflow_uniform: uniform(±uniform)
    big_spread: int  # squares_overflow_offset: big[1]·(1 + 10**big_spread·N(0,1))
    tiny: float  # squares_underflow
    long_offset: float  # long_rows
    single_offset: float  # long_row_single
    centre: float  # variance_near_eps
    short_offsets: tuple  # rows_of_3, rows_of_4 (multi_axis, one_element_rows), nonfinite_rows
    consts: tuple  # constant_rows
    rounds_equal: float  # constant_rounds_equal
    extremes: tuple  # one_element_rows beside the random ones


def _magnitudes(dt: np.dtype) -> _Magnitudes:
    """The magnitudes of `dt`'s cases (the half types' within float16's or float32's range)."""
    if _is_bfloat16(dt):
        return _Magnitudes(
            offsets=(1e2, 1e3),
            affine=(1e3,),
            spread=(1.0, 3.0, 1e3, 7e4, 1e6, 1e10, 1e20, 1e30),
            big=(1e20, 1e30),
            uniform=(2.0 - 2.0**-7) * 2.0**127,
            big_spread=-2,
            tiny=1e-20,
            long_offset=1e1,
            single_offset=1e2,
            centre=0.0625,
            short_offsets=(1e1, 1e1, 1e1),
            consts=(0.0, 1.0, -3.3, 1e-30, 1e4, 3e38, -1e20, 1e-40),
            rounds_equal=1024.0,
            extremes=(0.0, 1e30, -1e-30, 1e-40),
        )
    if dt == np.float16:
        return _Magnitudes(
            offsets=(1e2, 1e3, 1e4),
            affine=(1e4,),
            spread=(1.0, 3.0, 1e2, 1e3, 7e3, 3e4),
            big=(3e2, 1e4),
            uniform=65504.0,
            big_spread=-2,
            tiny=1e-3,
            long_offset=1e2,
            single_offset=1e3,
            centre=0.0625,
            short_offsets=(1e2, 1e2, 1e2),
            consts=(0.0, 1.0, -3.3, 1e-7, 1e3 + 0.1, 6e4, -3e4, 6e-8),
            rounds_equal=8192.0,
            extremes=(0.0, 6e4, -1e-4, 6e-8),
        )
    f64 = dt == np.float64
    spread = (1.0, 3.0, 1e3, 7e4, 1e6, 3e7, 1e10, 1e20)
    return _Magnitudes(
        offsets=(1e3, 1e4, 1e5, 1e6) + ((1e8,) if f64 else ()),
        affine=(1e4, 1e6) + ((1e8,) if f64 else ()),
        spread=tuple(float(dt.type(c)) for c in spread),
        big=(1e200, 1e300) if f64 else (1e20, 1e30),
        uniform=1e308 if f64 else 3e38,
        big_spread=-3,
        tiny=1e-200 if f64 else 1e-20,
        long_offset=100.0,
        single_offset=1e4,
        centre=5.0,
        short_offsets=(1e3, 1e4, 1e3),
        consts=(0.0, 1.0, -3.3, 1e-30, 1e4 + 0.1, 3e38, -1e20, 1e-40)
        + ((1e300, -1.7e308, 5e-324) if f64 else ()),
        rounds_equal=1e17 if f64 else 1e15,
        extremes=(0.0, 1e30, -1e-30, 1e-45),
    )


def _power_tag(v: float) -> str:
    """1e20 -> '1e20', 3e2 -> '3e2': the magnitude in a case name."""
    return f"{v:.0e}".replace("+", "").replace("e0", "e")


def adversarial_inputs(dtype=np.float32, seed: int = 0, *, quick: bool = False) -> dict:
    """Named LayerNorm (and RMSNorm) inputs that break naive implementations.

    Parameters
    ----------
    dtype : float32, float64, float16 or ml_dtypes.bfloat16
    seed : int
        Seeds the random parts; the same seed gives the same arrays.
    quick : bool
        Shrink the long rows (2**16 → 2**12 elements, the single row of 2**20 → 2**14)
        and the row counts, for a fast smoke run. The names stay the same.

    Returns
    -------
    dict of name -> :class:`Case`
        ``x`` in ``dtype``, with magnitudes fitted to its range. The classes:
        ``offset_*`` (c + N(0,1): 1e3…1e6, and 1e8 for float64; 1e2…1e4 for
        float16, 1e2 and 1e3 for bfloat16; ``offset_*_affine`` with random weight
        and bias), ``tiny_spread`` / ``tiny_spread_eps`` (c + i·δ with δ a few ulps
        of c), ``squares_overflow_*`` (squares past the dtype's range, for bfloat16
        past float32's; ``_uniform`` up to about the largest value),
        ``squares_underflow`` (eps = 0), ``long_rows`` (2**16), ``long_row_single``
        (one row of 2**20), ``outlier`` / ``outlier_first``, ``variance_near_eps``,
        ``rows_of_3`` / ``rows_of_4``, ``multi_axis``, ``constant_rows`` /
        ``constant_rounds_equal`` / ``one_element_rows`` (tag ``exact``: every
        LayerNorm output must equal ``bias``), ``nonfinite_rows`` (tag
        ``nonfinite``).

        The half types' weight and bias are float32 (tag ``weight_float32``: lnrs
        takes float32 parameters beside half input, and they must not lose bits)
        where not said to be in ``dtype``, and they have five more classes:
        ``offset_*_affine_half`` (parameters in ``dtype``), ``subnormal_inputs``
        (eps = 0), ``output_overflow`` / ``output_subnormal`` (weights that push
        ``y`` past the largest or below the smallest normal half value; the latter
        tagged ``unfloored``: measured without the ulp floor, :func:`case_floor`),
        and ``params_float32`` (weight and bias with bits the half type lacks).
        Their references are :func:`reference_layer_norm_half` and
        :func:`reference_rms_norm`.
    """
    dt = np.dtype(dtype)
    half = _is_half(dt)
    if dt not in _FORMATS and not half:
        raise TypeError(f"dtype must be float32, float64, float16 or bfloat16, got {dt}")
    m = _magnitudes(dt)
    p, emin, emax = _format_any(dt)
    top = _largest(p, emax)
    params = np.dtype(np.float32) if half else dt  # the dtype of weight and bias
    rng = np.random.default_rng(seed)
    rows, cols = (8, 256) if quick else (32, 1024)
    long_n, single_n = (1 << 12, 1 << 14) if quick else (1 << 16, 1 << 20)
    cases: dict[str, Case] = {}

    def add(name, x, shape, weight=None, bias=None, eps=1e-5, description="", tags=(), wdt=params):
        x = np.asarray(x, dtype=np.float64)
        x = np.where(np.isfinite(x), np.clip(x, -top, top), x)  # in range; NaN/Inf kept
        x = np.ascontiguousarray(x.astype(dt))
        weight = None if weight is None else np.asarray(weight, np.float64).astype(wdt)
        bias = None if bias is None else np.asarray(bias, np.float64).astype(wdt)
        tags = set(tags) | ({"weight_float32"} if weight is not None and wdt != dt else set())
        cases[name] = Case(
            name, x, _as_dims(shape), weight, bias, eps, description, frozenset(tags)
        )

    def normal(*shape):
        return rng.standard_normal(shape)

    for c in m.offsets:
        add(f"offset_{_power_tag(c)}", c + normal(rows, cols), cols, description=f"{c:g} + N(0,1)")
    # (name suffix, dtype of weight and bias, what the description says of them)
    affine_kinds = [("", params, f"weight N(1, 0.5²) and bias N(0,1) in {params.name}")]
    if half:
        affine_kinds.append(("_half", dt, f"weight and bias in {dt.name}"))
    for c in m.affine:
        for suffix, wdt, said in affine_kinds:
            add(
                f"offset_{_power_tag(c)}_affine{suffix}",
                c + normal(rows, cols),
                cols,
                1 + 0.5 * normal(cols),
                normal(cols),
                description=f"{c:g} + N(0,1), {said}",
                tags={"affine"},
                wdt=wdt,
            )

    # c + i·δ: a spread of a few ulps of c, far below sqrt(eps) and far below c
    n_spread = 256
    xs = []
    for k, c in enumerate(m.spread * 2):
        spacing = 2.0 ** (max(math.frexp(c)[1] - 1, emin) - (p - 1))
        xs.append(c + spacing * (1 + k % 3) * np.arange(n_spread))
    spread = f"c + i·δ, δ = 1..3 ulps of c, c = 1 … {m.spread[-1]:g}"
    add("tiny_spread", np.array(xs), n_spread, eps=0.0, description=f"{spread}, eps = 0")
    add("tiny_spread_eps", np.array(xs), n_spread, description=f"{spread}, eps = 1e-5")

    for s in m.big:
        add(
            f"squares_overflow_{_power_tag(s)}",
            s * normal(rows, cols),
            cols,
            description=f"{s:g}·N(0,1)",
        )
    add(
        "squares_overflow_uniform",
        m.uniform * rng.uniform(-1.0, 1.0, (rows, cols)),
        cols,
        description=f"uniform(±{m.uniform:g})",
    )
    add(
        "squares_overflow_offset",
        m.big[1] * (1 + 10.0**m.big_spread * normal(rows, cols)),
        cols,
        description=f"{m.big[1]:g}·(1 + 1e{m.big_spread}·N(0,1))",
    )
    add(
        "squares_underflow",
        m.tiny * normal(rows, cols),
        cols,
        eps=0.0,
        description=f"{m.tiny:g}·N(0,1), eps = 0",
    )
    if half:
        _add_half_cases(add, normal, rng, dt, rows, cols)
    add(
        "long_rows",
        m.long_offset + 3 * normal(4 if not quick else 2, long_n),
        long_n,
        description=f"rows of {long_n}: {m.long_offset:g} + 3·N(0,1)",
        tags={"long"},
    )
    add(
        "long_row_single",
        m.single_offset + normal(1, single_n),
        single_n,
        description=f"one row of {single_n}: {m.single_offset:g} + N(0,1)",
        tags={"long"},
    )
    x = normal(rows, cols)
    x[np.arange(rows), rng.integers(1, cols, rows)] = 1e4 * rng.choice([-1.0, 1.0], rows)
    add("outlier", x, cols, description="N(0,1) with one ±1e4 per row")
    x = normal(rows, cols)
    x[:, 0] = 1e4 * rng.choice([-1.0, 1.0], rows)
    add("outlier_first", x, cols, description="N(0,1) with ±1e4 at position 0")
    scales = np.sqrt(1e-5) * np.geomspace(0.03, 30, rows)[:, None]
    add(
        "variance_near_eps",
        scales * normal(rows, cols) + m.centre,
        cols,
        description=f"{m.centre:g} + s·N(0,1), s² = 1e-3…1e3 × eps",
    )
    short = 256 if quick else 2048
    three, four, last = m.short_offsets
    add(
        "rows_of_3",
        three + normal(short, 3),
        3,
        1 + normal(3),
        normal(3),
        description=f"{three:g} + N(0,1), 3 per row, weight and bias in {dt.name}",
        tags={"affine"},
        wdt=dt,
    )
    add("rows_of_4", four + normal(short, 4), 4, description=f"{four:g} + N(0,1), 4 per row")
    add(
        "multi_axis",
        four + normal(4, 3, 16, 24),
        (16, 24),
        1 + 0.5 * normal(16, 24),
        normal(16, 24),
        description=f"normalized_shape (16, 24) of (4, 3, 16, 24), {four:g} + N(0,1), "
        f"weight and bias in {params.name}",
        tags={"affine"},
    )
    x = np.repeat(np.array(m.consts)[:, None], 96, axis=1)
    add(
        "constant_rows",
        x,
        96,
        normal(96),
        normal(96),
        description="constant rows of 0, ±small, ±huge, subnormal values; "
        f"weight and bias in {params.name}",
        tags={"exact"},
    )
    add(
        "constant_rounds_equal",
        m.rounds_equal + np.tile(np.arange(5.0), (4, 1)),
        5,
        normal(5),
        normal(5),
        description=f"{m.rounds_equal:g} + 0…4, which round to one value; "
        f"weight and bias in {dt.name}",
        tags={"exact"},
        wdt=dt,
    )
    add(
        "one_element_rows",
        np.concatenate([four + normal(32), m.extremes])[:, None],
        1,
        [2.5],
        [-0.75],
        description="rows of one element: y = bias whatever the weight",
        tags={"exact"},
    )
    x = last + normal(8, 64)
    x[1, 5] = np.nan
    x[3, 0] = np.inf
    x[5, 63] = -np.inf
    x[7, [2, 9]] = [np.inf, -np.inf]
    add(
        "nonfinite_rows",
        x,
        64,
        description="rows 1, 3, 5, 7 hold NaN / Inf; rows 0, 2, 4, 6 must stay finite and exact",
        tags={"nonfinite"},
    )
    return cases


def _add_half_cases(add, normal, rng, dt: np.dtype, rows: int, cols: int) -> None:
    """The cases only the half types have: subnormal inputs and outputs, outputs that
    overflow, float32 parameters with bits the half type lacks."""
    p, emin, emax = _format_any(dt)
    top = _largest(p, emax)
    sub = 2.0 ** (emin - 3)
    add(
        "subnormal_inputs",
        sub * normal(rows, cols),
        cols,
        eps=0.0,
        description=f"2**{emin - 3}·N(0,1): subnormal {dt.name} values, eps = 0",
    )
    add(
        "output_overflow",
        normal(rows, cols),
        cols,
        np.full(cols, top / 2.5),
        description=f"N(0,1), float32 weight {top / 2.5:.3g}: y past {dt.name}'s largest",
    )
    add(
        "output_subnormal",
        normal(rows, cols),
        cols,
        np.full(cols, 2.0 ** (emin - 2)),
        normal(cols) * 2.0 ** (emin - 4),
        description=f"N(0,1), float32 weight 2**{emin - 2}: y subnormal in {dt.name}, "
        "measured without the ulp floor",
        tags={"unfloored"},
    )
    add(
        "params_float32",
        normal(rows, cols),
        cols,
        1 + 2.0**-20 * rng.integers(1, 1 << 12, cols),
        1 + 2.0**-18 * rng.integers(1, 1 << 12, cols),
        description=f"N(0,1), float32 weight and bias with bits {dt.name} lacks",
        tags={"affine"},
    )


def adversarial_inputs_half(dtype=np.float16, seed: int = 0, *, quick: bool = False) -> dict:
    """:func:`adversarial_inputs` for float16 or ml_dtypes.bfloat16 only (a TypeError
    for other dtypes); kept for code written before that took the half types."""
    if not _is_half(np.dtype(dtype)):
        raise TypeError(f"dtype must be float16 or bfloat16, got {np.dtype(dtype)}")
    return adversarial_inputs(dtype, seed, quick=quick)


# --------------------------------------------------------------------------------------
# Implementations to compare
# --------------------------------------------------------------------------------------


def lnrs_fn(x, normalized_shape, weight, bias, eps):
    """lnrs.layer_norm."""
    import lnrs

    return lnrs.layer_norm(x, normalized_shape, weight, bias, eps)


def numpy_fn(x, normalized_shape, weight, bias, eps):
    """A naive two-pass LayerNorm in NumPy in the input dtype (float32 for float32)."""
    x = np.asarray(x)
    axes = tuple(range(x.ndim - len(_as_dims(normalized_shape)), x.ndim))
    with np.errstate(all="ignore"):
        mean = x.mean(axis=axes, keepdims=True, dtype=x.dtype)
        d = x - mean
        var = (d * d).mean(axis=axes, keepdims=True, dtype=x.dtype)
        y = d / np.sqrt(var + x.dtype.type(eps))
        if weight is not None:
            y = y * np.asarray(weight, dtype=x.dtype)
        if bias is not None:
            y = y + np.asarray(bias, dtype=x.dtype)
    return y


def torch_fn(x, normalized_shape, weight, bias, eps):
    """torch.nn.functional.layer_norm on the CPU (raises ImportError without torch)."""
    try:
        import torch
    except ImportError as err:
        raise ImportError("torch_fn needs PyTorch: pip install torch") from err

    def t(a):
        return None if a is None else _to_torch(torch, a, x.dtype)

    with torch.no_grad():
        y = torch.nn.functional.layer_norm(
            t(x), tuple(_as_dims(normalized_shape)), t(weight), t(bias), eps
        )
    return numpy_view(y)


def _to_torch(torch, a, dtype):
    """`a` in `dtype` as a CPU tensor."""
    return tensor_view(torch, np.ascontiguousarray(np.asarray(a).astype(dtype, copy=False)))


_ORT_SESSIONS: dict = {}


def onnxruntime_fn(x, normalized_shape, weight, bias, eps):
    """ONNX ``LayerNormalization`` (opset 17) in ONNX Runtime's CPU provider
    (raises ImportError without onnx and onnxruntime). The epsilon attribute is
    stored as float32, as ONNX defines it; float64 input computes in float64
    (``stash_type`` = double)."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import helper
    except ImportError as err:
        raise ImportError(
            "onnxruntime_fn needs onnx and onnxruntime: pip install onnx onnxruntime"
        ) from err
    x = np.ascontiguousarray(x)
    _ort_dtype_supported(x.dtype)
    dims = _as_dims(normalized_shape)
    key = (x.dtype.str, x.ndim, dims, bias is not None, float(eps))
    session = _ORT_SESSIONS.get(key)
    if session is None:
        model = _ort_model(helper, "LayerNormalization", 17, x, dims, eps, bias is not None)
        model.ir_version = min(model.ir_version, 8)
        onnx.checker.check_model(model)
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        _ORT_SESSIONS[key] = session
    feeds = {"x": x, "w": np.ones(dims, x.dtype) if weight is None else np.asarray(weight, x.dtype)}
    if bias is not None:
        feeds["b"] = np.asarray(bias, x.dtype)
    return session.run(None, feeds)[0]


def _ort_model(helper, op: str, opset: int, x: np.ndarray, dims, eps, bias: bool):
    """A one-node ONNX model: ``op`` (LayerNormalization or RMSNormalization) at ``opset``
    over the trailing ``dims`` of an input of x's dtype and rank, with a weight (and a
    bias); computed in float32 for float16, else in x's dtype (``stash_type``)."""
    elem = _ORT_ELEM[x.dtype.name]
    names = ["x", "w", "b"] if bias else ["x", "w"]
    inputs = [helper.make_tensor_value_info("x", elem, [None] * x.ndim)]
    inputs += [helper.make_tensor_value_info(n, elem, list(dims)) for n in names[1:]]
    node = helper.make_node(
        op,
        names,
        ["y"],
        axis=x.ndim - len(dims),
        epsilon=float(eps),
        stash_type=_ORT_ELEM["float32"] if x.dtype == np.float16 else elem,
    )
    output = helper.make_tensor_value_info("y", elem, [None] * x.ndim)
    graph = helper.make_graph([node], op, inputs, [output])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


class NotSupported(TypeError):
    """A peer has no implementation for this dtype or operation (reported as n/a)."""


# ONNX tensor element types by dtype name (TensorProto's values: FLOAT, DOUBLE, FLOAT16).
_ORT_ELEM = {"float32": 1, "float64": 11, "float16": 10}


def _ort_dtype_supported(dtype) -> None:
    if np.dtype(dtype).name not in _ORT_ELEM:
        raise NotSupported(f"ONNX Runtime's Python binding takes no {np.dtype(dtype).name} arrays")


def lnrs_rms_fn(x, normalized_shape, weight, eps):
    """lnrs.rms_norm."""
    import lnrs

    return lnrs.rms_norm(x, normalized_shape, weight, eps)


def numpy_rms_fn(x, normalized_shape, weight, eps):
    """A naive RMSNorm in NumPy in the input dtype: ``x / sqrt(mean(x*x) + eps) * weight``."""
    x = np.asarray(x)
    axes = tuple(range(x.ndim - len(_as_dims(normalized_shape)), x.ndim))
    with np.errstate(all="ignore"):
        ms = (x * x).mean(axis=axes, keepdims=True, dtype=x.dtype)
        y = x / np.sqrt(ms + x.dtype.type(eps))
        if weight is not None:
            y = y * np.asarray(weight, dtype=x.dtype)
    return y


def torch_rms_fn(x, normalized_shape, weight, eps):
    """torch.nn.functional.rms_norm on the CPU (raises ImportError without torch;
    NotSupported where this torch has no rms_norm)."""
    try:
        import torch
    except ImportError as err:
        raise ImportError("torch_rms_fn needs PyTorch: pip install torch") from err
    rms_norm = getattr(torch.nn.functional, "rms_norm", None)
    if rms_norm is None:
        raise NotSupported(f"torch {torch.__version__} has no nn.functional.rms_norm")
    with torch.no_grad():
        y = rms_norm(
            _to_torch(torch, x, x.dtype),
            tuple(_as_dims(normalized_shape)),
            None if weight is None else _to_torch(torch, weight, x.dtype),
            eps,
        )
    return numpy_view(y)


def onnxruntime_rms_fn(x, normalized_shape, weight, eps):
    """ONNX ``RMSNormalization`` (opset 23) in ONNX Runtime's CPU provider (raises
    ImportError without onnx and onnxruntime; NotSupported where the installed
    ONNX Runtime does not run opset 23, and for bfloat16)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
        from onnx import helper
    except ImportError as err:
        raise ImportError(
            "onnxruntime_rms_fn needs onnx and onnxruntime: pip install onnx onnxruntime"
        ) from err
    x = np.ascontiguousarray(x)
    _ort_dtype_supported(x.dtype)
    dims = _as_dims(normalized_shape)
    key = ("rms", x.dtype.str, x.ndim, dims, float(eps))
    session = _ORT_SESSIONS.get(key)
    if session is None:
        model = _ort_model(helper, "RMSNormalization", 23, x, dims, eps, bias=False)
        try:
            session = ort.InferenceSession(
                model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # an older runtime: no opset 23
            raise NotSupported(
                f"ONNX Runtime {ort.__version__} cannot run RMSNormalization (opset 23): {err}"
            ) from None
        _ORT_SESSIONS[key] = session
    w = np.ones(dims, x.dtype) if weight is None else np.asarray(weight).astype(x.dtype)
    return session.run(None, {"x": x, "w": w})[0]


#: The RMSNorm adapters (``fn(x, normalized_shape, weight, eps) -> y``) of the peers
#: of :data:`PEERS`; they need the same modules.
RMS_PEERS = {"numpy": numpy_rms_fn, "onnxruntime": onnxruntime_rms_fn, "torch": torch_rms_fn}


#: The peers :func:`peer_fn` knows, and the modules each needs.
PEERS = {
    "numpy": (numpy_fn, ("numpy",)),
    "onnxruntime": (onnxruntime_fn, ("onnx", "onnxruntime")),
    "torch": (torch_fn, ("torch",)),
}


def peer_fn(name: str, norm: str = "layer") -> Callable | None:
    """The adapter named ``name`` (a key of :data:`PEERS`, or ``"lnrs"``), or None
    when a package it needs is not installed. ``norm="rms"``: its RMSNorm adapter
    (:data:`RMS_PEERS`, ``fn(x, normalized_shape, weight, eps) -> y``)."""
    import importlib.util

    if norm not in ("layer", "rms"):
        raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")
    if name == "lnrs":
        return lnrs_fn if norm == "layer" else lnrs_rms_fn
    if name not in PEERS:
        raise ValueError(f"unknown implementation {name!r}; known: lnrs, {', '.join(PEERS)}")
    fn, modules = PEERS[name]
    for module in modules:
        if importlib.util.find_spec(module) is None:
            return None
    return fn if norm == "layer" else RMS_PEERS[name]


# --------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """What :func:`compare` found for one case.

    ``max_ulp``: the largest :func:`ulp_error` of the output (``inf`` when ``fn``
    raised, returned the wrong shape, or put NaN/Inf where the reference has
    none). ``nonfinite``: ``fn`` produced NaN/Inf where the reference is finite.
    ``error``: the exception ``fn`` raised, as text, or None. ``unsupported``: that
    exception was :class:`NotSupported` (the peer lacks the dtype or operation).
    """

    name: str
    max_ulp: float
    nonfinite: bool
    error: str | None = None
    unsupported: bool = False


def compare(fn: Callable, cases=None, dtype=np.float32, *, norm: str = "layer") -> dict:
    """Run a LayerNorm over adversarial cases and measure it against the exact reference.

    Parameters
    ----------
    fn : callable
        ``fn(x, normalized_shape, weight, bias, eps) -> y``: ``x`` an ndarray,
        ``normalized_shape`` a tuple of ints (the trailing axes of ``x``),
        ``weight``/``bias`` ndarrays of that shape in ``x``'s dtype or None,
        ``eps`` a float; ``y`` anything ``np.asarray`` takes, of ``x``'s shape.
        Wrap other conventions: e.g. for PyTorch see :func:`torch_fn`.
    cases : mapping of name -> Case, or iterable of Case, optional
        Default ``adversarial_inputs(dtype)``. Each case's reference is computed
        once and kept on the case, so passing the same cases to several ``compare``
        calls costs the reference only once.
    dtype : float32, float64, float16 or bfloat16
        The dtype of the default cases.
    norm : "layer" or "rms"
        ``"rms"``: ``fn(x, normalized_shape, weight, eps) -> y`` is an RMSNorm,
        measured against :func:`reference_rms_norm` (the cases' bias is unused).

    Returns
    -------
    dict of name -> :class:`CaseResult`
        The error is measured in ulps of ``y``'s dtype as it comes back (an
        implementation that returns float64 for float32 input is measured in
        float64 ulps). An ``ImportError`` from ``fn`` propagates; other exceptions
        are recorded in the result.
    """
    if norm not in ("layer", "rms"):
        raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")
    if cases is None:
        cases = adversarial_inputs(dtype)
    items = cases.values() if isinstance(cases, Mapping) else cases
    results = {}
    for case in items:
        results[case.name] = _run_case(fn, case, norm == "rms")
    return results


def _run_case(fn: Callable, case: Case, rms: bool = False) -> CaseResult:
    ref = case.rms_reference()[0] if rms else case.reference()[0]
    try:
        with np.errstate(all="ignore"):  # NaN/Inf are what is being measured
            y = np.asarray(fn(*(case.rms_args if rms else case.args)))
    except ImportError:
        raise
    except Exception as err:  # noqa: BLE001 - recorded, not hidden
        text = f"{type(err).__name__}: {err}"
        return CaseResult(case.name, math.inf, False, text, isinstance(err, NotSupported))
    if y.shape != ref.shape:
        return CaseResult(
            case.name, math.inf, False, f"returned shape {y.shape}, expected {ref.shape}"
        )
    if y.dtype.kind != "f" and not _is_bfloat16(y.dtype):
        y = y.astype(ref.dtype)
    return CaseResult(case.name, *_measure(y, ref, case))


def _measure(y: np.ndarray, ref: np.ndarray, case: Case) -> tuple[float, bool]:
    """(the largest ulp error of ``y``, whether it has NaN/Inf where ``ref`` is finite),
    with the case's floor (:func:`case_floor`)."""
    with np.errstate(invalid="ignore"):
        nonfinite = bool(
            (~np.isfinite(y.astype(np.float64)) & np.isfinite(ref.astype(np.float64))).any()
        )
    return ulp_error(y, ref, floor=case_floor(case)), nonfinite


def case_floor(case: Case) -> float:
    """The ulp floor a case is measured with: :data:`ULP_FLOOR`, or 0 for the cases
    tagged ``"unfloored"`` (outputs made tiny on purpose, such as subnormal ones)."""
    return 0.0 if "unfloored" in case.tags else ULP_FLOOR
