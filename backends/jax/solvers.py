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

Acceleration options (off by default; measured in README "Time to accuracy"), with T = ``step``:

- ``omega`` (AP, CP): over-relaxed projections, every P_S replaced by x + ω (P_S x − x), ω in (0, 2).
- ``inertia`` β in [0, 1): inertial (heavy-ball / FISTA-like) extrapolation y_k = x_k + β (x_k − x_{k−1}),
  x_{k+1} = T(y_k).
- ``anderson`` m >= 1: Anderson acceleration (type II) over the last m+1 pairs (T(x_i), T(x_i) − x_i):
  x_{k+1} = Σ α_i T(x_i) with α minimizing |Σ α_i (T(x_i) − x_i)|, Σ α_i = 1 (Tikhonov-regularized).
  Safeguard: when the residual |T(x_k) − x_k| grows over the previous one, the history is dropped
  and the plain step x_{k+1} = T(x_k) is taken.

These iterate with a carry (``init_carry``, ``advance``, ``current``); the update's last step is the
plain T, so the readout point is the same kind of point as without them. In the consensus layout
the affine combinations act on its stored representation (edge means and operand-shaped slots):
exact as a representation of the copies-layout iterate only for plain steps, so there these options
are heuristics whose worth is what the benchmark measures.
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

    def __init__(self, layout: Layout, name: str, *, relaxation: float = 0.5, beta: float = 1.0,
                 omega: float = 1.0, inertia: float = 0.0, anderson: int = 0, anderson_reg: float = 1e-6):
        check_acceleration(name, omega, inertia, anderson)
        self.omega, self.inertia, self.anderson = float(omega), float(inertia), int(anderson)
        self.anderson_reg = float(anderson_reg)
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

    def _sweep(self, x, ctx, omega=None):
        """AP (sets A, B) or CP (the layers) with every P_S replaced by x + ω (P_S x − x); ω None: plain
        projections. ω may be traced (1.0 then gives the plain sweep exactly)."""
        keys = self.layout.two_sets if self.name == "ap" else self.layout.layer_sets
        for key in keys:
            px = self.P(x, key, ctx)
            x = px if omega is None else combine((1.0 - omega, x), (omega, px))
        return x

    # two-set methods
    def _ap(self, x, ctx):
        return self._sweep(x, ctx, None if self.omega == 1.0 else self.omega)

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
        return self._sweep(x, ctx, None if self.omega == 1.0 else self.omega)

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

    def plain_step(self, x, ctx):
        """T without over-relaxation: the update's last step, so the readout point is projected."""
        return self.step(x, ctx) if self.omega == 1.0 else self._sweep(x, ctx, None)

    # -- iterating with acceleration ---------------------------------------------------------
    def init_carry(self, x):
        """What the accelerated iteration carries from step to step, starting at x."""
        import jax
        import jax.numpy as jnp
        if self.anderson:  # histories leaf by leaf (no flattening copies), m+1 rows each
            m1 = self.anderson + 1
            zeros = jax.tree_util.tree_map(lambda a: jnp.zeros((m1,) + a.shape, a.dtype), x)
            dtype = jax.tree_util.tree_leaves(x)[0].dtype
            return {"x": x, "G": zeros, "F": zeros, "gram": jnp.zeros((m1, m1), dtype),
                    "valid": jnp.zeros(m1, bool), "i": jnp.asarray(0), "r": jnp.asarray(jnp.inf, dtype)}
        if self.inertia:
            return {"x": x, "prev": x}
        return {"x": x}

    @staticmethod
    def current(carry):
        return carry["x"]

    def advance(self, carry, ctx, last=None):
        """(next carry, (y, T(y))): one evaluation of T at the point y the method picks. ``last``
        (a traced bool, or None: never) makes this step the plain one: no over-relaxation, no
        extrapolation, and the next iterate is T(y), so a loop can end on a projected point."""
        import jax.numpy as jnp

        x = carry["x"]
        if self.anderson:
            return self._anderson(carry, ctx, last)
        if self.inertia:
            beta = self.inertia if last is None else jnp.where(last, 0.0, self.inertia)
            y = combine((1.0 + beta, x), (-beta, carry["prev"]))
            tx = self.step(y, ctx)
            return {"x": tx, "prev": x}, (y, tx)
        if self.omega != 1.0 and last is not None:
            tx = self._sweep(x, ctx, jnp.where(last, 1.0, self.omega))
        else:
            tx = self.step(x, ctx)
        return {"x": tx}, (x, tx)

    def _anderson(self, carry, ctx, last=None):
        import jax
        import jax.numpy as jnp

        tree = jax.tree_util
        x = carry["x"]
        tx = self.step(x, ctx)
        f = combine((1.0, tx), (-1.0, x))
        r = sum(jnp.vdot(a, a) for a in tree.tree_leaves(f))
        grew = r > carry["r"]  # the safeguard: the last (accelerated) point made the residual grow
        i = carry["i"]
        hot = jnp.arange(carry["valid"].size) == i
        valid = jnp.where(grew, hot, carry["valid"] | hot)
        G = tree.tree_map(lambda h, a: h.at[i].set(a), carry["G"], tx)
        F = tree.tree_map(lambda h, a: h.at[i].set(a), carry["F"], f)
        # only row/column i of the Gram matrix F·Fᵀ is new: m+1 dot products per step, not (m+1)²
        row = sum(jnp.tensordot(h, a, axes=(tuple(range(1, h.ndim)), tuple(range(a.ndim))))
                  for h, a in zip(tree.tree_leaves(F), tree.tree_leaves(f)))
        gram = carry["gram"].at[i, :].set(row).at[:, i].set(row)
        alpha = anderson_weights(gram, valid, self.anderson_reg)
        # plain step when the residual grew, or at a fixed point / singular system (r = 0, NaN weights)
        plain = grew | (r <= 0) | ~jnp.all(jnp.isfinite(alpha))
        if last is not None:
            plain = plain | last
        nxt = tree.tree_map(lambda h, a: jnp.where(plain, a, jnp.tensordot(alpha.astype(h.dtype), h, 1)), G, tx)
        new = {"x": nxt, "G": G, "F": F, "gram": gram, "valid": valid, "i": (i + 1) % valid.size, "r": r}
        return new, (x, tx)


def anderson_weights(gram, valid, reg: float):
    """α minimizing αᵀ·gram·α + reg·scale·|α|² with Σ α_i = 1 over the valid rows (0 elsewhere), where
    gram[i, j] = F_i·F_j for the residuals F_i and scale is the mean of the valid F_i·F_i.
    Non-finite when the system is singular (all F_i = 0)."""
    import jax.numpy as jnp

    mask = valid.astype(gram.dtype)
    M = gram * mask[:, None] * mask[None, :]
    scale = jnp.trace(M) / jnp.maximum(mask.sum(), 1.0)
    M = M / jnp.where(scale > 0, scale, 1.0)               # unit diagonal on average: reg is relative
    M = M + jnp.diag(reg * mask + (1.0 - mask))            # invalid rows: identity, right side 0
    w = jnp.linalg.solve(M, mask)
    return w / jnp.where(jnp.abs(w.sum()) > 0, w.sum(), 1.0)


def check_acceleration(name: str, omega: float, inertia: float, anderson: int) -> None:
    """Raise ProjcError for acceleration options outside their range or solver."""
    if not 0.0 < omega < 2.0:
        raise ProjcError(f"omega (over-relaxation) must lie in (0, 2), got {omega}")
    if omega != 1.0 and name not in ("ap", "cp"):
        raise ProjcError(f"omega (over-relaxed projections) applies to ap and cp, not {name}; "
                         f"dr has its own relaxation")
    if not 0.0 <= inertia < 1.0:
        raise ProjcError(f"inertia must lie in [0, 1), got {inertia}")
    if not isinstance(anderson, int) or isinstance(anderson, bool) or anderson < 0:
        raise ProjcError(f"anderson must be a memory size >= 0 (0: off), got {anderson!r}")
    if inertia and anderson:
        raise ProjcError("choose one of inertia and anderson, not both")
