"""Projection algorithms on a state layout.

A state layout (``state_layout.Layout``) provides ``project(x, key, ctx)`` for the set keys in
``layout.two_sets`` (``"A"``, ``"B"``; A holds the loss) and ``layout.layer_sets`` (the schedule's
layers, from the loss backwards), over a state ``x`` that is a pytree. With R_S = 2 P_S - I:

- ``ap``  alternating projections     x <- P_B(P_A(x))
- ``dr``  Douglas-Rachford            x <- (1-λ) x + λ R_B R_A x           (relaxation λ, default 0.5)
- ``ar``  alternating reflections     x <- R_B R_A x
- ``dm``  difference map              x <- x + β [P_A(f_B(x)) - P_B(f_A(x))],
          f_A = (1 - 1/β) P_A + x/β,  f_B = (1 + 1/β) P_B - x/β           (β default 1)
- ``cp``  cyclic projections          x <- P_{L_n} ... P_{L_1} P_{L_0} x   (layers from the loss)
- ``cdr`` cyclic Douglas-Rachford     x <- T_{n,0} ... T_{1,2} T_{0,1} x, T_{i,j} = ½(I + R_j R_i)

``shadow(x)`` is the point whose parameters are read out after the last step: x itself for the
projection methods (their iterates are feasible for the last set), P_A(x) for the reflection
methods (the DR "shadow" sequence, which is what converges).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from projc.errors import ProjcError

if TYPE_CHECKING:
    from .state_layout import Layout

PROJECTION_SOLVERS = ("ap", "dr", "ar", "dm", "cp", "cdr")
SOLVERS = PROJECTION_SOLVERS + ("adam",)  # every solver the trainer offers (adam: the gradient baseline)
TWO_SET = ("ap", "dr", "ar", "dm")


def combine(*terms):
    """Σ coef·state over (coef, state) pairs, leaf by leaf (the affine steps of DR, AR, DM, CDR)."""
    import jax  # kept out of module import: the trainer reads SOLVERS without loading JAX

    def comb(*leaves):
        out = 0.0
        for (c, _), leaf in zip(terms, leaves):
            out = out + c * leaf
        return out
    return jax.tree_util.tree_map(comb, *[t for _, t in terms])


class Solver:
    """One iteration ``step(x, ctx)`` and the readout point ``shadow(x, ctx)``."""

    def __init__(self, layout: Layout, name: str, *, relaxation: float = 0.5, beta: float = 1.0):
        if name not in PROJECTION_SOLVERS:
            raise ProjcError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")
        if not 0.0 < relaxation <= 1.0:
            raise ProjcError(f"relaxation must lie in (0, 1], got {relaxation}")
        if beta == 0:
            raise ProjcError("difference-map beta must be non-zero")
        self.layout, self.name, self.relaxation, self.beta = layout, name, float(relaxation), float(beta)
        if name in TWO_SET:
            layout.check_two_set()
        self.step: Callable[[Any, Any], Any] = getattr(self, "_" + name)
        # the set projected last before the readout: how the state the diagnostics read was left
        self.last_set = {"ap": "B", "dr": "A", "ar": "A", "dm": "A"}.get(
            name, layout.layer_sets[-1] if layout.layer_sets else None)

    # helpers
    def P(self, x, key, ctx):
        return self.layout.project(x, key, ctx)

    def R(self, x, key, ctx):
        return combine((2.0, self.P(x, key, ctx)), (-1.0, x))

    # two-set methods
    def _ap(self, x, ctx):
        return self.P(self.P(x, "A", ctx), "B", ctx)

    def _dr(self, x, ctx):
        lam = self.relaxation
        return combine((1.0 - lam, x), (lam, self.R(self.R(x, "A", ctx), "B", ctx)))

    def _ar(self, x, ctx):
        return self.R(self.R(x, "A", ctx), "B", ctx)

    def _dm(self, x, ctx):
        b = self.beta
        pa, pb = self.P(x, "A", ctx), self.P(x, "B", ctx)
        if b == 1.0:
            return combine((1.0, x), (1.0, self.P(combine((2.0, pb), (-1.0, x)), "A", ctx)), (-1.0, pb))
        fa = combine((1.0 - 1.0 / b, pa), (1.0 / b, x))
        fb = combine((1.0 + 1.0 / b, pb), (-1.0 / b, x))
        return combine((1.0, x), (b, self.P(fb, "A", ctx)), (-b, self.P(fa, "B", ctx)))

    # cyclic methods
    def _cp(self, x, ctx):
        for key in self.layout.layer_sets:
            x = self.P(x, key, ctx)
        return x

    def _cdr(self, x, ctx):
        keys = self.layout.layer_sets
        n = len(keys)
        if n < 2:
            return self.P(x, keys[0], ctx)
        for i in range(n):
            ki, kj = keys[i], keys[(i + 1) % n]
            x = combine((0.5, x), (0.5, self.R(self.R(x, ki, ctx), kj, ctx)))
        return x

    def shadow(self, x, ctx):
        if self.name in ("dr", "ar", "dm"):
            return self.P(x, "A", ctx)
        if self.name == "cdr":
            return self._cp(x, ctx)
        return x
