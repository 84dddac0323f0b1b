"""Families: what the state layouts know about one constraint family, and small shared helpers."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from projc.errors import ProjcError
from projc.ir import Op, Value
from projc.ops.registry import lookup


def _P():
    from projc.backends.jax import projections
    return projections


def _forward_op(op: Op, *xs, linear_part: bool = False):
    """The registered JAX forward of a projc op (pad's fill value dropped for the linear part)."""
    opdef = lookup(op.kind, 1)
    if opdef is None:
        raise ProjcError(f"no forward registered for op {op.kind!r}")
    kw = {k: op.params.get(k, d) for k, d in opdef.attrs.items()}
    if linear_part and op.kind == "pad":
        kw["value"] = 0.0
    return opdef.fn(*xs, **kw)


@dataclass(eq=False)
class Family:
    """One constraint family (or the loss) and how its slots are laid out."""

    key: str
    op: Op
    set: str | None
    layer: int | None
    free: list[bool]                 # per operand: does it move (depends on a param or family)?
    mode: str = ""                   # dot/mul: "linear" | "bilinear" | "bilinear_reset"
    factored: bool = False           # linear dot/mul with the free slot stored as (G, alpha)
    sources: list[frozenset] = field(default_factory=list)  # per operand: producer nodes

    @property
    def kind(self) -> str:
        return self.op.kind

    @property
    def out(self) -> Value | None:
        return self.op.outputs[0] if self.op.outputs else None

    @property
    def free_idx(self) -> list[int]:
        return [i for i, f in enumerate(self.free) if f]


def _last(res):
    return res[-1] if isinstance(res, (tuple, list)) else res


def _pwl_preset(P, params: dict):
    """The projection library's piece table for a sum_pwl op's ``fn`` (and alpha / lo / hi)."""
    fn = params["fn"]
    if fn == "leaky_relu":
        return P.leaky_relu(params.get("alpha", 0.01))
    if fn == "clip":
        lo, hi = params.get("lo", -math.inf), params.get("hi", math.inf)
        return P.clip(None if lo is None or lo == -math.inf else lo,
                      None if hi is None or hi == math.inf else hi)
    return P.PRESETS[fn]()
