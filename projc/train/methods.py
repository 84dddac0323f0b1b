"""The method table: every update method ``projc train --solver`` and ``projc.compile`` offer.

One entry per method (the one place to add one): its summary, whether it is a projection solver,
and how it is built from the state layout and the config (``Method``, a pure ``(init, update)``
pair, ``projc.backends.jax.methods``). ``build_method`` then wraps the entry's method in the
update wrappers the config asks for (update scale, weight decay, schedule), so every method gets
them the same way. This module imports no JAX: the CLI reads the names to build its flags.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from projc.config import Config


@dataclass(frozen=True)
class MethodEntry:
    summary: str
    build: Callable[[Any, Config], Any]      # (state layout, config) -> Method
    projection: bool = True                   # a projection solver (needs the lowered graph)
    decay_unit: Callable[[Config], float] = lambda config: 1.0  # weight decay per update: δ × this

    def describe(self, config: Config) -> str:
        """The method's part of the run's header."""
        m = config.method
        return f"{m.steps_per_update} steps/update" if self.projection else f"lr {m.lr}"


def _projection(layout, config: Config):
    from projc.backends.jax.emit import projection_method
    from projc.backends.jax.solvers import Solver, make_iteration

    m = config.method
    solver = Solver(layout, m.solver, relaxation=m.relaxation, beta=m.beta, omega=m.omega)
    iteration = make_iteration(solver, inertia=m.inertia, anderson_memory=m.anderson)
    return projection_method(layout, solver, m.steps_per_update, iteration=iteration, tol=m.tol)


def _optax(make_optimizer: Callable[[Config], Any]):
    """A gradient method: the optimizer on the task's loss through the model's forward (``layout``:
    anything with ``graph`` and ``forward_logits``; the Trainer gives the imported graph's own
    forward, ``projc.backends.jax.forward.GraphForward``, so nothing needs lowering)."""
    def build(layout, config: Config):
        from functools import partial

        from projc.backends.jax.methods import gradient
        from projc.backends.jax.proj_losses import LOSS_VALUES

        kind = layout.graph.meta.get("loss", config.task.loss)  # attach-loss's: "auto" resolved
        value = LOSS_VALUES[kind]
        if kind == "huber":
            value = partial(value, delta=config.task.huber_delta)
        x_name, y_name = layout.graph.data_inputs[0].hint, layout.graph.labels[0].hint

        def loss(params, batch):
            return value(layout.forward_logits(params, {x_name: batch[x_name]}), batch[y_name])
        return gradient(loss, make_optimizer(config))
    return build


def _adam_optimizer(config: Config):
    import optax
    return optax.adam(config.method.lr)


def _entry(summary: str) -> MethodEntry:
    return MethodEntry(summary, _projection)


METHODS: dict[str, MethodEntry] = {
    "ap": _entry("alternating projections"),
    "dr": _entry("Douglas-Rachford (relaxation 0.5)"),
    "ar": _entry("alternating reflections (does not train: 0.2-0.45 on digits; dr is its average)"),
    "dm": _entry("difference map"),
    "cp": _entry("cyclic projections over the layers (any DAG)"),
    "cdr": _entry("cyclic Douglas-Rachford"),
    "adam": MethodEntry("Adam on the same forward and loss (the gradient baseline)", _optax(_adam_optimizer),
                        projection=False, decay_unit=lambda config: config.method.lr),
}


def build_method(layout, config: Config, update_scale: float):
    """The configured method with its update wrappers (``projc.backends.jax.methods``)."""
    from projc.backends.jax.methods import scaled, scheduled, weight_decayed

    entry = METHODS[config.method.solver]
    method = entry.build(layout, config)
    if update_scale != 1.0:
        method = scaled(method, update_scale)
    if config.update.weight_decay:
        method = weight_decayed(method, config.update.weight_decay * entry.decay_unit(config))
    if config.update.schedule != "constant":
        method = scheduled(method, config.update.schedule)
    return method
