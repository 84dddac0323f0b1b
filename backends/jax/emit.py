"""Emit the jitted update of a projection trainer.

``make_update(layout, solver, steps)`` returns ``update(params, inputs) -> (params, stats)``, jitted
once per (model, batch shape): build the state by a forward pass with the current parameters, run
``steps`` solver iterations inside ``lax.scan``, read the parameters out. ``stats``:

- ``residual``: mean squared change of the state in the last step (the fixed-point residual),
- ``violation``: mean squared mismatch between every slot and the forward value of what it copies,
  at the readout point (0 when every constraint holds).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from .solvers import Solver
from .state_layout import Layout


def make_update(layout: Layout, solver: Solver, steps: int,
                **jit_options) -> Callable[[dict, dict], tuple[dict, dict]]:
    """``jit_options`` go to ``jax.jit`` (e.g. in/out shardings from ``projc.distributed``)."""
    if steps < 1:
        raise ValueError(f"steps_per_update must be >= 1, got {steps}")

    def update(params: dict[str, Any], inputs: dict[str, Any]):
        ctx = layout.make_ctx(params, inputs)
        x0 = layout.init_state(ctx)

        def body(x, _):
            return solver.step(x, ctx), None

        x_prev, _ = jax.lax.scan(body, x0, None, length=steps - 1) if steps > 1 else (x0, None)
        x = solver.step(x_prev, ctx)
        num, den = layout.sq_dist(x, x_prev, ctx)
        point = solver.shadow(x, ctx)
        new_params = layout.readout(point, ctx)
        stats = {"residual": num / max(den, 1), "violation": layout.violation(point, ctx, solver.last_set)}
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


__all__ = ["make_update", "make_stepper"]
