"""Checkpoints of ``projc train --checkpoint DIR``: one file, ``DIR/checkpoint.npz``, replaced atomically.

It holds everything a run needs to continue exactly: the trainable parameters, the solver state
carried across updates (Adam's moments and step count; the projection solvers carry none), the
position in the batch order with its RNG state, the counters, and a fingerprint of the options
that shape the run, so that ``--resume`` refuses a checkpoint written by a different command.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, NamedTuple

import numpy as np

from projc.errors import ProjcError

FILE = "checkpoint.npz"
FORMAT = 1


class Checkpoint(NamedTuple):
    params: dict[str, np.ndarray]
    solver_state: list[np.ndarray] | None
    schedule: dict       # UpdateSchedule.state()
    counters: dict       # e.g. seconds trained so far, the initial loss
    fingerprint: dict


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_path(folder: str) -> str:
    return os.path.join(folder, FILE)


def save_checkpoint(folder: str, ckpt: Checkpoint) -> str:
    """Write ``ckpt`` to ``folder`` (created if missing) atomically; returns the file's path."""
    os.makedirs(folder, exist_ok=True)
    names = list(ckpt.params)
    meta = {"format": FORMAT, "param_names": names, "schedule": ckpt.schedule,
            "counters": ckpt.counters, "fingerprint": ckpt.fingerprint,
            "solver_leaves": None if ckpt.solver_state is None else len(ckpt.solver_state)}
    arrays = {f"param_{i}": np.asarray(ckpt.params[n]) for i, n in enumerate(names)}
    for i, leaf in enumerate(ckpt.solver_state or ()):
        arrays[f"solver_{i}"] = np.asarray(leaf)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path = checkpoint_path(folder)
    fd, tmp = tempfile.mkstemp(prefix=".projc-ckpt-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0o022)  # mkstemp's 0600 would survive the rename: use the umask's mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:  # a failure or an interrupt leaves the previous checkpoint and no temporary file
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(folder: str) -> Checkpoint:
    path = checkpoint_path(folder)
    if not os.path.isfile(path):
        raise ProjcError(f"{folder}: no checkpoint to resume ({FILE} is missing); run the command "
                         f"without --resume first")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            params = {n: z[f"param_{i}"] for i, n in enumerate(meta["param_names"])}
            leaves = meta["solver_leaves"]
            solver = None if leaves is None else [z[f"solver_{i}"] for i in range(leaves)]
    except (OSError, ValueError, KeyError) as e:
        raise ProjcError(f"{path}: not a readable projc checkpoint ({e})") from None
    if meta.get("format") != FORMAT:
        raise ProjcError(f"{path}: checkpoint format {meta.get('format')} is not {FORMAT}")
    return Checkpoint(params, solver, meta["schedule"], meta["counters"], meta["fingerprint"])


def check_fingerprint(folder: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written by a run with other options. An option that enters
    the fingerprint only when changed counts as its default where a fingerprint lacks it; a key
    recorded only since a later format (``LATER_KEYS``) is not compared with a checkpoint that
    lacks it."""
    from projc.config import fingerprint_defaults

    defaults = fingerprint_defaults()
    keys = [k for k in sorted(set(saved) | set(current)) if k in saved or k not in LATER_KEYS]
    differ = [k for k in keys if saved.get(k, defaults.get(k)) != current.get(k, defaults.get(k))]
    if differ:
        what = ", ".join(f"{k} ({saved.get(k, defaults.get(k))!r} then, {current.get(k, defaults.get(k))!r} "
                         f"now)" for k in differ)
        raise ProjcError(f"{folder}: the checkpoint was written by a different run: {what}; use the "
                         f"same command to resume, or another --checkpoint folder")


LATER_KEYS = ("data_digest",)  # the data's content, recorded since the config redesign
