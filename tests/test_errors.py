"""Bad input gets a ValueError or TypeError whose message names the argument.

Nothing may panic across the FFI: pyo3's PanicException derives from
BaseException, so it is caught as that and its type checked.
"""

from __future__ import annotations

import lnrs
import numpy as np
import pytest

X = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7


def _readonly(shape, dtype):
    a = np.empty(shape, dtype)
    a.flags.writeable = False
    return a


def _ln(**kw):
    """A layer_norm call on X with defaults, overridden by kw."""
    args = dict(x=X, normalized_shape=(4,))
    args.update(kw)
    x, ns = args.pop("x"), args.pop("normalized_shape")
    return lambda: lnrs.layer_norm(x, ns, **args)


def _lnf(**kw):
    args = dict(x=X, normalized_shape=(4,))
    args.update(kw)
    x, ns = args.pop("x"), args.pop("normalized_shape")
    return lambda: lnrs.layer_norm_forward(x, ns, **args)


# (id, call, exception type, regex the message must match)
CASES = [
    # normalized_shape
    ("ns-empty-tuple", _ln(normalized_shape=()), ValueError, "normalized_shape"),
    ("ns-empty-list", _ln(normalized_shape=[]), ValueError, "normalized_shape"),
    ("ns-not-trailing", _ln(normalized_shape=(3,)), ValueError, "normalized_shape"),
    ("ns-not-trailing-2", _ln(normalized_shape=(2, 3)), ValueError, "normalized_shape"),
    ("ns-too-long", _ln(normalized_shape=(1, 2, 3, 4)), ValueError, "normalized_shape"),
    ("ns-zero", _ln(normalized_shape=0), ValueError, "normalized_shape"),
    ("ns-negative", _ln(normalized_shape=-4), ValueError, "normalized_shape"),
    ("ns-float", _ln(normalized_shape=4.0), TypeError, "normalized_shape"),
    ("ns-float-entry", _ln(normalized_shape=(3, 4.0)), TypeError, "normalized_shape"),
    ("ns-none-entry", _ln(normalized_shape=(None,)), TypeError, "normalized_shape"),
    ("ns-string", _ln(normalized_shape="4"), TypeError, "normalized_shape"),
    ("ns-none", _ln(normalized_shape=None), TypeError, "normalized_shape"),
    ("ns-bool", _ln(normalized_shape=True), TypeError, "normalized_shape"),
    ("ns-set", _ln(normalized_shape={4}), TypeError, "normalized_shape"),
    ("ns-float-array", _ln(normalized_shape=np.array([4.0])), TypeError, "normalized_shape"),
    ("ns-forward-not-trailing", _lnf(normalized_shape=(2,)), ValueError, "normalized_shape"),
    # x
    ("x-int", _ln(x=np.arange(8).reshape(2, 4)), TypeError, r"\bx\b"),
    ("x-bool", _ln(x=np.ones((2, 4), bool)), TypeError, r"\bx\b"),
    ("x-complex", _ln(x=np.ones((2, 4), np.complex64)), TypeError, r"\bx\b"),
    ("x-object", _ln(x=np.ones((2, 4), object)), TypeError, r"\bx\b"),
    ("x-int16", _ln(x=np.ones((2, 4), np.int16)), TypeError, r"\bx\b"),
    ("x-longdouble", _ln(x=np.ones((2, 4), np.longdouble)), TypeError, r"\bx\b"),
    ("x-string", _ln(x="abcd", normalized_shape=4), TypeError, r"\bx\b"),
    ("x-none", _ln(x=None), TypeError, r"\bx\b"),
    ("x-ragged", _ln(x=[[1.0, 2.0], [3.0]], normalized_shape=2), TypeError, r"\bx\b"),
    ("x-int-list", _ln(x=[[1, 2, 3, 4]]), TypeError, r"\bx\b"),
    ("x-0d", _ln(x=np.float32(1.5), normalized_shape=1), ValueError, r"\bx\b"),
    ("x-0d-array", _ln(x=np.array(1.5), normalized_shape=()), ValueError, "normalized_shape"),
    ("x-forward-int", _lnf(x=np.arange(8).reshape(2, 4)), TypeError, r"\bx\b"),
    # weight / bias
    ("weight-short", _ln(weight=np.ones(3, np.float32)), ValueError, "weight"),
    ("weight-long", _ln(weight=np.ones(5, np.float32)), ValueError, "weight"),
    ("weight-2d", _ln(weight=np.ones((1, 4), np.float32)), ValueError, "weight"),
    ("weight-scalar", _ln(weight=1.0), ValueError, "weight"),
    ("weight-multi-axis", _ln(normalized_shape=(3, 4), weight=np.ones(12)), ValueError, "weight"),
    ("weight-complex", _ln(weight=np.ones(4, np.complex128)), TypeError, "weight"),
    ("weight-object", _ln(weight=np.ones(4, object)), TypeError, "weight"),
    ("weight-str", _ln(weight=np.array(["a", "b", "c", "d"])), TypeError, "weight"),
    ("weight-str-scalar", _ln(weight="abcd"), TypeError, "weight"),
    ("weight-datetime", _ln(weight=np.zeros(4, "datetime64[s]")), TypeError, "weight"),
    ("weight-ragged", _ln(weight=[[1.0, 2.0], [3.0]]), (TypeError, ValueError), "weight"),
    ("bias-short", _ln(bias=np.zeros(3, np.float32)), ValueError, "bias"),
    ("bias-2d", _ln(bias=np.zeros((4, 1), np.float32)), ValueError, "bias"),
    ("bias-complex", _ln(bias=np.zeros(4, np.complex64)), TypeError, "bias"),
    ("bias-object", _ln(bias=np.array([object()] * 4)), TypeError, "bias"),
    ("bias-str", _ln(bias=["a", "b", "c", "d"]), TypeError, "bias"),
    ("bias-forward", _lnf(bias=np.zeros(5)), ValueError, "bias"),
    # out
    ("out-shape", _ln(out=np.empty((2, 3, 5), np.float32)), ValueError, "out"),
    ("out-flat", _ln(out=np.empty(24, np.float32)), ValueError, "out"),
    ("out-dtype", _ln(out=np.empty((2, 3, 4), np.float64)), ValueError, "out"),
    ("out-int", _ln(out=np.empty((2, 3, 4), np.int32)), ValueError, "out"),
    ("out-fortran", _ln(out=np.empty((2, 3, 4), np.float32, order="F")), ValueError, "out"),
    ("out-strided", _ln(out=np.empty((2, 3, 8), np.float32)[..., ::2]), ValueError, "out"),
    ("out-readonly", _ln(out=_readonly((2, 3, 4), np.float32)), ValueError, "out"),
    ("out-list", _ln(out=[[0.0] * 4] * 6), TypeError, "out"),
    ("out-scalar", _ln(out=0.0), TypeError, "out"),
    ("out-forward-dtype", _lnf(out=np.empty((2, 3, 4), np.float64)), ValueError, "out"),
    # eps
    ("eps-nan", _ln(eps=float("nan")), ValueError, "eps"),
    ("eps-np-nan", _ln(eps=np.float32("nan")), ValueError, "eps"),
    ("eps-negative", _ln(eps=-1e-5), ValueError, "eps"),
    ("eps-negative-int", _ln(eps=-1), ValueError, "eps"),
    ("eps-inf", _ln(eps=float("inf")), ValueError, "eps"),
    ("eps-minus-inf", _ln(eps=-np.inf), ValueError, "eps"),
    ("eps-string", _ln(eps="1e-5"), TypeError, "eps"),
    ("eps-none", _ln(eps=None), TypeError, "eps"),
    ("eps-list", _ln(eps=[1e-5]), TypeError, "eps"),
    ("eps-complex", _ln(eps=1e-5 + 0j), TypeError, "eps"),
    ("eps-bool", _ln(eps=True), TypeError, "eps"),
    ("eps-huge-int", _ln(eps=10**400), (ValueError, TypeError), "eps"),
    ("eps-forward-nan", _lnf(eps=float("nan")), ValueError, "eps"),
    # threads
    ("threads-0", lambda: lnrs.set_num_threads(0), ValueError, r"\bn\b"),
    ("threads-negative", lambda: lnrs.set_num_threads(-1), ValueError, r"\bn\b"),
    ("threads-string", lambda: lnrs.set_num_threads("2"), TypeError, r"\bn\b"),
    ("threads-bool", lambda: lnrs.set_num_threads(True), TypeError, r"\bn\b"),
    ("threads-float", lambda: lnrs.set_num_threads(2.0), TypeError, r"\bn\b"),
    ("threads-none", lambda: lnrs.set_num_threads(None), TypeError, r"\bn\b"),
    ("threads-huge", lambda: lnrs.set_num_threads(2**70), ValueError, r"\bn\b"),
    # LayerNorm
    ("module-dtype-int", lambda: lnrs.LayerNorm(4, dtype=np.int32), TypeError, "dtype"),
    ("module-dtype-bool", lambda: lnrs.LayerNorm(4, dtype=np.bool_), TypeError, "dtype"),
    ("module-dtype-complex", lambda: lnrs.LayerNorm(4, dtype=complex), TypeError, "dtype"),
    ("module-dtype-name", lambda: lnrs.LayerNorm(4, dtype="int16"), TypeError, "dtype"),
    ("module-dtype-garbage", lambda: lnrs.LayerNorm(4, dtype="banana"), TypeError, "dtype"),
    ("module-ns-empty", lambda: lnrs.LayerNorm(()), ValueError, "normalized_shape"),
    ("module-ns-negative", lambda: lnrs.LayerNorm(-3), ValueError, "normalized_shape"),
    ("module-ns-float", lambda: lnrs.LayerNorm(4.5), TypeError, "normalized_shape"),
    ("module-ns-float-entry", lambda: lnrs.LayerNorm((4.5,)), TypeError, "normalized_shape"),
    ("module-ns-none", lambda: lnrs.LayerNorm(None), TypeError, "normalized_shape"),
    (
        "module-ns-string",
        lambda: lnrs.LayerNorm("abc"),
        (TypeError, ValueError),
        "normalized_shape",
    ),
    ("module-eps", lambda: lnrs.LayerNorm(4, eps=-1.0), ValueError, "eps"),
    ("module-eps-str", lambda: lnrs.LayerNorm(4, eps="x"), TypeError, "eps"),
    ("module-call-wrong-shape", lambda: lnrs.LayerNorm(5)(X), ValueError, "normalized_shape"),
    ("module-call-int-x", lambda: lnrs.LayerNorm(4)(np.ones((2, 4), int)), TypeError, r"\bx\b"),
]


@pytest.mark.parametrize("call,exc,match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_named(call, exc, match, restore_threads):
    with pytest.raises(exc, match=match):
        call()


def test_nothing_panics(restore_threads):
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


def test_native_module_rejects_mismatched_buffers_without_panic():
    """The private binding checks lengths too (a Python-layer slip must not panic)."""
    from lnrs import _lnrs

    x = np.ones((2, 4), np.float32)
    out = np.empty((2, 4), np.float32)
    calls = [
        lambda: _lnrs.layer_norm_forward(np.ones((2, 5), np.float32), out, None, None, 1e-5),
        lambda: _lnrs.layer_norm_forward(x, out, np.ones(3, np.float32), None, 1e-5),
        lambda: _lnrs.layer_norm_forward(x, out, None, np.ones(5, np.float32), 1e-5),
        lambda: _lnrs.layer_norm_forward(x, out, None, None, -1.0),
        lambda: _lnrs.layer_norm_forward(x, out, None, None, float("nan")),
        lambda: _lnrs.layer_norm_forward(x, out, None, None, 1e-5, np.empty(3, np.float32), None),
        lambda: _lnrs.layer_norm_forward(x, out, None, None, 1e-5, None, np.empty(1, np.float32)),
        lambda: _lnrs.layer_norm_forward(x, out, None, None, 1e-5, np.empty(2), np.empty(2)),
        lambda: _lnrs.layer_norm_forward(x.astype(np.float64), out, None, None, 1e-5),
        lambda: _lnrs.layer_norm_forward(x, np.empty((2, 4), np.int32), None, None, 1e-5),
        lambda: _lnrs.layer_norm_forward(x, np.empty((2, 8), np.float32)[:, ::2], None, None, 1e-5),
        lambda: _lnrs.layer_norm_forward(x, out, out[0], None, 1e-5),  # weight aliases out
    ]
    wrong = []
    for i, call in enumerate(calls):
        try:
            call()
        except (ValueError, TypeError):
            continue
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            wrong.append(f"call {i}: {type(e).__name__}: {e}")
        else:
            wrong.append(f"call {i}: no exception")
    assert not wrong, "\n".join(wrong)


def test_failed_call_leaves_out_untouched():
    out = np.full((2, 3, 4), 7.0, np.float32)
    with pytest.raises(ValueError):
        lnrs.layer_norm(X, (4,), weight=np.ones(5, np.float32), out=out)
    assert np.all(out == 7.0)
