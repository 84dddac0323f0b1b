"""fuse-activations: ONNX activations -> sum_smooth / sum_pwl; sum chains feeding one -> one family.

    Tanh | Sigmoid | Softplus | Elu | Gelu | HardSwish (x)     -> sum_smooth[fn](x)
    HardSigmoid | Round | Floor | Ceil (x)                       -> sum_pwl[fn](x)
    mul(x, Sigmoid(x))   (torch's SiLU export)                   -> sum_smooth[silu](x)
    DequantizeLinear(QuantizeLinear(x, s, z), s, z) (per tensor) -> sum_pwl[fake_quant, scale=s, zero_point=z](x)
    sum_pwl[fake_quant](sum_pwl[relu](x)) with qmin == zero_point -> sum_pwl[fake_quant](x)   # clamps at 0 anyway
    sum_pwl|sum_smooth[f](sum(a, b), c) -> sum_pwl|sum_smooth[f](a, b, c)   # f(a+b+c); sums are associative
    sum(sum(a, b), c)                   -> sum(a, b, c)                    # broadcast is associative too

An intermediate value is absorbed only when it has exactly one use (not a graph output); a dot stays
its own family.  Activations on integer tensors are left alone.
"""
from __future__ import annotations

import numpy as np

from projc.ir import Graph, Op

from . import Pass, register_pass
from ._common import Rewriter, const_data, rewrite

FUSES_INTO = {"sum_pwl": ("sum",), "sum_smooth": ("sum",), "sum": ("sum",)}  # consumer -> absorbable producers


def _gelu_fn(op: Op) -> str:
    approx = op.params.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return "gelu_tanh" if approx == "tanh" else "gelu"


# ONNX kind -> (family kind, params of the op)
ACTIVATIONS = {
    "Tanh": lambda op: ("sum_smooth", {"fn": "tanh"}),
    "Sigmoid": lambda op: ("sum_smooth", {"fn": "sigmoid"}),
    "Softplus": lambda op: ("sum_smooth", {"fn": "softplus"}),
    "Elu": lambda op: ("sum_smooth", {"fn": "elu", "alpha": float(op.params.get("alpha", 1.0))}),
    "Gelu": lambda op: ("sum_smooth", {"fn": _gelu_fn(op)}),
    "HardSwish": lambda op: ("sum_smooth", {"fn": "hardswish"}),
    "HardSigmoid": lambda op: ("sum_pwl", {"fn": "hardsigmoid", "alpha": float(op.params.get("alpha", 0.2)),
                                           "beta": float(op.params.get("beta", 0.5))}),
    "Round": lambda op: ("sum_pwl", {"fn": "round"}),
    "Floor": lambda op: ("sum_pwl", {"fn": "floor"}),
    "Ceil": lambda op: ("sum_pwl", {"fn": "ceil"}),
}


def _activation_rule(rw: Rewriter, op: Op):
    x = op.inputs[0]
    if not x.dtype.startswith("f"):
        return None
    kind, params = ACTIVATIONS[op.kind](op)
    return rw.emit(kind, [x], params, shape=op.outputs[0].shape)


def _single_use(graph: Graph, users, v) -> bool:
    return len(users.get(v, ())) == 1 and v not in graph.outputs


def _silu_rule(producers, users, dead):
    """mul(x, Sigmoid(x)) in either order -> sum_smooth[silu](x) (the Sigmoid is dropped)."""

    def rule(rw: Rewriter, op: Op):
        if len(op.inputs) != 2:
            return None
        for sig_v, x in (op.inputs, reversed(op.inputs)):
            p = producers.get(sig_v)
            if (p is not None and p.kind == "Sigmoid" and p.inputs[0] is x and x.dtype.startswith("f")
                    and _single_use(rw.graph, users, sig_v)):
                dead.add(p)
                return rw.emit("sum_smooth", [x], {"fn": "silu"}, shape=op.outputs[0].shape)
        return None

    return rule


def _scalar(v):
    data = const_data(v)
    return None if data is None or data.size != 1 else data.reshape(())


def _fake_quant_rule(producers, users, dead):
    """DequantizeLinear(QuantizeLinear(x, s, z), s, z) with equal per-tensor consts -> sum_pwl[fake_quant]."""

    def rule(rw: Rewriter, op: Op):
        q = producers.get(op.inputs[0])
        if q is None or q.kind != "QuantizeLinear" or not _single_use(rw.graph, users, op.inputs[0]):
            return None
        x = q.inputs[0]
        qs, qz = _scalar(q.inputs[1]), (_scalar(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] else 0)
        ds, dz = _scalar(op.inputs[1]), (_scalar(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] else 0)
        if qs is None or ds is None or qz is None or dz is None or not x.dtype.startswith("f"):
            return None
        if float(qs) != float(ds) or float(qz) != float(dz) or not float(qs) > 0:
            return None
        info = np.iinfo(np.dtype({"u8": np.uint8, "i8": np.int8, "u16": np.uint16, "i16": np.int16}.get(
            q.outputs[0].dtype, np.uint8)))
        dead.add(q)
        params = {"fn": "fake_quant", "scale": float(qs), "zero_point": float(qz),
                  "qmin": float(info.min), "qmax": float(info.max)}
        return rw.emit("sum_pwl", [x], params, shape=op.outputs[0].shape)

    return rule


def _absorb_relu(graph: Graph) -> bool:
    """fake_quant(relu(s)) = fake_quant(s) when the staircase's lowest level is 0 (qmin == zero point)."""
    producers, users = graph.producers(), graph.users()
    changed = False
    for op in list(graph.ops):
        if op.kind != "sum_pwl" or op.params.get("fn") != "fake_quant" or len(op.inputs) != 1:
            continue
        if op.params.get("qmin") != op.params.get("zero_point"):
            continue
        p = producers.get(op.inputs[0])
        if (p is not None and p.kind == "sum_pwl" and p.params.get("fn") == "relu"
                and _single_use(graph, users, op.inputs[0])):
            op.inputs = list(p.inputs)
            graph.ops.remove(p)
            changed = True
    return changed


def lower_activations(graph: Graph) -> bool:
    """The first three rule groups of the module docstring (the SiLU and Q/DQ patterns first)."""
    producers, users, dead = graph.producers(), graph.users(), set()
    silu = _silu_rule(producers, users, dead)
    changed = rewrite(graph, {"mul": silu, "Mul": silu, "DequantizeLinear": _fake_quant_rule(producers, users, dead)})
    graph.ops = [op for op in graph.ops if op not in dead]  # the absorbed Sigmoid / QuantizeLinear
    changed |= rewrite(graph, {kind: _activation_rule for kind in ACTIVATIONS})
    return _absorb_relu(graph) or changed


@register_pass("fuse-activations")
class FuseActivations(Pass):
    def run(self, graph: Graph) -> bool:
        changed = lower_activations(graph)
        while True:
            producers, users = graph.producers(), graph.users()
            outputs = set(graph.outputs)
            dead = set()
            for op in reversed(graph.ops):  # consumers last-to-first: a whole chain folds into its end
                if op.kind not in FUSES_INTO or op in dead:
                    continue
                operands = []
                for v in op.inputs:
                    p = producers.get(v)
                    if (p is not None and p not in dead and p.kind in FUSES_INTO[op.kind]
                            and len(users.get(v, ())) == 1 and v not in outputs):
                        operands.extend(p.inputs)
                        dead.add(p)
                    else:
                        operands.append(v)
                op.inputs = operands
            if not dead:
                return changed
            changed = True
            graph.ops = [op for op in graph.ops if op not in dead]
