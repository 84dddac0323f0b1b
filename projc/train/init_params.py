"""Parameter initialization for training: ``init="file"`` keeps the exported values, ``"he"``
re-draws them, ``"data"`` scales the file's on one batch (``calibrated_params``), ``"auto"`` (the
default) is the recipe's choice (projc.train.recipe); without a recipe ``he`` for a model with a
Conv and ``file`` otherwise.

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

INITS = ("auto", "file", "he", "data")


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
    if init == "data":
        raise ProjcError("init 'data' needs a batch: projc.train.init_params.calibrated_params")
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


# -- data-calibrated initialization ------------------------------------------------------------------

# ops an activation chain passes through, from a layer's output to what the next layer reads
CHAIN_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Clip", "Relu", "LeakyRelu", "Tanh", "Sigmoid",
                       "Round", "Floor", "Ceil", "QuantizeLinear", "DequantizeLinear", "Sign", "HardSigmoid",
                       "HardSwish", "Elu", "Softplus", "Gelu", "Erf", "Abs"})
STAIRCASE_OPS = frozenset({"Round", "Floor", "Ceil", "QuantizeLinear"})
TARGET_STD = 1.0       # continuous units: unit-variance pre-activations (LSUV)
STAIRCASE_LEVELS = 6   # a staircase: spread over about this many levels (entropy log 6)


def _chain(graph, users, z):
    """(ops, output value, staircase?) of the elementwise chain reading ``z``, up to the next layer."""
    ops: list = []
    v, stair = z, False
    while True:
        us = users.get(v, [])
        if len(us) != 1 or us[0][0].kind not in CHAIN_OPS or len(us[0][0].outputs) != 1:
            return ops, v, stair
        op = us[0][0]
        others = [u for i, u in enumerate(op.inputs) if u is not None and u is not v]
        if any(u.role not in ("param", "const") for u in others):
            return ops, v, stair  # a sum of two moving values (a residual): stop
        ops.append(op)
        stair |= op.kind in STAIRCASE_OPS
        v = op.outputs[0]


def _unit_entropy(y: np.ndarray, channel_axis: int) -> float:
    """Mean over units of the entropy of a piecewise-constant output's levels across the batch
    (and positions): a unit is a feature (dense) or a channel (conv)."""
    y = np.moveaxis(np.asarray(y, np.float64), channel_axis, -1).reshape(-1, y.shape[channel_axis])
    y = np.sort(np.round(y, 6), axis=0)
    n = y.shape[0]
    total = 0.0
    for col in y.T:
        edges = np.flatnonzero(np.diff(col)) + 1
        counts = np.diff(np.concatenate([[0], edges, [n]])) / n
        total -= float(np.sum(counts * np.log(counts)))
    return total / y.shape[1]


def calibrated_params(source_graph, values: dict[str, np.ndarray], x, input_name: str) -> dict[str, np.ndarray]:
    """``values`` with each layer (Gemm, MatMul, Conv with a trainable weight), in graph order,
    scaled on the batch ``x`` so its pre-activations spread over its activation's useful range:
    unit variance where the activation is continuous (ReLU kin, smooth, none), and, where it is a
    staircase (Round, Floor, Ceil, fake quantization), the scale and bias shift whose output spreads
    over about STAIRCASE_LEVELS levels (the entropy of the levels each unit takes over the batch,
    searched on a grid). Each layer is measured after the layers before it were scaled. Recurrent
    cells keep the file's values."""
    import jax
    import jax.numpy as jnp

    from projc.backends.jax.forward import Interpreter

    graph = source_graph
    users = graph.users()
    interp = Interpreter(graph)
    params = {k: np.array(v, copy=True) for k, v in values.items()}
    data = {input_name: jnp.asarray(x)}

    def leaf(v):
        if v.role == "param":
            return jnp.asarray(params[v.hint])
        if v.role == "const":
            return jnp.asarray(v.data)
        return data[v.hint]

    for op in graph.ops:
        if op.kind not in ("Gemm", "MatMul", "Conv") or len(op.inputs) < 2:
            continue
        w = op.inputs[1]
        if w is None or w.role != "param" or w.hint not in params:
            continue
        z = op.outputs[0]
        bias = op.inputs[2] if op.kind != "MatMul" and len(op.inputs) > 2 else None
        chain, out, stair = _chain(graph, users, z)
        if op.kind == "MatMul" and chain and chain[0].kind == "Add":  # MatMul + bias: the Add's output
            b = [u for u in chain[0].inputs if u is not None and u is not z]
            bias = b[0] if b and b[0].role == "param" else None
            z = chain[0].outputs[0]
            chain = chain[1:]
        if bias is not None and (bias.role != "param" or bias.hint not in params):
            bias = None
        zv = np.asarray(interp.values(leaf, [z])[z], np.float64)
        std = float(zv.std())
        if not np.isfinite(std) or std <= 0:
            continue
        shift = 0.0
        if not stair:
            scale = TARGET_STD / std
        else:
            axis = 1 if op.kind == "Conv" else zv.ndim - 1
            run = jax.jit(lambda zz, z=z, out=out: interp.values(leaf, [out], known={z: zz})[out])
            scale, shift = _staircase_fit(zv, run, axis, bias is not None)
        params[w.hint] = (params[w.hint] * scale).astype(params[w.hint].dtype)
        if bias is not None:
            shifted = params[bias.hint] * scale + shift
            params[bias.hint] = shifted.astype(params[bias.hint].dtype)
    return params


def _staircase_fit(zv: np.ndarray, run, axis: int, can_shift: bool) -> tuple[float, float]:
    """(scale, shift) of z for a staircase chain ``run``: the smallest scale whose best shift reaches
    90% of the entropy target min(log STAIRCASE_LEVELS, the best found)."""
    std = float(zv.std())
    mean = float(zv.mean())
    cands = []
    for k in np.arange(-4.0, 6.5, 0.5):           # the pre-activation std, relative to 1
        s = 2.0 ** k / std
        for m in ((-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0) if can_shift else (0.0,)):
            c = m * 2.0 ** k - s * mean if can_shift else 0.0   # mean moved to m standard deviations
            y = np.asarray(run(np.asarray(s * zv + c, np.float32)))
            cands.append((s, c, _unit_entropy(y, axis)))
    best = max(h for _, _, h in cands)
    goal = 0.9 * min(best, math.log(STAIRCASE_LEVELS))
    ok = [(s, -h, c) for s, c, h in cands if h >= goal]
    s, _, c = min(ok)
    return s, c
