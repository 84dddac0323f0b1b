"""Projection algorithms on a state layout, and the iterations that accelerate them.

A state layout (``state_layout.Layout``) provides ``project(x, key, ctx)`` for the set keys in
``layout.two_sets`` (``"A"``, ``"B"``; A holds the loss) and ``layout.layer_sets`` (the schedule's
layers, from the loss backwards), over a state ``x`` that is a pytree. With R_S = 2 P_S - I, one
step T of each algorithm (``ALGORITHMS``, the one place to add one):

- ``ap``  alternating projections     x <- P_B(P_A(x))
- ``dr``  Douglas-Rachford            x <- (1-λ) x + λ R_B R_A x           (relaxation λ, default 0.5)
- ``ar``  alternating reflections     x <- R_B R_A x
- ``dm``  difference map              x <- x + β [P_A(f_B(x)) - P_B(f_A(x))],
          f_A = (1 - 1/β) P_A + x/β,  f_B = (1 + 1/β) P_B - x/β           (β default 1)
- ``cp``  cyclic projections          x <- P_{L_n} ... P_{L_1} P_{L_0} x   (layers from the loss)
- ``cdr`` cyclic Douglas-Rachford     x <- T_{n,0} ... T_{1,2} T_{0,1} x, T_{i,j} = ½(I + R_j R_i)

``Solver.shadow(x)`` is the point whose parameters are read out after the last step: x itself for
the projection methods (their iterates are feasible for the last set), P_A(x) for the reflection
methods (the DR "shadow" sequence, which is what converges).

Accelerations are wrappers (off by default; measured in docs/time-to-accuracy.md):

- ``over_relaxed(project, ω)`` (AP, CP): every P_S replaced by x + ω (P_S x − x), ω in (0, 2).
- ``inertial(step, β)``, β in [0, 1): y_k = x_k + β (x_k − x_{k−1}), x_{k+1} = T(y_k).
- ``anderson(step, m)``: Anderson acceleration (type II) over the last m+1 pairs (T(x_i), T(x_i) − x_i):
  x_{k+1} = Σ α_i T(x_i) with α minimizing |Σ α_i (T(x_i) − x_i)|, Σ α_i = 1 (Tikhonov-regularized).
  Safeguard: when the residual |T(x_k) − x_k| grows over the previous one, the history is dropped
  and the plain step x_{k+1} = T(x_k) is taken.

An ``Iteration`` (``init``, ``advance``, ``current``) carries what the loop needs from step to step;
``advance(carry, ctx, last)`` with ``last`` true takes the plain step T (no over-relaxation, no
extrapolation), so an update can end on a projected point whatever ran before. In the consensus
layout the affine combinations act on its stored representation (edge means and operand-shaped
slots): exact as a representation of the copies-layout iterate only for plain steps, so there these
options are heuristics whose worth is what the benchmark measures.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from projc.errors import ProjcError

if TYPE_CHECKING:
    from .state_layout import Layout

Project = Callable[[Any, Any, Any], Any]   # (state, set key, ctx) -> state
Step = Callable[..., Any]                 # (state, ctx, last=None) -> state


def combine(*terms):
    """Σ coef·state over (coef, state) pairs, leaf by leaf (the affine steps of DR, AR, DM, CDR)."""
    import jax  # kept out of module import: the config reads the algorithm names without JAX

    def comb(*leaves):
        out = 0.0
        for (c, _), leaf in zip(terms, leaves):
            out = out + c * leaf
        return out
    return jax.tree_util.tree_map(comb, *[t for _, t in terms])


def reflect(P: Project) -> Project:
    return lambda x, key, ctx: combine((2.0, P(x, key, ctx)), (-1.0, x))


def over_relaxed(P: Project, omega) -> Project:
    """x + ω (P x − x); ω may be traced."""
    return lambda x, key, ctx: combine((1.0 - omega, x), (omega, P(x, key, ctx)))


# -- one step T of each algorithm: (P, layout, solver options) -> (x, ctx) -> x ----------------------

def _sweep(P, keys):
    def step(x, ctx):
        for key in keys:
            x = P(x, key, ctx)
        return x
    return step


def _ap(P, layout, s):
    return _sweep(P, layout.two_sets)


def _cp(P, layout, s):
    return _sweep(P, layout.layer_sets)


def _dr(P, layout, s):
    R, lam = reflect(P), s.relaxation
    return lambda x, ctx: combine((1.0 - lam, x), (lam, R(R(x, "A", ctx), "B", ctx)))


def _ar(P, layout, s):
    R = reflect(P)
    return lambda x, ctx: R(R(x, "A", ctx), "B", ctx)


def _dm(P, layout, s):
    b = s.beta

    def step(x, ctx):
        pa, pb = P(x, "A", ctx), P(x, "B", ctx)
        if b == 1.0:
            return combine((1.0, x), (1.0, P(combine((2.0, pb), (-1.0, x)), "A", ctx)), (-1.0, pb))
        fa = combine((1.0 - 1.0 / b, pa), (1.0 / b, x))
        fb = combine((1.0 + 1.0 / b, pb), (-1.0 / b, x))
        return combine((1.0, x), (b, P(fb, "A", ctx)), (-b, P(fa, "B", ctx)))
    return step


def _cdr(P, layout, s):
    keys, R = layout.layer_sets, reflect(P)
    n = len(keys)

    def step(x, ctx):
        if n < 2:
            return P(x, keys[0], ctx)
        for i in range(n):
            ki, kj = keys[i], keys[(i + 1) % n]
            x = combine((0.5, x), (0.5, R(R(x, ki, ctx), kj, ctx)))
        return x
    return step


class Algorithm(NamedTuple):
    step: Callable            # (P, layout, solver) -> (x, ctx) -> x
    two_set: bool             # needs the bipartite split (sets A and B)
    reflective: bool          # reads out the shadow P_A(x)
    relaxable: bool           # takes over-relaxed projections (omega)


ALGORITHMS: dict[str, Algorithm] = {
    "ap": Algorithm(_ap, True, False, True),
    "dr": Algorithm(_dr, True, True, False),
    "ar": Algorithm(_ar, True, True, False),
    "dm": Algorithm(_dm, True, True, False),
    "cp": Algorithm(_cp, False, False, True),
    "cdr": Algorithm(_cdr, False, False, False),
}
PROJECTION_SOLVERS = tuple(ALGORITHMS)


class Solver:
    """One iteration ``step(x, ctx, last=None)`` of algorithm ``name`` on ``layout``, and the readout
    point ``shadow(x, ctx)``. Holds only what the graph and the options fix."""

    def __init__(self, layout: Layout, name: str, *, relaxation: float = 0.5, beta: float = 1.0,
                 omega: float = 1.0):
        if name not in ALGORITHMS:
            raise ProjcError(f"unknown solver {name!r}; choose one of {', '.join(ALGORITHMS)}")
        if not 0.0 < relaxation <= 1.0:
            raise ProjcError(f"relaxation must lie in (0, 1], got {relaxation}")
        if beta == 0:
            raise ProjcError("difference-map beta must be non-zero")
        if not 0.0 < omega < 2.0:
            raise ProjcError(f"omega (over-relaxation) must lie in (0, 2), got {omega}")
        self.algorithm = ALGORITHMS[name]
        if omega != 1.0 and not self.algorithm.relaxable:
            raise ProjcError(f"omega (over-relaxed projections) applies to "
                             f"{' and '.join(k for k, a in ALGORITHMS.items() if a.relaxable)}, not "
                             f"{name}; dr has its own relaxation")
        self.layout, self.name = layout, name
        self.relaxation, self.beta, self.omega = float(relaxation), float(beta), float(omega)
        if self.algorithm.two_set:
            layout.check_two_set()
        # the set projected last before the readout: how the state the diagnostics read was left
        self.last_set = {"ap": "B", "dr": "A", "ar": "A", "dm": "A"}.get(
            name, layout.layer_sets[-1] if layout.layer_sets else None)

    def step(self, x, ctx, last=None):
        """T(x); over-relaxed unless ``last`` (a traced bool, or True) asks for the plain step."""
        P: Project = self.layout.project
        if self.omega != 1.0 and last is not True:
            import jax.numpy as jnp
            P = over_relaxed(P, self.omega if last is None else jnp.where(last, 1.0, self.omega))
        return self.algorithm.step(P, self.layout, self)(x, ctx)

    def shadow(self, x, ctx):
        if self.algorithm.reflective:
            return self.layout.project(x, "A", ctx)
        if self.name == "cdr":
            return _cp(self.layout.project, self.layout, self)(x, ctx)
        return x


# -- iterations: how the fixed-point loop advances ---------------------------------------------------

class Iteration(NamedTuple):
    """``init(x) -> carry``; ``advance(carry, ctx, last=None) -> (carry, (y, T(y)))`` evaluates T once
    at the point y the iteration picks; ``current(carry) -> x``."""

    init: Callable
    advance: Callable
    current: Callable


def _current(carry):
    return carry["x"]


def plain(step: Step) -> Iteration:
    def advance(carry, ctx, last=None):
        x = carry["x"]
        tx = step(x, ctx, last)
        return {"x": tx}, (x, tx)
    return Iteration(lambda x: {"x": x}, advance, _current)


def inertial(step: Step, beta: float) -> Iteration:
    """y = x + β (x − x_prev), then T(y); β drops to 0 on the last step."""
    def advance(carry, ctx, last=None):
        import jax.numpy as jnp
        x = carry["x"]
        b = beta if last is None else jnp.where(last, 0.0, beta)
        y = combine((1.0 + b, x), (-b, carry["prev"]))
        tx = step(y, ctx, last)
        return {"x": tx, "prev": x}, (y, tx)
    return Iteration(lambda x: {"x": x, "prev": x}, advance, _current)


def anderson(step: Step, memory: int, reg: float = 1e-6) -> Iteration:
    """Anderson acceleration with the growth safeguard (module docstring)."""
    m1 = memory + 1

    def init(x):
        import jax
        import jax.numpy as jnp
        zeros = jax.tree_util.tree_map(lambda a: jnp.zeros((m1,) + a.shape, a.dtype), x)  # leaf by leaf
        dtype = jax.tree_util.tree_leaves(x)[0].dtype
        return {"x": x, "G": zeros, "F": zeros, "gram": jnp.zeros((m1, m1), dtype),
                "valid": jnp.zeros(m1, bool), "i": jnp.asarray(0), "r": jnp.asarray(jnp.inf, dtype)}

    def advance(carry, ctx, last=None):
        import jax
        import jax.numpy as jnp
        tree = jax.tree_util
        x = carry["x"]
        tx = step(x, ctx, last)
        f = combine((1.0, tx), (-1.0, x))
        r = sum(jnp.vdot(a, a) for a in tree.tree_leaves(f))
        grew = r > carry["r"]  # the safeguard: the last (accelerated) point made the residual grow
        i = carry["i"]
        hot = jnp.arange(m1) == i
        valid = jnp.where(grew, hot, carry["valid"] | hot)
        G = tree.tree_map(lambda h, a: h.at[i].set(a), carry["G"], tx)
        F = tree.tree_map(lambda h, a: h.at[i].set(a), carry["F"], f)
        # only row/column i of the Gram matrix F·Fᵀ is new: m+1 dot products per step, not (m+1)²
        row = sum(jnp.tensordot(h, a, axes=(tuple(range(1, h.ndim)), tuple(range(a.ndim))))
                  for h, a in zip(tree.tree_leaves(F), tree.tree_leaves(f)))
        gram = carry["gram"].at[i, :].set(row).at[:, i].set(row)
        alpha = anderson_weights(gram, valid, reg)
        use_plain = _take_plain(grew, r, alpha, last)
        nxt = tree.tree_map(lambda h, a: jnp.where(use_plain, a, jnp.tensordot(alpha.astype(h.dtype), h, 1)),
                            G, tx)
        new = {"x": nxt, "G": G, "F": F, "gram": gram, "valid": valid, "i": (i + 1) % m1, "r": r}
        return new, (x, tx)
    return Iteration(init, advance, _current)


def anderson1(step: Step, reg: float = 1e-6) -> Iteration:
    """``anderson(step, 1)`` without the history arrays: the one earlier pair is carried as it is
    (T(x), its residual, whether it is valid), so a step makes one residual pass, one fused pass of
    two dot products and one combination, where the ring buffers cost two writes and two reads of
    the stacked histories (2x a plain CP step on mlp_mnist). Same weights, same safeguard."""
    def init(x):
        import jax
        import jax.numpy as jnp
        dtype = _leaves(x)[0].dtype
        zeros = jax.tree_util.tree_map(jnp.zeros_like, x)
        return {"x": x, "g": x, "f": zeros, "valid": jnp.asarray(False),
                "r": jnp.asarray(jnp.inf, dtype)}

    def advance(carry, ctx, last=None):
        import jax
        import jax.numpy as jnp
        x = carry["x"]
        tx = step(x, ctx, last)
        f = combine((1.0, tx), (-1.0, x))
        r = sum(jnp.vdot(a, a) for a in _leaves(f))
        c = sum(jnp.vdot(a, b) for a, b in zip(_leaves(f), _leaves(carry["f"])))
        grew = r > carry["r"]
        valid = jnp.stack([jnp.asarray(True), carry["valid"] & ~grew])
        gram = jnp.stack([jnp.stack([r, c]), jnp.stack([c, carry["r"]])])
        alpha = anderson_weights(gram, valid, reg)
        use_plain = _take_plain(grew, r, alpha, last)
        nxt = jax.tree_util.tree_map(lambda a, g: jnp.where(use_plain, a, alpha[0] * a + alpha[1] * g),
                                     tx, carry["g"])
        return {"x": nxt, "g": tx, "f": f, "valid": jnp.asarray(True), "r": r}, (x, tx)
    return Iteration(init, advance, _current)


def _take_plain(grew, r, alpha, last):
    """Anderson's fallback to the plain step: the residual grew (the safeguard), a fixed point or a
    singular system (r = 0, non-finite weights), or the update's last step."""
    import jax.numpy as jnp
    use_plain = grew | (r <= 0) | ~jnp.all(jnp.isfinite(alpha))
    return use_plain if last is None else use_plain | last


def _leaves(tree):
    import jax
    return jax.tree_util.tree_leaves(tree)


def make_iteration(solver: Solver, *, inertia: float = 0.0, anderson_memory: int = 0) -> Iteration:
    """The solver's step wrapped by the chosen acceleration (at most one of inertia, Anderson)."""
    check_acceleration(solver.name, solver.omega, inertia, anderson_memory)
    if anderson_memory == 1:
        return anderson1(solver.step)
    if anderson_memory:
        return anderson(solver.step, anderson_memory)
    if inertia:
        return inertial(solver.step, inertia)
    return plain(solver.step)


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
    if omega != 1.0 and not ALGORITHMS[name].relaxable:
        raise ProjcError(f"omega (over-relaxed projections) applies to ap and cp, not {name}; "
                         f"dr has its own relaxation")
    if not 0.0 <= inertia < 1.0:
        raise ProjcError(f"inertia must lie in [0, 1), got {inertia}")
    if not isinstance(anderson, int) or isinstance(anderson, bool) or anderson < 0:
        raise ProjcError(f"anderson must be a memory size >= 0 (0: off), got {anderson!r}")
    if inertia and anderson:
        raise ProjcError("choose one of inertia and anderson, not both")
