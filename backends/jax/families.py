"""The family-rule table: everything the state layouts know about one constraint-family kind.

One ``FamilyRule`` per kind in ``RULES``: its operands, the map from an operand value to the slot a
copies-style layout keeps for it, the family's output computed from its slots, its projection (a
function of the projection library, ``projections.REGISTRY``), and how each state layout stores its
slots (``storage``: layout name -> chooser). The moves (``MOVES``: reshape, transpose, concat, slice,
pad, patches) hold no slots: they are linear maps the layouts see through, and their entry says how
to take the linear part of the op (``pad``'s fill value is an affine offset).

Adding a family kind = one ``FamilyRule`` here (+ its projection in the library, its lowering rule
in ``passes/lower.py`` and its tests); neither state layout nor any solver changes.

``Family`` is one family instance of a graph (static after the layout is built): its op, schedule
annotations, which operands are free, the projection mode and the storage the layout chose.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from projc.ir import Op, Value
from projc.ir import constraints as C

from . import conv as conv_family
from . import projections as P
from .forward import op_forward
from .proj_batched_dot import BATCHED_EDGE_MEANS
from .proj_common import as_floats
from .proj_pool import max_over_axes
from .proj_smooth_fast import FAST_FNS
from .proj_smooth_fast import sum_smooth as sum_smooth_fast
from .slot_storage import EDGE_MEANS, FACTORED, MATERIALIZED


@dataclass(frozen=True)
class ProjOptions:
    """Options of the projections that are not op params (constant for a layout)."""

    bilinear_iters: int | None = None
    staircase: str = "exact"         # "ramp": bounded staircases project onto their ramp (pwl.stair_ramp)


@dataclass(eq=False)
class Family:
    """One constraint family (or the loss) of a graph and how its slots are laid out."""

    key: str
    op: Op
    set: str
    layer: int
    free: list[bool]                 # per operand: does it move (depends on a param or family)?
    mode: str = ""                   # dot/mul: "linear" | "bilinear" | "bilinear_reset"
    sources: list[frozenset] = field(default_factory=list)  # per operand: producer nodes
    storage: Any = None              # a slot_storage.* object, chosen by the layout from the rule

    @property
    def kind(self) -> str:
        return self.op.kind

    @property
    def rule(self) -> FamilyRule:
        return RULES[self.op.kind]

    @property
    def out(self) -> Value | None:
        return self.op.outputs[0] if self.op.outputs else None

    @property
    def free_idx(self) -> list[int]:
        return [i for i, f in enumerate(self.free) if f]

    @property
    def fixed_idx(self) -> list[int]:
        return [i for i, f in enumerate(self.free) if not f]

    @property
    def factored(self) -> bool:
        return getattr(self.storage, "factored", False)


@dataclass(frozen=True)
class FamilyRule:
    """How the state layouts treat one family kind (see the module docstring)."""

    kind: str
    operands: str                                          # what the operands are (documentation)
    slot_map: Callable[[Family, int, tuple], Callable]     # (fam, operand, out shape) -> value -> slot
    output: Callable[[Family, dict], Any]                  # f(full slots): the family's output
    project: Callable[[Family, dict, Any, ProjOptions], tuple]  # -> (new free slots, projected output)
    projections: tuple[str, ...]                           # the projection library entries it uses
    storage: Mapping[str, Callable[[Family, bool], Any]] = field(default_factory=dict)
    fixed_operands: tuple[int, ...] = ()                   # operands never free (a loss's labels)
    mode: Callable[[Family], str] | None = None            # dot/mul: which projection applies


@dataclass(frozen=True)
class MoveRule:
    """A move op: no slots; ``linear_overrides`` turn the op into its linear part."""

    kind: str
    linear_overrides: Mapping[str, Any] = field(default_factory=dict)


# -- slot maps: operand value -> the copies it holds ------------------------------------------

def _dot_slot_map(fam: Family, i: int, out_shape):
    """a [..., K] (or [..., R, K]) -> its copies [..., (R,) M, K]; b [K, M] (or [..., K, M]) -> its
    copies [..., (R,) M, K]: the row of a and the column of b that output element (r, m) reads."""
    def expand(v):
        kk = v.shape[-1] if i == 0 else v.shape[-2]
        if i == 0:
            return jnp.broadcast_to(v[..., None, :], tuple(out_shape) + (kk,))
        return jnp.broadcast_to(jnp.expand_dims(jnp.swapaxes(v, -1, -2), -3), tuple(out_shape) + (kk,))
    return expand


def _mul_slot_map(fam: Family, i: int, out_shape):
    return lambda v: jnp.broadcast_to(v, tuple(out_shape))[..., None]  # a dot over a length-1 axis


def _broadcast_slot_map(fam: Family, i: int, out_shape):
    return lambda v: jnp.broadcast_to(v, tuple(out_shape))


def _same_slot_map(fam: Family, i: int, out_shape):
    return lambda v: v


# -- outputs from full slots (operand index -> slot-shaped array) -------------------------------

def _pairwise_output(fam: Family, full: dict):
    return jnp.sum(full[0] * full[1], -1)


def _forward_output(fam: Family, full: dict):
    return op_forward(fam.op, *[full[i] for i in range(len(fam.free))])


def _no_output(fam: Family, full: dict):
    raise AssertionError(f"a {fam.kind} loss has no output")


# -- projections ---------------------------------------------------------------------------------

def _dot_mode(fam: Family) -> str:
    nfree = sum(fam.free)
    proj = fam.op.annots.get("proj", "linear" if nfree == 1 else "bilinear")
    if nfree == 2:
        return "bilinear"
    if proj == "bilinear":
        return "bilinear_reset"  # the reference: treat data as free, reset it after
    return "linear"


def _project_pairwise(fam: Family, full: dict, y0, opts: ProjOptions):
    """dot and mul: the linear projection (one free operand) or the exact bilinear one."""
    if fam.mode == "linear":
        ci, wi = (0, 1) if not fam.free[0] else (1, 0)
        w_new, y = P.REGISTRY["linear"](full[ci], full[wi], y0)[-2:]
        return (w_new,), y
    kw = {} if opts.bilinear_iters is None else {"iters": opts.bilinear_iters}
    a2, b2, y = P.REGISTRY["bilinear"](full[0], full[1], y0, **kw)
    new = {0: a2, 1: b2}
    return tuple(new[i] for i in fam.free_idx), y


def _project_sum(fam: Family, full: dict, y0, opts: ProjOptions):
    shift = sum((full[i] for i in fam.fixed_idx), 0.0)
    res = P.REGISTRY["sum"](*[full[i] for i in fam.free_idx], y0 - shift)
    return tuple(res[:-1]), res[-1] + shift


def pwl_preset(params: dict):
    """The projection library's piece table for a sum_pwl op's ``fn`` (and alpha / lo / hi)."""
    fn = params["fn"]
    if fn == "leaky_relu":
        return P.leaky_relu(params.get("alpha", 0.01))
    if fn == "clip":
        lo, hi = params.get("lo", -math.inf), params.get("hi", math.inf)
        return P.clip(None if lo is None or lo == -math.inf else lo,
                      None if hi is None or hi == math.inf else hi)
    return P.PRESETS[fn]()


def activation_projection(kind: str, params: dict, staircase: str = "exact"):
    """The projection training runs for a sum_smooth / sum_pwl family: (a_1..a_n, y0, offset=) ->
    (a_1', ..., a_n', y'). exp, square, sqrt, rsqrt, reciprocal, sigmoid, tanh and 1 - sigmoid take
    the grid-free path to the same point (proj_smooth_fast: the split pass puts the first five on
    every softmax and normalization, the last three are every RNN, GRU and LSTM gate). The memory
    plan (projc/train/plan.py) traces this too."""
    if kind == "sum_smooth" and params["fn"] in FAST_FNS:
        return lambda *args, offset=0.0: sum_smooth_fast(*args, fn=params["fn"], offset=offset)
    return lambda *args, offset=0.0: P.sum_activation(kind, params, *args, offset=offset, staircase=staircase)


def _project_activation(fam: Family, full: dict, y0, opts: ProjOptions):
    """sum_smooth, and sum_pwl staircases / hard activations: constant operands enter as an offset."""
    offset = sum((full[i] for i in fam.fixed_idx), 0.0)
    project = activation_projection(fam.kind, fam.op.params, opts.staircase)
    res = project(*[full[i] for i in fam.free_idx], y0, offset=offset)
    return tuple(res[:-1]), res[-1]


def _project_sum_pwl(fam: Family, full: dict, y0, opts: ProjOptions):
    if P.activation_handles(fam.kind, fam.op.params):
        return _project_activation(fam, full, y0, opts)
    table = pwl_preset(fam.op.params)
    points = P.has_point_piece(table)  # of the preset: a shift by a constant keeps lo == hi pieces
    if fam.fixed_idx:  # y = φ(c + Σ free): shift the piece table by the constant c, per element
        c = cast(jax.Array, sum((full[i] for i in fam.fixed_idx), 0.0))  # fixed_idx not empty: an array
        ce = c[..., None]
        lo, hi, sl, ic = (jnp.asarray(f, c.dtype) for f in table)
        table = P.Pieces(lo - ce, hi - ce, jnp.broadcast_to(sl, ce.shape[:-1] + sl.shape), ic + sl * ce)
    res = P.REGISTRY["sum_pwl"](*[full[i] for i in fam.free_idx], y0, fn=table, points=points)
    return tuple(res[:-1]), res[-1]


def _project_over_axes(fam: Family, a, y0, project):
    """A reduction over the op's ``axes`` (all when absent) projected by ``project(flat, y0)``, which
    reduces the last axis of ``flat``: the reduced axes are moved last and flattened, then restored."""
    axes = fam.op.params.get("axes")
    axes = list(range(a.ndim)) if axes is None else [ax % a.ndim for ax in axes]
    keep = [ax for ax in range(a.ndim) if ax not in axes]
    perm = keep + axes
    at = jnp.transpose(a, perm)
    kshape = at.shape[:len(keep)]
    a2, y = project(at.reshape(kshape + (-1,)), y0.reshape(kshape))
    a2 = jnp.transpose(a2.reshape(at.shape), np.argsort(perm).tolist())
    return (a2,), y.reshape(y0.shape)


def _project_max(fam: Family, full: dict, y0, opts: ProjOptions):
    a = full[0]
    axes = fam.op.params.get("axes")
    axes = tuple(range(a.ndim)) if axes is None else tuple(ax % a.ndim for ax in axes)
    if axes == tuple(range(a.ndim - len(axes), a.ndim)):  # the reduced axes last: as they are
        return _project_over_axes(fam, a, y0, lambda a, t: P.REGISTRY["max"](a, t, axis=-1))
    a2, y = max_over_axes(a, y0.reshape(tuple(d for i, d in enumerate(a.shape) if i not in axes)), axes)
    return (a2,), y.reshape(y0.shape)


def _shift_over_axes(fam: Family, a, y0, reduce, share):
    """A sum or mean over the op's ``axes`` projected in place: every entry of a group moves by the
    same ``-share(n)·(reduce(a) - y0)`` (projections.sum_reduce / mean on the flattened group), with
    keepdims reductions instead of moving the axes last, which costs two transposes a step."""
    axes = fam.op.params.get("axes")
    axes = tuple(range(a.ndim)) if axes is None else tuple(sorted(ax % a.ndim for ax in axes))
    n = math.prod(a.shape[ax] for ax in axes)
    kshape = tuple(1 if i in axes else d for i, d in enumerate(a.shape))
    a = a - share(n) * (reduce(a, axes, keepdims=True) - jnp.reshape(y0, kshape))
    return (a,), jnp.reshape(reduce(a, axes), y0.shape)


def _project_mean(fam: Family, full: dict, y0, opts: ProjOptions):
    """mean over ``axes``, in the metric chosen by the op's ``metric`` (projections.mean): weight w
    moves every entry by (q/(1+q))·(mean - y0), q = w/n (w = n² by default)."""
    euclidean = fam.op.params.get("metric", "sum") == "euclidean"
    a, y0 = as_floats(full[0], y0)
    return _shift_over_axes(fam, a, y0, jnp.mean, lambda n: 1.0 / (1.0 + n) if euclidean else n / (1.0 + n))


def _project_mean_square(fam: Family, full: dict, y0, opts: ProjOptions):
    """mean of squares over ``axes``, in the metric the op's ``metric`` chooses (proj_reduce)."""
    weight = 1.0 if fam.op.params.get("metric", "sum") == "euclidean" else None
    return _project_over_axes(fam, full[0], y0,
                              lambda a, t: P.REGISTRY["mean_square"](a, t, axis=-1, weight=weight))


def _project_reduce_sum(fam: Family, full: dict, y0, opts: ProjOptions):
    """sum over ``axes``: every entry moves by the same share of the residual (projections.sum_reduce)."""
    a, y0 = as_floats(full[0], y0)
    return _shift_over_axes(fam, a, y0, jnp.sum, lambda n: 1.0 / (n + 1))


def _project_segment_sum(fam: Family, full: dict, y0, opts: ProjOptions):
    a2, y = P.REGISTRY["segment_sum"](full[0], y0, segments=fam.op.params["segments"])
    return (a2,), y


def _project_embed(fam: Family, full: dict, y0, opts: ProjOptions):
    """Embedding lookup: the table's slot is the whole table (one copy), the indices are data."""
    e2, y = P.REGISTRY["embed"](full[0], full[1], y0)
    return (e2,), y


def _project_identity(fam: Family, full: dict, y0, opts: ProjOptions):
    a2, y = P.REGISTRY["identity"](full[0], y0)
    return (a2,), y


def _project_wsum(fam: Family, full: dict, y0, opts: ProjOptions):
    """z = Σ_k c_k a_k with constant c: the linear projection (a fixed-coefficient sum, DESIGN §8)."""
    a2, y = P.REGISTRY["linear"](full[1], full[0], y0)[-2:]
    return (a2,), y


def _last(res):
    return res[-1] if isinstance(res, (tuple, list)) else res


def _project_cross_entropy(fam: Family, full: dict, y0, opts: ProjOptions):
    p = fam.op.params
    kw = {"lam": p.get("lam", 5.0), "method": p.get("method", "newton")}
    if p.get("steps") is not None:
        kw["steps"] = p["steps"]
    return (_last(P.REGISTRY["cross_entropy"](full[0], full[1], **kw)),), None


def _project_margin(fam: Family, full: dict, y0, opts: ProjOptions):
    return (_last(P.REGISTRY["margin"](full[0], full[1])),), None


def _project_squared_error(fam: Family, full: dict, y0, opts: ProjOptions):
    return (_last(P.REGISTRY["squared_error"](full[0], full[1], lam=fam.op.params.get("lam"))),), None


def _project_elementwise_loss(fam: Family, full: dict, y0, opts: ProjOptions):
    """binary_cross_entropy, huber, l1: a prox per output element (the op's params: lam, delta)."""
    kw = {k: v for k, v in fam.op.params.items() if k in ("lam", "delta")}
    return (_last(P.REGISTRY[fam.kind](full[0], full[1], **kw)),), None


# -- storage choosers: layout name -> (family, factor_linear) -> storage ---------------------------

def _materialized(fam: Family, factor_linear: bool):
    return MATERIALIZED


def _dot_copies(fam: Family, factor_linear: bool):
    # a linear dot with data on the left: slot[..., m, :] = G[m, :] + alpha[..., m] c[..., :] exactly
    factorable = fam.mode == "linear" and fam.free == [False, True] and fam.op.operand(1).rank == 2
    return FACTORED if factor_linear and factorable else MATERIALIZED


def _dot_consensus(fam: Family, factor_linear: bool):
    # a batch of dots (b with batch dims, e.g. attention's q.k^T and p.v): the same GEMMs, batched
    return BATCHED_EDGE_MEANS if fam.op.operand(1).rank > 2 else EDGE_MEANS


def _conv_consensus(fam: Family, factor_linear: bool):
    return conv_family.CONV_MEANS


PLAIN = {"copies": _materialized, "consensus": _materialized}


def _elementwise(kind: str, operands: str, slot_map, project, projections) -> FamilyRule:
    return FamilyRule(kind, operands, slot_map, _forward_output, project, projections, PLAIN)


def _loss(kind: str, project) -> FamilyRule:
    return FamilyRule(kind, "x (the logits), labels", _same_slot_map, _no_output, project, (kind,),
                      PLAIN, fixed_operands=(1,))


RULES: dict[str, FamilyRule] = {r.kind: r for r in (
    FamilyRule("dot", "a [..., K], b [K, M]; or a [..., R, K], b [..., K, M]", _dot_slot_map,
               _pairwise_output, _project_pairwise,
               ("linear", "bilinear"), {"copies": _dot_copies, "consensus": _dot_consensus},
               mode=_dot_mode),
    FamilyRule("conv", "x [N, C, *S], w (Conv [OC, C/g, *k] or ConvTranspose [C, OC/g, *k])",
               conv_family.slot_map, _pairwise_output, _project_pairwise, ("linear", "bilinear"),
               {"copies": _materialized, "consensus": _conv_consensus}, mode=_dot_mode),
    FamilyRule("mul", "a, b (broadcast)", _mul_slot_map, _pairwise_output, _project_pairwise,
               ("linear", "bilinear"), PLAIN, mode=_dot_mode),
    _elementwise("sum", "x_1 ... x_n (broadcast)", _broadcast_slot_map, _project_sum, ("sum",)),
    _elementwise("sum_pwl", "x_1 ... x_n (broadcast)", _broadcast_slot_map, _project_sum_pwl, ("sum_pwl",)),
    _elementwise("sum_smooth", "x_1 ... x_n (broadcast)", _broadcast_slot_map, _project_activation,
                 ("sum_smooth",)),
    _elementwise("max", "a", _same_slot_map, _project_max, ("max",)),
    _elementwise("mean", "a", _same_slot_map, _project_mean, ("mean",)),
    _elementwise("mean_square", "a", _same_slot_map, _project_mean_square, ("mean_square",)),
    _elementwise("reduce_sum", "a", _same_slot_map, _project_reduce_sum, ("sum_reduce",)),
    _elementwise("segment_sum", "a [..., N]", _same_slot_map, _project_segment_sum, ("segment_sum",)),
    FamilyRule("embed", "table [V, D] (free), indices (integer data)", _same_slot_map, _forward_output,
               _project_embed, ("embed",), PLAIN, fixed_operands=(1,)),
    _elementwise("identity", "a", _same_slot_map, _project_identity, ("identity",)),
    FamilyRule("wsum", "a [..., K] (free), c [..., K] (constant coefficients)", _same_slot_map, _forward_output,
               _project_wsum, ("linear",), PLAIN, fixed_operands=(1,)),
    _loss("cross_entropy", _project_cross_entropy),
    _loss("margin", _project_margin),
    _loss("squared_error", _project_squared_error),
    _loss("binary_cross_entropy", _project_elementwise_loss),
    _loss("huber", _project_elementwise_loss),
    _loss("l1", _project_elementwise_loss),
)}

MOVES: dict[str, MoveRule] = {r.kind: r for r in (
    MoveRule("reshape"), MoveRule("transpose"), MoveRule("concat"), MoveRule("slice"),
    MoveRule("pad", {"value": 0.0}), MoveRule("patches"), MoveRule("take"), MoveRule("scatter", {"value": 0.0}),
)}

LOSSES = C.LOSSES
assert set(RULES) == set(C.FAMILIES) | set(C.LOSSES), "every family kind needs a rule"
assert set(MOVES) == set(C.MOVES), "every move kind needs a rule"
