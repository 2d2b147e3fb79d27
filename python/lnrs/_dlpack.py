"""A DLPack reader for the one dtype NumPy's `from_dlpack` refuses: bfloat16.

`bfloat16_view(x, name)` asks a producer for its capsule (versioned when the
producer speaks DLPack 1.x, else the legacy one), reads the DLTensor in it with
ctypes and returns an `ml_dtypes.bfloat16` ndarray over the producer's memory,
without copying. The array keeps the managed tensor alive, and the producer's
deleter runs once, when the last view of that array is freed.

Struct layouts follow dlpack.h (DLPack 1.0): `DLManagedTensor` is
{dl_tensor, manager_ctx, deleter}; `DLManagedTensorVersioned` is
{version, manager_ctx, deleter, flags, dl_tensor}.
"""

from __future__ import annotations

import ctypes

import numpy as np

KDL_CPU = 1  # DLDeviceType kDLCPU
KDL_BFLOAT = 4  # DLDataTypeCode kDLBfloat
READ_ONLY = 1  # DLPACK_FLAG_BITMASK_READ_ONLY, in DLManagedTensorVersioned.flags
MAX_VERSION = (1, 0)  # the DLPack version whose structs are laid out below

# Capsule names from the DLPack Python specification. A consumer renames the
# capsule to the "used_" name when it takes ownership, so that the capsule's
# destructor leaves the deleter to the consumer. PyCapsule_SetName keeps the
# pointer it is given: these module-level bytes outlive every capsule renamed.
LEGACY, LEGACY_USED = b"dltensor", b"used_dltensor"
VERSIONED, VERSIONED_USED = b"dltensor_versioned", b"used_dltensor_versioned"


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
        ("strides", ctypes.POINTER(ctypes.c_int64)),  # in elements; NULL: C-contiguous
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [
        ("dl_tensor", DLTensor),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
    ]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


# Prototypes of our own rather than ctypes.pythonapi's shared attributes, whose
# argtypes/restype other code in the process may set differently.
_is_valid = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_IsValid", ctypes.pythonapi)
)
_get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)
_set_name = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_SetName", ctypes.pythonapi)
)
# void (*deleter)(DLManagedTensor[Versioned] *self). Called with the GIL held, as
# CPython consumers do: a deleter may drop Python references (a NumPy or
# Cython producer's does), and one that takes the GIL itself works either way.
_Deleter = ctypes.PYFUNCTYPE(None, ctypes.c_void_p)


class _ManagedTensor:
    """The owner of one managed tensor taken from its capsule: NumPy reads the
    memory through `__array_interface__` and holds this object as the array's
    base; when it is freed, the producer's deleter is called with the tensor."""

    __slots__ = ("__array_interface__", "_address", "_deleter")

    def __init__(self, interface: dict, address: int, deleter: int | None):
        self.__array_interface__ = interface
        self._address = address
        self._deleter = deleter

    def __del__(self):
        if self._deleter:
            _Deleter(self._deleter)(self._address)


def _export(x):
    """`x`'s capsule: versioned if the producer takes `max_version`, else legacy."""
    try:
        return x.__dlpack__(max_version=MAX_VERSION)
    except TypeError:  # a producer from before DLPack 1.0 takes no max_version
        return x.__dlpack__()


def _managed(capsule, name: str):
    """The managed tensor in `capsule`, its address, the name to give the
    capsule on taking it, and whether the producer marked it read-only."""
    if _is_valid(capsule, VERSIONED):
        address = _get_pointer(capsule, VERSIONED)
        managed = DLManagedTensorVersioned.from_address(address)
        if managed.version.major != MAX_VERSION[0]:
            raise TypeError(
                f"{name}: DLPack version {managed.version.major}.{managed.version.minor} "
                f"is not supported (lnrs reads {MAX_VERSION[0]}.x)"
            )
        return managed, address, VERSIONED_USED, bool(managed.flags & READ_ONLY)
    if _is_valid(capsule, LEGACY):
        address = _get_pointer(capsule, LEGACY)
        return DLManagedTensor.from_address(address), address, LEGACY_USED, False
    raise TypeError(f"{name}.__dlpack__() must return an unused DLPack capsule, got {capsule!r}")


def _layout(tensor: DLTensor) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """Shape, and strides in bytes (None: C-contiguous), of a 2-byte-element `tensor`."""
    shape = tuple(tensor.shape[i] for i in range(tensor.ndim))
    if not tensor.strides:
        return shape, None
    return shape, tuple(2 * tensor.strides[i] for i in range(tensor.ndim))


def bfloat16_view(x, name: str) -> np.ndarray | None:
    """`x` (a DLPack producer) as an `ml_dtypes.bfloat16` ndarray viewing its
    memory, or None when it exports no capsule or one that does not hold
    kDLBfloat data (the capsule is then left to the producer, which frees it).

    The array is read-only when the producer flagged the tensor so. It raises
    TypeError (naming `name`) for a tensor not on the CPU, not 16-bit with one
    lane, or when ml_dtypes is not installed; the producer keeps the capsule then.
    """
    try:
        capsule = _export(x)
    except (TypeError, ValueError, BufferError, RuntimeError):
        return None  # NumPy's export failed the same way; its error is reported
    managed, address, used, read_only = _managed(capsule, name)
    tensor = managed.dl_tensor
    if tensor.dtype.code != KDL_BFLOAT:
        return None
    dtype = (tensor.dtype.code, tensor.dtype.bits, tensor.dtype.lanes)
    if tensor.dtype.bits != 16 or tensor.dtype.lanes != 1:
        raise TypeError(
            f"{name} must be bfloat16 with one lane (DLPack dtype (4, 16, 1)), "
            f"got (code, bits, lanes) {dtype}"
        )
    device = (tensor.device.device_type, tensor.device.device_id)
    if device[0] != KDL_CPU:
        raise TypeError(
            f"{name} must be on the CPU (DLPack device type {KDL_CPU}), got device {device}"
        )
    try:
        import ml_dtypes  # noqa: PLC0415 - only bfloat16 DLPack input needs it
    except ImportError:
        raise TypeError(
            f"{name} is a bfloat16 tensor; reading bfloat16 needs ml_dtypes (pip install ml_dtypes)"
        ) from None
    shape, strides = _layout(tensor)
    interface = {
        "version": 3,
        "shape": shape,
        "strides": strides,
        "typestr": np.dtype(np.uint16).str,
        "data": ((tensor.data or 0) + tensor.byte_offset, read_only),
    }
    deleter = managed.deleter
    _set_name(capsule, used)  # from here on, the deleter is ours to call
    owner = _ManagedTensor(interface, address, deleter)
    return np.asarray(owner).view(ml_dtypes.bfloat16)
