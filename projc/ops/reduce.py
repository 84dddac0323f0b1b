"""Reductions: Reduce{Max,Min,Sum,Mean,Prod,L1,L2,SumSquare,LogSum,LogSumExp} (axes as
attribute, then as input) and Arg{Max,Min}."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from .dtypes import jax_dtype
from .layout import ints, normalize_axis
from .registry import register


def _identity_element(kind: str, dtype):
    """The value a reduction over an empty set yields (ONNX: -inf for max, +inf for min)."""
    if kind in ("sum", "mean"):
        return 0
    if kind == "log_sum_exp":
        return -jnp.inf
    if dtype == jnp.bool_:
        return kind == "min"  # max of nothing is False, min of nothing is True
    floating = jnp.issubdtype(dtype, jnp.floating)
    if kind == "max":
        return -jnp.inf if floating else jnp.iinfo(dtype).min
    return jnp.inf if floating else jnp.iinfo(dtype).max


def _log_sum_exp(x, axis, keepdims):
    top = jnp.max(x, axis=axis, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0)
    total = jnp.log(jnp.sum(jnp.exp(x - top), axis=axis, keepdims=True)) + top
    return total if keepdims else jnp.squeeze(total, axis)


_REDUCERS: dict[str, Callable[..., Any]] = {
    "max": jnp.max, "min": jnp.min, "sum": jnp.sum, "mean": jnp.mean, "prod": jnp.prod,
    "l1": lambda x, axis, keepdims: jnp.sum(jnp.abs(x), axis=axis, keepdims=keepdims),
    "l2": lambda x, axis, keepdims: jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims)),
    "sum_square": lambda x, axis, keepdims: jnp.sum(x * x, axis=axis, keepdims=keepdims),
    "log_sum": lambda x, axis, keepdims: jnp.log(jnp.sum(x, axis=axis, keepdims=keepdims)),
    "log_sum_exp": _log_sum_exp,
}
# Reductions whose value over an empty set jnp already gives as ONNX does (0, 1, log 0 = -inf).
_EMPTY_OK = ("sum", "prod", "l1", "l2", "sum_square", "log_sum")
_NAMES = {"max": "Max", "min": "Min", "sum": "Sum", "mean": "Mean", "prod": "Prod", "l1": "L1",
          "l2": "L2", "sum_square": "SumSquare", "log_sum": "LogSum", "log_sum_exp": "LogSumExp"}


def _reduce(kind, x, axes, keepdims, noop_with_empty_axes=0):
    if axes is None or len(axes) == 0:
        if noop_with_empty_axes:
            return x
        axes = range(x.ndim)
    axes = tuple(sorted(normalize_axis(a, x.ndim) for a in axes))
    if any(x.shape[a] == 0 for a in axes) and kind not in _EMPTY_OK:
        shape = [1 if i in axes else d for i, d in enumerate(x.shape)]
        full = jnp.full(shape, _identity_element(kind, x.dtype), x.dtype)
        return full if keepdims else jnp.squeeze(full, axes)
    if kind in ("l2", "log_sum", "log_sum_exp") and not jnp.issubdtype(x.dtype, jnp.floating):
        x32 = x.astype(jnp.float32)  # integer inputs: computed in float, truncated back
        return _REDUCERS[kind](x32, axis=axes, keepdims=bool(keepdims)).astype(x.dtype)
    return _REDUCERS[kind](x, axis=axes, keepdims=bool(keepdims)).astype(x.dtype)


def _axes_attribute_version(kind):
    def fn(x, *, axes, keepdims):
        return _reduce(kind, x, axes, keepdims)
    fn.__doc__ = f"Reduce{_NAMES[kind]} over the ``axes`` attribute (all when absent)."
    return fn


def _axes_input_version(kind):
    def fn(x, axes=None, *, keepdims, noop_with_empty_axes):
        return _reduce(kind, x, None if axes is None else ints(axes), keepdims,
                       noop_with_empty_axes)
    fn.__doc__ = (f"Reduce{_NAMES[kind]} over the static ``axes`` input (all when empty, "
                  "unless noop_with_empty_axes).")
    return fn


_AXES_ATTR = {"axes": None, "keepdims": 1}
_AXES_INPUT = {"keepdims": 1, "noop_with_empty_axes": 0}

# ReduceSum takes axes as an input from opset 13; the others from opset 18.
register("ReduceSum", since=13, attrs=_AXES_INPUT, static=(1,))(_axes_input_version("sum"))
for _kind in ("max", "min", "mean", "prod", "l1", "l2", "sum_square", "log_sum", "log_sum_exp"):
    _name = "Reduce" + _NAMES[_kind]
    register(_name, since=13, attrs=_AXES_ATTR)(_axes_attribute_version(_kind))
    _by_input = _axes_input_version(_kind)
    register(_name, since=18, attrs=_AXES_INPUT, static=(1,))(_by_input)
    if _kind in ("max", "min"):
        register(_name, since=20, attrs=_AXES_INPUT, static=(1,))(_by_input)  # + bool


def _arg_reduce(x, axis, keepdims, select_last_index, arg_fn):
    axis = normalize_axis(axis, x.ndim)
    if select_last_index:  # search the reversed axis, then map the index back
        idx = x.shape[axis] - 1 - arg_fn(jnp.flip(x, axis), axis=axis)
    else:
        idx = arg_fn(x, axis=axis)
    idx = jnp.expand_dims(idx, axis) if keepdims else idx
    return idx.astype(jax_dtype(np.int64))


_ARG_ATTRS = {"axis": 0, "keepdims": 1, "select_last_index": 0}


@register("ArgMax", since=13, attrs=_ARG_ATTRS)
def argmax(x, *, axis, keepdims, select_last_index):
    """Index of the maximum along ``axis`` (first occurrence unless select_last_index)."""
    return _arg_reduce(x, axis, keepdims, select_last_index, jnp.argmax)


@register("ArgMin", since=13, attrs=_ARG_ATTRS)
def argmin(x, *, axis, keepdims, select_last_index):
    """Index of the minimum along ``axis`` (first occurrence unless select_last_index)."""
    return _arg_reduce(x, axis, keepdims, select_last_index, jnp.argmin)
