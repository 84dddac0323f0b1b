"""projc's own ops, declared once: the constraint families, the moves and the losses.

Each ``ConstraintOp`` says what the op is (``role``), how many operands it takes, its params with
their defaults (``REQUIRED`` for none), its shape rule and, for a family, which projection the
``select-projections`` pass records. The tables the rest of projc reads derive from ``OPS``:
``FAMILIES``/``MOVES``/``LOSSES``, the verifier's type rules (``type_rules``), the shape inference
the passes use (``infer_shape``) and the registry attributes of the JAX forwards
(``projc.ops.constraint``). No JAX here: the config reads ``LOSSES`` to build the CLI.

Adding a constraint op = one ``ConstraintOp`` here + its JAX forward in ``projc.ops.constraint``
+ (for a family) its rule in ``projc.backends.jax.families``.

Shapes may hold symbolic dims (str, e.g. the batch ``"B"``); a symbolic dim only matches itself or
a broadcast 1.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Shape = tuple  # of int | str

PWL_FNS = ("relu", "leaky_relu", "clip", "abs", "sign", "identity",
           "hardsigmoid", "relu6", "round", "floor", "ceil", "fake_quant")
SMOOTH_FNS = ("tanh", "sigmoid", "one_minus_sigmoid", "softplus", "silu", "gelu", "gelu_tanh", "elu", "hardswish",
              "exp", "log", "sqrt", "rsqrt", "reciprocal", "square", "pow")
MEAN_METRICS = ("sum", "euclidean")
# losses whose targets have the outputs' shape (float), one term per output element
ELEMENTWISE_LOSSES = ("squared_error", "binary_cross_entropy", "huber", "l1")
REQUIRED = object()  # a param without a default


class ShapeError(ValueError):
    pass


@dataclass(frozen=True)
class ConstraintOp:
    """One projc op (see the module docstring)."""

    kind: str
    role: str                                   # "family" | "move" | "loss" | "fixed"
    arity: tuple[int, int | None]               # operand count: (least, most or None)
    shape: Callable[[dict, Sequence[Shape]], Shape | None]
    doc: str
    params: dict[str, Any] = field(default_factory=dict)
    projection: Callable[[Any, set], str] | None = None   # (op, fixed values) -> the `proj` annotation
    check: Callable[[Any], str | None] | None = None      # further rules on the op (None: fine)


# -- shape rules -------------------------------------------------------------------------------------

def _fmt(shape: Shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


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


def _dot_shape(p, shapes):
    """a [..., K] . b [K, M] -> [..., M]; or, b with batch dims, matmul's: a [..., R, K] .
    b [..., K, M] -> [..., R, M] (the batch dims broadcast)."""
    a, b = shapes
    if len(b) < 2 or len(a) < (1 if len(b) == 2 else 2):
        raise ShapeError(f"dot needs a [...,K] and b [K,M] (or a [...,R,K] and b [...,K,M]), "
                         f"got {_fmt(a)} and {_fmt(b)}")
    if a[-1] != b[-2]:
        raise ShapeError(f"dot contraction mismatch: {_fmt(a)} . {_fmt(b)}")
    if len(b) == 2:
        return tuple(a[:-1]) + (b[1],)
    return broadcast(tuple(a[:-2]), tuple(b[:-2])) + (a[-2], b[-1])


def _broadcast_shape(p, shapes):
    return broadcast(*shapes)


def _first_shape(p, shapes):
    return tuple(shapes[0])


def _embed_shape(p, shapes):
    table, idx = shapes
    if len(table) != 2:
        raise ShapeError(f"embed needs a table [V,D], got {_fmt(table)}")
    return tuple(idx) + (table[1],)


def _wsum_shape(p, shapes):
    out = broadcast(*shapes)
    if not out:
        raise ShapeError("wsum needs operands with a last (summed) axis")
    return out[:-1]


def _take_shape(p, shapes):
    (a,) = shapes
    axis = p.get("axis", 0) % len(a)
    return tuple(a[:axis]) + (len(p["indices"]),) + tuple(a[axis + 1:])


def _reduce_shape(p, shapes):
    (a,) = shapes
    axes = range(len(a)) if p.get("axes") is None else [ax % len(a) for ax in p["axes"]]
    if p.get("keepdims", 1):
        return tuple(1 if i in axes else d for i, d in enumerate(a))
    return tuple(d for i, d in enumerate(a) if i not in axes)


def _segment_shape(p, shapes):
    (a,) = shapes
    segments = p["segments"]
    if len(a) < 1 or (isinstance(a[-1], int) and a[-1] != len(segments)):
        raise ShapeError(f"segment_sum: {len(segments)} segment ids for {_fmt(a)}")
    return tuple(a[:-1]) + (max(segments) + 1,)


def _shift_shape(p, shapes):
    shape = broadcast(*shapes)
    if p.get("segments") is not None:
        return _segment_shape(p, [shape])[:-1] + (shape[-1],)
    return _reduce_shape({"axes": p["axes"], "keepdims": 1}, [shape])


def _scatter_shape(p, shapes):
    (a,) = shapes
    size = math.prod(p["shape"])
    if len(a) < 1 or (isinstance(a[-1], int) and a[-1] != len(p["indices"])):
        raise ShapeError(f"scatter: {len(p['indices'])} indices for {_fmt(a)}")
    if len(set(p["indices"])) != len(p["indices"]) or any(not 0 <= i < size for i in p["indices"]):
        raise ShapeError(f"scatter: indices must be distinct positions of shape {list(p['shape'])}")
    return tuple(a[:-1]) + tuple(p["shape"])


def _reshape_shape(p, shapes) -> Shape:
    src = shapes[0]
    target = [int(d) for d in p["shape"]]
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


def _transpose_shape(p, shapes):
    (a,) = shapes
    perm = p.get("perm") or list(reversed(range(len(a))))
    if sorted(perm) != list(range(len(a))):
        raise ShapeError(f"transpose: perm {perm} does not fit rank {len(a)}")
    return tuple(a[i] for i in perm)


def _concat_shape(p, shapes):
    rank = len(shapes[0])
    axis = p.get("axis", 0) % rank
    total: int | str = 0
    for s in shapes:
        if len(s) != rank or any(s[i] != shapes[0][i] for i in range(rank) if i != axis):
            raise ShapeError(f"concat: {' and '.join(_fmt(s) for s in shapes)} differ off axis {axis}")
        total = total + s[axis] if isinstance(total, int) and isinstance(s[axis], int) else "?"
    return tuple(total if i == axis else d for i, d in enumerate(shapes[0]))


def _slice_shape(p, shapes):
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


def _pad_shape(p, shapes):
    (a,) = shapes
    n = len(a)
    pads = p["pads"]
    return tuple(d + pads[i] + pads[i + n] if isinstance(d, int) else d for i, d in enumerate(a))


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


def _patches_shape(p, shapes):
    (a,) = shapes
    k = p["kernel"]
    n = len(k)
    if len(a) != n + 2:
        raise ShapeError(f"patches: input {_fmt(a)} is not N,C + {n} spatial dims")
    last = bool(p.get("channels_last"))
    c, spatial = (a[-1], a[1:-1]) if last else (a[1], a[2:])
    if not isinstance(c, int):
        raise ShapeError("patches: symbolic channel dim")
    out = patches_out_spatial(spatial, k, p.get("strides") or [1] * n, p.get("pads") or [0] * (2 * n),
                              p.get("dilations") or [1] * n)
    return (a[0],) + out + (c * math.prod(k),)


def _conv_shape(p, shapes):
    from .conv_geometry import out_shape

    x, w = shapes
    n = len(w) - 2
    if len(x) != n + 2 or n < 1 or not all(isinstance(d, int) for d in w):
        raise ShapeError(f"conv needs x [N,*S,C] and a static weight of the same rank, got {_fmt(x)} "
                         f"and {_fmt(w)}")
    g = int(p.get("group") or 1)
    c_in = w[0] if p.get("transpose") else w[1] * g
    if isinstance(x[-1], int) and x[-1] != c_in:
        raise ShapeError(f"conv: input {_fmt(x)} has {x[-1]} channels, the weight {_fmt(w)} expects {c_in}")
    return out_shape(tuple(x), tuple(w), p)


def _no_shape(p, shapes):
    return None


# -- projections the select-projections pass records ----------------------------------------------------

def _pairwise(op, fixed: set) -> str:
    """dot / mul: linear when an operand never moves (data, a const, or computed from them)."""
    return "linear" if any(v in fixed for v in op.inputs) else "bilinear"


def _closed(op, fixed: set) -> str:
    return "closed"


# -- further checks --------------------------------------------------------------------------------------

def _fn_in(names: tuple[str, ...], needs: dict[str, tuple[str, str]]):
    def check(op) -> str | None:
        fn = op.params["fn"]
        if fn not in names:
            return f"unknown fn {fn!r} (one of {', '.join(names)})"
        if fn in needs and needs[fn][0] not in op.params:
            return f"fn {fn} needs param {needs[fn][0]!r}{needs[fn][1]}"
        return None
    return check


def _smooth_check(op) -> str | None:
    problem = _fn_in(SMOOTH_FNS, {})(op)
    if problem is None and op.params["fn"] == "pow":
        e = op.params.get("exponent")
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e):
            return "fn pow needs a finite number as param 'exponent'"
    return problem


def _mean_check(op) -> str | None:
    metric = op.params.get("metric", "sum")
    return None if metric in MEAN_METRICS else f"unknown metric {metric!r} (one of {', '.join(MEAN_METRICS)})"


def _loss_check(op) -> str | None:
    out, lab = op.inputs
    if op.outputs:
        return "a loss has no outputs"
    if not out.dtype.startswith("f"):
        return f"loss input must be float, got {out.dtype}"
    if op.kind in ELEMENTWISE_LOSSES:
        return None if lab.shape == out.shape else f"targets {lab.type_str()} do not match outputs {out.type_str()}"
    if op.kind == "cross_entropy" and out.rank == 3:  # per-step logits [B,T,C], labels [B,T]
        if lab.dtype != "i64" or tuple(lab.shape) != tuple(out.shape[:-1]):
            return f"expects logits [B,T,C] and labels i64[B,T], got {out.type_str()}, {lab.type_str()}"
        return None
    if lab.dtype != "i64" or lab.rank != 1 or out.rank != 2 or lab.shape[0] != out.shape[0]:
        return f"expects logits [B,C] and labels i64[B], got {out.type_str()}, {lab.type_str()}"
    return None


def _embed_check(op) -> str | None:
    idx = op.inputs[1]
    return None if idx.dtype in ("i64", "i32") else f"embed indices must be i64 or i32, got {idx.type_str()}"


_STAIR_PARAMS = {"beta": 0.5, "scale": 1.0, "zero_point": 0.0, "qmin": -math.inf, "qmax": math.inf}
_ANY = (1, None)


def _family(kind, arity, shape, doc, projection=_closed, **kw) -> ConstraintOp:
    return ConstraintOp(kind, "family", arity, shape, doc, projection=projection, **kw)


def _fixed(kind, arity, shape, doc, **kw) -> ConstraintOp:
    return ConstraintOp(kind, "fixed", arity, shape, doc, **kw)


def _move(kind, arity, shape, doc, **kw) -> ConstraintOp:
    return ConstraintOp(kind, "move", arity, shape, doc, **kw)


def _loss(kind, doc, **params) -> ConstraintOp:
    return ConstraintOp(kind, "loss", (2, 2), _no_shape, doc, params=params, check=_loss_check)


OPS: dict[str, ConstraintOp] = {op.kind: op for op in (
    _family("dot", (2, 2), _dot_shape, "z[..., m] = a[..., :] . b[:, m]; with batch dims "
            "z[..., r, m] = a[..., r, :] . b[..., :, m]", _pairwise),
    _family("conv", (2, 2), _conv_shape, "z = conv(x, w), channels-last x [N,*S,C] -> z [N,*O,OC]: Conv (ONNX "
            "weights, pads, strides, dilations, group), or ConvTranspose's with transpose=1; a dot per "
            "output position on the patch view",
            _pairwise, params={"strides": None, "pads": None, "dilations": None, "group": 1,
                               "transpose": 0, "output_padding": None}),
    _family("mul", (2, 2), _broadcast_shape, "z = a * b (broadcast)", _pairwise),
    _family("sum", _ANY, _broadcast_shape, "z = the sum of the operands (broadcast)"),
    _family("sum_pwl", _ANY, _broadcast_shape, "z = f(sum of the operands), f piecewise linear or a staircase",
            params={"fn": REQUIRED, "alpha": 0.01, "lo": -math.inf, "hi": math.inf, **_STAIR_PARAMS},
            check=_fn_in(PWL_FNS, {"fake_quant": ("scale", ""),
                                   "hardsigmoid": ("alpha", " (ONNX default 0.2)")})),
    _family("sum_smooth", _ANY, _broadcast_shape, "z = f(sum of the operands), f smooth (pow: a constant exponent)",
            params={"fn": REQUIRED, "alpha": 1.0, "exponent": 1.0}, check=_smooth_check),
    _family("max", (1, 1), _reduce_shape, "z = max of a over axes",
            params={"axes": REQUIRED, "keepdims": 1}),
    _family("mean", (1, 1), _reduce_shape, "z = mean of a over axes (metric: how it projects)",
            params={"axes": REQUIRED, "keepdims": 1, "metric": "sum"}, check=_mean_check),
    _family("mean_square", (1, 1), _reduce_shape, "z = mean of a² over axes (metric: how it projects)",
            params={"axes": REQUIRED, "keepdims": 1, "metric": "sum"}, check=_mean_check),
    _family("reduce_sum", (1, 1), _reduce_shape, "z = sum of a over axes",
            params={"axes": REQUIRED, "keepdims": 1}),
    _family("segment_sum", (1, 1), _segment_shape,
            "z[..., g] = sum of a[..., k] over the k with segments[k] = g (a [..., N], len(segments) = N)",
            params={"segments": REQUIRED}),
    _family("embed", (2, 2), _embed_shape, "z[n, :] = table[indices[n], :] (integer data indices)",
            check=_embed_check),
    _family("identity", (1, 1), _first_shape, "z = a (inserted by bipartite repair)"),
    _family("wsum", (2, 2), _wsum_shape, "z = sum over the last axis of a * c, c constant coefficients "
            "(linear interpolation: Resize)", lambda op, fixed: "linear"),
    _move("reshape", (1, 1), _reshape_shape, "numpy reshape (one -1 allowed)", params={"shape": REQUIRED}),
    _move("transpose", (1, 1), _transpose_shape, "numpy transpose", params={"perm": None}),
    _move("concat", _ANY, _concat_shape, "concatenate along axis", params={"axis": 0}),
    _move("slice", (1, 1), _slice_shape, "static slice (ONNX Slice semantics)",
          params={"starts": REQUIRED, "ends": REQUIRED, "axes": None, "steps": None}),
    _move("pad", (1, 1), _pad_shape, "constant pad; pads in ONNX order", params={"pads": REQUIRED, "value": 0.0}),
    _move("patches", (1, 1), _patches_shape, "im2col: [N, C, *S] (channels_last=1: [N, *S, C]) -> "
          "[N, *O, C*prod(kernel)]",
          params={"kernel": REQUIRED, "strides": None, "pads": None, "dilations": None, "channels_last": 0}),
    _move("take", (1, 1), _take_shape, "a[..., indices, ...] along axis (constant 1-D indices, repeats "
          "allowed: nearest Resize, interpolation taps)", params={"indices": REQUIRED, "axis": 0}),
    _move("scatter", (1, 1), _scatter_shape, "a [..., N] placed at the distinct flat positions indices "
          "of a [..., *shape] filled with value (take's adjoint for distinct indices)",
          params={"indices": REQUIRED, "shape": REQUIRED, "value": 0.0}),
    _fixed("shift", _ANY, _shift_shape, "z = -max of the operands' sum over axes (keepdims), or per "
           "segment of the last axis broadcast back; held at its value when an update starts: a "
           "constant of the update (a softmax's shift), not a variable", params={"axes": None, "segments": None},
           check=lambda op: None if (op.params.get("axes") is None) != (op.params.get("segments") is None)
           else "shift needs exactly one of axes and segments"),
    _loss("cross_entropy", "softmax cross-entropy on logits [B(,T),C] and integer labels (its prox)",
          lam=5.0, method="newton", steps=None),
    _loss("margin", "true-class logit >= 1, others <= 0 (a projection)"),
    _loss("squared_error", "outputs = targets (the prox of the squared distance, or exact)", lam=None),
    _loss("binary_cross_entropy", "sigmoid cross-entropy of each logit with a 0/1 (or multi-hot) target "
          "of the outputs' shape (its prox: a 1-D Newton per logit)", lam=5.0),
    _loss("huber", "Huber loss of outputs - targets, any shape (its closed-form prox)", lam=5.0, delta=1.0),
    _loss("l1", "absolute error of outputs - targets, any shape (its prox: soft thresholding)", lam=5.0),
)}

FAMILIES = tuple(k for k, op in OPS.items() if op.role == "family")
MOVES = tuple(k for k, op in OPS.items() if op.role == "move")
LOSSES = tuple(k for k, op in OPS.items() if op.role == "loss")
FIXED = tuple(k for k, op in OPS.items() if op.role == "fixed")  # no constraint; constant per update
CONSTRAINT_KINDS = tuple(OPS)


def defaults(kind: str) -> dict[str, Any]:
    """The op's params with defaults (the registry attributes of its forward)."""
    return {k: (None if v is REQUIRED else v) for k, v in OPS[kind].params.items()}


def infer_shape(kind: str, params: dict[str, Any], shapes: Sequence[Shape]) -> Shape | None:
    """The output shape of a projc op (None for losses). Raises ShapeError."""
    if kind not in OPS:
        raise ShapeError(f"unknown projc op {kind}")
    return OPS[kind].shape(params, shapes)


def _type_rule(decl: ConstraintOp) -> Callable:
    lo, hi = decl.arity

    def rule(op) -> str | None:
        n = len(op.inputs)
        if n < lo or (hi is not None and n > hi) or any(v is None for v in op.inputs):
            return f"expects {lo}{'' if hi == lo else '..' + (str(hi) if hi else 'n')} operands, got {n}"
        for key, value in decl.params.items():
            if value is REQUIRED and key not in op.params:
                return f"missing param {key!r}"
        problem = decl.check(op) if decl.check else None
        if problem or decl.role == "loss":
            return problem
        if len(op.outputs) != 1:
            return f"expects 1 output, got {len(op.outputs)}"
        dtypes = {v.dtype for v in (op.inputs[:1] if op.kind == "embed" else op.inputs)}
        if len(dtypes) > 1:
            return f"operand dtypes differ: {', '.join(v.type_str() for v in op.inputs)}"
        if op.outputs[0].dtype not in dtypes:
            return f"output dtype {op.outputs[0].dtype} differs from operands {dtypes.pop()}"
        try:
            shape = decl.shape(op.params, [v.shape for v in op.inputs])
        except ShapeError as e:
            return str(e)
        if shape is None:  # only a loss has no output shape, and a loss returned above
            return f"{op.kind}: no output shape"
        got = op.outputs[0].shape
        if len(shape) != len(got) or any(a != b and not (a == "?" or b == "?") for a, b in zip(shape, got)):
            return f"output shape {_fmt(got)} differs from the inferred {_fmt(shape)}"
        return None

    return rule


def type_rules() -> dict[str, Callable]:
    """kind -> verifier rule (op -> problem or None) for every projc op."""
    return {kind: _type_rule(decl) for kind, decl in OPS.items()}
