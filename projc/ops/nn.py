"""Neural-network ONNX ops: Gemm, MatMul, Conv, pooling, BatchNormalization, softmax (the
recurrent ops live in ``recurrent.py``)."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from projc.errors import UnsupportedModelError

from .checks import check_batch_norm, check_conv, check_gemm, check_pool
from .dtypes import jax_dtype
from .layout import normalize_axis
from .registry import register

# Full float32 accuracy for products (no TF32/bf16 passes on accelerators): the forward is
# checked against onnxruntime at 1e-5.
PRECISION = lax.Precision.HIGHEST


@register("Gemm", since=13, attrs={"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
          check=check_gemm)
def gemm(a, b, c=None, *, alpha, beta, transA, transB):
    """alpha * A' @ B' + beta * C, with A' = A.T if transA (same for B) and C broadcast."""
    a = a.T if transA else a
    b = b.T if transB else b
    y = jnp.matmul(a, b, precision=PRECISION)
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y.astype(jnp.result_type(a))


@register("MatMul", since=13)
def matmul(a, b):
    """Matrix product with numpy.matmul semantics (batched, 1-D operands promoted)."""
    return jnp.matmul(a, b, precision=PRECISION)


# -- convolution ----------------------------------------------------------------------------

def _same_pads(in_sizes, kernel, strides, dilations, lower: bool) -> list[int]:
    """Explicit pads (begins + ends) for auto_pad SAME_UPPER / SAME_LOWER."""
    begins, ends = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(large if lower else small)
        ends.append(small if lower else large)
    return begins + ends


def _window_pads(auto_pad, pads, in_sizes, kernel, strides, dilations) -> list[int]:
    """The explicit pads (begins + ends) of a conv/pool window, whatever ``auto_pad`` says."""
    n = len(in_sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(in_sizes, kernel, strides, dilations, auto_pad == "SAME_LOWER")
    if auto_pad == "VALID":
        return [0] * (2 * n)
    if auto_pad not in ("NOTSET", "", None):
        raise UnsupportedModelError(f"auto_pad {auto_pad!r} is not supported")
    return list(pads) if pads else [0] * (2 * n)


_CONV_ATTRS = {"auto_pad": "NOTSET", "dilations": None, "group": 1, "kernel_shape": None,
               "pads": None, "strides": None}


@register("Conv", since=11, attrs=_CONV_ATTRS, check=check_conv)
@register("Conv", since=22, attrs=_CONV_ATTRS, check=check_conv)
def conv(x, w, b=None, *, auto_pad, dilations, group, kernel_shape, pads, strides):
    """N-D convolution (cross-correlation), NCHW layout, weights [M, C/group, k...]."""
    n = x.ndim - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    pads = _window_pads(auto_pad, pads, x.shape[2:], kernel, strides, dilations)
    y = lax.conv_general_dilated(
        x, w, window_strides=strides, padding=list(zip(pads[:n], pads[n:])),
        rhs_dilation=dilations, feature_group_count=group, precision=PRECISION)
    if b is not None:
        y = y + jnp.reshape(b, (1, -1) + (1,) * n)
    return y


# -- pooling --------------------------------------------------------------------------------

def _pool_geometry(x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides):
    """(window, strides, dilations, explicit pads [(lo, hi)], extra end pads for ceil_mode)."""
    n = x.ndim - 2
    kernel = list(kernel_shape)
    strides = list(strides or [1] * n)
    dilations = list(dilations or [1] * n)
    flat = _window_pads(auto_pad, pads, x.shape[2:], kernel, strides, dilations)
    explicit = list(zip(flat[:n], flat[n:]))
    extra = []
    for size, (lo, hi), k, s, d in zip(x.shape[2:], explicit, kernel, strides, dilations):
        span = size + lo + hi - ((k - 1) * d + 1)
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (out - 1) * s >= size + lo:
            out -= 1  # the last window must start inside the input or the begin padding
        extra.append(max((out - 1) * s + (k - 1) * d + 1 - (size + lo + hi), 0))
    return kernel, strides, dilations, explicit, extra


def _reduce_window(x, init, op, kernel, strides, dilations):
    return lax.reduce_window(x, init, op, (1, 1, *kernel), (1, 1, *strides), "VALID",
                             window_dilation=(1, 1, *dilations))


def _pad_spatial(x, widths, value):
    return jnp.pad(x, [(0, 0), (0, 0), *widths], constant_values=value)


_MAXPOOL_ATTRS = {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": None, "kernel_shape": None,
                  "pads": None, "storage_order": 0, "strides": None}


@register("MaxPool", since=12, attrs=_MAXPOOL_ATTRS, check=check_pool)
@register("MaxPool", since=22, attrs=_MAXPOOL_ATTRS, check=check_pool)
def max_pool(x, *, auto_pad, ceil_mode, dilations, kernel_shape, pads, storage_order, strides):
    """Max over sliding windows (padding never wins); outputs (Y, Indices), Indices being the
    flat position of each maximum in x (row-major, or column-major over the spatial axes when
    storage_order=1)."""
    kernel, strides, dilations, explicit, extra = _pool_geometry(
        x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    widths = [(int(lo), int(hi + e)) for (lo, hi), e in zip(explicit, extra)]
    return _max_pool_with_indices(x, tuple(widths), tuple(kernel), tuple(strides), tuple(dilations),
                                  int(storage_order))


@partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4, 5))
def _max_pool_with_indices(x, widths, kernel, strides, dilations, storage_order):
    lowest = -jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min
    index_dtype = jax_dtype(np.int64)
    padded = (_pad_spatial(x, widths, lowest),
              _pad_spatial(jnp.asarray(_flat_positions(x.shape, storage_order), index_dtype),
                           widths, -1))
    init = (jnp.array(lowest, x.dtype), jnp.array(-1, index_dtype))
    return _reduce_window(padded, init, _max_with_index, kernel, strides, dilations)


@_max_pool_with_indices.defjvp
def _max_pool_jvp(widths, kernel, strides, dilations, storage_order, primals, tangents):
    """Y's tangent through a plain max reduction (JAX cannot differentiate the variadic one that
    carries the integer indices); the indices have none. What the Adam baseline needs."""
    (x,), (dx,) = primals, tangents
    out = _max_pool_with_indices(x, widths, kernel, strides, dilations, storage_order)

    def values(x):  # a concrete -inf init: lax picks its differentiable max reduction
        lowest = np.array(-np.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min, x.dtype)
        return _reduce_window(_pad_spatial(x, widths, lowest), lowest, lax.max, kernel, strides, dilations)
    _, dy = jax.jvp(values, (x,), (dx,))
    return out, (dy, np.zeros(out[1].shape, jax.dtypes.float0))


def _max_with_index(a, b):
    """Reducer over (value, position) pairs: the larger value, the first position on ties."""
    (value_a, pos_a), (value_b, pos_b) = a, b
    take_a = (value_a > value_b) | ((value_a == value_b) & (pos_a < pos_b))
    return jnp.where(take_a, value_a, value_b), jnp.where(take_a, pos_a, pos_b)


def _flat_positions(shape, storage_order: int) -> np.ndarray:
    """Each element's flat index in an NC... tensor (spatial axes column-major if asked)."""
    if not storage_order:
        return np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    spatial = shape[2:]
    strides = np.cumprod((1,) + tuple(spatial[:-1]))
    grid = np.indices(spatial)
    offset = sum(g * s for g, s in zip(grid, strides))
    base = np.arange(shape[0] * shape[1], dtype=np.int64).reshape(shape[:2] + (1,) * len(spatial))
    return base * int(np.prod(spatial)) + offset


_AVGPOOL_ATTRS = {"auto_pad": "NOTSET", "ceil_mode": 0, "count_include_pad": 0,
                  "kernel_shape": None, "pads": None, "strides": None}


@register("AveragePool", since=11, attrs=_AVGPOOL_ATTRS, check=check_pool)
@register("AveragePool", since=19, attrs={**_AVGPOOL_ATTRS, "dilations": None}, check=check_pool)
@register("AveragePool", since=22, attrs={**_AVGPOOL_ATTRS, "dilations": None}, check=check_pool)
def average_pool(x, *, auto_pad, ceil_mode, count_include_pad, kernel_shape, pads, strides,
                 dilations=None):
    """Mean over sliding windows; explicit pads count only with count_include_pad, the
    extra end padding of ceil_mode never counts."""
    kernel, strides, dilations, explicit, extra = _pool_geometry(
        x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides)
    widths = [(lo, hi + e) for (lo, hi), e in zip(explicit, extra)]
    zero = np.array(0, x.dtype)  # a concrete init: lax picks its differentiable sum reduction
    total = _reduce_window(_pad_spatial(x, widths, 0), zero, lax.add, kernel, strides, dilations)
    ones = jnp.ones((1, 1, *x.shape[2:]), x.dtype)
    if count_include_pad:
        ones = _pad_spatial(ones, explicit, 1)
        widths = [(0, e) for e in extra]
    count = _reduce_window(_pad_spatial(ones, widths, 0), zero, lax.add, kernel, strides, dilations)
    return total / count


@register("GlobalMaxPool", since=1)
@register("GlobalMaxPool", since=22)
def global_max_pool(x):
    """Max over all spatial axes (kept as size 1)."""
    return jnp.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)


@register("GlobalAveragePool", since=1)
@register("GlobalAveragePool", since=22)
def global_average_pool(x):
    """Mean over all spatial axes (kept as size 1)."""
    return jnp.mean(x, axis=tuple(range(2, x.ndim)), keepdims=True)


# -- normalization and softmax --------------------------------------------------------------

def _batch_norm(x, scale, bias, mean, var, epsilon):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = lax.rsqrt(jnp.reshape(var, shape).astype(x.dtype) + epsilon)
    centered = x - jnp.reshape(mean, shape)
    return centered * inv * jnp.reshape(scale, shape) + jnp.reshape(bias, shape)


@register("BatchNormalization", since=9, attrs={"epsilon": 1e-5, "momentum": 0.9},
          frozen=(3, 4), check=check_batch_norm)
def batch_norm_9(x, scale, bias, mean, var, *, epsilon, momentum):
    """Inference batch normalization over axis 1 with the running statistics."""
    return _batch_norm(x, scale, bias, mean, var, epsilon)


@register("BatchNormalization", since=14,
          attrs={"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0}, frozen=(3, 4),
          check=check_batch_norm)
@register("BatchNormalization", since=15,
          attrs={"epsilon": 1e-5, "momentum": 0.9, "training_mode": 0}, frozen=(3, 4),
          check=check_batch_norm)
def batch_norm(x, scale, bias, mean, var, *, epsilon, momentum, training_mode):
    """Inference batch normalization; training_mode=1 (batch statistics) is unsupported."""
    if training_mode:
        raise UnsupportedModelError("BatchNormalization with training_mode=1 is not supported")
    return _batch_norm(x, scale, bias, mean, var, epsilon)


@register("Softmax", since=13, attrs={"axis": -1})
def softmax(x, *, axis):
    """exp(x) / sum(exp(x)) along ``axis``."""
    return jax.nn.softmax(x, axis=normalize_axis(axis, x.ndim))


@register("LogSoftmax", since=13, attrs={"axis": -1})
def log_softmax(x, *, axis):
    """log(softmax(x)) along ``axis``."""
    return jax.nn.log_softmax(x, axis=normalize_axis(axis, x.ndim))
