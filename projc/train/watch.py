"""Warnings for training runs that do nothing or blow up (``projc train`` prints them, one line each).

A run "does nothing" when the parameters barely move per update (e.g. a tiny ``--lam`` makes the
loss projection a near no-op), and "blows up" when the training loss climbs far above where it
started; inputs far from unit scale are the usual cause of both, so that is checked up front.
"""
from __future__ import annotations

import math

import numpy as np

# Largest relative parameter change per update (||new - old|| / ||old||) below which a run is
# reported as not training: measured on mlp_digits, the defaults move it by ~0.4 within four
# updates, --lam 1e-6 by ~9e-7.
STILL = 1e-5
# A fixed-point residual this small on every update means the solver starts at its answer.
FLAT_RESIDUAL = 1e-12
# Inputs beyond this magnitude are reported: the constraint sets are scale-sensitive.
LARGE_INPUT = 1e3


def input_scale_warning(x: np.ndarray) -> str | None:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > LARGE_INPUT:
        return (f"inputs reach |x| = {peak:.3g}; projection training works best on inputs of about "
                f"unit scale: standardize or rescale X")
    return None


class TrainingWatch:
    """Collects per-update parameter motion and evaluation losses; ``warnings()`` says what is off."""

    def __init__(self, initial_loss: float | None = None):
        self.initial_loss = initial_loss
        self.largest_change = 0.0
        self.largest_residual = 0.0
        self.updates = 0
        self._reported: set[str] = set()

    def step(self, old: dict, new: dict, residual: float | None = None) -> None:
        num = sum(float(np.sum((np.asarray(new[k], np.float64) - np.asarray(old[k], np.float64)) ** 2))
                  for k in old)
        den = sum(float(np.sum(np.asarray(old[k], np.float64) ** 2)) for k in old)
        self.largest_change = max(self.largest_change, math.sqrt(num) / max(math.sqrt(den), 1e-30))
        self.updates += 1
        if residual is None:  # adam has no residual: never report it as flat
            self.largest_residual = math.inf
        else:
            self.largest_residual = max(self.largest_residual, residual)

    def check_loss(self, loss: float) -> str | None:
        """One warning (once per run) when the loss has exploded since the start."""
        if self.initial_loss is None or "loss" in self._reported:
            return None
        if loss > 3.0 * self.initial_loss + 1.0:
            self._reported.add("loss")
            return (f"the training loss rose from {self.initial_loss:.4g} to {loss:.4g}; try inputs "
                    f"scaled to about unit range, a smaller --lam, or --solver ap")
        return None

    def check_motion(self) -> str | None:
        """One warning (once per run) when no update moved the parameters noticeably."""
        if self.updates == 0 or "still" in self._reported:
            return None
        if self.largest_change >= STILL and self.largest_residual >= FLAT_RESIDUAL:
            return None
        self._reported.add("still")
        return (f"the parameters barely move (largest relative change per update "
                f"{self.largest_change:.2g}, largest residual {self.largest_residual:.2g}); training "
                f"does nothing: try a larger --lam (the loss "
                f"weight), more --steps, or inputs scaled to about unit range")
