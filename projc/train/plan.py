"""The memory plan of a training run: the bytes of one update, known before XLA compiles it.

``plan_update(trainer, batch)`` traces only the shapes (``jax.eval_shape``: no XLA compile, no
allocation) of the solver state the layout keeps (``StateLayout.init_state``: the copies layout's
materialized and factored slots, the consensus layout's edge means) and estimates

    bytes ≈ STATE_FACTOR[solver] · state + SEARCH_ARRAYS · 4 B · Σ (grid points · elements)
            + the parameters, the batch and what the method carries (Adam's moments)

STATE_FACTOR counts the states an update holds at once: the iterate, the projected and reflected
points (DR, AR, DM: x, R_A x, R_B R_A x; CDR one more per layer pair), plus Anderson's history and
inertia's previous point. The second term is the activation projections that search a candidate
grid per element (``proj_smooth``: tanh, sigmoid, ...): XLA keeps SEARCH_ARRAYS arrays of the grid's
size live for every such family of a set at once. The grid's size is read from the jaxpr of the
family's projection traced on one element (``search_points``), so it follows ``proj_smooth`` as it
changes; a projection of fewer than MIN_SEARCH_POINTS candidates (a staircase's 7, hardswish's closed
form) is covered by STATE_FACTOR. The constants were fitted to XLA's own numbers
(``lower_update(x, y).compile().memory_analysis()``: arguments + temporaries + outputs − aliased) on
the bundled models (``benchmarks/memory_plan.py``); tests/test_memory_plan.py checks the estimate
stays within ``PLAN_FACTOR`` of them. For Adam, which keeps no slots, the estimate is the forward's
activations (kept for the backward) 1.5 times over.

``available_memory()`` is what this process may still allocate: on an accelerator its free memory,
on the CPU the least of the machine's available memory (``MemAvailable``), the cgroup's limit less
its usage (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) and ``RLIMIT_AS``/``RLIMIT_DATA`` less
what the process maps already (with the XLA runtime started). ``PROJC_MEMORY_LIMIT`` (bytes, or
with a K/M/G/T suffix) overrides it. ``check_memory`` raises ``MemoryPlanError`` with the estimate
and what would fit (a smaller batch, or ``--solver cp`` in the consensus layout). A training
graph of more than ``limits.MAX_TRAIN_OPS`` constraint ops is refused there too (XLA would compile
its update for many minutes).
"""
from __future__ import annotations

import functools
import math
import os
import re
from typing import NamedTuple

import numpy as np

from projc.errors import ProjcError

# states held at once during one step, per solver (fitted: see the module docstring)
STATE_FACTOR = {"ap": 3.5, "cp": 3.5, "dr": 3.5, "ar": 3.5, "dm": 3.7, "cdr": 4.9}
SEARCH_ARRAYS = 4.5     # float arrays of a candidate grid's size XLA keeps per element (fitted)
MIN_SEARCH_POINTS = 32  # a projection holding fewer candidates per element counts in the state factor
DEFAULT_SEARCH_POINTS = 100
ADAM_ACTIVATIONS = 1.5  # forward activations kept for the backward (fitted, as above)
PLAN_FACTOR = 1.5       # the estimate is within this factor of XLA's number (tested)


def anderson_states(memory: int) -> float:
    """States Anderson acceleration with ``memory`` adds: its history of iterates and residuals
    plus the mixing's temporaries. Fitted 2026-12-07 to XLA on gap_digits, mlp_digits and
    cnn2_digits, CP and DR, memory 1-3 (XLA / estimate 0.97-1.01): 6 per (memory + 1), less one.
    Memory 1 has its own path (``solvers.anderson1``: T(x) and the residual, no ring buffers): 3.5,
    fitted 2026-12-07 on mlp_digits (XLA adds 3.0 states under CP, 3.9 under DR)."""
    if memory == 1:
        return 3.5
    return 6.0 * (memory + 1) - 1.0 if memory else 0.0


class MemoryPlanError(ProjcError):
    """One update needs more memory than this process can allocate."""


class MemoryPlan(NamedTuple):
    batch: int
    solver: str
    layout: str              # "copies", "consensus" or "-" (Adam)
    state_bytes: int         # one solver state (the slots)
    search_bytes: int        # the smooth projections' candidate grids
    fixed_bytes: int         # parameters, the batch, what the method carries
    total: int

    def describe(self) -> str:
        return (f"about {format_bytes(self.total)} (estimate: {format_bytes(self.state_bytes)} of "
                f"{self.layout} slots per state)" if self.layout != "-" else
                f"about {format_bytes(self.total)} (estimate)")


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count} B"


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if m is None:
        raise ProjcError(f"PROJC_MEMORY_LIMIT={text!r}: give a size in bytes, e.g. 4G or 4294967296")
    scale = 1024 ** "KMGT".find(m.group(2).upper()) * 1024 if m.group(2) else 1
    return int(float(m.group(1)) * scale)


# -- the estimate -------------------------------------------------------------------------------------

def _nbytes(shape, dtype) -> int:
    return int(math.prod(shape)) * np.dtype(dtype).itemsize


def _specs(trainer, batch: int):
    import jax
    import jax.numpy as jnp

    params = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in trainer.param_shapes().items()}
    xdt = jnp.int32 if trainer._input.dtype in ("i64", "i32") else jnp.float32
    per = tuple(d if d is not None else 1 for d in trainer.input_shape[1:])
    x = jax.ShapeDtypeStruct((batch, *per), xdt)
    label = trainer._label  # the compiled graph's label input: class ids, or the task's float targets
    per_label = tuple(d if isinstance(d, int) else 1 for d in label.shape[1:])
    y = jax.ShapeDtypeStruct((batch, *per_label), jnp.float32 if label.dtype.startswith("f") else jnp.int32)
    return params, {trainer.input_name: x, trainer.label_name: y}


def _layout_shapes(layout, params, inputs):
    """(state bytes, ValueShapes) of ``layout`` on these abstract params and inputs."""
    import jax

    seen = {}

    def build(p, i):
        ctx = layout.make_ctx(p, i)
        seen["shapes"] = ctx.shapes
        return layout.init_state(ctx)

    state = jax.eval_shape(build, params, inputs)
    total = sum(_nbytes(leaf.shape, leaf.dtype) for leaf in jax.tree_util.tree_leaves(state))
    return total, seen["shapes"]


def plan_update(trainer, batch: int, *, layout=None, solver: str | None = None) -> MemoryPlan:
    """The memory plan of one update of ``batch`` samples (``layout``/``solver``: another layout of
    the same compiled graph, to say what would fit)."""
    import jax

    solver = solver or trainer.config.method.solver
    layout = layout if layout is not None else trainer.layout
    params, inputs = _specs(trainer, batch)
    fixed = sum(_nbytes(s.shape, s.dtype) for s in jax.tree_util.tree_leaves((params, inputs)))
    if solver not in STATE_FACTOR:  # a gradient method: the forward's activations (the imported graph's)
        items = layout.value_shapes(params, inputs)
        acts = sum(_nbytes(shape, dtype) for v, shape, dtype in items  # the ops' outputs
                   if v.role not in ("input", "label", "param", "const"))
        fixed += 3 * sum(_nbytes(s.shape, s.dtype) for s in jax.tree_util.tree_leaves(params))
        total = int(ADAM_ACTIVATIONS * acts + fixed)
        return MemoryPlan(batch, solver, "-", 0, 0, fixed, total)
    state, shapes = _layout_shapes(layout, params, inputs)
    search = 0
    for fam in layout.families:
        if fam.out is not None and fam.op.kind in ("sum_smooth", "sum_pwl"):
            points = search_points(fam.op.kind, _frozen(fam.op.params))
            if points >= MIN_SEARCH_POINTS:
                search += int(SEARCH_ARRAYS * 4 * points * math.prod(shapes[fam.out][0]))
    m = trainer.config.method
    factor = STATE_FACTOR[solver] + anderson_states(m.anderson) + (1 if m.inertia else 0)
    total = int(factor * state + search + fixed)
    return MemoryPlan(batch, solver, layout.name, state, search, fixed, total)


def _frozen(params: dict) -> tuple:
    return tuple(sorted((k, v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
                        for k, v in params.items()))


@functools.cache
def search_points(kind: str, params: tuple) -> int:
    """The most values one element's projection holds at once (its candidate grid), read from the
    jaxpr of the projection training runs for the family, traced on one element: it follows
    ``proj_smooth`` and ``proj_smooth_fast`` as they change. 0 for a family the backend projects
    otherwise."""
    import jax
    import jax.numpy as jnp

    from projc.backends.jax import projections as P
    from projc.backends.jax.families import activation_projection

    options = dict(params)
    if not P.activation_handles(kind, options):
        return 0
    one = jax.ShapeDtypeStruct((1,), jnp.float32)
    try:
        jaxpr = jax.make_jaxpr(activation_projection(kind, options))(one, one)
    except Exception:  # noqa: BLE001 - a params form the trace cannot take: assume a grid
        return DEFAULT_SEARCH_POINTS
    return _largest(jaxpr.jaxpr)


def _largest(jaxpr) -> int:
    best = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = getattr(getattr(var, "aval", None), "shape", None)
            if shape is not None:
                best = max(best, int(math.prod(shape)))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    best = max(best, _largest(inner))
    return best


# -- what the process can allocate ----------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _meminfo_available() -> int | None:
    text = _read("/proc/meminfo")
    m = re.search(r"^MemAvailable:\s+(\d+) kB", text or "", re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def _status_kib(key: str) -> int | None:
    m = re.search(rf"^{key}:\s+(\d+) kB", _read("/proc/self/status") or "", re.MULTILINE)
    return int(m.group(1)) * 1024 if m else None


def _cgroup_room() -> tuple[int, str] | None:
    """(limit − usage, the file) of the tightest cgroup memory limit above this process."""
    best = None
    text = _read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, rel = parts
        if hierarchy == "0":  # v2: every level up to the root may limit
            base = "/sys/fs/cgroup"
            candidates = [(f"{base}{p}/memory.max", f"{base}{p}/memory.current") for p in _ancestors(rel)]
        elif "memory" in controllers.split(","):
            base = "/sys/fs/cgroup/memory"
            candidates = [(f"{base}{p}/memory.limit_in_bytes", f"{base}{p}/memory.usage_in_bytes")
                          for p in _ancestors(rel)]
        else:
            continue
        for limit_file, usage_file in candidates:
            limit, usage = _read(limit_file), _read(usage_file)
            if not limit or not limit.isdigit() or int(limit) >= 1 << 60:
                continue
            room = int(limit) - int(usage if usage and usage.isdigit() else 0)
            if best is None or room < best[0]:
                best = (room, limit_file)
    return best


def _ancestors(rel: str) -> list[str]:
    rel = rel.rstrip("/")
    out = []
    while True:
        out.append(rel)
        if rel in ("", "/"):
            break
        rel = os.path.dirname(rel)
    return [p if p != "/" else "" for p in out]


def available_memory() -> tuple[int | None, str]:
    """(bytes this process may still allocate, where the bound comes from); None when unknown."""
    import resource

    override = os.environ.get("PROJC_MEMORY_LIMIT")
    if override:
        return parse_bytes(override), "PROJC_MEMORY_LIMIT"
    import jax

    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            room = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
            return room, f"{device.device_kind} memory"
        return None, f"{device.platform} memory"
    bounds: list[tuple[int, str]] = []
    avail = _meminfo_available()
    if avail is not None:
        bounds.append((avail, "available memory (MemAvailable)"))
    cgroup = _cgroup_room()
    if cgroup is not None:
        bounds.append((cgroup[0], f"the cgroup limit ({cgroup[1]})"))
    for name, key in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
        soft, _ = resource.getrlimit(getattr(resource, name))
        used = _status_kib(key)
        if soft != resource.RLIM_INFINITY and used is not None:
            bounds.append((soft - used, f"{name} {format_bytes(soft)}"))
    if not bounds:
        return None, "unknown"
    return min(bounds)


def _start_runtime() -> None:
    """Start XLA's CPU runtime (its thread pools map address space) so the process's size counts it."""
    import jax
    import jax.numpy as jnp

    jnp.zeros(1).block_until_ready()
    del jax


def check_graph_size(trainer) -> None:
    """Refuse a training graph of more than ``limits.max_train_ops()`` constraint ops."""
    from projc.frontend.limits import max_train_ops

    ops, limit = len(trainer.graph.ops), max_train_ops()
    if ops > limit:
        raise MemoryPlanError(f"{trainer.model_path}: the training graph has {ops} constraint ops, more than "
                              f"the {limit} projc compiles (XLA's time and memory grow faster than the op "
                              f"count: lstm_digits's 244 took 2 minutes); train a smaller model, or set "
                              f"PROJC_MAX_TRAIN_OPS to try anyway")


def check_memory(trainer, batch: int) -> MemoryPlan | None:
    """Raise MemoryPlanError when one update of ``batch`` samples (the global batch; sharded over
    ``trainer.parallel``'s devices) needs more than ``available_memory()``; returns the plan."""
    import jax

    check_graph_size(trainer)
    _start_runtime()
    room, source = available_memory()
    dp = trainer.parallel
    devices = dp.size if dp is not None else 1
    shared = jax.devices()[0].platform == "cpu"  # forced host devices share one memory
    scale = (dp.local_size if dp is not None else 1) if shared else 1
    try:
        plan = plan_update(trainer, max(batch // devices, 1))
    except ProjcError:
        raise
    except Exception:  # noqa: BLE001 - the plan is advisory: a model it cannot trace trains unplanned
        return None
    need = plan.total * scale
    if room is None or need <= room:
        return plan
    m = trainer.config.method
    what = (f"one update of {trainer.model_path} ({m.solver}, {plan.layout} layout, batch {batch}"
            + (f" over {devices} devices" if devices > 1 else "") + ")")
    raise MemoryPlanError(f"{what} needs {plan.describe() if scale == 1 else 'about ' + format_bytes(need)}, "
                          f"more than the {format_bytes(max(room, 0))} this process can use ({source}); "
                          f"{_what_fits(trainer, batch, devices, scale, room)}")


def _what_fits(trainer, batch: int, devices: int, scale: int, room: int) -> str:
    options = []
    b = batch
    while b > devices:
        b = max(b // 2, devices) // devices * devices
        plan = plan_update(trainer, max(b // devices, 1))
        if plan.total * scale <= room:
            options.append(f"--batch {b} (about {format_bytes(plan.total * scale)})")
            break
    from projc.backends.jax.layout_consensus import ConsensusLayout
    from projc.train.methods import METHODS

    projection = METHODS[trainer.config.method.solver].projection
    if projection and not isinstance(trainer.layout, ConsensusLayout):  # consensus may fit where copies do not
        try:
            consensus = ConsensusLayout(trainer.graph, solver="cp")
            plan = plan_update(trainer, max(batch // devices, 1), layout=consensus, solver="cp")
            if plan.total * scale <= room:
                options.append(f"--solver cp, which keeps one value per variable (consensus layout, about "
                               f"{format_bytes(plan.total * scale)})")
        except ProjcError:
            pass
    if not options:
        return "no smaller batch fits either: use a machine with more memory"
    return "try " + " or ".join(options)
