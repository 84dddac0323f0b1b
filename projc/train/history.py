"""Training history of ``projc train --log FILE.jsonl``: one JSON object per evaluation.

Keys: ``update`` (updates done), ``epoch`` (1-based epoch the evaluation closes; 0 before
training), the task's metrics on both splits (``projc.train.tasks.LOG_KEYS``: ``train_accuracy``,
``test_accuracy`` for classes, binary and multi-label (+ ``*_exact_match``); ``*_rmse``, ``*_r2``
for regression; ``*_mse`` for reconstruction), ``loss`` (on the training split: the mean
cross-entropy for classes, else the training loss's value), ``residual`` (the last update's
fixed-point residual; projection solvers only), ``seconds``
(training time so far). ``projc plot FILE.jsonl`` draws it.
"""
from __future__ import annotations

import json
import math
import os

from projc.errors import ProjcError

KEYS = ("update", "epoch", "train_accuracy", "test_accuracy", "train_exact_match", "test_exact_match",
        "train_rmse", "test_rmse", "train_r2", "test_r2", "train_mse", "test_mse", "loss", "residual", "seconds")


class HistoryLog:
    """Appends records to ``path``, one line each, flushed as written.

    A fresh run starts the file empty; a resumed run (``resume_at`` = the checkpoint's update
    count) keeps the records up to that update and drops later ones, which the resumed run
    writes again.
    """

    def __init__(self, path: str, *, resume_at: int | None = None):
        self.path = path
        kept = []
        if resume_at is not None and os.path.exists(path):
            kept = [r for r in read_history(path) if r["update"] <= resume_at]
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
            self._file = open(path, "w", encoding="utf-8")
        except OSError as e:
            raise ProjcError(f"{path}: cannot write the training log ({e.strerror or e})") from None
        for record in kept:
            self._write(record)

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def write(self, **record) -> None:
        self._write({k: record[k] for k in KEYS if k in record})

    def close(self) -> None:
        self._file.close()


def read_history(path: str) -> list[dict]:
    """The records of a ``--log`` file; a malformed line is an error naming the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ProjcError(f"{path}: cannot read the training log ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ProjcError(f"{path}: not a text file; expected the JSON lines of `projc train --log`") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ProjcError(f"{path}:{number}: not a JSON object; expected the lines of "
                             f"`projc train --log`") from None
        if not isinstance(record, dict) or not isinstance(record.get("update"), int):
            raise ProjcError(f"{path}:{number}: a record without an integer 'update'; expected the "
                             f"lines of `projc train --log`")
        records.append(record)
    return records


def finite_or_none(value) -> float | None:
    """JSON has no NaN: non-finite numbers are written as null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
