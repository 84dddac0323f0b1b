"""Update methods as pure ``(init, update)`` pairs over a state pytree, the optax way.

    method = projection_method(layout, solver, steps)          # emit.py: one projection solver
    method = gradient(forward, loss_value, optax.adam(1e-3))    # the gradient baseline
    method = scheduled(weight_decayed(scaled(method, 2.0), 5e-3), "cosine")
    state = method.init(params)
    params, state, stats = method.update(params, state, batch, progress)

``batch`` is ``{input name: x, label name: targets}``; ``progress`` in [0, 1] is how far the run is
(the schedule's clock). A method never keeps state of its own: what an update carries to the next
(Adam's moments) is in ``state``.

The wrappers act on the move d = p' − p an update proposes (p the parameters it started from), so
that composed as above an update is p ← p + s (α (p' − p) − δ p):

- ``scaled(m, α)``: d ← α d (over-relaxation of the update map; 1 is the plain readout),
- ``weight_decayed(m, δ)``: d ← d − δ p (decoupled weight decay: the pull of the loss never vanishes,
  so without it a readout layer can grow by a constant amount per update),
- ``scheduled(m, name)``: d ← s(progress) d, s one of ``SCHEDULE_FACTORS``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple


class Method(NamedTuple):
    """``init(params) -> state``; ``update(params, state, batch, progress) -> (params, state, stats)``."""

    init: Callable[[dict], Any]
    update: Callable[..., tuple[dict, Any, dict]]


def moved(method: Method, move: Callable[[Any, Any, Any], Any]) -> Method:
    """``method`` with each parameter's new value replaced by ``move(p, p', progress)``."""
    import jax

    def update(params, state, batch, progress=0.0):
        new, state, stats = method.update(params, state, batch, progress)
        out = jax.tree_util.tree_map(lambda p, q: move(p, q, progress).astype(q.dtype), params, new)
        return out, state, stats
    return Method(method.init, update)


def scaled(method: Method, alpha: float) -> Method:
    """p + α (p' − p)."""
    return moved(method, lambda p, q, _: p + alpha * (q - p))


def weight_decayed(method: Method, decay: float) -> Method:
    """p' − δ p."""
    return moved(method, lambda p, q, _: q - decay * p)


SCHEDULE_FACTORS: dict[str, Callable[[Any], Any]] = {
    "cosine": lambda t: 0.5 * (1 + _cos(math.pi * t)),
    "linear": lambda t: 1 - t,
}


def _cos(x):
    import jax.numpy as jnp
    return jnp.cos(x)


def scheduled(method: Method, schedule: str) -> Method:
    """p + s(progress) (p' − p): the first update is a full one, the last a short one."""
    import jax.numpy as jnp
    factor = SCHEDULE_FACTORS[schedule]
    return moved(method, lambda p, q, t: p + factor(jnp.clip(jnp.asarray(t, jnp.float32), 0, 1)) * (q - p))


def gradient(loss: Callable[[dict, dict], Any], optimizer) -> Method:
    """An optax ``optimizer`` on ``loss(params, batch)``: the state is the optimizer's."""
    import jax
    import optax

    def update(params, state, batch, progress=0.0):
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, {"loss": value}
    return Method(optimizer.init, update)


__all__ = ["Method", "SCHEDULE_FACTORS", "gradient", "moved", "scaled", "scheduled", "weight_decayed"]
