"""Training history of ``projc train --log FILE.jsonl``: one JSON object per evaluation.

Keys: ``update`` (updates done), ``epoch`` (1-based epoch the evaluation closes; 0 before
training), the task's metrics on both splits (``projc.train.tasks.LOG_KEYS``: ``train_accuracy``,
``test_accuracy`` for classes, binary and multi-label (+ ``*_exact_match``); ``*_rmse``, ``*_r2``
for regression; ``*_mse`` for reconstruction), ``loss`` (on the training split: the mean
cross-entropy for classes, else the training loss's value), ``residual`` (the last update's
fixed-point residual; projection solvers only), ``seconds``
(training time so far). ``projc plot FILE.jsonl`` draws it.

Every line is whole: a record is appended with one ``os.write`` on an ``O_APPEND`` descriptor, and a
write that fails part-way (a full disk) is cut back off before the error is reported. A last line
that a killed run left incomplete anyway (an older projc, a crash of the machine) is dropped with
a one-line note by ``read_history`` (``--resume``, ``projc plot``); a bad line elsewhere is an error.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

from projc.errors import ProjcError

KEYS = ("update", "epoch", "train_accuracy", "test_accuracy", "train_exact_match", "test_exact_match",
        "train_rmse", "test_rmse", "train_r2", "test_r2", "train_mse", "test_mse", "loss", "residual", "seconds")


class HistoryLog:
    """Appends records to ``path``, one whole line each.

    A fresh run starts the file empty; a resumed run (``resume_at`` = the checkpoint's update
    count) keeps the records up to that update and drops later ones, which the resumed run
    writes again. Either way the file is first replaced atomically (``files.atomic_write``), then
    appended to; a symbolic link is refused, never written through.
    """

    def __init__(self, path: str, *, resume_at: int | None = None):
        from projc.train.files import atomic_write, describe_os_error, refuse_link

        self.path = path
        refuse_link(path, "the training log")
        kept = []
        if resume_at is not None and os.path.exists(path):
            kept = [r for r in read_history(path) if r["update"] <= resume_at]
        text = "".join(_line(r) for r in kept).encode()
        atomic_write(path, lambda f: f.write(text), what="the training log", fsync=False)
        try:
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise ProjcError(f"{path}: cannot write the training log ({describe_os_error(e)})") from None

    def _write(self, record: dict) -> None:
        from projc.train.files import describe_os_error

        if self._fd is None:
            raise ProjcError(f"{self.path}: the training log is closed")
        data = _line(record).encode()
        size = os.fstat(self._fd).st_size
        try:
            written = os.write(self._fd, data)
            if written != len(data):  # a full disk takes part of the line: never leave half of it
                raise OSError(28, "No space left on device")
        except OSError as e:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass
            raise ProjcError(f"{self.path}: cannot write the training log ({describe_os_error(e)}); "
                             f"its earlier records are whole: free space, then rerun the command with "
                             f"--resume") from None

    def write(self, **record) -> None:
        self._write({k: record[k] for k in KEYS if k in record})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _line(record: dict) -> str:
    return json.dumps(record) + "\n"


def _print_note(message: str) -> None:
    from projc.train.files import note
    note(message)


def read_history(path: str, *, note: Callable[[str], None] | None = None) -> list[dict]:
    """The records of a ``--log`` file; a malformed line is an error naming the line, except an
    incomplete last line (no newline, not a record), which is dropped with ``note``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ProjcError(f"{path}: cannot read the training log ({e.strerror or e})") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    records = [_record(path, number, line) for number, line in enumerate(lines, 1) if line.strip()]
    if tail.strip():
        try:
            records.append(_record(path, len(lines) + 1, tail))
        except ProjcError:
            (note or _print_note)(f"{path}:{len(lines) + 1}: dropped an incomplete last line ({len(tail)} "
                                  f"bytes; the run writing it stopped part-way)")
    return records


def _record(path: str, number: int, line: bytes) -> dict:
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProjcError(f"{path}:{number}: not text; expected the JSON lines of `projc train --log`") from None
    except (json.JSONDecodeError, RecursionError):
        raise ProjcError(f"{path}:{number}: not a JSON object; expected the lines of "
                         f"`projc train --log`") from None
    if not isinstance(record, dict) or not isinstance(record.get("update"), int):
        raise ProjcError(f"{path}:{number}: a record without an integer 'update'; expected the "
                         f"lines of `projc train --log`")
    return record


def finite_or_none(value) -> float | None:
    """JSON has no NaN: non-finite numbers are written as null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
