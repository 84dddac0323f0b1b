"""The JAX forwards of projc's own ops (declared in ``projc.ir.constraints``: arity, params, shape).

Kinds are the bare lowercase names of the contract (``dot``, ``sum_pwl``, ``patches``, ...): they
cannot collide with ONNX op types (CamelCase). Each is registered in the op registry with its
declared params as attributes (``since=1``, so ``lookup(kind, any_opset)`` finds it); losses have
zero outputs and a forward that returns ``()``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from projc.ir.constraints import (  # noqa: F401
    CONSTRAINT_KINDS,
    FAMILIES,
    LOSSES,
    MEAN_METRICS,
    MOVES,
    PWL_FNS,
    SMOOTH_FNS,
    defaults,
    patches_out_spatial,
)

from .convolution import canonical_kernel, conv_last, patch_stack
from .convolution import geometry as conv_geometry
from .nn import PRECISION
from .registry import register


def constraint_op(kind: str):
    """Register ``fn`` as the forward of projc op ``kind`` with its declared params."""
    return register(kind, since=1, attrs=defaults(kind))


# -- forward functions ----------------------------------------------------------------------

@constraint_op("dot")
def dot(a, b):
    """z[..., m] = a[..., :] . b[:, m]; b with batch dims: matmul's batched product."""
    return jnp.matmul(a, b)


@constraint_op("conv")
def conv(x, w, strides=None, pads=None, dilations=None, group=1, transpose=0, output_padding=None):
    """Conv (or ConvTranspose, transpose=1) without bias, channels-last (``projc.ops.convolution``)."""
    params = {"strides": strides, "pads": pads, "dilations": dilations, "group": group,
              "transpose": transpose, "output_padding": output_padding}
    geo = conv_geometry(params, w.shape[2:])
    return conv_last(x, canonical_kernel(w, geo), geo, precision=PRECISION)


@constraint_op("mul")
def mul(a, b):
    """z = a * b (broadcast)."""
    return jnp.multiply(a, b)


@constraint_op("sum")
def sum_(*xs):
    """z = sum of the operands (broadcast)."""
    out = xs[0]
    for x in xs[1:]:
        out = jnp.add(out, x)
    return out


def pwl(s, fn: str, alpha: float = 0.01, lo: float = -math.inf, hi: float = math.inf, **stair):
    """phi(s) for the piecewise-linear activations of sum_pwl (``stair``: beta, scale, zero_point,
    qmin, qmax of hardsigmoid and fake_quant)."""
    if fn in _STAIR_FWD:
        return _STAIR_FWD[fn](s, alpha=alpha, **stair)
    if fn == "relu":
        return jnp.maximum(s, 0)
    if fn == "leaky_relu":
        return jnp.where(s >= 0, s, s * jnp.asarray(alpha, dtype=jnp.result_type(s)))
    if fn == "clip":
        return jnp.clip(s, lo, hi)
    if fn == "abs":
        return jnp.abs(s)
    if fn == "sign":
        return jnp.sign(s)
    if fn == "identity":
        return s
    raise ValueError(f"sum_pwl: unknown fn {fn!r}")


def _fake_quant(s, scale, zero_point, qmin, qmax):
    """QuantizeLinear (round half to even, saturate) then DequantizeLinear."""
    dt = jnp.result_type(s)
    sc = jnp.asarray(scale, dt)
    return sc * (jnp.clip(jnp.round(s / sc) + zero_point, qmin, qmax) - zero_point)


_STAIR_FWD: dict[str, Callable[..., Any]] = {  # the sum_pwl fns beyond ReLU's kin (issue 11)
    "hardsigmoid": lambda s, alpha, beta, **_: jnp.clip(s * jnp.asarray(alpha, jnp.result_type(s)) + beta, 0, 1),
    "relu6": lambda s, **_: jnp.clip(s, 0, 6),
    "round": lambda s, **_: jnp.round(s),  # half to even, as ONNX Round
    "floor": lambda s, **_: jnp.floor(s),
    "ceil": lambda s, **_: jnp.ceil(s),
    "fake_quant": lambda s, scale, zero_point, qmin, qmax, **_: _fake_quant(s, scale, zero_point, qmin, qmax),
}


@constraint_op("sum_pwl")
def sum_pwl(*xs, fn="identity", alpha=0.01, lo=-math.inf, hi=math.inf, **stair):
    """z = phi(sum of the operands)."""
    return pwl(sum_(*xs), fn, alpha, lo, hi, **stair)


def _power(s, exponent: float):
    """s ** exponent (a constant) with the primitives the projection's f uses for the common exponents
    (backends/jax/proj_smooth_domain.pow_value)."""
    e = float(exponent)
    if e == 0:
        return jnp.ones_like(s)
    if e == 1:
        return s
    if e == 2:
        return s * s
    if e == 0.5:
        return jnp.sqrt(s)
    if e == -0.5:
        return jax.lax.rsqrt(s)
    if e == -1:
        return 1 / s
    if e.is_integer():
        return jax.lax.integer_pow(s, int(e))
    return jnp.power(s, jnp.asarray(e, jnp.result_type(s)))  # NaN for s < 0, as ONNX Pow


_POWERS = {"sqrt": 0.5, "rsqrt": -0.5, "reciprocal": -1.0, "square": 2.0}


def smooth(s, fn: str, alpha: float = 1.0, exponent: float = 1.0):
    """f(s) for the smooth activations of sum_smooth (elu: alpha; pow: exponent)."""
    dt = jnp.result_type(s)
    if fn == "tanh":
        return jnp.tanh(s)
    if fn == "sigmoid":
        return jax.nn.sigmoid(s)
    if fn == "one_minus_sigmoid":  # a GRU's 1 - z gate (passes/unroll.py)
        return jax.nn.sigmoid(-s)
    if fn == "softplus":
        return jnp.logaddexp(s, jnp.zeros((), dt))
    if fn == "silu":
        return s * jax.nn.sigmoid(s)
    if fn in ("gelu", "gelu_tanh"):
        return jax.nn.gelu(s, approximate=fn == "gelu_tanh")
    if fn == "elu":
        return jnp.where(s > 0, s, jnp.asarray(alpha, dt) * jnp.expm1(jnp.minimum(s, 0)))
    if fn == "hardswish":
        return s * jnp.clip(s / 6 + 0.5, 0, 1)
    if fn == "exp":
        return jnp.exp(s)
    if fn == "log":
        return jnp.log(s)
    if fn in _POWERS:
        return _power(s, _POWERS[fn])
    if fn == "pow":
        return _power(s, exponent)
    raise ValueError(f"sum_smooth: unknown fn {fn!r}")


@constraint_op("sum_smooth")
def sum_smooth(*xs, fn="tanh", alpha=1.0, exponent=1.0):
    """z = f(sum of the operands) for a smooth f (tanh, sigmoid, softplus, silu, gelu, elu, hardswish,
    exp, log, sqrt, rsqrt, reciprocal, square, pow with a constant exponent)."""
    return smooth(sum_(*xs), fn, alpha, exponent)


@constraint_op("max")
def max_(a, axes=None, keepdims=1):
    """z = max of a over axes."""
    return jnp.max(a, axis=None if axes is None else tuple(axes), keepdims=bool(keepdims))


@constraint_op("mean")
def mean(a, axes=None, keepdims=1, metric="sum"):
    """z = mean of a over axes (``metric`` only chooses how the solver projects it)."""
    return jnp.mean(a, axis=None if axes is None else tuple(axes), keepdims=bool(keepdims))


@constraint_op("mean_square")
def mean_square(a, axes=None, keepdims=1, metric="sum"):
    """z = mean of a² over axes (``metric`` only chooses how the solver projects it)."""
    return jnp.mean(a * a, axis=None if axes is None else tuple(axes), keepdims=bool(keepdims))


@constraint_op("reduce_sum")
def reduce_sum(a, axes=None, keepdims=1):
    """z = sum of a over axes."""
    return jnp.sum(a, axis=None if axes is None else tuple(axes), keepdims=bool(keepdims))


@constraint_op("segment_sum")
def segment_sum(a, segments=None):
    """z[..., g] = sum of a[..., k] over the k with segments[k] = g."""
    seg = np.asarray(segments, np.int32)
    onehot = np.equal.outer(seg, np.arange(int(seg.max()) + 1)).astype(np.dtype(a.dtype))
    return jnp.matmul(a, onehot, precision=jax.lax.Precision.HIGHEST)


@constraint_op("scatter")
def scatter(a, indices=None, shape=None, value=0.0):
    """a [..., N] placed at the distinct flat positions ``indices`` of a [..., *shape] filled with
    ``value``."""
    lead = a.shape[:-1]
    out = jnp.full(lead + (math.prod(shape),), value, a.dtype)
    out = out.at[..., np.asarray(indices, np.int32)].set(a, unique_indices=True)
    return jnp.reshape(out, lead + tuple(shape))


@constraint_op("shift")
def shift(*xs, axes=None, segments=None):
    """-max of the operands' sum over ``axes`` (keepdims), or per segment of the last axis (broadcast
    back to it). A constant of each update for the solver (projc.ir.constraints); here its value."""
    s = sum_(*xs)
    if segments is None:
        return -jnp.max(s, axis=tuple(axes), keepdims=True)
    seg = np.asarray(segments, np.int32)
    groups = int(seg.max()) + 1
    member = np.equal.outer(np.arange(groups), seg)  # [G, N]
    m = jnp.max(jnp.where(member, s[..., None, :], -jnp.inf), axis=-1)  # [..., G]
    return -jnp.take(m, seg, axis=-1)


@constraint_op("embed")
def embed(table, indices):
    """z[n, :] = table[indices[n], :] (an embedding lookup: a float table [V, D], integer data indices
    in 0..V-1; negative ones count from the end, as ONNX Gather's)."""
    idx = jnp.asarray(indices)
    idx = jnp.where(idx < 0, idx + table.shape[0], idx)
    return jnp.take(table, idx, axis=0, mode="clip")


@constraint_op("wsum")
def wsum(a, c):
    """z = sum over the last axis of a * c (c: constant coefficients, broadcast)."""
    return jnp.sum(a * c, axis=-1)


@constraint_op("take")
def take(a, indices=None, axis=0):
    """a[..., indices, ...] along ``axis`` (constant indices; a repeated index copies)."""
    return jnp.take(a, jnp.asarray(indices, jnp.int32), axis=axis)


@constraint_op("identity")
def identity(a):
    """z = a (inserted by bipartite repair)."""
    return a


@constraint_op("reshape")
def reshape(a, shape=None):
    """numpy reshape (one -1 allowed)."""
    return jnp.reshape(a, tuple(shape))


@constraint_op("transpose")
def transpose(a, perm=None):
    """numpy transpose."""
    return jnp.transpose(a, None if perm is None else tuple(perm))


@constraint_op("concat")
def concat(*xs, axis=0):
    """concatenate along axis."""
    return jnp.concatenate(xs, axis=axis)


@constraint_op("slice")
def slice_(a, starts=None, ends=None, axes=None, steps=None):
    """static slice (ONNX Slice semantics, python clamping)."""
    index = [slice(None)] * a.ndim
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[ax % a.ndim] = slice(int(s), int(e), int(st))
    return a[tuple(index)]


@constraint_op("pad")
def pad(a, pads=None, value=0.0):
    """constant pad; pads in ONNX order (all begins, then all ends)."""
    n = a.ndim
    return jnp.pad(a, [(int(pads[i]), int(pads[i + n])) for i in range(n)], constant_values=value)


@constraint_op("patches")
def patches(x, kernel=None, strides=None, pads=None, dilations=None, channels_last=0):
    """im2col: [N, C, *S] (channels_last: [N, *S, C]) -> [N, *O, C*prod(kernel)], channel-major
    within a patch."""
    geo = conv_geometry({"strides": strides, "pads": pads, "dilations": dilations}, kernel)
    xh = x if channels_last else jnp.moveaxis(x, 1, -1)
    col = patch_stack(xh, geo)  # [N, *O, C, K]
    return jnp.reshape(col, col.shape[:-2] + (col.shape[-2] * col.shape[-1],))


@constraint_op("cross_entropy")
def cross_entropy(logits, labels, lam=5.0, method="newton", steps=None):
    """loss (no forward value: ends training at the logits)."""
    return ()


@constraint_op("margin")
def margin(logits, labels):
    """loss (no forward value)."""
    return ()


@constraint_op("squared_error")
def squared_error(outputs, targets, lam=None):
    """loss (no forward value)."""
    return ()


@constraint_op("binary_cross_entropy")
def binary_cross_entropy(outputs, targets, lam=5.0):
    """loss (no forward value)."""
    return ()


@constraint_op("huber")
def huber(outputs, targets, lam=5.0, delta=1.0):
    """loss (no forward value)."""
    return ()


@constraint_op("l1")
def l1(outputs, targets, lam=5.0):
    """loss (no forward value)."""
    return ()
