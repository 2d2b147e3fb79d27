"""DLPack for tests, in ctypes: the C structs (written from dlpack.h apart from
lnrs's own reader, so that one cannot hide a mistake in the other), and
`CtypesProducer`, a DLPack producer that needs neither torch nor JAX.

The producer exports the memory of a NumPy array as a tensor described as it
is told (dtype code/bits/lanes, device, NULL strides, byte_offset, read-only
flag, DLPack version; versioned or legacy capsule) and counts its deleter's
calls. What an export uses (the array included) stays alive until its deleter
is called.

Its capsules have no destructor: a producer's destructor calls the deleter of
a capsule nobody took, and NumPy's from_dlpack drops a capsule it cannot read
with its exception already set, when a ctypes callback cannot run. Instead the
producer keeps every capsule it made (`capsules`), and `taken()` tells how many
a consumer took, by their "used_" names.
"""

from __future__ import annotations

import ctypes

import numpy as np

KDL_CPU, KDL_CUDA = 1, 2
KDL_FLOAT, KDL_BFLOAT = 2, 4


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", _DELETER),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


_capsule_new = ctypes.PYFUNCTYPE(
    ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p
)(("PyCapsule_New", ctypes.pythonapi))
_capsule_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi)
)
LEGACY, VERSIONED = b"dltensor", b"dltensor_versioned"
USED = (b"used_dltensor", b"used_dltensor_versioned")


class _Ledger:
    deleted = 0


# address of each managed tensor exported and not yet deleted -> (its producer's
# ledger, what it keeps alive); and every call of the deleter for another address.
_EXPORTS: dict[int, tuple[_Ledger, tuple]] = {}
stray_deletes: list[int] = []


@_DELETER
def _deleter(address):
    entry = _EXPORTS.pop(address, None)
    if entry is None:  # called twice, or for a tensor not exported here
        stray_deletes.append(address)
        return
    entry[0].deleted += 1


class CtypesProducer:
    """A DLPack producer of `array`'s memory (see the module docstring).

    versioned: take `max_version` and export a DLManagedTensorVersioned when
    asked for major version 1 or later; else a pre-1.0 producer, whose
    __dlpack__ takes no max_version. `dtype` is (code, bits, lanes); `device`,
    the capsule's (device_type, device_id), and `reported_device`, what
    __dlpack_device__ says (`device` unless given). null_strides exports a
    C-contiguous `array` with NULL strides; byte_offset moves the data pointer
    that many bytes back and puts them in byte_offset. read_only and version
    are written into versioned capsules.
    """

    def __init__(
        self,
        array: np.ndarray,
        *,
        versioned=True,
        read_only=False,
        version=(1, 0),
        dtype=(KDL_BFLOAT, 16, 1),
        device=(KDL_CPU, 0),
        reported_device=None,
        null_strides=False,
        byte_offset=0,
    ):
        assert array.itemsize == 2
        assert not null_strides or array.flags.c_contiguous
        self.array = array
        self.versioned = versioned
        self.read_only = read_only
        self.version = version
        self.dtype = dtype
        self.device = device
        self.reported_device = reported_device or device
        self.null_strides = null_strides
        self.byte_offset = byte_offset
        self.capsules = []
        self._ledger = _Ledger()

    @property
    def deleted(self) -> int:
        """How many times the deleter has been called, over all exports."""
        return self._ledger.deleted

    def taken(self) -> int:
        """How many of the capsules made a consumer has taken (renamed "used_...")."""
        return sum(any(_capsule_is_valid(c, name) for name in USED) for c in self.capsules)

    def __dlpack_device__(self):
        return self.reported_device

    def __dlpack__(self, *, stream=None, **kwargs):
        if not self.versioned and kwargs:
            raise TypeError(f"__dlpack__() got unexpected keyword arguments {sorted(kwargs)}")
        versioned = kwargs.get("max_version", (0, 0))[0] >= 1
        if versioned:
            managed = DLManagedTensorVersioned()
            managed.version.major, managed.version.minor = self.version
            managed.flags = 1 if self.read_only else 0
        else:
            managed = DLManagedTensor()
        a = self.array
        shape = (ctypes.c_int64 * a.ndim)(*a.shape)
        strides = (ctypes.c_int64 * a.ndim)(*(s // a.itemsize for s in a.strides))
        t = managed.dl_tensor
        t.data = a.ctypes.data - self.byte_offset
        t.byte_offset = self.byte_offset
        t.device.device_type, t.device.device_id = self.device
        t.ndim = a.ndim
        t.dtype.code, t.dtype.bits, t.dtype.lanes = self.dtype
        t.shape = shape
        t.strides = None if self.null_strides else strides
        managed.deleter = _deleter
        address = ctypes.addressof(managed)
        _EXPORTS[address] = (self._ledger, (managed, shape, strides, a))
        capsule = _capsule_new(address, VERSIONED if versioned else LEGACY, None)
        self.capsules.append(capsule)
        return capsule
