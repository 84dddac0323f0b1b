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
    """Write ``ckpt`` to ``folder`` (created if missing) atomically (``files.atomic_write``); returns
    the file's path. A failure (a full disk) is one ProjcError and leaves the previous checkpoint."""
    from projc.train.files import atomic_write

    names = list(ckpt.params)
    meta = {"format": FORMAT, "param_names": names, "schedule": ckpt.schedule,
            "counters": ckpt.counters, "fingerprint": ckpt.fingerprint,
            "solver_leaves": None if ckpt.solver_state is None else len(ckpt.solver_state)}
    # Any: np.savez's stub has allow_pickle: bool beside **kwds, which a dict of arrays would not fit
    arrays: dict[str, Any] = {f"param_{i}": np.asarray(ckpt.params[n]) for i, n in enumerate(names)}
    for i, leaf in enumerate(ckpt.solver_state or ()):
        arrays[f"solver_{i}"] = np.asarray(leaf)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return atomic_write(checkpoint_path(folder), lambda f: np.savez(f, **arrays), what="the checkpoint",
                        keep="the previous checkpoint is kept; free space, then rerun the command with "
                        "--resume")


def load_checkpoint(folder: str) -> Checkpoint:
    """The checkpoint in ``folder``; anything unreadable or malformed (a truncated or corrupt file,
    tampered metadata) is one ProjcError naming the file."""
    path = checkpoint_path(folder)
    if os.path.islink(path):
        from projc.train.files import refuse_link
        refuse_link(path, "the checkpoint")
    if not os.path.isfile(path):
        raise ProjcError(f"{folder}: no checkpoint to resume ({FILE} is missing); run the command "
                         f"without --resume first")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an .npz archive")
            meta = json.loads(bytes(np.asarray(z["meta"], dtype=np.uint8)).decode())
            check_meta(meta)
            params = {n: np.asarray(z[f"param_{i}"]) for i, n in enumerate(meta["param_names"])}
            leaves = meta["solver_leaves"]
            solver = None if leaves is None else [np.asarray(z[f"solver_{i}"]) for i in range(leaves)]
    except ProjcError as e:
        raise ProjcError(f"{path}: {e}; {DAMAGED_HINT}") from None
    except Exception as e:  # noqa: BLE001 - zip, zlib, JSON, numpy errors: the file is damaged
        raise ProjcError(f"{path}: not a readable projc checkpoint ({type(e).__name__}: "
                         f"{_first_line(e)}); {DAMAGED_HINT}") from None
    for name, value in params.items():
        if value.dtype.kind != "f":
            raise ProjcError(f"{path}: parameter {name!r} holds {value.dtype} values; {DAMAGED_HINT}")
    return Checkpoint(params, solver, meta["schedule"], meta["counters"], meta["fingerprint"])


DAMAGED_HINT = "remove it (or choose another --checkpoint folder) to start over"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and np.isfinite(v)


def check_meta(meta) -> None:
    """The metadata's structure (ProjcError naming the first bad field); ``check_position`` checks
    the schedule and counters a resumed run reads."""
    if not isinstance(meta, dict):
        raise ProjcError("the metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise ProjcError(f"checkpoint format {meta.get('format')!r} is not {FORMAT}")
    names = meta.get("param_names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise ProjcError("the metadata's param_names is not a list of distinct names")
    leaves = meta.get("solver_leaves")
    if leaves is not None and not (_is_int(leaves) and 0 <= leaves <= 10_000):
        raise ProjcError(f"the metadata's solver_leaves {leaves!r} is not a count")
    for key in ("schedule", "counters"):
        if not isinstance(meta.get(key), dict):
            raise ProjcError(f"the metadata's {key} is not a JSON object")
    if not isinstance(meta.get("fingerprint"), dict):
        raise ProjcError("the metadata's fingerprint is not a JSON object")


def check_position(ckpt: Checkpoint) -> None:
    """The schedule and counters ``--resume`` reads (ProjcError naming the first bad field)."""
    schedule, counters = ckpt.schedule, ckpt.counters
    if not all(_is_int(schedule.get(k)) and schedule[k] >= 0 for k in ("done", "epoch", "position")) \
            or not isinstance(schedule.get("rng"), dict):
        raise ProjcError("the metadata's schedule lacks done, epoch, position or rng")
    if not _is_number(counters.get("seconds")) or counters["seconds"] < 0:
        raise ProjcError("the metadata's counters lack a number of seconds")
    initial = counters.get("initial_loss")
    if initial is not None and not _is_number(initial):
        raise ProjcError(f"the metadata's initial_loss {initial!r} is not a finite number")


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
