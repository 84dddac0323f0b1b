"""Piecewise-linear functions and the exact projection onto the graph of y = φ(Σ_i a_i).

A function φ is a table of closed pieces (lo_k ≤ x ≤ hi_k, value slope_k·x + intercept_k).  The graph
used by the projection is the union of the closed pieces; for a discontinuous φ (sign, step,
quantize) this is the closure of the graph of φ, so at a jump the nearest point may be the other
side's limit (e.g. (0, -1) for sign).  `pwl_eval` resolves overlaps by table order: the first piece
whose closed interval contains x wins; presets are ordered to give the ONNX value at jumps.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

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


def sign() -> Pieces:
    """ONNX Sign: -1 for x < 0, 0 at x = 0 (a degenerate piece [0, 0]), +1 for x > 0."""
    return pieces([(0.0, 0.0, 0.0, 0.0), (-_INF, 0.0, 0.0, -1.0), (0.0, _INF, 0.0, 1.0)])


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


PRESETS: dict[str, Callable[..., Pieces]] = {
    "identity": identity,
    "relu": relu,
    "leaky_relu": leaky_relu,
    "clip": clip,
    "hardtanh": clip,
    "abs": abs,
    "sign": sign,
    "step": step,
    "quantize": quantize,
}


def resolve(fn: Any) -> Pieces:
    """Turn `fn` (a preset name, a preset function, a Pieces table, or rows) into a Pieces table."""
    if isinstance(fn, Pieces):
        return fn
    if isinstance(fn, str):
        if fn not in PRESETS:
            raise ValueError(f"unknown piecewise-linear preset {fn!r}; known: {sorted(PRESETS)}")
        if fn == "quantize":
            raise ValueError("preset 'quantize' needs parameters: pass quantize(levels, scale)")
        return PRESETS[fn]()
    if callable(fn):
        return resolve(fn())
    return pieces(fn)


def _table(p: Pieces, dt):
    return tuple(jnp.asarray(f, dt) for f in p)


def pwl_eval(fn: Any, x):
    """Evaluate φ(x) elementwise: the first piece (table order) whose [lo, hi] contains x.

    NaN where no piece contains x (only possible for tables that do not cover the real line).
    """
    (x,) = as_floats(x)
    dt = x.dtype
    lo, hi, s, c = _table(resolve(fn), dt)
    xe = x[..., None]
    inside = (xe >= lo) & (xe <= hi)
    k = jnp.argmax(inside, axis=-1)
    val = s[k] * x + c[k]
    return jnp.where(jnp.any(inside, axis=-1), val, jnp.nan)


def sum_pwl(*args, fn: Any = "relu"):
    """Project onto {(a_1..a_n, y): y = φ(Σ a_i)}: only the sum S moves, spread evenly.

    Per piece: S* = clip((S0 + n s (y0 - c))/(1 + n s²), lo, hi) minimizes (S-S0)²/n + (sS+c-y0)²;
    the piece of least cost wins.  Returns (a_1', ..., a_n', y') with y' = s S* + c of that piece.
    """
    if len(args) < 2:
        raise TypeError("sum_pwl(*operands, target, fn=...) needs at least one operand and a target")
    args = as_floats(*args)
    dt = args[0].dtype
    shape = jnp.broadcast_shapes(*(x.shape for x in args))
    ops = [jnp.broadcast_to(x, shape) for x in args[:-1]]
    y0 = jnp.broadcast_to(args[-1], shape)
    n = len(ops)
    S0 = ops[0]
    for x in ops[1:]:
        S0 = S0 + x
    lo, hi, s, c = _table(resolve(fn), dt)
    S0e = S0[..., None]
    ye = y0[..., None]
    Sk = jnp.clip((S0e + n * s * (ye - c)) / (1 + n * s * s), lo, hi)
    yk = s * Sk + c
    dS = Sk - S0e
    dy = yk - ye
    cost = dS * dS / n + dy * dy
    k = jnp.argmin(cost, axis=-1)[..., None]
    S = jnp.take_along_axis(Sk, k, axis=-1)[..., 0]
    shift = (S - S0) / n
    new = [x + shift for x in ops]
    Snew = new[0]
    for x in new[1:]:
        Snew = Snew + x
    # y = s S* + c of the chosen piece, at the new operands' actual sum (clipped into the piece
    # against rounding, so that e.g. abs never returns -0.0000001)
    # The table may be per element ([..., P], a constant operand shifted into it) or shared ([P]):
    # pick the chosen piece along the last axis either way (s[kk] would index the first axis).
    def piece(t):
        return jnp.take_along_axis(jnp.broadcast_to(t, Sk.shape), k, axis=-1)[..., 0]
    return (*new, piece(s) * jnp.clip(Snew, piece(lo), piece(hi)) + piece(c))
