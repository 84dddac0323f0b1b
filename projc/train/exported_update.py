"""Exported updates: a repeated run skips tracing and lowering its update, not only XLA's compile.

JAX's persistent cache (``projc.train.cache``) keys a compiled executable by the lowered module,
so a cached run still traces the update in Python and lowers it to StableHLO before it can look
the executable up: seconds for a conv model's graph. ``ExportedUpdate`` stores the lowered update
itself: the first run exports the jitted update (``jax.export``) for the minibatch it sees and
writes the serialized module under ``<cache dir>/exported/``; a repeated run reads it, wraps
``Exported.call`` in ``jax.jit`` (its lowering only embeds the stored module) and XLA's compile of
that wrapper then hits JAX's persistent cache. Both runs call the same deserialized module, so the
first run's compile is the one the second run loads.

The entry's key is a hash of everything that determines the traced computation: the model's
bytes, the full resolved config, the task and update scale the Trainer derived from them, the
arguments' tree structure, shapes and dtypes, the JAX/jaxlib versions, backend and numeric flags,
and the source of projc itself (every ``.py`` file of projc, projc.backends and projc.passes), so an
edited checkout never loads a stale update (the digest is taken once per process, when the first
cached Trainer is built and the traced code has just been imported). An entry carries a sha256 of
its payload: a truncated or corrupt file, one that does not deserialize, or one whose signature
does not match is ignored and rewritten; a write that fails leaves the run as it was. Writes are
atomic (a temporary file in the same directory, then ``os.replace``).

Where export does not apply the Trainer keeps today's path, silently: data parallelism (the jit
carries shardings over a device mesh, which this store does not key or reproduce), and any update
``jax.export`` cannot export or serialize (``ExportedUpdate.fallbacks`` records why). The method's
state (optax's named tuples, which jax.export cannot serialize) is passed as its flat list of
leaves; the update must return the state in the structure it took, as every method does.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SUBDIR = "exported"
MAGIC = b"projc-exported-update 1\n"  # bump the number when the entry's layout changes
DIGEST_LEN = 64  # hex sha256 of the payload, after MAGIC


class StateStructureChanged(Exception):
    """The update returned its state in another tree structure than it took (not exportable here)."""


def source_files() -> list[tuple[str, str]]:
    """(package-relative name, path) of every .py file of projc, projc.backends and projc.passes
    (three folders in a checkout: the editable install maps the two subpackages elsewhere)."""
    import projc
    import projc.backends
    import projc.passes

    files = []
    for package in (projc, projc.backends, projc.passes):
        for root in package.__path__:
            for folder, dirs, names in os.walk(root):
                dirs.sort()
                for name in sorted(n for n in names if n.endswith(".py")):
                    path = os.path.join(folder, name)
                    files.append((f"{package.__name__}:{os.path.relpath(path, root)}", path))
    return files


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """sha256 over the names and bytes of ``source_files()``: any edit to projc changes it."""
    digest = hashlib.sha256()
    for name, path in source_files():
        with open(path, "rb") as fh:
            digest.update(name.encode() + b"\n" + hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def model_key(proto_bytes: bytes, config, task, update_scale: float) -> str:
    """The part of the key a Trainer fixes at compile time: the model, every option (resolved by
    the recipe), what the Trainer derived from them and the data (the task), and projc's source."""
    options = [(group, f.name, value) for group, f, value in config.fields()]
    text = json.dumps({"model": hashlib.sha256(proto_bytes).hexdigest(), "options": options,
                       "task": repr(task), "update_scale": update_scale, "source": source_digest()},
                      default=repr, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def runtime_key() -> str:
    """What of JAX itself shapes the traced module: versions, backend, device kind, numeric flags."""
    import jax
    import jaxlib

    flags = {name: str(getattr(jax.config, name, None)) for name in (
        "jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
        "jax_numpy_dtype_promotion", "jax_threefry_partitionable", "jax_default_prng_impl")}
    return json.dumps({"jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
                       "device": jax.devices()[0].device_kind, "flags": flags}, sort_keys=True)


def argument_specs(args) -> Any:
    """The arguments as jax.ShapeDtypeStructs (the dtypes jit would see: x64 off makes int64 int32)."""
    import jax

    def spec(a):
        dtype = a.dtype if hasattr(a, "dtype") else np.result_type(a)
        return jax.ShapeDtypeStruct(np.shape(a), jax.dtypes.canonicalize_dtype(dtype))
    return jax.tree_util.tree_map(spec, args)


def signature(specs) -> str:
    import jax

    leaves, treedef = jax.tree_util.tree_flatten(specs)
    return f"{treedef}|" + ";".join(f"{s.dtype}{list(s.shape)}" for s in leaves)


def pack(payload: bytes) -> bytes:
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload


def unpack(data: bytes) -> bytes | None:
    """The payload of an entry, or None when the file is not a whole, intact entry."""
    head, digest, payload = data[:len(MAGIC)], data[len(MAGIC):len(MAGIC) + DIGEST_LEN], data[len(MAGIC) + DIGEST_LEN:]
    if head != MAGIC or hashlib.sha256(payload).hexdigest().encode() != digest:
        return None
    return payload


def write_atomically(path: str, data: bytes) -> bool:
    """Write ``data`` to ``path`` by the project's atomic write (``projc.train.files``); False when
    that fails: an unwritable cache lets the run go on, and the next one exports again."""
    from projc.errors import ProjcError
    from projc.train.files import atomic_write
    try:
        atomic_write(path, lambda fh: fh.write(data), what="the exported update", fsync=False)
    except ProjcError:
        return False
    return True


class Clock:
    """Times calls into a {phase: seconds} dict."""

    def __init__(self, seconds: dict[str, float]):
        self.seconds = seconds

    def __call__(self, phase: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


class ExportedUpdate:
    """An update ``(params, state, batch, progress) -> (params, state, stats)`` that is exported
    once per argument signature and stored under ``directory``; ``fallback`` (the plain jitted
    update) runs where export does not apply. Counters say which path each signature took:
    ``loaded`` (read from the store), ``exported`` (traced and written), ``fallbacks`` (reasons)."""

    def __init__(self, update: Callable, fallback: Callable, directory: str, key: Callable[[], str]):
        self.update = update          # the method's pure update, not jitted
        self.fallback = fallback
        self.directory = directory
        self._key = key               # the Trainer's model_key, computed on first use
        self._model_key: str | None = None
        self.loaded = 0
        self.exported = 0
        self.fallbacks: list[str] = []
        self.seconds: dict[str, float] = {}  # phase -> seconds spent preparing the update
        self._functions: dict[str, Callable] = {}  # argument signature -> the function to call

    def __call__(self, params, state, batch, progress):
        import jax

        leaves, treedef = jax.tree_util.tree_flatten(state)
        args = (params, leaves, batch, progress)
        specs = argument_specs(args)
        sig = f"{treedef}|{signature(specs)}"
        fn = self._functions.get(sig)
        if fn is None:
            fn = self._functions[sig] = self._function(specs, treedef, sig)
        if fn is self.fallback:
            return fn(params, state, batch, progress)
        new_params, new_leaves, stats = fn(*args)
        return new_params, jax.tree_util.tree_unflatten(treedef, new_leaves), stats

    def entry_path(self, sig: str) -> str:
        if self._model_key is None:
            self._model_key = self._key()
        text = f"{self._model_key}|{runtime_key()}|{sig}"
        return os.path.join(self.directory, hashlib.sha256(text.encode()).hexdigest() + ".bin")

    def _function(self, specs, treedef, sig: str) -> Callable:
        """The compiled call of the stored module for this signature: loaded, else exported and
        stored (then read back, so this run compiles what a repeated run loads), else the fallback.
        ``seconds`` adds up each phase (for benchmarks; it changes nothing computed)."""
        import jax

        clock = Clock(self.seconds)
        path = clock("key", lambda: self.entry_path(sig))
        exported = clock("read", lambda: self._load(path, specs))
        if exported is not None:
            self.loaded += 1
        else:
            try:
                payload = clock("export", lambda: self._export(specs, treedef))
            except Exception as err:  # noqa: BLE001 - not exportable: today's path, same results
                self.fallbacks.append(f"{type(err).__name__}: {str(err)[:200]}")
                return self.fallback
            clock("write", lambda: write_atomically(path, pack(payload)))
            exported = jax.export.deserialize(bytearray(payload))
            self.exported += 1
        # compiled once for the abstract signature: a plain jit of ``exported.call`` would lower and
        # compile again when the arguments turn from numpy arrays into committed device arrays
        lowered = clock("lower", lambda: jax.jit(exported.call).lower(*specs))
        return clock("compile", lowered.compile)  # XLA, or JAX's persistent cache

    def _export(self, specs, treedef) -> bytes:
        """Trace and lower the update on ``specs`` with the state as its flat leaves; serialized."""
        import jax

        update = self.update

        def flat_update(params, leaves, batch, progress):
            new_params, state, stats = update(params, jax.tree_util.tree_unflatten(treedef, leaves), batch, progress)
            new_leaves, new_tree = jax.tree_util.tree_flatten(state)
            if new_tree != treedef:
                raise StateStructureChanged(f"the update took its state as {treedef} and returned {new_tree}")
            return new_params, new_leaves, stats
        return bytes(jax.export.export(jax.jit(flat_update))(*specs).serialize())

    @staticmethod
    def _load(path: str, specs):
        """The stored Exported at ``path`` when it is intact and takes exactly ``specs``, else None."""
        import jax

        try:
            with open(path, "rb") as fh:
                payload = unpack(fh.read())
            if payload is None:
                return None
            exported = jax.export.deserialize(bytearray(payload))
        except Exception:  # noqa: BLE001 - missing, unreadable or undecodable: export afresh
            return None
        leaves, treedef = jax.tree_util.tree_flatten((tuple(specs), {}))  # export's (args, kwargs)
        avals = [(tuple(a.shape), np.dtype(a.dtype)) for a in exported.in_avals]
        same_tree = str(exported.in_tree) == str(treedef)  # (PyTreeDef has no == in the stubs)
        if not same_tree or avals != [(tuple(s.shape), np.dtype(s.dtype)) for s in leaves]:
            return None
        return exported


__all__ = ["ExportedUpdate", "model_key", "source_digest", "source_files"]
