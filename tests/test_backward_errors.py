"""layer_norm_backward and LayerNorm.backward: bad input gets a ValueError or
TypeError whose message names the argument; nothing else escapes (pyo3's
PanicException derives from BaseException, so it is caught as that)."""

from __future__ import annotations

import lnrs
import numpy as np
import pytest

X = (np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7) ** 2
DY = np.ones_like(X)
NS = (4,)
_, MEAN, RSTD = lnrs.layer_norm_forward(X, NS)  # shape (2, 3), float32
X64 = X.astype(np.float64)
_, MEAN64, RSTD64 = lnrs.layer_norm_forward(X64, NS)


def _bw(**kw):
    """A layer_norm_backward call on X with good defaults, overridden by kw."""
    args = dict(dy=DY, x=X, mean=MEAN, rstd=RSTD, normalized_shape=NS, weight=None)
    args.update(kw)
    eps = {"eps": args.pop("eps")} if "eps" in args else {}
    return lambda: lnrs.layer_norm_backward(
        args["dy"],
        args["x"],
        args["mean"],
        args["rstd"],
        args["normalized_shape"],
        args["weight"],
        **eps,
    )


def _bw64(**kw):
    args = dict(dy=X64, x=X64, mean=MEAN64, rstd=RSTD64)
    args.update(kw)
    return _bw(**args)


RAGGED = [[1.0, 2.0], [3.0]]

# (id, call, exception type(s), regex the message must match)
CASES = [
    # eps (the forward pass's, to recompute rstd)
    ("eps-negative", _bw(eps=-1e-5), ValueError, r"\beps\b"),
    ("eps-nan", _bw(eps=float("nan")), ValueError, r"\beps\b"),
    ("eps-inf", _bw(eps=np.inf), ValueError, r"\beps\b"),
    ("eps-string", _bw(eps="1e-5"), TypeError, r"\beps\b"),
    ("eps-bool", _bw(eps=True), TypeError, r"\beps\b"),
    # dy
    ("dy-short", _bw(dy=np.ones((2, 3, 3), np.float32)), ValueError, r"\bdy\b"),
    ("dy-flat", _bw(dy=np.ones(24, np.float32)), ValueError, r"\bdy\b"),
    ("dy-transposed", _bw(dy=np.ones((3, 2, 4), np.float32)), ValueError, r"\bdy\b"),
    ("dy-extra-axis", _bw(dy=np.ones((1, 2, 3, 4), np.float32)), ValueError, r"\bdy\b"),
    ("dy-float64", _bw(dy=DY.astype(np.float64)), (ValueError, TypeError), r"\bdy\b"),
    ("dy-float32-for-f64", _bw64(dy=DY), (ValueError, TypeError), r"\bdy\b"),
    ("dy-int", _bw(dy=np.ones((2, 3, 4), np.int32)), (ValueError, TypeError), r"\bdy\b"),
    ("dy-float16", _bw(dy=DY.astype(np.float16)), (ValueError, TypeError), r"\bdy\b"),
    ("dy-complex", _bw(dy=DY.astype(np.complex64)), TypeError, r"\bdy\b"),
    ("dy-none", _bw(dy=None), TypeError, r"\bdy\b"),
    ("dy-ragged", _bw(dy=RAGGED), TypeError, r"\bdy\b"),
    ("dy-string", _bw(dy="abc"), TypeError, r"\bdy\b"),
    ("dy-scalar", _bw(dy=np.float32(1.0)), ValueError, r"\bdy\b"),
    # mean / rstd
    ("mean-short", _bw(mean=MEAN[:1]), ValueError, r"\bmean\b"),
    ("mean-flat", _bw(mean=MEAN.reshape(-1)), ValueError, r"\bmean\b"),
    ("mean-for-other-ns", _bw(mean=MEAN[:, :1]), ValueError, r"\bmean\b"),
    ("mean-float64", _bw(mean=MEAN.astype(np.float64)), ValueError, r"\bmean\b"),
    ("mean-float32-for-f64", _bw64(mean=MEAN64.astype(np.float32)), ValueError, r"\bmean\b"),
    ("mean-int", _bw(mean=np.zeros((2, 3), np.int32)), (ValueError, TypeError), r"\bmean\b"),
    ("mean-none", _bw(mean=None), (ValueError, TypeError), r"\bmean\b"),
    ("mean-scalar", _bw(mean=np.float32(0.0)), ValueError, r"\bmean\b"),
    ("mean-string", _bw(mean="ab"), (ValueError, TypeError), r"\bmean\b"),
    ("mean-ragged", _bw(mean=RAGGED), (ValueError, TypeError), r"\bmean\b"),
    ("rstd-short", _bw(rstd=RSTD[:, :2]), ValueError, r"\brstd\b"),
    ("rstd-transposed", _bw(rstd=RSTD.T), ValueError, r"\brstd\b"),
    ("rstd-float64", _bw(rstd=RSTD.astype(np.float64)), ValueError, r"\brstd\b"),
    ("rstd-float32-for-f64", _bw64(rstd=RSTD64.astype(np.float32)), ValueError, r"\brstd\b"),
    ("rstd-none", _bw(rstd=None), (ValueError, TypeError), r"\brstd\b"),
    ("rstd-ragged", _bw(rstd=RAGGED), (ValueError, TypeError), r"\brstd\b"),
    # weight
    ("weight-short", _bw(weight=np.ones(3, np.float32)), ValueError, r"\bweight\b"),
    ("weight-long", _bw(weight=np.ones(5, np.float32)), ValueError, r"\bweight\b"),
    ("weight-2d", _bw(weight=np.ones((1, 4), np.float32)), ValueError, r"\bweight\b"),
    ("weight-scalar", _bw(weight=1.0), ValueError, r"\bweight\b"),
    (
        "weight-flat-for-multi-axis",
        _bw(normalized_shape=(3, 4), mean=MEAN[:, 0], rstd=RSTD[:, 0], weight=np.ones(12)),
        ValueError,
        r"\bweight\b",
    ),
    ("weight-complex", _bw(weight=np.ones(4, np.complex64)), TypeError, r"\bweight\b"),
    ("weight-str", _bw(weight=["a", "b", "c", "d"]), TypeError, r"\bweight\b"),
    ("weight-ragged", _bw(weight=RAGGED), (ValueError, TypeError), r"\bweight\b"),
    # normalized_shape
    ("ns-not-trailing", _bw(normalized_shape=(3,)), ValueError, "normalized_shape"),
    ("ns-not-trailing-2", _bw(normalized_shape=(2, 3)), ValueError, "normalized_shape"),
    ("ns-too-long", _bw(normalized_shape=(1, 2, 3, 4)), ValueError, "normalized_shape"),
    ("ns-empty", _bw(normalized_shape=()), ValueError, "normalized_shape"),
    ("ns-float", _bw(normalized_shape=4.0), TypeError, "normalized_shape"),
    ("ns-none", _bw(normalized_shape=None), TypeError, "normalized_shape"),
    ("ns-string", _bw(normalized_shape="4"), TypeError, "normalized_shape"),
    # x
    ("x-int", _bw(x=np.ones((2, 3, 4), np.int64)), TypeError, r"\bx\b"),
    ("x-bool", _bw(x=np.ones((2, 3, 4), bool)), TypeError, r"\bx\b"),
    ("x-int16", _bw(x=X.astype(np.int16)), TypeError, r"\bx\b"),
    ("x-complex", _bw(x=X.astype(np.complex64)), TypeError, r"\bx\b"),
    ("x-none", _bw(x=None), TypeError, r"\bx\b"),
    ("x-ragged", _bw(x=RAGGED, normalized_shape=2), TypeError, r"\bx\b"),
    ("x-int-list", _bw(x=[[1, 2, 3, 4]]), TypeError, r"\bx\b"),
    # LayerNorm.backward
    (
        "module-dy-shape",
        lambda: _layer().backward(np.ones((2, 3, 5), np.float32)),
        ValueError,
        r"\bdy\b",
    ),
    ("module-dy-dtype", lambda: _layer().backward(DY.astype(np.float64)), ValueError, r"\bdy\b"),
    ("module-dy-int", lambda: _layer().backward(np.ones((2, 3, 4), int)), TypeError, r"\bdy\b"),
    ("module-no-forward", lambda: lnrs.LayerNorm(4).backward(DY), ValueError, "forward"),
    ("module-second-backward", lambda: _twice(), ValueError, "forward"),
]


def _layer():
    ln = lnrs.LayerNorm(4)
    ln(X)
    return ln


def _twice():
    ln = _layer()
    ln.backward(DY)
    ln.backward(DY)


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_nothing_else_escapes():
    """Every bad case raises ValueError or TypeError, never a PanicException."""
    wrong = []
    for name, call, _, _ in CASES:
        try:
            call()
        except (ValueError, TypeError):
            continue
        except BaseException as e:  # noqa: BLE001 - PanicException is a BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            wrong.append(f"{name}: {type(e).__module__}.{type(e).__name__}: {e}")
        else:
            wrong.append(f"{name}: no exception")
    assert not wrong, "\n".join(wrong)


def test_good_defaults_work():
    """The cases above differ from a call that succeeds in one argument only."""
    dx, dw, db = _bw()()
    assert dx.shape == X.shape and dw.shape == NS and db.shape == NS
    dx, dw, db = _bw64()()
    assert dx.dtype == np.float64
    dx, dw, db = _bw(weight=np.ones(4, np.float32))()
    assert dx.dtype == np.float32
    dx, _, _ = _bw(normalized_shape=(3, 4), mean=MEAN[:, 0], rstd=RSTD[:, 0])()
    assert dx.shape == X.shape
    # Array-likes of the right shape and dtype are fine for dy, mean and rstd.
    dx, _, _ = _bw64(dy=X64.tolist(), mean=MEAN64.tolist(), rstd=RSTD64.tolist())()
    assert dx.shape == X.shape


def test_native_backward_declines_what_it_cannot_take_without_panic():
    """The private fast path returns None for anything not kernel-ready (the
    Python layer then converts or reports), and never panics."""
    from lnrs import _lnrs

    f = np.float32
    x, dy = np.ones((2, 4), f), np.ones((2, 4), f)
    m, r = np.zeros(2, f), np.ones(2, f)
    calls = [
        lambda: _lnrs.norm_backward(np.ones((2, 5), f), x, m, r, 4, None),
        lambda: _lnrs.norm_backward(dy.astype(float), x, m, r, 4, None),
        lambda: _lnrs.norm_backward(dy, x, np.zeros(3, f), r, 4, None),
        lambda: _lnrs.norm_backward(dy, x, m, np.ones(1, f), 4, None),
        lambda: _lnrs.norm_backward(dy, x, m.astype(float), r, 4, None),
        lambda: _lnrs.norm_backward(dy, x, m, r, 4, np.ones(3, f)),
        lambda: _lnrs.norm_backward(dy, x, m, r, 5, None),
        lambda: _lnrs.norm_backward(dy, x, m, r, (), None),
        lambda: _lnrs.norm_backward(dy, x, m, r, "4", None),
        lambda: _lnrs.norm_backward(dy, x, m, r, (2, 2, 4), None),
        lambda: _lnrs.norm_backward(np.ones((2, 8), f)[:, ::2], x, m, r, 4, None),
        lambda: _lnrs.norm_backward(dy, np.ones((2, 4), int), m, r, 4, None),
        lambda: _lnrs.norm_backward(dy, x, m, r, 4, [1.0, 2.0, 3.0, 4.0]),
        lambda: _lnrs.norm_backward(dy.tolist(), x, m, r, 4, None),
    ]
    wrong = []
    for i, call in enumerate(calls):
        try:
            result = call()
        except (ValueError, TypeError):
            continue
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            wrong.append(f"call {i}: {type(e).__name__}: {e}")
        else:
            if result is not None:
                wrong.append(f"call {i}: accepted {result!r}")
    assert not wrong, "\n".join(wrong)
    # The same arguments made right are taken.
    dx, dw, db = _lnrs.norm_backward(dy, x, m, r, 4, None)
    assert dx.shape == (2, 4) and dw.shape == db.shape == (4,)
