"""Emit the projection update: the ``Method`` of a projection solver on a state layout.

``projection_method(layout, solver, iteration, steps)`` is the pure pair ``(init, update)`` of
``methods.Method``: ``update(params, state, batch, progress)`` builds the solver state by a forward
pass with the current parameters, runs up to ``steps`` iterations and reads the parameters out (the
projection solvers carry no state from one update to the next: ``init`` returns ``()``). The
iterations run in one ``lax.scan`` (the step is traced and compiled once); with ``tol`` inside
``lax.while_loop``, which stops as soon as the fixed-point residual (below) of an iteration falls to
``tol`` or under. The last iteration is always the solver's plain step, so the readout point is a
projected one whatever acceleration ran before.

``stats``:

- ``residual``: mean squared change of the state in the last step (the fixed-point residual),
- ``violation``: mean squared mismatch between every slot and the forward value of what it copies,
  at the readout point (0 when every constraint holds),
- ``steps``: the solver steps the update ran (``steps`` unless ``tol`` stopped it earlier).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .methods import Method
from .solvers import Iteration, Solver, plain
from .state_layout import Layout


def run_steps(layout: Layout, solver: Solver, iteration: Iteration, steps: int, x0, ctx,
              tol: float | None = None):
    """(final state, (num, den) of its last step's squared change, steps run): ``steps`` iterations,
    or fewer when ``tol`` stops them. The last one is the solver's plain step, so the final state is a
    projected point."""
    carry = iteration.init(x0)
    den = layout.sq_dist(x0, x0, ctx)[1]  # a static count (the unused sum is dropped by XLA)

    def sq(y, tx):
        return jnp.asarray(layout.sq_dist(tx, y, ctx)[0], jnp.float32)

    if tol is None:
        # one loop for all the steps (the step is traced and compiled once): the residual is
        # computed on the last step only
        def body(state, k):
            c, _ = state
            last = k == steps - 1
            c, (y, tx) = iteration.advance(c, ctx, last)
            return (c, jax.lax.cond(last, sq, lambda *_: jnp.zeros((), jnp.float32), y, tx)), None

        (carry, num), _ = jax.lax.scan(body, (carry, jnp.zeros((), jnp.float32)), jnp.arange(steps))
        return iteration.current(carry), (num, den), jnp.asarray(steps)

    def cond(s):
        k, _, r = s
        return (k < steps - 1) & (r > tol)

    def loop(s):
        k, c, _ = s
        c, (y, tx) = iteration.advance(c, ctx)
        return k + 1, c, sq(y, tx) / max(den, 1)

    k, carry, _ = jax.lax.while_loop(cond, loop, (jnp.asarray(0), carry, jnp.asarray(jnp.inf, jnp.float32)))
    x_prev = iteration.current(carry)
    x = solver.step(x_prev, ctx, True)
    return x, (sq(x_prev, x), den), k + 1


def projection_method(layout: Layout, solver: Solver, steps: int, *, iteration: Iteration | None = None,
                      tol: float | None = None) -> Method:
    """The projection update as a ``Method`` (see the module docstring)."""
    if steps < 1:
        raise ValueError(f"steps_per_update must be >= 1, got {steps}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0 (or None), got {tol}")
    iteration = iteration or plain(solver.step)

    def update(params, state, batch, progress=0.0):
        ctx = layout.make_ctx(params, batch)
        x0 = layout.init_state(ctx)
        x, (num, den), used = run_steps(layout, solver, iteration, steps, x0, ctx, tol)
        point = solver.shadow(x, ctx)
        stats = {"residual": num / max(den, 1), "violation": layout.violation(point, ctx, solver.last_set),
                 "steps": used}
        return layout.readout(point, ctx), state, stats

    return Method(lambda params: (), update)


def make_stepper(layout: Layout, solver: Solver):
    """(init, step, violation, readout) as separate jitted functions, for tests and diagnostics."""
    init = jax.jit(lambda params, inputs: layout.init_state(layout.make_ctx(params, inputs)))
    step = jax.jit(lambda x, params, inputs: solver.step(x, layout.make_ctx(params, inputs)))
    viol = jax.jit(lambda x, params, inputs: layout.violation(x, layout.make_ctx(params, inputs),
                                                              solver.last_set))
    read = jax.jit(lambda x, params, inputs: layout.readout(x, layout.make_ctx(params, inputs)))
    return init, step, viol, read


__all__ = ["make_stepper", "projection_method", "run_steps"]
