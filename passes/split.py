"""split: an op with no closed-form family becomes a chain of families whose projections are exact.

"Split, don't approximate" (DESIGN.md §9): each intermediate of the op's formula becomes a value of
its own, produced by a family with an exact projection, so the chain's constraint set is exactly
the op's graph (each intermediate is a function of the op's inputs: fixing them fixes the chain).
No op is approximated; docs/transformers.md has the forms and why each is exact.

    Softmax(x), axis a         -> s = shift[axes=[a]](x)                 (a constant of each update)
                                  e = sum_smooth[exp](x, s);  z = reduce_sum[axes=[a]](e)
                                  r = sum_smooth[reciprocal](z);  p = mul(e, r)
    Softmax(x + M), M a constant mask (entries <= -1e4 or -inf, e.g. causal)
                               -> the unmasked entries only: xc = take(x), the same chain with
                                  segment_sum per row, p = scatter(mul(e, take(r))) (zeros elsewhere)
    LogSoftmax(x)              -> the same e, z; y = sum(x, s, mul(sum_smooth[log](z), -1))
    LayerNormalization(x, g, b)-> m = mean(x); nm = mul(m, -1); d = sum(x, nm)
                                  v = mean_square(d); r = sum_smooth[rsqrt](v, eps)
                                  y = sum(mul(mul(d, r), g), b)
    RMSNormalization(x, g)     -> v = mean_square(x); r = sum_smooth[rsqrt](v, eps); y = mul(mul(x, r), g)
    GroupNormalization, InstanceNormalization -> reshape to groups, the LayerNorm chain, reshape back,
                                  the per-channel affine (GroupNormalization-21)
    Div(a, b), b trained       -> mul(a, sum_smooth[reciprocal](b))
    Exp | Log | Sqrt | Reciprocal (x) -> sum_smooth[exp | log | sqrt | reciprocal](x)
    Pow(x, c), c a constant    -> sum_smooth[square | sqrt | rsqrt | reciprocal | pow[exponent=c]](x)
    ReduceSum(x)               -> reduce_sum[axes, keepdims](x)
    Einsum(a, b), matmul-like  -> transposes and reshapes around one (batched) dot
    Attention(q, k, v) (opset 23; no past, no softcap) -> heads, dot, the softmax above, dot

The softmax's shift (option ``shift``): ``fixed`` (the default) subtracts the row max taken when
each update starts (a ``shift`` op: a constant of the update, so e = exp(x - c) <= 1 there and the
chain is exact for any c, softmax being shift-invariant); ``max`` makes the shift a variable
(``max`` family, negated: exact too, two more families); ``none`` uses exp(x) as it is.

The emitted chains are bipartite (a producer's value reaches each consumer by paths of one parity):
the variance is one ``mean_square`` family (mean of squares, projected exactly along a's direction:
one cubic per row), so d reaches the product d·r directly and through mean_square, rsqrt: paths of
lengths 1 and 3. Run after the first ``fuse-activations`` (so torch's decomposed GELU, whose Pow it
matches, is already fused) and before ``lower``; the second ``fuse-activations`` fuses the new sums.
"""
from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from projc.errors import PassError
from projc.ir import Dim, Graph, Op, Value, remove_dead_code
from projc.ir.constraints import MEAN_METRICS

from . import Pass, register_pass
from ._common import (
    Lowering,
    Rewriter,
    Rule,
    RuleResult,
    const_data,
    operands,
    optional_input,
    reshape_param,
    rewrite,
    src_of,
)

MASK_BELOW = -1e4   # an additive constant at or below this (or -inf) masks its entry: exp gives 0
SHIFTS = ("fixed", "max", "none")


class _Options:
    shift: str = "fixed"
    mean_metric: str = "sum"


def _scalar(rw: Rewriter, x: float, like: Value, hint: str = "") -> Value:
    return rw.const(np.array(x), like.dtype, hint=hint)


def _neg(rw: Rewriter, v: Value) -> Value:
    return rw.emit("mul", [v, _scalar(rw, -1.0, v, "minus_one")])


def _smooth(rw: Rewriter, fn: str, *xs: Value, **params) -> Value:
    return rw.emit("sum_smooth", list(xs), {"fn": fn, **params})


def _ints(dims: Sequence[Dim]) -> tuple[int, ...] | None:
    """``dims`` when every one is a known integer, else None (one is symbolic, e.g. the batch)."""
    out = tuple(d for d in dims if isinstance(d, int))
    return out if len(out) == len(dims) else None


def _static(op: Op, v: Value, axes) -> None:
    if any(not isinstance(v.shape[a], int) for a in axes):
        raise PassError(f"{op.kind} {src_of(op)}: axes {list(axes)} of {v.type_str()} include the "
                        "batch: normalizing or reducing over the batch is not supported for training")


# -- softmax -------------------------------------------------------------------------------------

def _mask_parts(rw: Rewriter, x: Value) -> tuple[Value, np.ndarray] | None:
    """(x without its mask, the additive constant M broadcast to x's shape) when x = x' + M with M a
    constant holding masked entries (<= MASK_BELOW), or Where(c, x', fill) with c and fill constant;
    else None."""
    producer = rw.graph.producers().get(x)
    if producer is None:
        return None
    if producer.kind == "sum":
        ins = operands(producer)
        consts = [v for v in ins if const_data(v) is not None]
        rest = [v for v in ins if const_data(v) is None]
        if not consts or not rest:
            return None
        m = np.asarray(sum(np.asarray(const_data(v), np.float64) for v in consts))  # consts: not empty
        if not np.any(m <= MASK_BELOW):
            return None
        xe = rest[0] if len(rest) == 1 else rw.emit("sum", rest)
        return xe, m
    if producer.kind == "Where":
        cond, a, b = producer.operand(0), producer.operand(1), producer.operand(2)
        c = const_data(cond)
        if c is None:
            return None
        for keep, fill, sel in ((a, b, c), (b, a, ~np.asarray(c, bool))):
            f = const_data(fill)
            if f is not None and const_data(keep) is None and np.all(np.asarray(f) <= MASK_BELOW):
                m = np.where(np.asarray(sel, bool), 0.0, -np.inf)
                return keep, np.broadcast_to(m, np.broadcast_shapes(m.shape, np.shape(f))) + 0.0
    return None


def _softmax_shift(rw: Rewriter, opts: _Options, x: Value, axes: list[int], extra=()) -> list[Value]:
    """The shift operand(s) of exp for the softmax of x over axes (per ``opts.shift``)."""
    if opts.shift == "none":
        return []
    if opts.shift == "max":
        return [_neg(rw, rw.emit("max", [x], {"axes": axes, "keepdims": 1}))]
    return [rw.emit("shift", [x, *extra], {"axes": axes})]


def _softmax_chain(rw: Rewriter, op: Op, opts: _Options, log: bool) -> Value:
    x = op.operand(0)
    axis = int(op.params.get("axis", -1)) % x.rank
    if not isinstance(x.shape[axis], int):
        raise PassError(f"{op.kind} {src_of(op)}: a softmax over the batch axis is not supported for training")
    masked = _mask_parts(rw, x)
    if masked is not None:
        if log:
            raise PassError(f"LogSoftmax {src_of(op)}: a masked LogSoftmax is not supported for training "
                            "(use Softmax)")
        return _masked_softmax(rw, op, opts, *masked, axis)
    s = _softmax_shift(rw, opts, x, [axis])
    e = _smooth(rw, "exp", x, *s)
    z = rw.emit("reduce_sum", [e], {"axes": [axis], "keepdims": 1})
    if log:
        return rw.emit("sum", [x, *s, _neg(rw, _smooth(rw, "log", z))], shape=x.shape)
    return rw.emit("mul", [e, _smooth(rw, "reciprocal", z)])


def _masked_softmax(rw: Rewriter, op: Op, opts: _Options, x: Value, m: np.ndarray, axis: int) -> Value:
    """Softmax of x + M over ``axis``, M a constant mask: the chain on the unmasked entries only
    (taken out, reduced per row by segment_sum, scattered back among exact zeros)."""
    shape = tuple(op.outputs[0].shape)
    if tuple(x.shape) != shape:
        raise PassError(f"Softmax {src_of(op)}: the mask broadcasts the scores {x.type_str()} to "
                        f"{list(shape)}; not supported for training")
    n = len(shape)
    perm = [i for i in range(n) if i != axis] + [axis]
    if perm != list(range(n)):
        x = rw.emit("transpose", [x], {"perm": perm})
    tshape = tuple(shape[i] for i in perm)
    mt = np.transpose(np.broadcast_to(m, (1,) * (n - m.ndim) + m.shape), perm)
    varying = [i for i in range(n) if mt.shape[i] != 1]
    j0 = min(varying[0] if varying else n - 1, n - 1)
    block = _ints(tshape[j0:])
    if block is None:
        raise PassError(f"Softmax {src_of(op)}: the mask varies along the batch axis (a mask computed "
                        "from the data); only a constant mask trains")
    flat = np.broadcast_to(mt[(0,) * j0], block).reshape(-1)  # the leading axes have size 1
    keep = np.flatnonzero(flat > MASK_BELOW)
    rows = keep // block[-1]
    row_ids = {r: g for g, r in enumerate(dict.fromkeys(rows.tolist()))}
    if len(row_ids) < math.prod(block[:-1]):
        raise PassError(f"Softmax {src_of(op)}: the mask leaves a row with no entry (its softmax is NaN)")
    segments = [row_ids[r] for r in rows.tolist()]
    indices = keep.tolist()
    if len(block) > 1:  # take gathers along one axis: the block's axes flattened into one first
        flat_shape = tuple(tshape[:j0]) + (math.prod(block),)
        x = rw.emit("reshape", [x], {"shape": reshape_param(flat_shape)}, shape=flat_shape)
    xc = rw.emit("take", [x], {"indices": indices, "axis": -1})
    bias = flat[keep]
    extra = [rw.const(bias.astype(np.float64), x.dtype, hint="mask_bias")] if np.any(bias != 0) else []
    if opts.shift == "max":
        raise PassError(f"Softmax {src_of(op)}: split{{shift=max}} supports unmasked softmax only")
    s = [] if opts.shift == "none" else [rw.emit("shift", [xc, *extra], {"segments": segments})]
    e = _smooth(rw, "exp", xc, *extra, *s)
    z = rw.emit("segment_sum", [e], {"segments": segments})
    r = rw.emit("take", [_smooth(rw, "reciprocal", z)], {"indices": segments, "axis": -1})
    p = rw.emit("scatter", [rw.emit("mul", [e, r])], {"indices": indices, "shape": list(block)})
    if perm != list(range(n)):
        p = rw.emit("transpose", [p], {"perm": list(np.argsort(perm))})
    return p


# -- normalizations ----------------------------------------------------------------------------------

def _normalized(rw: Rewriter, x: Value, axes: list[int], eps: float, metric: str) -> Value:
    """(x - mean) / sqrt(var + eps) over axes (keepdims), as the LayerNorm chain of the docstring."""
    m = rw.emit("mean", [x], {"axes": axes, "keepdims": 1, "metric": metric})
    d = rw.emit("sum", [x, _neg(rw, m)])
    v = rw.emit("mean_square", [d], {"axes": axes, "keepdims": 1, "metric": metric})
    r = _smooth(rw, "rsqrt", v, _scalar(rw, eps, v, "epsilon"))
    return rw.emit("mul", [d, r])


def _affine(rw: Rewriter, y: Value, scale: Value | None, bias: Value | None) -> Value:
    if scale is not None:
        y = rw.emit("mul", [y, scale])
    if bias is not None:
        y = rw.emit("sum", [y, bias])
    return y


def _unused_extra_outputs(rw: Rewriter, op: Op) -> bool:
    return all(not (v in rw.graph.outputs or any(v in o.inputs for o in rw.graph.ops)) for v in op.outputs[1:])


def layer_norm(rw: Rewriter, op: Op, opts: _Options) -> list[Value]:
    x, scale, bias = op.operand(0), optional_input(op, 1), optional_input(op, 2)
    if not _unused_extra_outputs(rw, op):
        raise PassError(f"LayerNormalization {src_of(op)}: its Mean/InvStdDev outputs are not supported "
                        "for training")
    axes = list(range(int(op.params.get("axis", -1)) % x.rank, x.rank))
    _static(op, x, axes)
    n = _normalized(rw, x, axes, float(op.params.get("epsilon", 1e-5)), opts.mean_metric)
    return [_affine(rw, n, scale, bias)] + op.outputs[1:]


def rms_norm(rw: Rewriter, op: Op, opts: _Options) -> Value:
    x, scale = op.operand(0), op.inputs[1]
    axes = list(range(int(op.params.get("axis", -1)) % x.rank, x.rank))
    _static(op, x, axes)
    v = rw.emit("mean_square", [x], {"axes": axes, "keepdims": 1, "metric": opts.mean_metric})
    r = _smooth(rw, "rsqrt", v, _scalar(rw, float(op.params.get("epsilon", 1e-5)), v, "epsilon"))
    return _affine(rw, rw.emit("mul", [x, r]), scale, None)


def _grouped_norm(rw: Rewriter, op: Op, opts: _Options, groups: int | None) -> Value:
    """Group/Instance normalization: [N, C, *S] -> [N, G, C/G * prod(S)], normalized over the last
    axis, back to [N, C, *S], then scale and bias per channel (GroupNormalization-21; the deprecated
    -18, scale per group, is refused at import by onnx's checker). ``groups`` None: one per channel."""
    x, scale, bias = op.operand(0), op.operand(1), op.operand(2)
    c = x.shape[1]
    spatial = _ints(x.shape[2:])
    if not isinstance(c, int) or spatial is None:
        raise PassError(f"{op.kind} {src_of(op)}: needs static channel and spatial dims")
    if groups is None:
        groups = c
    grouped = (x.shape[0], groups, (c // groups) * math.prod(spatial))
    g = rw.emit("reshape", [x], {"shape": reshape_param(grouped)}, shape=grouped)
    n = _normalized(rw, g, [2], float(op.params.get("epsilon", 1e-5)), opts.mean_metric)
    n = rw.emit("reshape", [n], {"shape": reshape_param(x.shape)}, shape=x.shape)
    view = [c] + [1] * (x.rank - 2)
    return _affine(rw, n, rw.emit("reshape", [scale], {"shape": view}), rw.emit("reshape", [bias], {"shape": view}))


def group_norm(rw: Rewriter, op: Op, opts: _Options) -> Value:
    return _grouped_norm(rw, op, opts, int(op.params["num_groups"]))


def instance_norm(rw: Rewriter, op: Op, opts: _Options) -> Value:
    return _grouped_norm(rw, op, opts, None)


# -- elementwise functions, division, reductions -------------------------------------------------------

def _elementwise(fn: str) -> Callable[[Rewriter, Op, _Options], Value | None]:
    def rule(rw: Rewriter, op: Op, opts: _Options) -> Value | None:
        x = op.operand(0)
        return _smooth(rw, fn, x) if x.dtype.startswith("f") else None
    return rule


NAMED_POWERS = {2.0: "square", 0.5: "sqrt", -0.5: "rsqrt", -1.0: "reciprocal"}


def power(rw: Rewriter, op: Op, opts: _Options) -> Value:
    x, e = op.operand(0), op.inputs[1]
    data = const_data(e)
    if data is None or data.size != 1 or not x.dtype.startswith("f"):
        raise PassError(f"Pow {src_of(op)}: training needs a constant scalar exponent")
    c = float(np.asarray(data).reshape(()))
    if c == 1.0:
        return x
    if c in NAMED_POWERS:
        return _smooth(rw, NAMED_POWERS[c], x)
    return _smooth(rw, "pow", x, exponent=c)


def div(rw: Rewriter, op: Op, opts: _Options) -> Value | None:
    """a / b with b trained: a · (1 / b) (canonicalize has turned division by a constant into mul)."""
    a, b = op.operand(0), op.operand(1)
    if not a.dtype.startswith("f"):
        return None
    return rw.emit("mul", [a, _smooth(rw, "reciprocal", b)], shape=op.outputs[0].shape)


def reduce_sum(rw: Rewriter, op: Op, opts: _Options) -> Value:
    from .lower import reduce_axes

    axes = reduce_axes(op)
    if axes is None:
        raise PassError(f"ReduceSum {src_of(op)}: training needs constant axes")
    x = op.operand(0)
    if not axes:
        return x
    _static(op, x, axes)
    return rw.emit("reduce_sum", [x], {"axes": axes, "keepdims": int(op.params.get("keepdims", 1))})


# -- Einsum: transposes and reshapes around one dot ----------------------------------------------------

def _perm_to(rw: Rewriter, v: Value, order: str, want: str) -> Value:
    perm = [order.index(c) for c in want]
    return v if perm == list(range(len(perm))) else rw.emit("transpose", [v], {"perm": perm})


def _reshaped(rw: Rewriter, v: Value, shape: tuple) -> Value:
    if tuple(v.shape) == tuple(shape):
        return v
    try:
        return rw.emit("reshape", [v], {"shape": reshape_param(shape)}, shape=shape)
    except ValueError as e:
        raise PassError(f"Einsum: {e}") from None


def einsum(rw: Rewriter, op: Op, opts: _Options) -> Value:
    eq = str(op.params["equation"]).replace(" ", "")
    lhs, _, out = eq.partition("->")
    terms = lhs.split(",")
    bad = "..." in eq or not _ or len(terms) > 2 or any(len(set(t)) != len(t) for t in terms)
    if bad or any(c not in string.ascii_letters for c in "".join(terms) + out):
        raise PassError(f"Einsum {src_of(op)}: training supports one or two operands with explicit "
                        f"output letters, no ellipsis, no repeated letter ({eq!r})")
    vals = operands(op)
    dims = {c: d for t, v in zip(terms, vals) for c, d in zip(t, v.shape)}
    # letters in one operand only and not in the output are summed out first
    for i, t in enumerate(terms):
        others = "".join(terms[:i] + terms[i + 1:]) + out
        gone = [j for j, c in enumerate(t) if c not in others]
        if gone:
            vals[i] = rw.emit("reduce_sum", [vals[i]], {"axes": gone, "keepdims": 0})
            terms[i] = "".join(c for c in t if c in others)
    if len(terms) == 1:
        return _perm_to(rw, vals[0], terms[0], out)
    ta, tb = terms
    batch = "".join(c for c in out if c in ta and c in tb)
    contr = "".join(c for c in ta if c in tb and c not in out)
    fa = "".join(c for c in out if c in ta and c not in tb)
    fb = "".join(c for c in out if c in tb and c not in ta)
    size = math.prod(dims[c] for c in contr) if contr else 1
    if not isinstance(size, int) or any(not isinstance(dims[c], int) for c in fb):
        raise PassError(f"Einsum {src_of(op)}: the contracted and right-free letters need static sizes")
    a = _perm_to(rw, vals[0], ta, batch + fa + contr)
    b = _perm_to(rw, vals[1], tb, batch + contr + fb)
    nb = math.prod(dims[c] for c in fb) if fb else 1
    bshape = tuple(dims[c] for c in batch)
    if batch:
        fa_size = math.prod(dims[c] for c in fa) if fa else 1
        a = _reshaped(rw, a, bshape + (fa_size, size))
        b = _reshaped(rw, b, bshape + (size, nb))
    else:
        a = _reshaped(rw, a, tuple(dims[c] for c in fa) + (size,))
        b = _reshaped(rw, b, (size, nb))
    y = rw.emit("dot", [a, b])
    y = _reshaped(rw, y, bshape + tuple(dims[c] for c in fa + fb))
    return _perm_to(rw, y, batch + fa + fb, out)


# -- Attention (opset 23) ---------------------------------------------------------------------------

def attention(rw: Rewriter, op: Op, opts: _Options) -> list[Value]:
    """Attention without caches or softcap: per-head q·kᵀ·scale (+ a constant mask or causal), the
    softmax chain, ·v."""
    q, k, v = op.operand(0), op.operand(1), op.operand(2)
    mask = optional_input(op, 3)
    p = op.params
    if (len(op.inputs) > 4 and any(u is not None for u in op.inputs[4:])) or float(p.get("softcap", 0.0)):
        raise PassError(f"Attention {src_of(op)}: past key/value, nonpad lengths and softcap are not "
                        "supported for training")
    if not _unused_extra_outputs(rw, op) or int(p.get("qk_matmul_output_mode", 0)):
        raise PassError(f"Attention {src_of(op)}: only its first output trains")
    if mask is not None and const_data(mask) is None:
        raise PassError(f"Attention {src_of(op)}: a mask computed from the data is not supported for training")
    three_d = q.rank == 3
    if three_d:
        qh, kh = int(p["q_num_heads"]), int(p["kv_num_heads"])
        q = _heads(rw, q, qh)
        k = _heads(rw, k, kh)
        v = _heads(rw, v, kh)
    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        raise PassError(f"Attention {src_of(op)}: grouped-query attention (kv heads != q heads) is not "
                        "supported for training")
    d = q.shape[-1]
    given = p.get("scale")
    if given is not None:
        scale = float(given)
    elif isinstance(d, int):
        scale = 1.0 / math.sqrt(d)
    else:
        raise PassError(f"Attention {src_of(op)}: the head size {d!r} must be static (the default scale)")
    kt = rw.emit("transpose", [k], {"perm": [0, 1, 3, 2]})
    s = rw.emit("dot", [q, kt])
    s = rw.emit("mul", [s, _scalar(rw, scale, s, "scale")])
    tq, tk = s.shape[-2], s.shape[-1]
    if not isinstance(tq, int) or not isinstance(tk, int):
        raise PassError(f"Attention {src_of(op)}: the sequence lengths of {s.type_str()} must be static")
    m = np.zeros((tq, tk))
    if int(p.get("is_causal", 0)):
        m = np.where(np.tril(np.ones((tq, tk), bool), tk - tq), 0.0, -np.inf)
    if mask is not None:
        md = np.asarray(const_data(mask))
        m = m + (np.where(md, 0.0, -np.inf) if md.dtype == bool else md.astype(np.float64))
    fake = Op("Softmax", [s], [Value(s.dtype, s.shape)], {"axis": -1}, dict(op.annots))
    if np.any(m <= MASK_BELOW):
        probs = _masked_softmax(rw, fake, opts, s, np.asarray(m), s.rank - 1)
    else:
        if np.any(m != 0):
            s = rw.emit("sum", [s, rw.const(m, s.dtype, hint="attn_bias")], shape=s.shape)
            fake.inputs = [s]
        probs = _softmax_chain(rw, fake, opts, log=False)
    y = rw.emit("dot", [probs, v])
    if three_d:
        y = rw.emit("transpose", [y], {"perm": [0, 2, 1, 3]})
        out = op.outputs[0]
        y = rw.emit("reshape", [y], {"shape": reshape_param(out.shape)}, shape=out.shape)
    return [y] + op.outputs[1:]


def _heads(rw: Rewriter, x: Value, heads: int) -> Value:
    b, t, e = x.shape
    if not isinstance(e, int):
        raise PassError(f"Attention: the hidden size of {x.type_str()} must be static to split heads")
    shape = (b, t, heads, e // heads)
    x = rw.emit("reshape", [x], {"shape": reshape_param(shape)}, shape=shape)
    return rw.emit("transpose", [x], {"perm": [0, 2, 1, 3]})


def softmax(rw: Rewriter, op: Op, opts: _Options) -> Value:
    return _softmax_chain(rw, op, opts, log=False)


def log_softmax(rw: Rewriter, op: Op, opts: _Options) -> Value:
    return _softmax_chain(rw, op, opts, log=True)


L = Lowering
LOWERINGS = {
    "Softmax": L(softmax, "shift, sum_smooth[exp], reduce_sum, sum_smooth[reciprocal], mul",
                 "any axis but the batch; a constant additive mask (<= -1e4) or Where: masked entries "
                 "dropped (take, segment_sum, scatter)"),
    "LogSoftmax": L(log_softmax, "shift, sum_smooth[exp], reduce_sum, sum_smooth[log], mul, sum",
                    "any axis but the batch; no mask"),
    "LayerNormalization": L(layer_norm, "mean, mul, sum, mean_square, sum_smooth[rsqrt], mul, sum",
                            "axes after the batch; Mean/InvStdDev outputs unused"),
    "RMSNormalization": L(rms_norm, "mean_square, sum_smooth[rsqrt], mul", "axes after the batch"),
    "GroupNormalization": L(group_norm, "reshape, the LayerNorm chain, mul, sum", "static channels and spatial dims"),
    "InstanceNormalization": L(instance_norm, "reshape, the LayerNorm chain, mul, sum",
                               "static channels and spatial dims"),
    "Div": L(div, "sum_smooth[reciprocal], mul", "by a trained value (by a constant: canonicalize's mul)"),
    "Exp": L(_elementwise("exp"), "sum_smooth[exp]"),
    "Log": L(_elementwise("log"), "sum_smooth[log]"),
    "Sqrt": L(_elementwise("sqrt"), "sum_smooth[sqrt]"),
    "Reciprocal": L(_elementwise("reciprocal"), "sum_smooth[reciprocal]"),
    "Pow": L(power, "sum_smooth[square | sqrt | rsqrt | reciprocal | pow]", "a constant scalar exponent"),
    "ReduceSum": L(reduce_sum, "reduce_sum", "constant axes, not over the batch"),
    "Einsum": L(einsum, "transpose, reshape, dot (batched)",
                "one or two operands, no ellipsis or repeated letter"),
    "Attention": L(attention, "transpose, dot, the Softmax chain, dot",
                   "opset 23; no past key/value, softcap or grouped query heads; constant mask or is_causal"),
    "Where": L(None, "the Softmax's mask", "a constant condition choosing a constant <= -1e4, before a Softmax"),
}


@register_pass("split")
class Split(Pass):
    shift: str = "fixed"
    mean_metric: str = "sum"
    lowerings: ClassVar[dict[str, Lowering]] = LOWERINGS

    def run(self, graph: Graph) -> bool:
        if self.shift not in SHIFTS:
            raise PassError(f"split: shift={self.shift!r}; choose one of {', '.join(SHIFTS)}")
        if self.mean_metric not in MEAN_METRICS:
            raise PassError(f"split: mean_metric={self.mean_metric!r}; choose one of {', '.join(MEAN_METRICS)}")
        opts = _Options()
        opts.shift, opts.mean_metric = self.shift, self.mean_metric

        def bind(rule: Callable[..., RuleResult]) -> Rule:
            return lambda rw, op: rule(rw, op, opts)

        table = {kind: bind(low.rule) for kind, low in LOWERINGS.items() if low.rule is not None}
        changed = rewrite(graph, table)
        if changed:  # a mask's sum or Where is left without uses: drop it before lower checks the ops
            remove_dead_code(graph)
        return changed
