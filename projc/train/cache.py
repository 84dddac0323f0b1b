"""The persistent compilation cache: a repeated run loads its compiled update instead of compiling it.

XLA compiles a projection update in seconds to tens of seconds (its ``lax.scan`` over the steps, a
family's projection per layer set); JAX can keep the compiled executables on disk, keyed by the
program (the lowered HLO, without source locations), the JAX/XLA versions, the backend and its
flags, so a second identical ``projc train`` (or any ``projc.compile`` of the same model and
options in a new process) skips compilation. ``enable()`` turns that on for the process; the
Trainer calls it unless ``Config.compilation.cache`` is False (``projc train --no-cache``). The
same directory's ``exported/`` folder keeps each update traced and lowered (``jax.export``,
``projc.train.exported_update``), so a repeated run skips tracing and lowering as well; it is off
whenever this cache is.

Where: ``$PROJC_CACHE_DIR`` when set (``off`` or empty: no cache), else ``$XDG_CACHE_HOME/projc/jax``
(``~/.cache/projc/jax``). The location changes where compiled code is kept, never what is computed:
a cached executable is the same machine code and gives bit-identical results
(``tests/test_compile_cache.py``). JAX's own thresholds are lowered so that every compile is
stored: by default it skips executables that took under a second to compile, which on a CPU is
most of a small model's. The cache is process-wide (a JAX setting): a directory the process already
set (``jax_compilation_cache_dir``) is left as it is. The cache is trusted code: do not point it at
a directory others can write to.
"""
from __future__ import annotations

import os

ENV = "PROJC_CACHE_DIR"
OFF = ("off", "none", "0", "")


def cache_dir() -> str | None:
    """The cache directory ``enable`` uses (None: the cache is off by ``$PROJC_CACHE_DIR``)."""
    env = os.environ.get(ENV)
    if env is not None:
        return None if env.strip().lower() in OFF else os.path.abspath(os.path.expanduser(env))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "projc", "jax")


def enable() -> str | None:
    """Turn JAX's persistent compilation cache on at ``cache_dir()`` for this process (idempotent);
    returns the directory in use, or None when the cache is off."""
    import jax

    current = jax.config.jax_compilation_cache_dir  # type: ignore[attr-defined]  # set at runtime: not in jax's stubs
    if current:
        return current  # set already (by us, or by the user's own configuration): keep it
    path = cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None  # an unwritable location: run without the cache rather than fail
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


__all__ = ["ENV", "cache_dir", "enable"]
