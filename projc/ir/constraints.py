"""The names of projc's constraint ops (the IR level: no JAX; the config's choices read them)."""
from __future__ import annotations

FAMILIES = ("dot", "mul", "sum", "sum_pwl", "sum_smooth", "max", "mean", "embed", "identity")
MOVES = ("reshape", "transpose", "concat", "slice", "pad", "patches")
LOSSES = ("cross_entropy", "margin", "squared_error")
CONSTRAINT_KINDS = FAMILIES + MOVES + LOSSES
