"""projc's own ops: constraint families, moves and losses (docs/constraint-ops.md).

The moves (reshape, transpose, concat, slice, pad, patches) are linear ops that only rearrange
values; the solvers see through them (they hold no constraint of their own).

Kinds are the bare lowercase names of the contract (``dot``, ``sum_pwl``, ``patches``, ...): they
cannot collide with ONNX op types (CamelCase). Each is registered in the op registry with its JAX
forward (``since=1``, so ``lookup(kind, any_opset)`` finds it); losses have zero outputs and a
forward that returns ``()``.

``infer_shape(kind, params, shapes)`` is the shape rule shared by the passes (to type new values)
and by the verifier (``constraint_type_rules()``). Shapes may hold symbolic dims (str, e.g. the
batch ``"B"``); a symbolic dim only matches itself or a broadcast 1.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .registry import register

FAMILIES = ("dot", "mul", "sum", "sum_pwl", "sum_smooth", "max", "mean", "embed", "identity")
MOVES = ("reshape", "transpose", "concat", "slice", "pad", "patches")
LOSSES = ("cross_entropy", "margin", "squared_error")
PWL_FNS = ("relu", "leaky_relu", "clip", "abs", "sign", "identity",
           "hardsigmoid", "relu6", "round", "floor", "ceil", "fake_quant")
SMOOTH_FNS = ("tanh", "sigmoid", "one_minus_sigmoid", "softplus", "silu", "gelu", "gelu_tanh", "elu", "hardswish",
              "exp", "log", "sqrt", "rsqrt", "reciprocal", "square", "pow")
CONSTRAINT_KINDS = FAMILIES + MOVES + LOSSES

Shape = tuple  # of int | str


# -- forward functions ----------------------------------------------------------------------

@register("dot", since=1)
def dot(a, b):
    """z[..., m] = a[..., :] . b[:, m]."""
    return jnp.matmul(a, b)


@register("mul", since=1)
def mul(a, b):
    """z = a * b (broadcast)."""
    return jnp.multiply(a, b)


@register("sum", since=1)
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


_STAIR_FWD = {  # the sum_pwl fns beyond ReLU's kin (issue 11)
    "hardsigmoid": lambda s, alpha, beta, **_: jnp.clip(s * jnp.asarray(alpha, jnp.result_type(s)) + beta, 0, 1),
    "relu6": lambda s, **_: jnp.clip(s, 0, 6),
    "round": lambda s, **_: jnp.round(s),  # half to even, as ONNX Round
    "floor": lambda s, **_: jnp.floor(s),
    "ceil": lambda s, **_: jnp.ceil(s),
    "fake_quant": lambda s, scale, zero_point, qmin, qmax, **_: _fake_quant(s, scale, zero_point, qmin, qmax),
}
_STAIR_ATTRS = {"beta": 0.5, "scale": 1.0, "zero_point": 0.0, "qmin": -math.inf, "qmax": math.inf}


@register("sum_pwl", since=1, attrs={"fn": "identity", "alpha": 0.01, "lo": -math.inf, "hi": math.inf,
                                     **_STAIR_ATTRS})
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


@register("sum_smooth", since=1, attrs={"fn": "tanh", "alpha": 1.0, "exponent": 1.0})
def sum_smooth(*xs, fn="tanh", alpha=1.0, exponent=1.0):
    """z = f(sum of the operands) for a smooth f (tanh, sigmoid, softplus, silu, gelu, elu, hardswish,
    exp, log, sqrt, rsqrt, reciprocal, square, pow with a constant exponent)."""
    return smooth(sum_(*xs), fn, alpha, exponent)


@register("max", since=1, attrs={"axes": None, "keepdims": 1})
def max_(a, axes=None, keepdims=1):
    """z = max of a over axes."""
    return jnp.max(a, axis=None if axes is None else tuple(axes), keepdims=bool(keepdims))


MEAN_METRICS = ("sum", "euclidean")


@register("mean", since=1, attrs={"axes": None, "keepdims": 1, "metric": "sum"})
def mean(a, axes=None, keepdims=1, metric="sum"):
    """z = mean of a over axes (``metric`` only chooses how the solver projects it)."""
    return jnp.mean(a, axis=None if axes is None else tuple(axes), keepdims=bool(keepdims))


@register("embed", since=1)
def embed(table, indices):
    """z[n, :] = table[indices[n], :] (an embedding lookup: a float table [V, D], integer data indices
    in 0..V-1; negative ones count from the end, as ONNX Gather's)."""
    idx = jnp.asarray(indices)
    idx = jnp.where(idx < 0, idx + table.shape[0], idx)
    return jnp.take(table, idx, axis=0, mode="clip")


@register("identity", since=1)
def identity(a):
    """z = a (inserted by bipartite repair)."""
    return a


@register("reshape", since=1, attrs={"shape": None})
def reshape(a, shape=None):
    """numpy reshape (one -1 allowed)."""
    return jnp.reshape(a, tuple(shape))


@register("transpose", since=1, attrs={"perm": None})
def transpose(a, perm=None):
    """numpy transpose."""
    return jnp.transpose(a, None if perm is None else tuple(perm))


@register("concat", since=1, attrs={"axis": 0})
def concat(*xs, axis=0):
    """concatenate along axis."""
    return jnp.concatenate(xs, axis=axis)


@register("slice", since=1, attrs={"starts": None, "ends": None, "axes": None, "steps": None})
def slice_(a, starts=None, ends=None, axes=None, steps=None):
    """static slice (ONNX Slice semantics, python clamping)."""
    index = [slice(None)] * a.ndim
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    for s, e, ax, st in zip(starts, ends, axes, steps):
        index[ax % a.ndim] = slice(int(s), int(e), int(st))
    return a[tuple(index)]


@register("pad", since=1, attrs={"pads": None, "value": 0.0})
def pad(a, pads=None, value=0.0):
    """constant pad; pads in ONNX order (all begins, then all ends)."""
    n = a.ndim
    return jnp.pad(a, [(int(pads[i]), int(pads[i + n])) for i in range(n)], constant_values=value)


def patches_out_spatial(spatial, kernel, strides, pads, dilations):
    n = len(kernel)
    out = []
    for i in range(n):
        size = spatial[i]
        if not isinstance(size, int):
            out.append(size)  # symbolic spatial: keep the name (only valid for 1x1/stride 1)
            continue
        eff = dilations[i] * (kernel[i] - 1) + 1
        out.append((size + pads[i] + pads[i + n] - eff) // strides[i] + 1)
    return tuple(out)


@register("patches", since=1, attrs={"kernel": None, "strides": None, "pads": None, "dilations": None})
def patches(x, kernel=None, strides=None, pads=None, dilations=None):
    """im2col: [N, C, *S] -> [N, *O, C*prod(kernel)], channel-major within a patch."""
    n = len(kernel)
    strides = strides or [1] * n
    pads = pads or [0] * (2 * n)
    dilations = dilations or [1] * n
    x = jnp.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + n]) for i in range(n)])
    out = patches_out_spatial(x.shape[2:], kernel, strides, [0] * (2 * n), dilations)
    cols = []
    for offs in itertools.product(*[range(k) for k in kernel]):
        index = [slice(None), slice(None)]
        for i, o in enumerate(offs):
            start = o * dilations[i]
            index.append(slice(start, start + (out[i] - 1) * strides[i] + 1, strides[i]))
        cols.append(x[tuple(index)])
    col = jnp.stack(cols, axis=-1)  # [N, C, *O, K]
    col = jnp.moveaxis(col, 1, -2)  # [N, *O, C, K]
    return jnp.reshape(col, col.shape[:-2] + (col.shape[-2] * col.shape[-1],))


@register("cross_entropy", since=1, attrs={"lam": 5.0, "method": "newton", "steps": None})
def cross_entropy(logits, labels, lam=5.0, method="newton", steps=None):
    """loss (no forward value: ends training at the logits)."""
    return ()


@register("margin", since=1)
def margin(logits, labels):
    """loss (no forward value)."""
    return ()


@register("squared_error", since=1, attrs={"lam": None})
def squared_error(outputs, targets, lam=None):
    """loss (no forward value)."""
    return ()


# -- shape rules ----------------------------------------------------------------------------

class ShapeError(ValueError):
    pass


def broadcast(*shapes: Shape) -> Shape:
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        dims = {s[i - rank + len(s)] for s in shapes if i - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ShapeError(f"shapes {' and '.join(_fmt(s) for s in shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def _fmt(shape: Shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _reshape_shape(src: Shape, target: Sequence[int]) -> Shape:
    target = [int(d) for d in target]
    if target.count(-1) > 1:
        raise ShapeError("reshape: more than one -1")
    if -1 not in target:
        if all(isinstance(d, int) for d in src) and math.prod(src) != math.prod(target):
            raise ShapeError(f"reshape: {_fmt(src)} has {math.prod(src)} elements, not {math.prod(target)}")
        return tuple(target)
    known_src = math.prod(d for d in src if isinstance(d, int))
    symbolic = [d for d in src if not isinstance(d, int)]
    known_t = math.prod(d for d in target if d != -1)
    if not symbolic:
        if known_t == 0 or known_src % known_t:
            raise ShapeError(f"reshape: cannot reshape {_fmt(src)} to {target}")
        fill: int | str = known_src // known_t
    elif len(symbolic) == 1 and known_src == known_t:
        fill = symbolic[0]
    else:
        raise ShapeError(f"reshape: cannot infer -1 reshaping {_fmt(src)} to {target}")
    return tuple(fill if d == -1 else d for d in target)


def infer_shape(kind: str, params: dict[str, Any], shapes: Sequence[Shape]) -> Shape | None:
    """The output shape of a projc op (None for losses). Raises ShapeError."""
    p = params
    if kind == "dot":
        a, b = shapes
        if len(b) != 2 or len(a) < 1:
            raise ShapeError(f"dot needs a [...,K] and b [K,M], got {_fmt(a)} and {_fmt(b)}")
        if a[-1] != b[0]:
            raise ShapeError(f"dot contraction mismatch: {_fmt(a)} . {_fmt(b)}")
        return tuple(a[:-1]) + (b[1],)
    if kind in ("mul", "sum", "sum_pwl", "sum_smooth"):
        return broadcast(*shapes)
    if kind == "identity":
        return tuple(shapes[0])
    if kind == "embed":
        table, idx = shapes
        if len(table) != 2:
            raise ShapeError(f"embed needs a table [V,D], got {_fmt(table)}")
        return tuple(idx) + (table[1],)
    if kind in ("max", "mean"):
        (a,) = shapes
        axes = range(len(a)) if p.get("axes") is None else [ax % len(a) for ax in p["axes"]]
        if p.get("keepdims", 1):
            return tuple(1 if i in axes else d for i, d in enumerate(a))
        return tuple(d for i, d in enumerate(a) if i not in axes)
    if kind == "reshape":
        return _reshape_shape(shapes[0], p["shape"])
    if kind == "transpose":
        (a,) = shapes
        perm = p.get("perm") or list(reversed(range(len(a))))
        if sorted(perm) != list(range(len(a))):
            raise ShapeError(f"transpose: perm {perm} does not fit rank {len(a)}")
        return tuple(a[i] for i in perm)
    if kind == "concat":
        rank = len(shapes[0])
        axis = p.get("axis", 0) % rank
        total: int | str = 0
        for s in shapes:
            if len(s) != rank or any(s[i] != shapes[0][i] for i in range(rank) if i != axis):
                raise ShapeError(f"concat: {' and '.join(_fmt(s) for s in shapes)} differ off axis {axis}")
            total = total + s[axis] if isinstance(total, int) and isinstance(s[axis], int) else "?"
        return tuple(total if i == axis else d for i, d in enumerate(shapes[0]))
    if kind == "slice":
        (a,) = shapes
        out = list(a)
        axes = p.get("axes") or list(range(len(p["starts"])))
        steps = p.get("steps") or [1] * len(axes)
        for s, e, ax, st in zip(p["starts"], p["ends"], axes, steps):
            ax %= len(a)
            if isinstance(a[ax], int):
                out[ax] = len(range(*slice(int(s), int(e), int(st)).indices(a[ax])))
            elif not (int(s) == 0 and int(e) >= 2**31 - 1 and int(st) == 1):
                raise ShapeError(f"slice of symbolic dim {a[ax]}")
        return tuple(out)
    if kind == "pad":
        (a,) = shapes
        n = len(a)
        pads = p["pads"]
        return tuple(d + pads[i] + pads[i + n] if isinstance(d, int) else d for i, d in enumerate(a))
    if kind == "patches":
        (a,) = shapes
        k = p["kernel"]
        n = len(k)
        if len(a) != n + 2:
            raise ShapeError(f"patches: input {_fmt(a)} is not N,C + {n} spatial dims")
        if not isinstance(a[1], int):
            raise ShapeError("patches: symbolic channel dim")
        out = patches_out_spatial(a[2:], k, p.get("strides") or [1] * n, p.get("pads") or [0] * (2 * n),
                                  p.get("dilations") or [1] * n)
        return (a[0],) + out + (a[1] * math.prod(k),)
    if kind in LOSSES:
        return None
    raise ShapeError(f"unknown projc op {kind}")


# -- verifier rules -------------------------------------------------------------------------

_ARITY = {"dot": (2, 2), "mul": (2, 2), "sum": (1, None), "sum_pwl": (1, None), "sum_smooth": (1, None),
          "max": (1, 1), "mean": (1, 1), "embed": (2, 2),
          "identity": (1, 1), "reshape": (1, 1), "transpose": (1, 1), "concat": (1, None),
          "slice": (1, 1), "pad": (1, 1), "patches": (1, 1), "cross_entropy": (2, 2),
          "margin": (2, 2), "squared_error": (2, 2)}
_REQUIRED = {"sum_pwl": ("fn",), "sum_smooth": ("fn",), "reshape": ("shape",), "slice": ("starts", "ends"),
             "pad": ("pads",), "patches": ("kernel",), "max": ("axes",),
             "mean": ("axes",)}


def _finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _rule(kind: str) -> Callable:
    def rule(op) -> str | None:
        lo, hi = _ARITY[kind]
        n = len(op.inputs)
        if n < lo or (hi is not None and n > hi) or any(v is None for v in op.inputs):
            return f"expects {lo}{'' if hi == lo else '..' + (str(hi) if hi else 'n')} operands, got {n}"
        for key in _REQUIRED.get(kind, ()):
            if key not in op.params:
                return f"missing param {key!r}"
        if kind == "mean" and op.params.get("metric", "sum") not in MEAN_METRICS:
            return f"unknown metric {op.params['metric']!r} (one of {', '.join(MEAN_METRICS)})"
        if kind == "sum_pwl" and op.params["fn"] not in PWL_FNS:
            return f"unknown fn {op.params['fn']!r} (one of {', '.join(PWL_FNS)})"
        if kind == "sum_pwl" and op.params["fn"] == "fake_quant" and "scale" not in op.params:
            return "fn fake_quant needs param 'scale'"
        if kind == "sum_pwl" and op.params["fn"] == "hardsigmoid" and "alpha" not in op.params:
            return "fn hardsigmoid needs param 'alpha' (ONNX default 0.2)"
        if kind == "sum_smooth" and op.params["fn"] not in SMOOTH_FNS:
            return f"unknown fn {op.params['fn']!r} (one of {', '.join(SMOOTH_FNS)})"
        if kind == "sum_smooth" and op.params["fn"] == "pow" and not _finite_number(op.params.get("exponent")):
            return "fn pow needs a finite number as param 'exponent'"
        if kind in LOSSES:
            if op.outputs:
                return "a loss has no outputs"
            out, lab = op.inputs
            if not out.dtype.startswith("f"):
                return f"loss input must be float, got {out.dtype}"
            if kind == "squared_error":
                if lab.shape != out.shape:
                    return f"targets {lab.type_str()} do not match outputs {out.type_str()}"
            elif kind == "cross_entropy" and out.rank == 3:  # per-step logits [B,T,C], labels [B,T]
                if lab.dtype != "i64" or tuple(lab.shape) != tuple(out.shape[:-1]):
                    return f"expects logits [B,T,C] and labels i64[B,T], got {out.type_str()}, {lab.type_str()}"
            elif lab.dtype != "i64" or lab.rank != 1 or out.rank != 2 or lab.shape[0] != out.shape[0]:
                return f"expects logits [B,C] and labels i64[B], got {out.type_str()}, {lab.type_str()}"
            return None
        if len(op.outputs) != 1:
            return f"expects 1 output, got {len(op.outputs)}"
        if kind == "embed" and op.inputs[1].dtype not in ("i64", "i32"):
            return f"embed indices must be i64 or i32, got {op.inputs[1].type_str()}"
        dtypes = {v.dtype for v in (op.inputs[:1] if kind == "embed" else op.inputs)}
        if len(dtypes) > 1:
            return f"operand dtypes differ: {', '.join(v.type_str() for v in op.inputs)}"
        if op.outputs[0].dtype not in dtypes:
            return f"output dtype {op.outputs[0].dtype} differs from operands {dtypes.pop()}"
        try:
            shape = infer_shape(kind, op.params, [v.shape for v in op.inputs])
        except ShapeError as e:
            return str(e)
        got = op.outputs[0].shape
        if len(shape) != len(got) or any(
                a != b and not (a == "?" or b == "?") for a, b in zip(shape, got)):
            return f"output shape {_fmt(got)} differs from the inferred {_fmt(shape)}"
        return None

    return rule


def constraint_type_rules() -> dict[str, Callable]:
    """kind -> verifier rule (op -> problem or None) for every projc op."""
    return {kind: _rule(kind) for kind in CONSTRAINT_KINDS}
