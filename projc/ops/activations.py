"""ONNX activations and quantization ops beyond elementwise.py: Round, HardSwish, Gelu,
QuantizeLinear, DequantizeLinear (training lowers them in passes/fuse_activations.py)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .registry import register

# ONNX TensorProto element types a QuantizeLinear may produce (output_dtype attribute, opset 21)
_QUANT_TYPES = {2: jnp.uint8, 3: jnp.int8, 4: jnp.uint16, 5: jnp.int16}


@register("Round", since=11)
def round_(x):
    """Round to the nearest integer, halves to even."""
    return jnp.round(x)


@register("HardSwish", since=14)
def hard_swish(x):
    """x * max(0, min(1, x/6 + 1/2))."""
    return x * jnp.clip(x / 6 + 0.5, 0, 1).astype(jnp.result_type(x))


@register("Gelu", since=20, attrs={"approximate": "none"})
def gelu(x, *, approximate="none"):
    """x * Phi(x) (approximate='tanh': the tanh formula)."""
    if isinstance(approximate, bytes):
        approximate = approximate.decode()
    return jax.nn.gelu(x, approximate=approximate == "tanh")


def _along(v, x, axis):
    """A per-axis (1-D) scale or zero point shaped to broadcast against x along ``axis``."""
    if v is None or jnp.ndim(v) == 0 or x.ndim == 0:
        return v
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return jnp.reshape(v, shape)


@register("QuantizeLinear", since=13, attrs={"axis": 1}, frozen=(1, 2))
@register("QuantizeLinear", since=19, attrs={"axis": 1, "saturate": 1}, frozen=(1, 2))
@register("QuantizeLinear", since=21, attrs={"axis": 1, "saturate": 1, "block_size": 0,
                                            "output_dtype": 0}, frozen=(1, 2))
def quantize_linear(x, y_scale, y_zero_point=None, *, axis=1, saturate=1, block_size=0,
                    output_dtype=0):
    """saturate(round(x / y_scale) + y_zero_point), halves to even, in y_zero_point's integer type
    (uint8 when omitted); per-tensor or per-axis (block_size 0 only)."""
    if block_size:
        raise ValueError("QuantizeLinear: blocked quantization (block_size > 0) is not supported")
    dt = (y_zero_point.dtype if y_zero_point is not None
          else _QUANT_TYPES.get(int(output_dtype), jnp.uint8))
    info = jnp.iinfo(dt)
    q = jnp.round(x / _along(y_scale, x, axis).astype(x.dtype))
    if y_zero_point is not None:
        q = q + _along(y_zero_point, x, axis).astype(q.dtype)
    return jnp.clip(q, info.min, info.max).astype(dt)


@register("DequantizeLinear", since=13, attrs={"axis": 1}, frozen=(1, 2))
@register("DequantizeLinear", since=19, attrs={"axis": 1}, frozen=(1, 2))
@register("DequantizeLinear", since=21, attrs={"axis": 1, "block_size": 0}, frozen=(1, 2))
def dequantize_linear(x, x_scale, x_zero_point=None, *, axis=1, block_size=0):
    """(x - x_zero_point) * x_scale in x_scale's float type; per-tensor or per-axis."""
    if block_size:
        raise ValueError("DequantizeLinear: blocked quantization (block_size > 0) is not supported")
    v = x.astype(jnp.int32) if np.dtype(x.dtype).kind in "iu" else x
    if x_zero_point is not None:
        v = v - _along(x_zero_point, x, axis).astype(v.dtype)
    return v.astype(x_scale.dtype) * _along(x_scale, x, axis)
