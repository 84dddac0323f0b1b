"""channels-last: cancel the layout transposes around convolutions by sinking them through the ops
between two convolutions.

``lower`` emits every Conv as ``transpose(conv(transpose(x)))`` (the ``conv`` family is NHWC, the
ONNX graph NCHW). This pass moves each transpose past the ops that consume it, one op a sweep,
until it cancels with the next convolution's inverse transpose or stops at an op it cannot pass
(a reshape such as Flatten, a concat, a loss):

    transpose(transpose(a, p), q)      -> transpose(a, p∘q), or a when that is the identity
    f(transpose(a, p), c, ...)         -> transpose(f(a, c', ...), p)       f elementwise (sum, sum_pwl,
                                          sum_smooth, mul, identity); every full-shaped operand a
                                          transpose by the same p; a broadcast operand c becomes
                                          c' = c laid out for a (a reshape of it)
    max/mean[axes](transpose(a, p))    -> [transpose](max/mean[p(axes)](a))  (none when the kept
                                          axes stay in order)
    patches(transpose(a, NHWC->NCHW))  -> patches[channels_last=1](a)   (the same [N, *O, C*K])
    reshape(reshape(a))                -> reshape(a)
    max/mean[K](reshape(patches(a), [N,*O,C,K]))
                                       -> max/mean[k axes](reshape(a, [N,O1,k1,..,C]))  windows that
                                          tile a (strides = kernel, no pad or dilation): no patches
                                          (channels-first a: [N,C,O1,k1,..], then a transpose)

Every rewrite is exact (a relabelling of the same numbers), so the forward is unchanged; what it
buys is speed: XLA's CPU backend fuses a transpose into the elementwise work around it, which then
runs several times slower (measured: the frozen-BatchNorm ReLU projection of lenet_digits 7 ms a
step with its transpose fused, docs/speed.md), and per-channel operands broadcast along the last
axis, where the bilinear root solve of a conv runs 4x faster than with NCHW's middle axis.
"""
from __future__ import annotations

import numpy as np

from projc.ir import Graph, Op, Value
from projc.ops.convolution import geometry, is_tiling

from . import Pass, register_pass
from ._common import reshape_param

ELEMENTWISE = ("sum", "sum_pwl", "sum_smooth", "mul", "identity")
REDUCTIONS = ("max", "mean")


def _inverse(perm) -> list[int]:
    return [int(i) for i in np.argsort(perm)]


def _permuted(shape, perm) -> tuple:
    return tuple(shape[i] for i in perm)


class _Sinker:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer = graph.producers()

    def transposed(self, v: Value | None) -> tuple[Value, list[int]] | None:
        """(a, perm) when v = transpose(a, perm), else None."""
        op = self.producer.get(v) if v is not None else None
        if op is None or op.kind != "transpose":
            return None
        a = op.operand(0)
        perm = op.params.get("perm") or list(reversed(range(a.rank)))
        return a, [int(i) for i in perm]

    def new_value(self, like: Value, shape) -> Value:
        return Value(like.dtype, tuple(shape), "tmp")

    def emit(self, kind, inputs, params, out: Value, annots=None) -> Op:
        op = Op(kind, list(inputs), [out], dict(params), dict(annots or {}))
        self.producer[out] = op
        return op

    def relayout(self, c: Value, rank: int, inv: list[int], annots) -> tuple[list[Op], Value]:
        """Ops giving c (broadcasting to ``rank``) in a's layout: reshape to rank, transpose by inv
        (a reshape when at most one dim is not 1)."""
        shape = (1,) * (rank - c.rank) + tuple(c.shape)
        target = _permuted(shape, inv)
        if sum(1 for d in shape if d != 1) <= 1:
            if target == tuple(c.shape):
                return [], c
            out = self.new_value(c, target)
            return [self.emit("reshape", [c], {"shape": reshape_param(target)}, out, annots)], out
        ops = []
        if c.rank != rank:
            r = self.new_value(c, shape)
            ops.append(self.emit("reshape", [c], {"shape": reshape_param(shape)}, r, annots))
            c = r
        out = self.new_value(c, target)
        ops.append(self.emit("transpose", [c], {"perm": inv}, out, annots))
        return ops, out

    # -- the rules: op -> replacement ops (the last one defines op's output) or None ----------------
    def fold_transposes(self, op: Op):
        inner = self.transposed(op.inputs[0])
        if inner is None:
            return None
        a, p = inner
        q = [int(i) for i in (op.params.get("perm") or list(reversed(range(op.operand(0).rank))))]
        composed = [p[i] for i in q]
        if composed == list(range(len(composed))):
            return "alias", a
        return [self.emit("transpose", [a], {"perm": composed}, op.outputs[0], op.annots)]

    def elementwise(self, op: Op):
        out = op.outputs[0]
        operands = [op.operand(i) for i in range(len(op.inputs))]
        perm, srcs = None, []
        for v in operands:
            t = self.transposed(v) if v.rank == out.rank and tuple(v.shape) == tuple(out.shape) else None
            if v.rank == out.rank and tuple(v.shape) == tuple(out.shape):
                if t is None or (perm is not None and t[1] != perm):
                    return None  # a full-shaped operand in the graph's layout: leave the op
                perm = t[1]
            srcs.append(t)
        if perm is None:
            return None
        inv = _inverse(perm)
        new_ops, inputs = [], []
        for v, t in zip(operands, srcs):
            if t is not None:
                inputs.append(t[0])
                continue
            ops, c = self.relayout(v, out.rank, inv, op.annots)
            new_ops += ops
            inputs.append(c)
        inner = self.new_value(out, _permuted(out.shape, inv))
        new_ops.append(self.emit(op.kind, inputs, op.params, inner, op.annots))
        new_ops.append(self.emit("transpose", [inner], {"perm": perm}, out, {k: v for k, v in op.annots.items()
                                                                           if k == "src"}))
        return new_ops

    def reduction(self, op: Op):
        t = self.transposed(op.inputs[0])
        if t is None:
            return None
        a, p = t
        rank = a.rank
        axes = op.params.get("axes")
        axes = list(range(rank)) if axes is None else [int(x) % rank for x in axes]
        mapped = sorted(p[i] for i in axes)
        keep = bool(op.params.get("keepdims", 1))
        out = op.outputs[0]
        params = dict(op.params, axes=mapped)
        if keep:
            inner_shape = tuple(1 if i in mapped else d for i, d in enumerate(a.shape))
            q = p
        else:
            kept_t = [p[i] for i in range(rank) if i not in axes]      # a-axes, in the output's order
            kept_a = sorted(kept_t)                                     # a-axes, in the reduction's order
            inner_shape = tuple(a.shape[i] for i in kept_a)
            q = [kept_a.index(i) for i in kept_t]
        if q == list(range(len(q))):
            return [self.emit(op.kind, [a], params, out, op.annots)]
        inner = self.new_value(out, inner_shape)
        return [self.emit(op.kind, [a], params, inner, op.annots),
                self.emit("transpose", [inner], {"perm": q}, out,
                          {k: v for k, v in op.annots.items() if k == "src"})]

    def tiles(self, op: Op):
        """A pooling whose windows tile its input reduces over split axes of a reshape of it: the
        same numbers without the patch tensor, whose gather and scatter cost a transpose each way."""
        split_op = self.producer.get(op.operand(0))
        pat = self.producer.get(split_op.operand(0)) if split_op is not None and split_op.kind == "reshape" else None
        if pat is None or pat.kind != "patches":
            return None
        a, out, last = pat.operand(0), op.outputs[0], bool(pat.params.get("channels_last"))
        kernel = [int(k) for k in pat.params["kernel"]]
        n = len(kernel)
        spatial = a.shape[1:n + 1] if last else a.shape[2:]
        axes = [int(x) % op.operand(0).rank for x in (op.params.get("axes") or [])]
        if (axes != [n + 2] or op.params.get("keepdims", 1) or not is_tiling(geometry(pat.params, kernel))
                or not all(isinstance(s, int) and s % k == 0 for s, k in zip(spatial, kernel))):
            return None
        tiles = tuple(d for s, k in zip(spatial, kernel) for d in (int(s) // k, k))
        c = a.shape[-1] if last else a.shape[1]
        split = (a.shape[0],) + ((*tiles, c) if last else (c, *tiles))
        first = 2 if last else 3                     # the first kernel axis of the split
        tiled = self.new_value(a, split)
        ops = [self.emit("reshape", [a], {"shape": reshape_param(split)}, tiled, op.annots)]
        params = dict(op.params, axes=[first + 2 * i for i in range(n)])
        if last:
            return ops + [self.emit(op.kind, [tiled], params, out, op.annots)]
        pooled = self.new_value(out, (a.shape[0], c) + tuple(out.shape[1:n + 1]))   # [N, C, *O]
        return ops + [self.emit(op.kind, [tiled], params, pooled, op.annots),
                      self.emit("transpose", [pooled], {"perm": [0, *range(2, n + 2), 1]}, out,
                                {k: v for k, v in op.annots.items() if k == "src"})]

    def pooling(self, op: Op):
        return self.tiles(op) or self.reduction(op)

    def reshapes(self, op: Op):
        inner = self.producer.get(op.operand(0))
        if inner is None or inner.kind != "reshape":
            return None
        return [self.emit("reshape", [inner.inputs[0]], op.params, op.outputs[0], op.annots)]

    def patches(self, op: Op):
        t = self.transposed(op.inputs[0])
        if t is None or op.params.get("channels_last"):
            return None
        a, p = t
        n = a.rank - 2
        if p != [0, n + 1, *range(1, n + 1)]:
            return None
        return [self.emit("patches", [a], dict(op.params, channels_last=1), op.outputs[0], op.annots)]

    def sweep(self) -> bool:
        changed = False
        rules = {"transpose": self.fold_transposes, "patches": self.patches, "reshape": self.reshapes,
                 **{k: self.elementwise for k in ELEMENTWISE}, **{k: self.pooling for k in REDUCTIONS}}
        new_ops: list[Op] = []
        for op in self.graph.ops:
            rule = rules.get(op.kind)
            result = rule(op) if rule is not None and op.outputs and all(v is not None for v in op.inputs) else None
            if result is None:
                new_ops.append(op)
                continue
            changed = True
            if isinstance(result, tuple):  # ("alias", value): the op is the identity on that value
                self.graph.replace_uses(op.outputs[0], result[1])
                for later in new_ops:
                    later.inputs = [result[1] if v is op.outputs[0] else v for v in later.inputs]
                if op.outputs[0].hint and not result[1].hint:
                    result[1].hint = op.outputs[0].hint
                continue
            new_ops.extend(result)
        self.graph.ops = new_ops
        return changed


@register_pass("channels-last")
class ChannelsLast(Pass):
    def run(self, graph: Graph) -> bool:
        changed = False
        for _ in range(1000):
            sinker = _Sinker(graph)
            if not sinker.sweep():
                break
            changed = True
        return changed
