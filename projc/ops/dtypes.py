"""Element types: ONNX enums, IR dtype names, numpy and JAX dtypes.

JAX runs with 64-bit types off (the default, never changed globally): an int64 or float64 ONNX
tensor is held as int32/float32 inside JAX. ``jax_dtype`` gives the dtype JAX actually uses under
the current setting (import-time folding runs under ``jax.enable_x64(True)`` and stays exact).
"""
from __future__ import annotations

import jax
import numpy as np
import onnx

from projc.ir import DTYPES, dtype_name


def ir_dtype_of_onnx(elem_type: int) -> str | None:
    """The IR dtype name of an ONNX TensorProto element type, or None if the IR has no such type."""
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    except (KeyError, ValueError, TypeError):
        return None
    if elem_type == onnx.TensorProto.STRING:
        return "str"
    if elem_type in (onnx.TensorProto.BFLOAT16,) or np_dtype.kind == "V":
        return None  # bfloat16/float8/int4 map to ml_dtypes types the IR does not name
    try:
        name = dtype_name(np_dtype)
    except ValueError:
        return None
    return name if name in DTYPES else None


def onnx_type_name(elem_type: int) -> str:
    """``TensorProto.FLOAT16`` -> ``"FLOAT16"`` (for messages)."""
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def np_dtype(ir_dtype: str) -> np.dtype:
    """The numpy dtype of an IR dtype name."""
    return np.dtype(DTYPES[ir_dtype])


def np_dtype_of_onnx(elem_type: int) -> np.dtype:
    """The numpy dtype of an ONNX element type (for Cast's ``to`` and tensor attributes)."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def jax_dtype(dtype) -> np.dtype:
    """The dtype JAX holds a value of numpy ``dtype`` in (int64 -> int32 unless x64 is on)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))


def as_jax_array(array) -> np.ndarray:
    """``array`` as a numpy array of the dtype JAX would use (no silent truncation warnings)."""
    array = np.asarray(array)
    target = jax_dtype(array.dtype) if array.dtype.kind not in "US" else array.dtype
    return array if array.dtype == target else array.astype(target)
