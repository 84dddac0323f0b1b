"""The order of minibatch updates of ``projc train``, resumable from a saved position.

Each epoch draws a fresh permutation of the training set from one seeded generator. The state
(update count, epoch, position in the epoch, the generator's state when the epoch's permutation
was drawn) is plain JSON, so a checkpoint can restore the exact batch sequence.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from projc.errors import DataError


class UpdateSchedule:
    """Yields ``(epoch, indices)`` for ``total`` updates of ``batch`` samples out of ``n_train``.

    The last batch of an epoch is topped up from the epoch's first samples so that every batch
    has one shape (one jit compile); a training set smaller than a batch is used whole.
    """

    def __init__(self, n_train: int, batch: int, total: int, seed: int):
        if n_train < 1:
            raise DataError("the training split is empty; give more samples")
        if batch < 1 or total < 0:
            raise DataError(f"batch must be >= 1 and the update count >= 0, got {batch} and {total}")
        self.n_train, self.batch, self.total = n_train, batch, total
        self.per_epoch = -(-n_train // batch)
        self._rng = np.random.default_rng(seed)
        self.done, self.epoch, self.position = 0, 0, 0
        self._order: np.ndarray | None = None
        self._epoch_rng_state: Mapping[str, Any] | None = None  # the bit generator's at the epoch's start

    @property
    def epoch_ends(self) -> bool:
        """True right after the last update of an epoch."""
        return self.position == 0 and self.done > 0

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        while self.done < self.total:
            if self._order is None:
                self._epoch_rng_state = copy.deepcopy(self._rng.bit_generator.state)
                self._order = self._rng.permutation(self.n_train)
            start = self.position * self.batch
            idx = self._order[start:start + self.batch]
            if len(idx) < self.batch and self.n_train >= self.batch:
                idx = np.concatenate([idx, self._order[:self.batch - len(idx)]])
            epoch = self.epoch
            self.done += 1
            self.position += 1
            if self.position == self.per_epoch:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
            yield epoch, idx

    def state(self) -> dict:
        """JSON-able position: restoring it with ``load_state`` replays the same batches."""
        rng = self._epoch_rng_state if self._order is not None else self._rng.bit_generator.state
        return {"done": self.done, "epoch": self.epoch, "position": self.position,
                "rng": copy.deepcopy(rng)}

    def load_state(self, state: dict) -> None:
        self.done, self.epoch, self.position = int(state["done"]), int(state["epoch"]), int(state["position"])
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._order = None
        if self.position:  # mid-epoch: redraw this epoch's permutation from its saved state
            self._epoch_rng_state = copy.deepcopy(state["rng"])
            self._order = self._rng.permutation(self.n_train)
