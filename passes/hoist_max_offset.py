"""hoist-max-offset: an offset that is constant along a max's axes moves out of the max.

    max[axes](sum(z, b))  ->  sum(max[axes](z), b')     when b has size 1 on every reduced axis

max_k (z_k + b) = max_k z_k + b exactly (and in floating point too: rounding is monotone, so the
argmax and the maximum agree). The rewrite matters for training, not for the forward: a conv's bias
b broadcast over H·W positions, then a global max, is trained through the H·W copies the bias sum
holds, of which the max's projection moves only the argmax one (per image and channel); the bias's
target is the mean of all copies, so it gets 1/(H·W) of the correction. After the rewrite the bias
is added once per (image, channel) after the max, like a dense layer's bias, and gets it in full.
(models/maxlogits_digits.onnx: logits = a global max of the last conv; its He init puts one class's
logits ~2.7 above the others, which the diluted bias took more than 60 updates to undo.)

Applies when the sum is the max's only input producer and has no other use, at least one operand
varies along the reduced axes, and those varying operands broadcast to the sum's own shape (so the
max's input shape is unchanged). Offsets are reshaped to drop the reduced axes when keepdims=0.
Run after ``lower`` (which makes global pools and conv biases ``max`` and ``sum`` ops); the old sum
is left for ``dce``.

Opt-in (``OPTIONAL_PASSES``: not in TRAINING_PIPELINE; e.g. ``compile_for_training(graph,
pipeline=...)`` with ``hoist-max-offset`` after ``lower``). Measured on maxlogits_digits (CP, 10
epochs, He init): plain CP at batch 256 reaches 0.38 with it (the bias no longer pins one class),
but with the best configuration (batch 32, anderson=1, update_scale=1.5) the graph as lowered does
better, 0.766 against 0.724 (same batches): the undiluted bias soaks up the loss's correction at
the logits and leaves less of it to the max and the conv weights under it.
"""
from __future__ import annotations

from projc.ir import Graph, Op, Value

from . import Pass, register_pass
from ._common import Rewriter, reshape_param, rewrite


def _aligned(shape: tuple, rank: int) -> tuple:
    """``shape`` right-aligned to ``rank`` (numpy broadcasting), missing leading dims as 1."""
    return (1,) * (rank - len(shape)) + tuple(shape)


def _is_offset(v: Value, rank: int, axes: list[int]) -> bool:
    shape = _aligned(v.shape, rank)
    return all(shape[a] == 1 for a in axes)


def _offset_for(rw: Rewriter, v: Value, rank: int, axes: list[int], keepdims: bool) -> Value:
    """``v`` shaped to broadcast against the max's output (reduced axes dropped when not kept)."""
    if keepdims:
        return v
    shape = tuple(d for i, d in enumerate(_aligned(v.shape, rank)) if i not in axes)
    if shape == tuple(v.shape):
        return v
    return rw.emit("reshape", [v], {"shape": reshape_param(shape)}, shape=shape)


def _hoist_rule(graph: Graph):
    producers, users = graph.producers(), graph.users()
    outputs = set(graph.outputs)

    def rule(rw: Rewriter, op: Op):
        x = op.inputs[0]
        s = producers.get(x) if x is not None else None
        if x is None or s is None or s.kind != "sum" or len(users.get(x, ())) != 1 or x in outputs:
            return None
        rank = x.rank
        axes = sorted(int(a) % rank for a in (op.params.get("axes") or range(rank)))
        addends = [v for v in s.inputs if v is not None]
        moving = [v for v in addends if not _is_offset(v, rank, axes)]
        offsets = [v for v in addends if _is_offset(v, rank, axes)]
        if not moving or not offsets:
            return None
        inner = moving[0] if len(moving) == 1 else rw.emit("sum", moving)
        if tuple(inner.shape) != tuple(x.shape):
            return None  # an offset also broadcasts the varying part: the max would see another shape
        keep = bool(op.params.get("keepdims", 1))
        m = rw.emit("max", [inner], dict(op.params))
        offs = [_offset_for(rw, v, rank, axes, keep) for v in offsets]
        return rw.emit("sum", [m, *offs], shape=op.outputs[0].shape)

    return rule


@register_pass("hoist-max-offset")
class HoistMaxOffset(Pass):
    def run(self, graph: Graph) -> bool:
        return rewrite(graph, {"max": _hoist_rule(graph)})
