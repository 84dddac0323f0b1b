"""Parameter initialization for training: ``init="file"`` keeps the exported values, ``"he"``
re-draws them, ``"auto"`` (the default) is ``he`` for a model with a Conv and ``file`` otherwise.

``auto`` follows the measurements of benchmarks/init.py (docs/initialization.md): He wins by 0.15
to 0.77 on every convolutional export, while on the MLPs the file's (torch's) values are as good or
slightly better and every MLP table in the README was measured with them.

He-normal (the reference library's init): a weight consumed by Gemm, MatMul, Conv or
ConvTranspose gets N(0, 2/fan_in) with fan_in taken from the consuming op (Gemm: the contracted dim
of B, honouring transB; MatMul: rows of B; Conv: C/group * prod(kernel); ConvTranspose: C/group *
prod(kernel) / prod(strides), the terms of one output); the bias of a Gemm or Conv(Transpose) gets
zeros.
Every other trainable initializer keeps its file value. Draws are seeded and made in the model's
parameter order, so the same seed gives the same start. Projection methods are not
scale-invariant: torch's default init (uniform, std = 1/sqrt(3 fan_in)) is about 2.5x smaller.
"""
from __future__ import annotations

import math

import numpy as np

from projc.errors import ProjcError

INITS = ("auto", "file", "he")


def resolve_init(init: str, source_graph) -> str:
    """``file`` or ``he``: what ``init`` means for this model (``auto``: he when it has a Conv)."""
    if init not in INITS:
        raise ProjcError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if init != "auto":
        return init
    return "he" if any(op.kind == "Conv" for op in source_graph.ops) else "file"


def _roles(graph) -> dict[str, tuple[str, int]]:
    """ONNX initializer name -> ("weight", fan_in) | ("bias", 0) for Gemm/MatMul/Conv operands."""
    roles: dict[str, tuple[str, int]] = {}
    for op in graph.ops:
        ins = list(op.inputs) + [None] * 3
        w, b = ins[1], ins[2]
        if w is None or w.role != "param" or not all(isinstance(d, int) for d in w.shape):
            continue
        if op.kind == "Gemm":
            fan_in = w.shape[1] if op.params.get("transB", 0) else w.shape[0]
        elif op.kind == "MatMul" and w.rank == 2:
            fan_in, b = w.shape[0], None
        elif op.kind == "Conv":
            fan_in = math.prod(w.shape[1:])
        elif op.kind == "ConvTranspose":  # terms per output: (C/group)·prod(k) spread over the strides
            strides = op.params.get("strides") or [1] * (w.rank - 2)
            fan_in = max(1, (w.shape[0] // int(op.params.get("group", 1))) * math.prod(w.shape[2:])
                         // math.prod(int(s) for s in strides))
        else:
            continue
        roles.setdefault(w.hint, ("weight", int(fan_in)))
        if b is not None and b.role == "param":
            roles.setdefault(b.hint, ("bias", 0))
    return roles


def initial_params(source_graph, file_values: dict[str, np.ndarray], init: str,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """The starting parameters {name: array} for ``init`` (see the module docstring)."""
    init = resolve_init(init, source_graph)
    if init == "file":
        return {k: v.copy() for k, v in file_values.items()}
    roles = _roles(source_graph)
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in file_values.items():
        role, fan_in = roles.get(name, ("keep", 0))
        if role == "weight":
            std = math.sqrt(2.0 / max(fan_in, 1))
            out[name] = (rng.standard_normal(value.shape) * std).astype(value.dtype)
        elif role == "bias":
            out[name] = np.zeros_like(value)
        else:
            out[name] = value.copy()
    return out
