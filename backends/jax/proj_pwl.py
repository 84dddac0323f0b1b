"""Piecewise-linear functions and the exact projection onto the graph of y = φ(Σ_i a_i).

A function φ is a table of closed pieces (lo_k ≤ x ≤ hi_k, value slope_k·x + intercept_k).  The graph
used by the projection is the union of the closed pieces; for a discontinuous table (step, quantize)
this is the closure of the graph of φ, so at a jump the nearest point may be the other side's limit.
The ops' discontinuous fns never use a closure; every projected point is on the graph as the forward
(projc.ops.constraint.pwl) computes it:

- "sign" keeps a margin around its jump (a closed subset of the graph itself, see sign()), and a unit
  projected onto sign's 0 gets operands summing to exactly 0 in any order (_onto_point);
- staircases (round, floor, ceil, fake_quant: sum_staircase) keep a margin off every jump: a sum
  that moves onto level k lands at least STAIR_MARGIN of a step, plus the rounding of the spread
  (see stair_margin), inside level k's interval, never on the jump where the tie rule (round half to
  even, floor's and ceil's closed sides) and the rounding of the operands' sum would decide the
  level.  A sum that does not move keeps its own level, ties included (S0 is a candidate at the
  level the forward gives it, unless it lies within rounding of a jump without being on it).  So
  y == φ(Σ a_i') exactly as the forward evaluates it, in any order of addition, and the cost
  is within scale²·(2δ|ΔS|/scale + δ²)/n of the projection onto the closure (δ the margin in steps).

`pwl_eval` resolves overlaps by table order: the first piece whose closed interval contains x wins;
presets are ordered to give the ONNX value at jumps.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

from .proj_common import as_floats

_INF = float("inf")


class Pieces(NamedTuple):
    """Piece table of φ: closed intervals [lo, hi] with φ(x) = slope·x + intercept on each.

    Fields are 1-D arrays of equal length K (numpy for presets; jnp arrays are accepted too).
    """

    lo: Any
    hi: Any
    slope: Any
    intercept: Any


def pieces(rows: Sequence[Sequence[float]]) -> Pieces:
    """Build a Pieces table from rows (lo, hi, slope, intercept); order matters only for pwl_eval."""
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    if arr.shape[0] == 0:
        raise ValueError("a piecewise-linear function needs at least one piece")
    if np.any(arr[:, 0] > arr[:, 1]):
        raise ValueError(f"piece with lo > hi in {arr.tolist()}")
    if not np.all(np.isfinite(arr[:, 2:])):
        raise ValueError("piece slopes and intercepts must be finite")
    return Pieces(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), arr[:, 3].copy())


# ---------------------------------------------------------------------------------------- presets
def identity() -> Pieces:
    """φ(x) = x."""
    return pieces([(-_INF, _INF, 1.0, 0.0)])


def relu() -> Pieces:
    """φ(x) = max(x, 0)."""
    return pieces([(-_INF, 0.0, 0.0, 0.0), (0.0, _INF, 1.0, 0.0)])


def leaky_relu(alpha: float = 0.01) -> Pieces:
    """φ(x) = x for x ≥ 0, alpha·x below (ONNX LeakyRelu, default alpha 0.01)."""
    return pieces([(-_INF, 0.0, float(alpha), 0.0), (0.0, _INF, 1.0, 0.0)])


def clip(lo: float | None = -1.0, hi: float | None = 1.0) -> Pieces:
    """φ(x) = min(max(x, lo), hi) (ONNX Clip; None means unbounded; default hardtanh [-1, 1])."""
    lo = -_INF if lo is None else float(lo)
    hi = _INF if hi is None else float(hi)
    if lo > hi:
        raise ValueError(f"clip needs lo <= hi, got {lo} > {hi}")
    rows = [(lo, hi, 1.0, 0.0)]
    if np.isfinite(lo):
        rows.append((-_INF, lo, 0.0, lo))
    if np.isfinite(hi):
        rows.append((hi, _INF, 0.0, hi))
    return pieces(rows)


def abs() -> Pieces:  # noqa: A001 - preset name mirrors the ONNX op
    """φ(x) = |x|."""
    return pieces([(-_INF, 0.0, -1.0, 0.0), (0.0, _INF, 1.0, 0.0)])


# The margin of the sign family's projection (the "sign" preset): see sign() and docs/design-notes.md.
SIGN_MARGIN = 0.5


def sign(margin: float = 0.0) -> Pieces:
    """ONNX Sign: -1 for x < 0, 0 at x = 0 (a degenerate piece [0, 0]), +1 for x > 0.

    margin 0: the closure of the graph, whose points (0, ±1) are not on the graph itself (sign(0) is
    0), so a projection that flips a unit leaves its sum exactly on the jump, where the forward gives 0
    or a rounding-decided sign.  margin m > 0: the closed subset {(S, -1): S <= -m} ∪ {(0, 0)} ∪
    {(S, 1): S >= m} of the graph; every projected point is exactly on the graph and a flip moves the
    sum m past the threshold.  The "sign" preset (what training uses) has margin SIGN_MARGIN;
    ``pwl_eval("sign", x)`` evaluates the exact function.
    """
    m = float(margin)
    if not m >= 0:
        raise ValueError(f"sign needs margin >= 0, got {margin}")
    return pieces([(0.0, 0.0, 0.0, 0.0), (-_INF, -m, 0.0, -1.0), (m, _INF, 0.0, 1.0)])


def step() -> Pieces:
    """Heaviside step: 0 for x < 0, 1 for x ≥ 0 (the x ≥ 0 piece is listed first, so φ(0) = 1)."""
    return pieces([(0.0, _INF, 0.0, 1.0), (-_INF, 0.0, 0.0, 0.0)])


def quantize(levels: int, scale: float = 1.0, offset: float = 0.0) -> Pieces:
    """L-level staircase: φ(x) = offset + scale·clip(floor((x-offset)/scale + ½), 0, L-1).

    Levels offset + k·scale, thresholds half-way between; a threshold maps to the upper level.
    """
    L = int(levels)
    if L < 1 or not scale > 0:
        raise ValueError(f"quantize needs levels >= 1 and scale > 0, got {levels}, {scale}")
    rows = []
    for k in reversed(range(L)):  # descending so that a threshold evaluates to the upper level
        lo = -_INF if k == 0 else offset + (k - 0.5) * scale
        hi = _INF if k == L - 1 else offset + (k + 0.5) * scale
        rows.append((lo, hi, 0.0, offset + k * scale))
    return pieces(rows)


def hardsigmoid(alpha: float = 0.2, beta: float = 0.5) -> Pieces:
    """ONNX HardSigmoid: φ(x) = clip(alpha·x + beta, 0, 1) (defaults alpha 0.2, beta 0.5)."""
    a, b = float(alpha), float(beta)
    if not a > 0:
        raise ValueError(f"hardsigmoid needs alpha > 0, got {alpha}")
    lo, hi = -b / a, (1 - b) / a
    return pieces([(lo, hi, a, b), (-_INF, lo, 0.0, 0.0), (hi, _INF, 0.0, 1.0)])


def relu6() -> Pieces:
    """φ(x) = min(max(x, 0), 6)."""
    return clip(0.0, 6.0)


class Staircase(NamedTuple):
    """An integer staircase, possibly unbounded: φ(x) = scale·(k - zero_point) with
    k = clip(q(x/scale) + zero_point, kmin, kmax) and q one of round (half to even), floor, ceil
    (QuantizeLinear rounds x/scale, then adds the integer zero point).

    Level j = k - zero_point's piece is x/scale ∈ [j + a_lo, j + a_hi] with (a_lo, a_hi) = (-½, ½),
    (0, 1), (-1, 0) for round, floor, ceil, closed where the tie rule puts the jump on this level
    (round: the even j); the end levels kmin, kmax extend to ∓∞.
    Round, Floor and Ceil are scale 1, zero point 0, unbounded; a QuantizeLinear ->
    DequantizeLinear pair (fake quantization) is round with its scale, zero point and the
    integer type's range.
    """

    mode: str = "round"
    scale: float = 1.0
    zero_point: float = 0.0
    kmin: float = -_INF
    kmax: float = _INF


_STAIR_SIDES = {"round": (-0.5, 0.5), "floor": (0.0, 1.0), "ceil": (-1.0, 0.0)}


def staircase(mode: str = "round", scale: float = 1.0, zero_point: float = 0.0,
              kmin: float = -_INF, kmax: float = _INF) -> Staircase:
    """A Staircase, checked (mode round/floor/ceil, scale > 0, kmin <= kmax)."""
    if mode not in _STAIR_SIDES:
        raise ValueError(f"staircase mode must be one of {sorted(_STAIR_SIDES)}, got {mode!r}")
    if not float(scale) > 0 or not float(kmin) <= float(kmax):
        raise ValueError(f"staircase needs scale > 0 and kmin <= kmax, got {scale}, [{kmin}, {kmax}]")
    return Staircase(mode, float(scale), float(zero_point), float(kmin), float(kmax))


def fake_quant(scale: float, zero_point: float = 0.0, qmin: float = 0.0, qmax: float = 255.0) -> Staircase:
    """QuantizeLinear then DequantizeLinear: scale·(clip(round(x/scale) + zero_point, qmin, qmax) - zero_point)."""
    return staircase("round", scale, zero_point, qmin, qmax)


def stair_ramp(st: Staircase) -> Pieces | None:
    """The straight-through relaxation of a staircase bounded on at least one side: the line through
    the middle of every level's piece, clipped at the end levels, φ(x) = clip(x - scale·m,
    scale·jmin, scale·jmax) with m the middle of a piece's sides (0 round, ½ floor, -½ ceil). None
    when both ends are unbounded: the ramp would be the identity and the unit would train as linear.

    Projecting onto it instead of the staircase passes a correction of the output back to the sum
    (the exact projection keeps the sum on its flat piece unless the target crosses a level's
    middle, so the layer before a staircase barely trains; docs/design-notes.md)."""
    jmin, jmax = st.kmin - st.zero_point, st.kmax - st.zero_point
    if not (math.isfinite(jmin) or math.isfinite(jmax)):
        return None
    mid = st.scale * sum(_STAIR_SIDES[st.mode]) / 2
    lo, hi = st.scale * jmin, st.scale * jmax
    rows = [(lo + mid, hi + mid, 1.0, -mid)]
    if math.isfinite(lo):
        rows.append((-_INF, lo + mid, 0.0, lo))
    if math.isfinite(hi):
        rows.append((hi + mid, _INF, 0.0, hi))
    return pieces(rows)


STAIR_MARGIN = 1e-6  # the least distance, in steps, from a jump at which a moved sum lands (see stair_margin)


def stair_eval(st: Staircase, x):
    """φ(x) for a Staircase as the forward computes it: scale·(clip(q(x/scale) + zero_point, kmin, kmax)
    - zero_point) with q round (half to even), floor or ceil (projc.ops.constraint._fake_quant)."""
    q = {"round": jnp.round, "floor": jnp.floor, "ceil": jnp.ceil}[st.mode]
    k = jnp.clip(q(x / st.scale) + st.zero_point, st.kmin, st.kmax)
    return st.scale * (k - st.zero_point)


def stair_margin(st: Staircase, n, mag, t0, kappa, dt):
    """δ, in steps: STAIR_MARGIN plus a bound on the rounding of the projected sum in step units
    (the spread a_i + (S - S0)/n and the sum of n terms of magnitude mag = |offset| + Σ|a_i|, then
    x/scale), capped at a quarter step (beyond, float32 cannot resolve the steps anyway)."""
    eps = float(jnp.finfo(dt).eps)
    rnd = 8 * (n + 2) * eps * (2 * mag / st.scale + jnp.abs(t0) + jnp.abs(kappa) + 1)
    return jnp.minimum(STAIR_MARGIN + rnd, 0.25)


def _stair_candidates(st: Staircase, t0, kappa, n, c_lo, c_hi):
    """Integer levels among which the best one lies (see sum_staircase); level k's interval is
    [k + c_lo, k + c_hi] in units of steps (the end levels extend to ∓∞)."""
    cont = [jnp.clip(kappa, t0 - c_hi, t0 - c_lo),   # the sum stays on its piece: k = κ
            (t0 - c_lo + n * kappa) / (1 + n),        # the sum rises to the piece's lower end
            (t0 - c_hi + n * kappa) / (1 + n)]        # the sum falls to the piece's upper end
    ks = [q(k) for k in cont for q in (jnp.floor, jnp.ceil)]
    ends = [jnp.full_like(t0, e) for e in (st.kmin - st.zero_point, st.kmax - st.zero_point) if math.isfinite(e)]
    return jnp.stack([jnp.clip(k, st.kmin - st.zero_point, st.kmax - st.zero_point) for k in ks] + ends, axis=-1)


def sum_staircase(*args, fn: Staircase, offset=0.0):
    """Project onto {y = φ(offset + Σ a_i)} for a Staircase φ; returns (a_1', ..., a_n', y').

    In units t = S/scale and κ = y0/scale, the levels are the integers j (y = scale·j, j clipped to
    [kmin - zero_point, kmax - zero_point]) and the cost is scale² times c(j) = d(t0, piece_j)²/n +
    (j - κ)².  Level j's piece is shrunk by the margin δ (stair_margin) at each jump: [j + a_lo + δ,
    j + a_hi - δ], (a_lo, a_hi) = (-½, ½), (0, 1), (-1, 0) for round, floor, ceil.  With the ends'
    extension ignored, d is convex in j, so c is convex and the best interior level is the floor or
    ceil of the continuous minimizer, which lies in one of three regions (t0 on, above or below the
    piece); those six levels, clipped, the two end levels, and S0 itself at its own level (no move:
    exact, even on a jump) are scored exactly.
    """
    if len(args) < 2:
        raise TypeError("sum_pwl(*operands, target, fn=staircase) needs at least one operand and a target")
    *ops, y0, off = as_floats(*args, offset)
    dt = ops[0].dtype
    shape = jnp.broadcast_shapes(*(x.shape for x in ops), y0.shape, off.shape)
    ops = [jnp.broadcast_to(x, shape) for x in ops]
    y0 = jnp.broadcast_to(y0, shape)
    n = len(ops)
    S0 = off + sum(ops[1:], ops[0])
    mag = jnp.abs(off) + sum((jnp.abs(x) for x in ops[1:]), jnp.abs(ops[0]))
    t0 = S0 / fn.scale
    kappa = y0 / fn.scale
    delta = stair_margin(fn, n, mag, t0, kappa, dt)
    a_lo, a_hi = _STAIR_SIDES[fn.mode]
    c_lo, c_hi = a_lo + delta, a_hi - delta
    k = _stair_candidates(fn, t0, kappa, n, c_lo, c_hi)
    jmin, jmax = fn.kmin - fn.zero_point, fn.kmax - fn.zero_point
    lo = jnp.where(k <= jmin, -jnp.inf, k + c_lo[..., None])
    hi = jnp.where(k >= jmax, jnp.inf, k + c_hi[..., None])
    t = jnp.clip(t0[..., None], lo, hi)
    # S0 where it is, at its own level (the forward's, ties included), no move: unless it lies within
    # rounding of a jump without being on it, where another order of addition could cross it
    k0 = stair_eval(fn, S0) / fn.scale
    dist = jnp.minimum(jnp.where(k0 <= jmin, jnp.inf, t0 - k0 - a_lo), jnp.where(k0 >= jmax, jnp.inf, k0 + a_hi - t0))
    stay = (dist == 0) | (dist >= delta - STAIR_MARGIN)
    k = jnp.concatenate([k0[..., None], k], -1)
    t = jnp.concatenate([t0[..., None], t], -1)
    cost = (t - t0[..., None]) ** 2 / n + (k - kappa[..., None]) ** 2
    cost = cost.at[..., 0].set(jnp.where(stay, cost[..., 0], jnp.inf))
    best = jnp.argmin(cost, axis=-1)[..., None]
    moved = best[..., 0] > 0
    tb = jnp.take_along_axis(t, best, -1)[..., 0]
    shift = jnp.where(moved, (tb * fn.scale - S0) / n, 0)
    new = [x + shift for x in ops]
    # y from the new sum, the forward's way: the margin puts it on the chosen level
    return (*new, stair_eval(fn, off + sum(new[1:], new[0])))


PRESETS: dict[str, Callable[..., Pieces | Staircase]] = {
    "identity": identity,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "clip": clip,
    "hardtanh": clip,
    "abs": abs,
    "sign": lambda: sign(SIGN_MARGIN),  # the projection's table; pwl_eval uses sign() (_EVAL_PRESETS)
    "step": step,
    "quantize": quantize,
    "hardsigmoid": hardsigmoid,
    "relu6": relu6,
    "round": lambda: staircase("round"),
    "floor": lambda: staircase("floor"),
    "ceil": lambda: staircase("ceil"),
    "fake_quant": fake_quant,
}


def resolve(fn: Any) -> Pieces | Staircase:
    """Turn `fn` (a preset name, a preset function, a Pieces table or Staircase, or rows) into a
    Pieces table (or a Staircase for round, floor, ceil and fake_quant)."""
    if isinstance(fn, (Pieces, Staircase)):
        return fn
    if isinstance(fn, str):
        if fn not in PRESETS:
            raise ValueError(f"unknown piecewise-linear preset {fn!r}; known: {sorted(PRESETS)}")
        if fn in ("quantize", "fake_quant"):
            raise ValueError(f"preset {fn!r} needs parameters: pass {fn}(...)")
        return PRESETS[fn]()
    if callable(fn):
        return resolve(fn())
    return pieces(fn)


# presets whose projection table leaves out part of the graph (a margin): evaluate the exact function
_EVAL_PRESETS: dict[str, Callable[[], Pieces]] = {"sign": sign}


def _table(p: Pieces, dt):
    return tuple(jnp.asarray(f, dt) for f in p)


def pwl_eval(fn: Any, x):
    """Evaluate φ(x) elementwise: the first piece (table order) whose [lo, hi] contains x.

    NaN where no piece contains x (only possible for tables that do not cover the real line).
    """
    (x,) = as_floats(x)
    dt = x.dtype
    fn = resolve(_EVAL_PRESETS[fn]() if isinstance(fn, str) and fn in _EVAL_PRESETS else fn)
    if isinstance(fn, Staircase):
        return stair_eval(fn, x)
    lo, hi, s, c = _table(fn, dt)
    xe = x[..., None]
    inside = (xe >= lo) & (xe <= hi)
    k = jnp.argmax(inside, axis=-1)
    val = s[k] * x + c[k]
    return jnp.where(jnp.any(inside, axis=-1), val, jnp.nan)


def _onto_point(new, point, where):
    """Operands whose sum is exactly `point` (sign's 0) in any order of addition: each rounded to a
    multiple of a power of two q such that every partial sum (|.| ≤ M) is a multiple of q below
    2^p·q, hence exact, and the last takes point - Σ others.  Moves each operand by at most q ~
    2(n+2)·eps·max|.|: a rounding of the even spread.  Where a constant c shifted the table (point
    -c, families._project_sum_pwl) this holds for one free operand (c + (-c) = 0) but not in
    general: c need not be a multiple of q, and the sum with c can round to a few ulps off 0."""
    n = len(new)
    dt = new[0].dtype
    bits = jnp.finfo(dt).nmant  # p - 1
    M = jnp.abs(point)
    for x in new:
        M = jnp.maximum(M, jnp.abs(x))
    M = jnp.maximum(2 * (n + 2) * M, float(jnp.finfo(dt).tiny) * 2.0 ** (bits + 2))  # q normal: no flush to 0
    q = jnp.exp2(jnp.ceil(jnp.log2(M)) - bits)
    snapped = [jnp.round(x / q) * q for x in new[:-1]]
    rest = jnp.zeros_like(point)
    for x in snapped:
        rest = rest + x
    return [jnp.where(where, x, y) for x, y in zip(snapped + [point - rest], new)]


def has_point_piece(table: Pieces) -> bool:
    """Whether a piece is a single point (lo == hi, e.g. sign's 0); True when the table is traced."""
    lo, hi = table.lo, table.hi
    if isinstance(lo, np.ndarray) and isinstance(hi, np.ndarray):
        return bool(np.any(lo == hi))
    return True


def sum_pwl(*args, fn: Any = "relu", points: bool | None = None):
    """Project onto {(a_1..a_n, y): y = φ(Σ a_i)}: only the sum S moves, spread evenly.

    Per piece: S* = clip((S0 + n s (y0 - c))/(1 + n s²), lo, hi) minimizes (S-S0)²/n + (sS+c-y0)²;
    the piece of least cost wins.  Returns (a_1', ..., a_n', y') with y' = s S* + c of that piece.
    ``points``: whether the table has a one-point piece (None: read it off a concrete table). Without
    one the exact-sum snapping (``_onto_point``) selects nothing and is left out: the same values,
    without its log2, exp2 and rounding on every element (a tenth of a cnn2_digits CP step).
    """
    if len(args) < 2:
        raise TypeError("sum_pwl(*operands, target, fn=...) needs at least one operand and a target")
    table = resolve(fn)
    if isinstance(table, Staircase):  # unbounded staircases: a search over levels
        return sum_staircase(*args, fn=table)
    args = as_floats(*args)
    dt = args[0].dtype
    shape = jnp.broadcast_shapes(*(x.shape for x in args))
    ops = [jnp.broadcast_to(x, shape) for x in args[:-1]]
    y0 = jnp.broadcast_to(args[-1], shape)
    n = len(ops)
    S0 = ops[0]
    for x in ops[1:]:
        S0 = S0 + x
    lo, hi, s, c = _table(table, dt)

    def piece(k: int):
        """Piece k's (S*, lo, hi, s, c, cost)."""
        lk, hk, sk, ck = lo[..., k], hi[..., k], s[..., k], c[..., k]
        Sk = jnp.clip((S0 + n * sk * (y0 - ck)) / (1 + n * sk * sk), lk, hk)
        dS = Sk - S0
        dy = sk * Sk + ck - y0
        return Sk, lk, hk, sk, ck, dS * dS / n + dy * dy

    # the pieces are few and static: scan them in table order keeping the first of least cost
    # (argmin's tie rule) with selects; a gather along the piece axis is several times slower
    S, lo_k, hi_k, s_k, c_k, best = piece(0)
    for k in range(1, lo.shape[-1]):
        Sk, lk, hk, sk, ck, cost = piece(k)
        take = cost < best
        S, best = jnp.where(take, Sk, S), jnp.where(take, cost, best)
        lo_k, hi_k, s_k, c_k = (jnp.where(take, new_, old_) for new_, old_ in
                                ((lk, lo_k), (hk, hi_k), (sk, s_k), (ck, c_k)))
    shift = (S - S0) / n
    new = [x + shift for x in ops]
    if has_point_piece(table) if points is None else points:
        new = _onto_point(new, lo_k, lo_k == hi_k)
    Snew = new[0]
    for x in new[1:]:
        Snew = Snew + x
    # y = s S* + c of the chosen piece, at the new operands' actual sum (clipped into the piece
    # against rounding, so that e.g. abs never returns -0.0000001); the table may be per element
    # (a constant operand shifts it, see families._project_sum_pwl)
    return (*new, s_k * jnp.clip(Snew, lo_k, hi_k) + c_k)
