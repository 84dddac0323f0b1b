"""Data parallelism on JAX's own machinery: a 1-D device mesh, NamedShardings at the jit boundary.

The minibatch is sharded along its first axis over the mesh axis ``batch``; parameters (and the
update's statistics) are replicated. Nothing inside the traced update changes: XLA propagates the
batch sharding through every batch-shaped state tensor (activations, slots, the copies layout's
``[B, ...]`` parameter slots), and the cross-batch means that form a parameter's target become
all-reduces it inserts itself. The result is the single-device update up to the summation order of
those means.

Several processes (one per host, or several on one host for testing) work the same way once
``jax.distributed.initialize`` has run: the mesh then spans every process's devices, each process
passes its own slice of every global minibatch to ``Trainer.update``, and the global batch array is
assembled with ``jax.make_array_from_process_local_data``.

    dp = DataParallel.from_spec(4)                    # or "all", or a jax.sharding.Mesh
    update = jax.jit(fn, **dp.jit_shardings(n_batch_args=1))
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from projc.errors import DataError, ProjcError

AXIS = "batch"


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process run (call before any other JAX work in the process).

    On CPU the cross-process all-reduces use JAX's gloo collectives.
    """
    import jax

    if num_processes < 1 or not (0 <= process_id < num_processes):
        raise ProjcError(f"process id {process_id} is not in 0..{num_processes - 1}; give each of "
                         f"the {num_processes} processes a distinct --process-id")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ProjcError(f"--coordinator {coordinator!r} must be HOST:PORT, e.g. 127.0.0.1:12345")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def process_index() -> int:
    import jax
    return jax.process_index()


def process_count() -> int:
    import jax
    return jax.process_count()


class DataParallel:
    """A 1-D mesh over the batch axis and the shardings one update needs."""

    def __init__(self, mesh):
        from jax.sharding import NamedSharding, PartitionSpec

        if len(mesh.axis_names) != 1:
            raise ProjcError(f"projc shards the batch over a 1-D mesh; this mesh has axes "
                             f"{mesh.axis_names}")
        self.mesh = mesh
        self.axis = mesh.axis_names[0]
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self.batch = NamedSharding(mesh, PartitionSpec(self.axis))
        self.size = int(mesh.devices.size)
        per_process = Counter(d.process_index for d in mesh.devices.flat)
        if process_index() not in per_process or len(set(per_process.values())) > 1:
            raise ProjcError(f"every process must own the same number of the mesh's devices (here "
                             f"{dict(per_process)}); use devices='all' in a multi-process run")
        # the mesh devices this process feeds: its slice of the batch spreads over these
        self.local_size = per_process[process_index()]

    @classmethod
    def from_spec(cls, devices) -> DataParallel | None:
        """``None`` (no sharding: today's single-device path), an int, ``"all"`` or a Mesh."""
        import jax
        from jax.sharding import Mesh

        if devices is None:
            return None
        if isinstance(devices, Mesh):
            return cls(devices)
        available = jax.devices()
        if devices == "all":
            chosen = available
        elif isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
            if devices > len(available):
                raise ProjcError(
                    f"devices={devices} but JAX sees {len(available)} "
                    f"({available[0].platform}); on CPU set XLA_FLAGS="
                    f"--xla_force_host_platform_device_count={devices} before JAX starts")
            chosen = available[:devices]
        else:
            raise ProjcError(f"devices must be a positive integer, 'all' or a jax Mesh, got "
                             f"{devices!r}")
        return cls(Mesh(np.array(chosen), (AXIS,)))

    # -- jit boundary ----------------------------------------------------------------------
    def jit_shardings(self, n_replicated_args: int = 1, n_batch_args: int = 1,
                      n_outputs: int = 2, n_replicated_after: int = 0) -> dict[str, Any]:
        """``in_shardings``/``out_shardings`` for ``jax.jit``: the leading arguments replicated
        (params, optimizer state), then batch-sharded ones (every leaf), then replicated scalars
        (a schedule's scale); outputs replicated."""
        ins = ((self.replicated,) * n_replicated_args + (self.batch,) * n_batch_args
               + (self.replicated,) * n_replicated_after)
        return {"in_shardings": ins, "out_shardings": (self.replicated,) * n_outputs}

    # -- placing host data -----------------------------------------------------------------
    def check_batch(self, n_local: int) -> None:
        """This process's slice of the batch must spread evenly over its devices."""
        if n_local % self.local_size:
            procs = process_count()
            total = n_local * procs
            raise DataError(
                f"a batch of {total} does not divide over {self.size} devices"
                + (f" ({procs} processes, {n_local} samples each)" if procs > 1 else "")
                + f"; choose a batch that is a multiple of {self.size}")

    def put_batch(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """This process's slice of each batch array -> one global array sharded over the mesh."""
        import jax

        out = {}
        for k, v in arrays.items():
            v = np.asarray(v)
            n_global = len(v) * process_count()
            out[k] = jax.make_array_from_process_local_data(self.batch, v, (n_global, *v.shape[1:]))
        return out

    def put_replicated(self, tree):
        """Every leaf replicated on every mesh device; leaves already placed stay as they are."""
        import jax

        def put(v):
            if isinstance(v, jax.Array) and v.sharding == self.replicated:
                return v
            host = np.asarray(v)
            return jax.make_array_from_callback(host.shape, self.replicated, lambda idx: host[idx])

        return jax.tree_util.tree_map(put, tree)


def to_host(tree):
    """Replicated (possibly multi-process) arrays -> numpy, for evaluation and export."""
    import jax
    return jax.tree_util.tree_map(np.asarray, tree)



# -- reading the compiled HLO: which all-reduces XLA inserted, and how many bytes they move ----
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
                "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}
_SHAPE = re.compile(r"\b(pred|[fsu]\d+|bf16)\[([\d,]*)\]")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_ALL_REDUCE = re.compile(r"=\s*(.*?)\s+all-reduce(?:-start)?\(")
_OTHER_COLLECTIVE = re.compile(r"\s(?:all-gather|reduce-scatter|collective-permute|all-to-all)(?:-start)?\(")
_WHILE = re.compile(r"\swhile\(.*?condition=%([\w.\-]+),\s*body=%([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLS = re.compile(r"\bcalls=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def _shape_bytes(text: str) -> int:
    return sum(_DTYPE_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _SHAPE.findall(text))


def all_reduce_stats(hlo_text: str) -> dict[str, int]:
    """All-reduces in a compiled (SPMD-partitioned) HLO module, per execution of its entry.

    ``ops``: all-reduce instructions in the text; ``bytes``: payload bytes per device per
    execution, counting a loop body once per known trip; ``unknown_loops``: loops with a
    data-dependent trip count (their all-reduces are counted once, so ``bytes`` is a lower bound);
    ``other_collectives``: all-gathers, reduce-scatters, permutes (none expected for data parallelism).
    """
    comps: dict[str, list[str]] = {}
    entry, current = None, None
    for line in hlo_text.splitlines():
        m = _HEADER.match(line)
        if m:
            current = m.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                entry = current
        elif current is not None:
            comps[current].append(line)
    unknown: set[str] = set()

    def total(name: str, seen: tuple = ()) -> int:
        if name not in comps or name in seen:
            return 0
        seen = seen + (name,)
        n = 0
        for line in comps[name]:
            m = _ALL_REDUCE.search(line)
            if m:
                n += _shape_bytes(m.group(1))
            w = _WHILE.search(line)
            if w:
                trip = _TRIP.search(line)
                if trip is None:
                    unknown.add(w.group(2))
                reps = int(trip.group(1)) if trip else 1
                n += reps * (total(w.group(2), seen) + total(w.group(1), seen))
                continue
            n += sum(total(c, seen) for c in _CALLS.findall(line))
            b = _BRANCHES.search(line)
            if b:
                n += max(total(c.strip().lstrip("%"), seen) for c in b.group(1).split(","))
        return n

    nbytes = total(entry) if entry else 0
    ops = sum(1 for line in hlo_text.splitlines() if _ALL_REDUCE.search(line))
    others = sum(1 for line in hlo_text.splitlines() if _OTHER_COLLECTIVE.search(line))
    return {"ops": ops, "bytes": nbytes, "unknown_loops": len(unknown), "other_collectives": others}


def update_hlo(trainer, x, y) -> str:
    """The compiled HLO text of ``trainer``'s sharded update for this batch (for inspection)."""
    if trainer.parallel is None or not trainer.entry.projection:
        raise ProjcError("update_hlo needs a projection trainer compiled with devices=...")
    return trainer.lower_update(x, y).compile().as_text()
