"""canonicalize: ONNX arithmetic/activation/layout ops -> projc constraint and layout ops.

One rule per ONNX kind (table at the bottom). Conv, MaxPool, GlobalMaxPool and ReduceMax are left
to ``lower``. BatchNormalization (inference) becomes a mul by a const scale and a sum with a const
shift: the BN statistics and affine parameters are FROZEN (folded into consts, never trained).
With the option ``train_batchnorm=true`` only the statistics are frozen: a BatchNormalization whose
scale and bias are trainable initializers becomes
``sum(mul(mul(sum(x, -mean), 1/sqrt(var+eps)), scale), bias)`` (scale and bias reshaped to
``[C,1,..]``), so gamma and beta train as parameters.
"""
from __future__ import annotations

from functools import partial
from typing import ClassVar

import numpy as np

from projc.errors import PassError
from projc.ir import Graph, Op, Value

from . import Pass, register_pass
from ._common import (
    Lowering,
    Rewriter,
    Rule,
    const_data,
    operands,
    optional_input,
    reshape_param,
    rewrite,
    rules,
    src_of,
)


def _scalar(rw: Rewriter, x: float, like: Value, hint: str = "") -> Value:
    return rw.const(np.array(x), like.dtype, hint=hint)


def gemm(rw: Rewriter, op: Op) -> Value:
    a, b, c = op.operand(0), op.operand(1), optional_input(op, 2)
    p = op.params
    if p.get("transA", 0):
        a = rw.emit("transpose", [a], {"perm": [1, 0]})
    if p.get("transB", 0):
        b = rw.emit("transpose", [b], {"perm": [1, 0]})
    y = rw.emit("dot", [a, b])
    if float(p.get("alpha", 1.0)) != 1.0:
        y = rw.emit("mul", [y, _scalar(rw, p["alpha"], y, "alpha")])
    if c is not None:
        if float(p.get("beta", 1.0)) != 1.0:
            c = rw.emit("mul", [c, _scalar(rw, p["beta"], c, "beta")])
        y = rw.emit("sum", [y, c])
    return y


def matmul(rw: Rewriter, op: Op) -> Value:
    """MatMul -> dot: a [..., K] x b [K, M] as it is; b [K] as [K, 1] (reshaped back); b with batch
    dims (a batch of products, e.g. attention's q.k^T and p.v) as a batched dot, a's rank >= 2."""
    a, b = op.operand(0), op.operand(1)
    out = op.outputs[0]
    if b.rank == 1 and a.rank >= 1:
        col = rw.emit("reshape", [b], {"shape": [b.shape[0], 1]})
        y = rw.emit("dot", [a, col])
        return rw.emit("reshape", [y], {"shape": reshape_param(out.shape)}, shape=out.shape)
    if b.rank == 2 and a.rank >= 1:
        return rw.emit("dot", [a, b])
    if b.rank > 2 and a.rank >= 2:
        return rw.emit("dot", [a, b], shape=out.shape)
    raise PassError(f"MatMul {src_of(op)}: {a.type_str()} x {b.type_str()}: a 1-D left operand of a "
                    "batched product is not supported for training")


def sub(rw: Rewriter, op: Op) -> Value:
    a, b = op.operand(0), op.operand(1)
    data = const_data(b)
    if data is not None:
        return rw.emit("sum", [a, rw.const(-data, b.dtype)], shape=op.outputs[0].shape)
    return rw.emit("sum", [a, rw.emit("mul", [b, _scalar(rw, -1.0, b, "minus_one")])], shape=op.outputs[0].shape)


def div(rw: Rewriter, op: Op) -> Value | None:
    a, b = op.operand(0), op.operand(1)
    data = const_data(b)
    if data is None or not a.dtype.startswith("f"):
        return None
    return rw.emit("mul", [a, rw.const(1.0 / data, b.dtype)], shape=op.outputs[0].shape)


def to_reshape(rw: Rewriter, op: Op) -> Value:
    out = op.outputs[0]
    try:
        return rw.emit("reshape", [op.operand(0)], {"shape": reshape_param(out.shape)}, shape=out.shape)
    except ValueError as e:
        raise PassError(f"{op.kind} {src_of(op)}: {e}") from None


def remove(rw: Rewriter, op: Op) -> list[Value] | Value | None:
    if op.kind == "Dropout" and len(op.outputs) > 1:
        return None if _used(rw, op.outputs[1]) else [op.operand(0), op.outputs[1]]
    return op.operand(0)


def _used(rw: Rewriter, v: Value) -> bool:
    return v in rw.graph.outputs or any(v in o.inputs for o in rw.graph.ops)


def cast(rw: Rewriter, op: Op) -> Value | None:
    x = op.operand(0)
    return x if op.outputs[0].dtype == x.dtype else None


def transpose(rw: Rewriter, op: Op) -> Value:
    x = op.operand(0)
    perm = op.params.get("perm") or list(reversed(range(x.rank)))
    return rw.emit("transpose", [x], {"perm": [int(i) for i in perm]}, shape=op.outputs[0].shape)


def concat(rw: Rewriter, op: Op) -> Value:
    axis = int(op.params.get("axis", 0)) % op.outputs[0].rank
    return rw.emit("concat", operands(op), {"axis": axis}, shape=op.outputs[0].shape)


def slice_(rw: Rewriter, op: Op) -> Value | None:
    x, rest = op.operand(0), op.inputs[1:]
    arrays = [const_data(v) if v is not None else None for v in rest]
    if any(v is not None and a is None for v, a in zip(rest, arrays)):
        return None  # dynamic slice: left for lower's error report
    starts, ends = arrays[0], arrays[1]
    if starts is None or ends is None:
        return None  # starts/ends omitted: left for lower's error report
    axes = arrays[2] if len(arrays) > 2 and arrays[2] is not None else np.arange(len(starts))
    steps = arrays[3] if len(arrays) > 3 and arrays[3] is not None else np.ones(len(starts), np.int64)
    params = {"starts": [int(s) for s in starts], "ends": [int(e) for e in ends],
              "axes": [int(a) % x.rank for a in axes], "steps": [int(s) for s in steps]}
    return rw.emit("slice", [x], params, shape=op.outputs[0].shape)


def pad(rw: Rewriter, op: Op) -> Value | None:
    x, pads_v, value_v, axes_v = op.operand(0), optional_input(op, 1), optional_input(op, 2), optional_input(op, 3)
    pads_data, value_data, axes_data = const_data(pads_v), const_data(value_v), const_data(axes_v)
    if op.params.get("mode", "constant") not in ("constant", b"constant") or pads_data is None:
        return None
    if (value_v is not None and value_data is None) or (axes_v is not None and axes_data is None):
        return None
    pads = [int(p) for p in pads_data]
    if axes_data is not None:
        axes = [int(a) % x.rank for a in axes_data]
        full = [0] * (2 * x.rank)
        for i, ax in enumerate(axes):
            full[ax], full[ax + x.rank] = pads[i], pads[i + len(axes)]
        pads = full
    value = float(value_data.reshape(-1)[0]) if value_data is not None and value_data.size else 0.0
    return rw.emit("pad", [x], {"pads": pads, "value": value}, shape=op.outputs[0].shape)


def pwl(fn: str, **fixed) -> Rule:
    def rule(rw: Rewriter, op: Op) -> Value:
        return rw.emit("sum_pwl", [op.operand(0)], {"fn": fn, **fixed})
    return rule


def leaky_relu(rw: Rewriter, op: Op) -> Value:
    return rw.emit("sum_pwl", [op.operand(0)], {"fn": "leaky_relu", "alpha": float(op.params.get("alpha", 0.01))})


def clip(rw: Rewriter, op: Op) -> Value | None:
    x, lo_v, hi_v = op.operand(0), optional_input(op, 1), optional_input(op, 2)
    lo = op.params.get("min", -np.inf)
    hi = op.params.get("max", np.inf)
    lo_data, hi_data = const_data(lo_v), const_data(hi_v)
    if (lo_v is not None and lo_data is None) or (hi_v is not None and hi_data is None):
        return None
    if lo_data is not None:
        lo = lo_data.item()
    if hi_data is not None:
        hi = hi_data.item()
    return rw.emit("sum_pwl", [x], {"fn": "clip", "lo": float(lo), "hi": float(hi)})


def batchnorm(rw: Rewriter, op: Op, train_affine: bool = False) -> Value | None:
    x, scale, bias, mean, var = (op.operand(i) for i in range(5))
    if op.params.get("training_mode", 0) or len(op.outputs) > 1:
        return None
    if train_affine and scale.role == "param" and bias.role == "param":
        return _batchnorm_trained_affine(rw, op)
    g, b, m, v = scale.data, bias.data, mean.data, var.data
    if g is None or b is None or m is None or v is None:
        raise PassError(f"BatchNormalization {src_of(op)}: its scale/bias/mean/var need values to be frozen")
    s = g / np.sqrt(v + float(op.params.get("epsilon", 1e-5)))
    shift = b - m * s
    bshape = (-1,) + (1,) * (x.rank - 2)
    y = rw.emit("mul", [x, rw.const(s.reshape(bshape), x.dtype, hint=(scale.hint or "bn") + ".frozen_scale")])
    return rw.emit("sum", [y, rw.const(shift.reshape(bshape), x.dtype, hint=(bias.hint or "bn") + ".frozen_shift")])


def _batchnorm_trained_affine(rw: Rewriter, op: Op) -> Value:
    """Frozen statistics, trained gamma/beta: ((x - mean) * inv_std) * gamma + beta."""
    x, scale, bias, mean, var = (op.operand(i) for i in range(5))
    if mean.data is None or var.data is None:
        raise PassError(f"BatchNormalization {src_of(op)}: its mean/var need values to be frozen")
    bshape = (-1,) + (1,) * (x.rank - 2)
    inv = 1.0 / np.sqrt(np.asarray(var.data) + float(op.params.get("epsilon", 1e-5)))
    hint = scale.hint or "bn"
    centred = rw.emit("sum", [x, rw.const(-np.asarray(mean.data).reshape(bshape), x.dtype, hint=hint + ".minus_mean")])
    normed = rw.emit("mul", [centred, rw.const(inv.reshape(bshape), x.dtype, hint=hint + ".inv_std")])
    gamma = rw.emit("reshape", [scale], {"shape": list(bshape)})
    beta = rw.emit("reshape", [bias], {"shape": list(bshape)})
    return rw.emit("sum", [rw.emit("mul", [normed, gamma]), beta])


# post_transforms that keep the order of each row's scores: the argmax label stays the same, so
# training the raw scores (the logits) and keeping the transform in the export is sound
_ORDER_KEEPING = ("NONE", "SOFTMAX", "LOGISTIC")


def linear_classifier(rw: Rewriter, op: Op) -> list[Value]:
    """ai.onnx.ml LinearClassifier(x; W, b) -> sum(dot(x, transpose(reshape(W))), b): the raw
    scores; the label output and the post_transform stay in the export only."""
    x, coefficients, intercepts = op.operand(0), op.operand(1), optional_input(op, 2)
    transform = op.params.get("post_transform", "NONE")
    if transform not in _ORDER_KEEPING or x.rank != 2 or not isinstance(x.shape[1], int):
        raise PassError(f"LinearClassifier {src_of(op)}: training needs a [B, features] input and "
                        f"post_transform NONE, SOFTMAX or LOGISTIC (got {x.type_str()}, {transform})")
    ncoef = coefficients.shape[0]
    if not isinstance(ncoef, int):
        raise PassError(f"LinearClassifier {src_of(op)}: its coefficients {coefficients.type_str()} need "
                        "a static size")
    rows = ncoef // x.shape[1]
    if rows < 2:
        raise PassError(f"LinearClassifier {src_of(op)}: a binary classifier with one coefficient "
                        "row is not supported for training (export it with two score columns)")
    w = rw.emit("reshape", [coefficients], {"shape": [rows, x.shape[1]]})
    scores = rw.emit("dot", [x, rw.emit("transpose", [w], {"perm": [1, 0]})])
    if intercepts is not None:
        scores = rw.emit("sum", [scores, intercepts])
    return [op.outputs[0], scores]


def prelu(rw: Rewriter, op: Op) -> Value:
    """PRelu(x, a) = max(x, 0) + a·min(x, 0), split exactly: relu(x) and min(x, 0) are sum_pwl
    families on x, a·min(x, 0) a mul (bilinear when the slope trains, linear when it is constant);
    a constant slope with one value is a leaky ReLU."""
    x, slope = op.operand(0), op.operand(1)
    data = const_data(slope)
    if data is not None and data.size and np.all(data == data.reshape(-1)[0]):
        return rw.emit("sum_pwl", [x], {"fn": "leaky_relu", "alpha": float(data.reshape(-1)[0])},
                       shape=op.outputs[0].shape)
    positive = rw.emit("sum_pwl", [x], {"fn": "relu"})
    negative = rw.emit("sum_pwl", [x], {"fn": "clip", "lo": -np.inf, "hi": 0.0})
    return rw.emit("sum", [positive, rw.emit("mul", [negative, slope])], shape=op.outputs[0].shape)


def _add(rw: Rewriter, op: Op) -> Value:
    return rw.emit("sum", operands(op), shape=op.outputs[0].shape)


def _mul(rw: Rewriter, op: Op) -> Value:
    return rw.emit("mul", operands(op), shape=op.outputs[0].shape)


def _neg(rw: Rewriter, op: Op) -> Value:
    x = op.operand(0)
    return rw.emit("mul", [x, _scalar(rw, -1.0, x, "minus_one")])


L = Lowering
LOWERINGS = {
    "Gemm": L(gemm, "dot, sum", "a'b'·alpha + c·beta"),
    "MatMul": L(matmul, "dot", "batch dims: a batched dot (left operand at least 2-D)"),
    "Add": L(_add, "sum"),
    "Sum": L(_add, "sum"),
    "Mul": L(_mul, "mul"),
    "Sub": L(sub, "sum", "a - b = sum(a, -b)"),
    "Neg": L(_neg, "mul", "mul(a, -1)"),
    "Div": L(div, "mul", "by a constant: mul(a, 1/c)"),
    "Flatten": L(to_reshape, "reshape"),
    "Reshape": L(to_reshape, "reshape"),
    "Squeeze": L(to_reshape, "reshape"),
    "Unsqueeze": L(to_reshape, "reshape"),
    "Transpose": L(transpose, "transpose"),
    "Concat": L(concat, "concat"),
    "Slice": L(slice_, "slice", "constant starts/ends/axes/steps"),
    "Pad": L(pad, "pad", "constant mode, constant pads"),
    "Identity": L(remove, "-", "removed"),
    "Dropout": L(remove, "-", "inference: removed"),
    "Cast": L(cast, "-", "to its own dtype: removed"),
    "Relu": L(pwl("relu"), "sum_pwl[relu]"),
    "LeakyRelu": L(leaky_relu, "sum_pwl[leaky_relu]"),
    "PRelu": L(prelu, "sum_pwl[relu], sum_pwl[clip], mul, sum", "max(x,0) + a·min(x,0); the slope trains "
               "(bilinear mul); one constant slope: sum_pwl[leaky_relu]"),
    "Clip": L(clip, "sum_pwl[clip]", "constant bounds"),
    "Abs": L(pwl("abs"), "sum_pwl[abs]"),
    "Sign": L(pwl("sign"), "sum_pwl[sign]"),
    "BatchNormalization": L(batchnorm, "mul, sum",
                            "inference; a frozen affine (train_batchnorm: scale and bias train)"),
    "ml.LinearClassifier": L(linear_classifier, "dot, sum",
                             "the raw scores train; post_transform NONE, SOFTMAX or LOGISTIC"),
}


@register_pass("canonicalize")
class Canonicalize(Pass):
    train_batchnorm: bool = False
    lowerings: ClassVar[dict[str, Lowering]] = LOWERINGS

    def run(self, graph: Graph) -> bool:
        table = rules(LOWERINGS)
        if self.train_batchnorm:
            table["BatchNormalization"] = partial(batchnorm, train_affine=True)
        return rewrite(graph, table)
