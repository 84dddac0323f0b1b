"""Emit the jitted update of a projection trainer.

``make_update(layout, solver, steps)`` returns ``update(params, inputs, scale=1) -> (params, stats)``, jitted
once per (model, batch shape): build the state by a forward pass with the current parameters, run
up to ``steps`` solver iterations, read the parameters out. The iterations run in one ``lax.scan``
(the step is traced and compiled once); with ``tol`` inside ``lax.while_loop``, which stops as soon
as the fixed-point residual (below) of an iteration falls to ``tol`` or under. The last iteration is
always the solver's plain step (``Solver.advance`` with ``last``, or ``Solver.plain_step``), so the
readout point is a projected one whatever acceleration ran before.

``update_scale`` α stretches the update on the parameters: p ← p + α (readout − p) (outer
over-relaxation of the update map; 1 is the plain readout). ``weight_decay`` δ then shrinks every
parameter, p ← p + α (readout − p) − δ p (decoupled weight decay: the pull of the loss never
vanishes, so without it a readout layer can grow by a constant amount per update). ``scale`` (a
traced scalar: a schedule changes it without a recompile) multiplies both, like a learning-rate
schedule: p ← p + scale (α (readout − p) − δ p).

``stats``:

- ``residual``: mean squared change of the state in the last step (the fixed-point residual),
- ``violation``: mean squared mismatch between every slot and the forward value of what it copies,
  at the readout point (0 when every constraint holds),
- ``steps``: the solver steps the update ran (``steps`` unless ``tol`` stopped it earlier).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .solvers import Solver
from .state_layout import Layout


def run_steps(layout: Layout, solver: Solver, steps: int, x0, ctx, tol: float | None = None):
    """(final state, (num, den) of its last step's squared change, steps run): ``steps`` iterations,
    or fewer when ``tol`` stops them. The last one is the solver's plain step (``Solver.advance``
    with ``last``; after the while loop, ``plain_step``), so the final state is a projected point."""
    carry = solver.init_carry(x0)
    den = layout.sq_dist(x0, x0, ctx)[1]  # a static count (the unused sum is dropped by XLA)

    def sq(y, tx):
        return jnp.asarray(layout.sq_dist(tx, y, ctx)[0], jnp.float32)

    if tol is None:
        # one loop for all the steps (the step is traced and compiled once): the residual is
        # computed on the last step only
        def body(state, k):
            c, _ = state
            last = k == steps - 1
            c, (y, tx) = solver.advance(c, ctx, last)
            return (c, jax.lax.cond(last, sq, lambda *_: jnp.zeros((), jnp.float32), y, tx)), None

        (carry, num), _ = jax.lax.scan(body, (carry, jnp.zeros((), jnp.float32)), jnp.arange(steps))
        return solver.current(carry), (num, den), jnp.asarray(steps)

    def cond(s):
        k, _, r = s
        return (k < steps - 1) & (r > tol)

    def loop(s):
        k, c, _ = s
        c, (y, tx) = solver.advance(c, ctx)
        return k + 1, c, sq(y, tx) / max(den, 1)

    k, carry, _ = jax.lax.while_loop(cond, loop, (jnp.asarray(0), carry, jnp.asarray(jnp.inf, jnp.float32)))
    x_prev = solver.current(carry)
    x = solver.plain_step(x_prev, ctx)
    return x, (sq(x_prev, x), den), k + 1


def _step(p, readout, scale, update_scale: float, weight_decay: float):
    """p + scale (α (readout − p) − δ p); exactly the readout for the plain step (scale 1, α 1, δ 0)."""
    moved = (p + scale * (update_scale * (readout - p) - weight_decay * p)).astype(readout.dtype)
    if update_scale == 1.0 and not weight_decay:
        return jnp.where(scale == 1, readout, moved)
    return moved


def make_update(layout: Layout, solver: Solver, steps: int, *, tol: float | None = None,
                update_scale: float = 1.0, weight_decay: float = 0.0,
                **jit_options) -> Callable[[dict, dict], tuple[dict, dict]]:
    """``jit_options`` go to ``jax.jit`` (e.g. in/out shardings from ``projc.train.distributed``)."""
    if steps < 1:
        raise ValueError(f"steps_per_update must be >= 1, got {steps}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be > 0 (or None), got {tol}")
    if not update_scale > 0:
        raise ValueError(f"update_scale must be > 0, got {update_scale}")
    if not 0 <= weight_decay < 1:
        raise ValueError(f"weight_decay must be in [0, 1), got {weight_decay}")

    def update(params: dict[str, Any], inputs: dict[str, Any], scale=1.0):
        ctx = layout.make_ctx(params, inputs)
        x0 = layout.init_state(ctx)
        x, (num, den), used = run_steps(layout, solver, steps, x0, ctx, tol)
        point = solver.shadow(x, ctx)
        new_params = layout.readout(point, ctx)
        new_params = {k: _step(ctx.params[k], v, scale, update_scale, weight_decay) for k, v in new_params.items()}
        stats = {"residual": num / max(den, 1), "violation": layout.violation(point, ctx, solver.last_set),
                 "steps": used}
        return new_params, stats

    return jax.jit(update, **jit_options)


def make_stepper(layout: Layout, solver: Solver):
    """(init, step, readout) as separate jitted functions, for tests and diagnostics."""
    init = jax.jit(lambda params, inputs: layout.init_state(layout.make_ctx(params, inputs)))
    step = jax.jit(lambda x, params, inputs: solver.step(x, layout.make_ctx(params, inputs)))
    viol = jax.jit(lambda x, params, inputs: layout.violation(x, layout.make_ctx(params, inputs),
                                                              solver.last_set))
    read = jax.jit(lambda x, params, inputs: layout.readout(x, layout.make_ctx(params, inputs)))
    return init, step, viol, read


__all__ = ["make_update", "make_stepper", "run_steps"]
