"""fold-constants: an op whose operands are all consts (with data) becomes a const.

Evaluated eagerly on the CPU with the registry's JAX function for the op (the same function the
forward uses), so folding cannot change what the graph computes. Shape(x) of a statically shaped
x folds too. Ops registered with ``fold=False`` (randomness) and losses are never folded.
"""
from __future__ import annotations

import jax
import numpy as np

from projc.ir import DTYPES, Graph, Op, Value
from projc.ir.constraints import LOSSES
from projc.ops import registry

from . import Pass, register_pass


def graph_opset(graph: Graph) -> int:
    meta = graph.meta
    for key in ("opset", "opset_import", "opsets", "opset_imports"):
        v = meta.get(key)
        if isinstance(v, int):
            return v
        if isinstance(v, dict):
            for dom in ("", "ai.onnx"):
                if isinstance(v.get(dom), int):
                    return v[dom]
    return registry.MAX_OPSET


def evaluate(op: Op, opset: int) -> list[np.ndarray] | None:
    """The op's outputs for const operands, or None when it cannot be folded."""
    if op.kind == "Shape" and op.inputs[0] is not None and op.inputs[0].is_static:
        shape = np.array(op.inputs[0].shape, dtype=np.int64)
        start, end = op.params.get("start", 0), op.params.get("end", None)
        return [shape[start:end]]
    if op.kind in LOSSES or not op.outputs:
        return None
    if any(v is not None and (v.role != "const" or v.data is None) for v in op.inputs):
        return None
    opdef = registry.lookup(op.kind, opset)
    if opdef is None or not opdef.fold:
        return None
    kwargs = {**opdef.attrs, **op.params}
    args = [None if v is None else np.asarray(v.data) for v in op.inputs]
    with jax.default_device(jax.devices("cpu")[0]), jax.enable_x64(True):
        result = opdef.fn(*args, **kwargs)
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        return [np.asarray(r) for r in results]


@register_pass("fold-constants")
class FoldConstants(Pass):
    def run(self, graph: Graph) -> bool:
        opset = graph_opset(graph)
        changed = False
        kept: list[Op] = []
        for op in graph.ops:
            values = evaluate(op, opset)
            if values is None or len(values) < len(op.outputs):
                kept.append(op)
                continue
            for out, data in zip(op.outputs, values):
                data = np.asarray(data, dtype=DTYPES[out.dtype])
                if out.is_static and tuple(data.shape) != tuple(out.shape):
                    data = data.reshape(out.shape)
                const = Value(out.dtype, tuple(data.shape), "const", hint=out.hint, data=data)
                graph.initializers.append(const)
                graph.replace_uses(out, const)
                # ops kept so far were already rewritten by replace_uses (they are in graph.ops)
            changed = True
        graph.ops = kept
        return changed
