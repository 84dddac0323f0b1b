"""lower: Conv / MaxPool / GlobalMaxPool / ReduceMax / AveragePool / GlobalAveragePool / ReduceMean
-> patches, dot, max and layout ops; then report every op left that the solver cannot train (one
PassError listing them all).

    Conv(x, W, b)   -> sum(transpose(conv(transpose(x), W)), reshape(b, [OC,1..]))   (any group)
    Conv(x, W, b), lower{conv=patches}
                    -> sum(transpose(dot(patches(x), transpose(reshape(W, [OC, C*K])))), reshape(b, [OC,1..]))
    ConvTranspose(x, W, b) -> sum(transpose(conv[transpose=1](transpose(x), W)), reshape(b, [OC,1..]))
    MaxPool(x)      -> transpose(max(reshape(patches(pad(x, -inf)), [N,*O,C,K]), axis=-1))
    MaxPool(x), one window covering x (no pads) -> max[axes=spatial, keepdims=1](x)   (a global max)
    GlobalMaxPool(x)-> max[axes=spatial, keepdims=1](x)
    ReduceMax(x)    -> max[axes, keepdims](x)
    AveragePool(x)  -> transpose(mean[axes=[n+2], keepdims=0](reshape(patches(x), [N,*O,C,K])))
    GlobalAveragePool(x) -> mean[axes=spatial, keepdims=1](x)
    ReduceMean(x)   -> mean[axes, keepdims](x)
    Gather(E, idx)  -> embed(E, idx)  (E a param [V, D], axis 0, idx integer data: an embedding lookup)
    Gather(x, c)    -> reshape(concat(slice(x) per constant index))
    Resize(x)       -> take per resized axis (nearest), + wsum (linear, cubic)   (passes/_resize.py)

Averages become ``mean`` families (a fixed-coefficient sum y = (1/K) sum_k a_k). Their projection
is closed-form in a metric the pass option ``mean_metric`` chooses: ``sum`` (the default) weighs
the output by K², i.e. projects the sum onto K times the target, so every input moves by the
residual's K/(K+1) and the correction reaches the layer below; ``euclidean`` is the plain nearest
point, in which each input moves by only 1/(K+1) of the residual and the output stays near the
current mean (measured: a global average pool over 8x8 then barely trains the convolution under
it). docs/design-notes.md "Average pooling" has the measurements.

A ``conv`` family is a dot per output position on the patch view (``projc.ops.convolution``):
the state layouts project it through ``lax.conv_general_dilated`` and its transposes
(``backends/jax/conv.py``) instead of materializing patches. It is channels-last (NHWC): the
transposes around it cancel between convolutions in the ``channels-last`` pass. The option ``conv=patches`` keeps
the earlier lowering (patches move + dot family; group=1 only): the same parameters, the reference
the conv family is tested against.
"""
from __future__ import annotations

import math
from functools import partial
from typing import ClassVar

import numpy as np

from projc.errors import PassError
from projc.ir import Graph, Op
from projc.ir.constraints import CONSTRAINT_KINDS, MEAN_METRICS
from projc.ops.spatial import _transpose_pads

from . import Pass, register_pass
from ._common import Lowering, Rewriter, const_data, data_values, reshape_param, rewrite, rules, src_of
from ._resize import resize


def _window(op: Op, spatial: tuple, kernel: list[int]):
    """strides, pads (ONNX order), dilations of a Conv/MaxPool with auto_pad resolved."""
    n = len(kernel)
    strides = [int(s) for s in (op.params.get("strides") or [1] * n)]
    dilations = [int(d) for d in (op.params.get("dilations") or [1] * n)]
    pads = [int(p) for p in (op.params.get("pads") or [0] * (2 * n))]
    auto = op.params.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if not all(isinstance(s, int) for s in spatial):
            raise PassError(f"{op.kind} {src_of(op)}: auto_pad={auto} needs static spatial dims")
        pads = [0] * (2 * n)
        for i in range(n):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + n] = (small, big) if auto == "SAME_UPPER" else (big, small)
    elif auto == "VALID":
        pads = [0] * (2 * n)
    return strides, pads, dilations


def _conv_family(rw: Rewriter, x, w, params: dict, n: int):
    """The channels-last ``conv`` family between transposes from and back to NCHW (the
    ``channels-last`` pass cancels them between convolutions)."""
    xh = rw.emit("transpose", [x], {"perm": [0, *range(2, n + 2), 1]})
    y = rw.emit("conv", [xh, w], params)
    return rw.emit("transpose", [y], {"perm": [0, n + 1, *range(1, n + 1)]})


def _bias(rw: Rewriter, y, b, oc: int, n: int):
    if b is None:
        return y
    return rw.emit("sum", [y, rw.emit("reshape", [b], {"shape": [oc] + [1] * n})])


def conv(rw: Rewriter, op: Op, mode: str = "family"):
    x, w = op.operand(0), op.operand(1)
    b = op.inputs[2] if len(op.inputs) > 2 else None
    group = int(op.params.get("group", 1))
    if not w.is_static:
        raise PassError(f"Conv {src_of(op)}: the weight {w.type_str()} needs a static shape")
    wshape = [int(d) for d in w.shape]  # static: checked above
    oc, kernel = wshape[0], [int(k) for k in (op.params.get("kernel_shape") or wshape[2:])]
    n = len(kernel)
    strides, pads, dilations = _window(op, x.shape[2:], kernel)
    if mode == "family":
        y = _conv_family(rw, x, w, {"strides": strides, "pads": pads, "dilations": dilations, "group": group}, n)
        return _bias(rw, y, b, oc, n)
    if group != 1:
        raise PassError(f"Conv {src_of(op)}: group={group} (grouped/depthwise convolution) needs the "
                        "conv family; lower{conv=patches} supports group=1 only")
    cols = rw.emit("patches", [x], {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations})
    w2 = rw.emit("reshape", [w], {"shape": [oc, int(np.prod(wshape[1:]))]})
    wt = rw.emit("transpose", [w2], {"perm": [1, 0]})
    y = rw.emit("dot", [cols, wt])                                        # [N, *O, OC]
    y = rw.emit("transpose", [y], {"perm": [0, n + 1, *range(1, n + 1)]})  # [N, OC, *O]
    return _bias(rw, y, b, oc, n)


def conv_transpose(rw: Rewriter, op: Op):
    """A ConvTranspose is a conv family with transpose=1: its pads (auto_pad, output_shape) resolved
    to explicit crops, its output_padding kept."""
    x, w = op.operand(0), op.operand(1)
    b = op.inputs[2] if len(op.inputs) > 2 else None
    if not w.is_static:
        raise PassError(f"ConvTranspose {src_of(op)}: the weight {w.type_str()} needs a static shape")
    wshape = [int(d) for d in w.shape]  # static: checked above
    kernel = [int(k) for k in (op.params.get("kernel_shape") or wshape[2:])]
    n = len(kernel)
    group = int(op.params.get("group", 1))
    strides = [int(s) for s in (op.params.get("strides") or [1] * n)]
    dilations = [int(d) for d in (op.params.get("dilations") or [1] * n)]
    extra = [int(a) for a in (op.params.get("output_padding") or [0] * n)]
    auto = op.params.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    spatial = x.shape[2:]
    if (op.params.get("output_shape") is not None or auto in ("SAME_UPPER", "SAME_LOWER")) and not all(
            isinstance(s, int) for s in spatial):
        raise PassError(f"ConvTranspose {src_of(op)}: output_shape/auto_pad need static spatial dims")
    crop = _transpose_pads(spatial, kernel, strides, dilations, extra, op.params.get("pads"), auto,
                           op.params.get("output_shape"))
    pads = [lo for lo, _ in crop] + [hi for _, hi in crop]
    y = _conv_family(rw, x, w, {"strides": strides, "pads": pads, "dilations": dilations, "group": group,
                                "transpose": 1, "output_padding": extra}, n)
    return _bias(rw, y, b, wshape[1] * group, n)


def _covers_input(spatial: tuple, kernel: list[int], pads: list[int], dilations: list[int]) -> bool:
    """One unpadded, undilated window spanning every spatial dim (output 1x..x1, strides moot)."""
    return (not any(pads) and all(d == 1 for d in dilations)
            and all(isinstance(s, int) and s == k for s, k in zip(spatial, kernel)))


def maxpool(rw: Rewriter, op: Op):
    x = op.operand(0)
    indices = op.outputs[1] if len(op.outputs) > 1 else None
    if indices is not None and (indices in rw.graph.outputs or any(indices in o.inputs for o in rw.graph.ops)):
        raise PassError(f"MaxPool {src_of(op)}: its Indices output is not supported for training")
    kernel = [int(k) for k in op.params["kernel_shape"]]
    n = len(kernel)
    strides, pads, dilations = _window(op, x.shape[2:], kernel)
    if op.params.get("ceil_mode", 0):
        raise PassError(f"MaxPool {src_of(op)}: ceil_mode=1 is unsupported; export with ceil_mode=0")
    if _covers_input(x.shape[2:], kernel, pads, dilations):  # a global max exported as a MaxPool
        return [rw.emit("max", [x], {"axes": list(range(2, n + 2)), "keepdims": 1})] + op.outputs[1:]
    if any(pads):
        x = rw.emit("pad", [x], {"pads": [0, 0, *pads[:n], 0, 0, *pads[n:]], "value": -math.inf})
    cols = rw.emit("patches", [x], {"kernel": kernel, "strides": strides, "pads": [0] * (2 * n),
                                    "dilations": dilations})                    # [N, *O, C*K]
    c, k = x.shape[1], math.prod(kernel)
    split = cols.shape[:-1] + (c, k)
    cols = rw.emit("reshape", [cols], {"shape": reshape_param(split)}, shape=split)  # [N, *O, C, K]
    m = rw.emit("max", [cols], {"axes": [n + 2], "keepdims": 0})                  # [N, *O, C]
    return [rw.emit("transpose", [m], {"perm": [0, n + 1, *range(1, n + 1)]})] + op.outputs[1:]


def global_maxpool(rw: Rewriter, op: Op):
    x = op.operand(0)
    return rw.emit("max", [x], {"axes": list(range(2, x.rank)), "keepdims": 1})


def reduce_axes(op: Op):
    """A Reduce* op's axes, sorted and non-negative: [] for a no-op (noop_with_empty_axes), None when
    they are a runtime input (the op is then left for the error report)."""
    x = op.operand(0)
    axes = op.params.get("axes")
    if len(op.inputs) > 1 and op.inputs[1] is not None:
        data = const_data(op.inputs[1])
        if data is None:
            return None
        axes = data.tolist()
    if not axes:
        return [] if op.params.get("noop_with_empty_axes", 0) else list(range(x.rank))
    return sorted({int(a) % x.rank for a in axes})


def reduce_max(rw: Rewriter, op: Op):
    axes = reduce_axes(op)
    if not axes:
        return op.inputs[0] if axes == [] else None
    return rw.emit("max", [op.operand(0)], {"axes": axes, "keepdims": int(op.params.get("keepdims", 1))})


def gather(rw: Rewriter, op: Op):
    """Gather by constant indices is a move: one slice per index (concat), reshaped. Gather of a
    trained table [V, D] along axis 0 by integer data (an embedding lookup) is an ``embed`` family."""
    x, indices = op.operand(0), op.operand(1)
    idx, axis = const_data(indices), int(op.params.get("axis", 0)) % x.rank
    if idx is None and axis == 0 and x.role == "param" and x.rank == 2 and indices in data_values(rw.graph):
        return rw.emit("embed", [x, indices])
    if idx is None or not isinstance(x.shape[axis], int):
        return None  # runtime indices (or a symbolic axis): left for the error report
    dim = x.shape[axis]
    parts = []
    for i in np.asarray(idx).reshape(-1).tolist():
        i = i + dim if i < 0 else i
        parts.append(rw.emit("slice", [x], {"starts": [i], "ends": [i + 1], "axes": [axis], "steps": [1]}))
    y = parts[0] if len(parts) == 1 else rw.emit("concat", parts, {"axis": axis})
    out = op.outputs[0].shape
    return rw.emit("reshape", [y], {"shape": reshape_param(out)}, shape=out)


def avgpool(rw: Rewriter, op: Op, metric: str = "sum"):
    x = op.operand(0)
    kernel = [int(k) for k in op.params["kernel_shape"]]
    n = len(kernel)
    strides, pads, dilations = _window(op, x.shape[2:], kernel)
    if op.params.get("ceil_mode", 0):
        raise PassError(f"AveragePool {src_of(op)}: ceil_mode=1 is unsupported; export with ceil_mode=0")
    if any(pads) and not op.params.get("count_include_pad", 0):
        # border windows would average fewer elements: per-position divisors, not one mean
        raise PassError(f"AveragePool {src_of(op)}: padding with count_include_pad=0 is unsupported for "
                        "training; export with count_include_pad=True (torch's default) or no padding")
    cols = rw.emit("patches", [x], {"kernel": kernel, "strides": strides, "pads": pads,
                                    "dilations": dilations})                    # [N, *O, C*K], zero-padded
    c, k = x.shape[1], math.prod(kernel)
    split = cols.shape[:-1] + (c, k)
    cols = rw.emit("reshape", [cols], {"shape": reshape_param(split)}, shape=split)  # [N, *O, C, K]
    m = rw.emit("mean", [cols], {"axes": [n + 2], "keepdims": 0, "metric": metric})  # [N, *O, C]
    return rw.emit("transpose", [m], {"perm": [0, n + 1, *range(1, n + 1)]})


def _mean_over(rw: Rewriter, x, axes: list[int], keepdims: bool, metric: str):
    if any(not isinstance(x.shape[a], int) for a in axes):
        return None  # averaging over the batch (symbolic) axis: left for the error report
    return rw.emit("mean", [x], {"axes": axes, "keepdims": int(keepdims), "metric": metric})


def global_avgpool(rw: Rewriter, op: Op, metric: str = "sum"):
    x = op.operand(0)
    return _mean_over(rw, x, list(range(2, x.rank)), True, metric)


def reduce_mean(rw: Rewriter, op: Op, metric: str = "sum"):
    axes = reduce_axes(op)
    if not axes:
        return op.inputs[0] if axes == [] else None
    return _mean_over(rw, op.operand(0), axes, bool(op.params.get("keepdims", 1)), metric)


L = Lowering
LOWERINGS = {
    "Conv": L(conv, "conv, sum", "any group (grouped, depthwise)"),
    "ConvTranspose": L(conv_transpose, "conv, sum", "any group"),
    "AveragePool": L(avgpool, "patches, mean", "count_include_pad=1 or no padding; ceil_mode=0"),
    "GlobalAveragePool": L(global_avgpool, "mean"),
    "ReduceMean": L(reduce_mean, "mean", "constant axes, not over the batch"),
    "MaxPool": L(maxpool, "patches, max", "ceil_mode=0; its Indices output unused"),
    "GlobalMaxPool": L(global_maxpool, "max"),
    "ReduceMax": L(reduce_max, "max", "constant axes"),
    "Gather": L(gather, "slice, concat | embed", "constant indices, or an embedding lookup (a [V, D] "
                "parameter by integer data along axis 0)"),
    "Resize": L(resize, "take | take, wsum", "nearest: moves; linear, cubic: one fixed-coefficient sum per "
                "output; constant scales/sizes, not over the batch (passes/_resize.py)"),
    "Upsample": L(resize, "take | take, wsum", "as Resize"),
}
# the rules that take the mean_metric option
MEAN_RULES = {"AveragePool": avgpool, "GlobalAveragePool": global_avgpool, "ReduceMean": reduce_mean}
CONV_MODES = ("family", "patches")

ADVICE = {
    "Softmax": "Softmax is supported only at the end of a classifier, where attach-loss strips it; "
               "remove it from the middle of the model",
    "LogSoftmax": "LogSoftmax is supported only at the end of a classifier (attach-loss strips it)",
    "Gather": "Gather of trained values by runtime indices is supported only as an embedding lookup "
              "(a parameter [V, D] gathered along axis 0 by integer data); otherwise use constant indices",
    "RNN": "recurrent ops train through the unroll pass; run it before lower",
    "LSTM": "recurrent ops train through the unroll pass; run it before lower",
    "GRU": "recurrent ops train through the unroll pass; run it before lower",
    "Div": "division by a trained value is not supported; divide by constants only",
    "Conv": "see the message above",
    "ConvTranspose": "see the message above",
}


def unsupported(graph: Graph) -> list[str]:
    fixed = data_values(graph)
    problems = []
    for op in graph.ops:
        if op.kind in CONSTRAINT_KINDS or all(v is None or v in fixed for v in op.inputs):
            continue  # projc ops, and ops on data/consts only (no training constraint)
        advice = ADVICE.get(op.kind, "no projection exists for this op; `projc ops --trainable` lists "
                                     "the ops that train and when")
        problems.append(f"  {op.kind} (src={src_of(op)!r}): {advice}")
    return problems


@register_pass("lower")
class Lower(Pass):
    mean_metric: str = "sum"
    conv: str = "family"    # "patches": the earlier im2col lowering (patches move + dot family)
    lowerings: ClassVar[dict[str, Lowering]] = LOWERINGS

    def run(self, graph: Graph) -> bool:
        if self.mean_metric not in MEAN_METRICS:
            raise PassError(f"lower: mean_metric={self.mean_metric!r}; choose one of {', '.join(MEAN_METRICS)}")
        table = rules(LOWERINGS)
        if self.conv not in CONV_MODES:
            raise PassError(f"lower: conv={self.conv!r}; choose one of {', '.join(CONV_MODES)}")
        table.update({kind: partial(rule, metric=self.mean_metric) for kind, rule in MEAN_RULES.items()})
        table["Conv"] = partial(conv, mode=self.conv)
        changed = rewrite(graph, table)
        problems = unsupported(graph)
        if problems:
            raise PassError(f"@{graph.name}: {len(problems)} op(s) cannot be trained by projection:\n"
                            + "\n".join(problems))
        return changed
