"""fuse-activations: ONNX activations -> sum_smooth / sum_pwl; sum chains feeding one -> one family.

    Tanh | Sigmoid | Softplus | Elu | Gelu | HardSwish (x)     -> sum_smooth[fn](x)
    HardSigmoid | Round | Floor | Ceil (x)                       -> sum_pwl[fn](x)
    mul(x, Sigmoid(x))   (torch's SiLU export)                   -> sum_smooth[silu](x)
    0.5 · x · (1 + Erf(x / √2))   (torch's GELU below opset 20)  -> sum_smooth[gelu](x)
    0.5 · x · (1 + Tanh(√(2/π) · (x + 0.044715 · x³)))           -> sum_smooth[gelu_tanh](x)
    DequantizeLinear(QuantizeLinear(x, s, z), s, z) (per tensor) -> sum_pwl[fake_quant, scale=s, zero_point=z](x)
    sum_pwl[fake_quant](sum_pwl[relu](x)) with qmin == zero_point -> sum_pwl[fake_quant](x)   # clamps at 0 anyway
    mul(sum_pwl[round](mul(sum_pwl[clip, lo, hi](x), c)), 1/c)   -> sum_pwl[fake_quant, scale=1/c,
        qmin=lo·c, qmax=hi·c](x)   # c a power of two, lo·c and hi·c integers: equal bit for bit
    sum_pwl|sum_smooth[f](sum(a, b), c) -> sum_pwl|sum_smooth[f](a, b, c)   # f(a+b+c); sums are associative
    sum(sum(a, b), c)                   -> sum(a, b, c)                    # broadcast is associative too

An intermediate value is absorbed only when it has exactly one use (not a graph output); a dot stays
its own family.  Activations on integer tensors are left alone.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from projc.ir import Graph, Op, Value

from . import Pass, register_pass
from ._common import Lowering, Rewriter, const_data, rewrite

FUSES_INTO = {"sum_pwl": ("sum",), "sum_smooth": ("sum",), "sum": ("sum",)}  # consumer -> absorbable producers


def _gelu_fn(op: Op) -> str:
    approx = op.params.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return "gelu_tanh" if approx == "tanh" else "gelu"


def _act(family: str, fn, **param_fns):
    """A rule: the ONNX activation -> ``family[fn]`` of its input (params read from the op)."""
    def rule(rw: Rewriter, op: Op):
        x = op.operand(0)
        if not x.dtype.startswith("f"):
            return None
        params = {"fn": fn(op) if callable(fn) else fn, **{k: f(op) for k, f in param_fns.items()}}
        return rw.emit(family, [x], params, shape=op.outputs[0].shape)
    return rule


def _attr(name: str, default: float):
    return lambda op: float(op.params.get(name, default))


L = Lowering
LOWERINGS = {  # a rule of None: matched as part of a pattern (the module docstring)
    "Tanh": L(_act("sum_smooth", "tanh"), "sum_smooth[tanh]"),
    "Sigmoid": L(_act("sum_smooth", "sigmoid"), "sum_smooth[sigmoid]", "x·Sigmoid(x) (SiLU): sum_smooth[silu]"),
    "Softplus": L(_act("sum_smooth", "softplus"), "sum_smooth[softplus]"),
    "Elu": L(_act("sum_smooth", "elu", alpha=_attr("alpha", 1.0)), "sum_smooth[elu]"),
    "Gelu": L(_act("sum_smooth", _gelu_fn), "sum_smooth[gelu | gelu_tanh]"),
    "HardSwish": L(_act("sum_smooth", "hardswish"), "sum_smooth[hardswish]"),
    "HardSigmoid": L(_act("sum_pwl", "hardsigmoid", alpha=_attr("alpha", 0.2), beta=_attr("beta", 0.5)),
                     "sum_pwl[hardsigmoid]"),
    "Round": L(_act("sum_pwl", "round"), "sum_pwl[round]"),
    "Floor": L(_act("sum_pwl", "floor"), "sum_pwl[floor]"),
    "Ceil": L(_act("sum_pwl", "ceil"), "sum_pwl[ceil]"),
    "Erf": L(None, "sum_smooth[gelu]", "in torch's GELU 0.5·x·(1 + Erf(x/√2)) only"),
    "DequantizeLinear": L(None, "sum_pwl[fake_quant]", "DequantizeLinear(QuantizeLinear(x)), per tensor"),
    "QuantizeLinear": L(None, "sum_pwl[fake_quant]", "followed by DequantizeLinear, per tensor"),
}


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


# -- GELU decomposed into elementwise ops (torch exports nn.GELU so below opset 20, where Gelu is missing)
_MULS = ("mul", "Mul")
GELU_ERF_SCALE = 1.0 / np.sqrt(2.0)       # erf(x / √2)
GELU_TANH_SCALE = np.sqrt(2.0 / np.pi)    # tanh(√(2/π) (x + 0.044715 x³))
GELU_TANH_CUBIC = 0.044715


def _close(a, b) -> bool:
    return bool(np.isclose(float(a), b, rtol=1e-5, atol=0.0))  # float32 constants of the exporter


class _Match:
    """Walks a candidate pattern: ``absorbed`` collects its inner ops (each output used once)."""

    def __init__(self, graph: Graph, producers, users):
        self.graph, self.producers, self.users = graph, producers, users
        self.absorbed: list[Op] = []

    def inner(self, v, kinds) -> Op | None:
        """The producer of v if its kind is one of ``kinds`` and v has no other use."""
        p = self.producers.get(v)
        if p is None or p.kind not in kinds or not _single_use(self.graph, self.users, v):
            return None
        self.absorbed.append(p)
        return p

    def product(self, values) -> tuple[float, list] | None:
        """values multiplied out through single-use muls (and Pow by 3): (constant factor, other factors)."""
        coef, rest = 1.0, []
        for v in values:
            c = _scalar(v)
            if c is not None:
                coef *= float(c)
                continue
            p = self.inner(v, _MULS + ("Pow",))
            if p is None:
                rest.append(v)
            elif p.kind == "Pow":
                e = _scalar(p.inputs[1])
                if e is None or float(e) != 3.0:
                    return None
                rest += [p.inputs[0]] * 3
            else:
                sub = self.product(p.inputs)
                if sub is None:
                    return None
                coef *= sub[0]
                rest += sub[1]
        return coef, rest

    def one_plus(self, v, kind):
        """1 + kind(u) (a sum of the constant 1 and a single-use ``kind`` op): u, else None."""
        s = self.inner(v, ("sum",))
        if s is None or len(s.inputs) != 2:
            return None
        for one, f in (s.inputs, reversed(s.inputs)):
            c = _scalar(one)
            if c is not None and _close(c, 1.0):
                p = self.inner(f, (kind,))
                return None if p is None else p.inputs[0]
        return None

    def scaled(self, u):
        """u = k · w through muls: (k, w) with one non-constant factor w, else None."""
        prod = self.product([u])
        return None if prod is None or len(prod[1]) != 1 else (prod[0], prod[1][0])


def _gelu_form(m: _Match, x, g) -> str | None:
    """The gelu fn when g is 1 + erf(x/√2) or 1 + tanh(√(2/π)(x + 0.044715 x³)), else None."""
    n = len(m.absorbed)
    u = m.one_plus(g, "Erf")
    if u is not None:
        ks = m.scaled(u)
        if ks is not None and ks[1] is x and _close(ks[0], GELU_ERF_SCALE):
            return "gelu"
    del m.absorbed[n:]
    u = m.one_plus(g, "Tanh")
    ks = None if u is None else m.scaled(u)
    if ks is None or not _close(ks[0], GELU_TANH_SCALE):
        return None
    s = m.inner(ks[1], ("sum",))
    if s is None or len(s.inputs) != 2:
        return None
    lin, cub = s.inputs if s.inputs[0] is x else reversed(s.inputs)
    prod = m.product([cub]) if lin is x else None
    if prod is None or len(prod[1]) != 3 or not all(v is x for v in prod[1]):
        return None
    return "gelu_tanh" if _close(prod[0], GELU_TANH_CUBIC) else None


def _gelu_rule(producers, users, dead):
    """A mul whose product is 0.5 · x · g with g = 1 + erf(x/√2) (or the tanh form) -> sum_smooth[gelu]."""

    def rule(rw: Rewriter, op: Op):
        m = _Match(rw.graph, producers, users)
        prod = m.product(op.inputs)
        if prod is None or len(prod[1]) != 2 or not _close(prod[0], 0.5):
            return None
        for x, g in (prod[1], reversed(prod[1])):
            n = len(m.absorbed)
            # the scalar constants must not broadcast x to a larger rank
            ok = x.dtype.startswith("f") and tuple(x.shape) == tuple(op.outputs[0].shape)
            fn = _gelu_form(m, x, g) if ok else None
            if fn is not None:
                dead.update(m.absorbed)
                return rw.emit("sum_smooth", [x], {"fn": fn}, shape=op.outputs[0].shape)
            del m.absorbed[n:]
        return None

    return rule


_QUANTIZED: dict[str, type[np.integer]] = {"u8": np.uint8, "i8": np.int8, "u16": np.uint16, "i16": np.int16}


def _fake_quant_rule(producers, users, dead):
    """DequantizeLinear(QuantizeLinear(x, s, z), s, z) with equal per-tensor consts -> sum_pwl[fake_quant]."""

    def rule(rw: Rewriter, op: Op):
        q = producers.get(op.operand(0))
        if q is None or q.kind != "QuantizeLinear" or not _single_use(rw.graph, users, op.inputs[0]):
            return None
        x = q.operand(0)
        qs, qz = _scalar(q.inputs[1]), (_scalar(q.inputs[2]) if len(q.inputs) > 2 and q.inputs[2] else 0)
        ds, dz = _scalar(op.inputs[1]), (_scalar(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] else 0)
        if qs is None or ds is None or qz is None or dz is None or not x.dtype.startswith("f"):
            return None
        if float(qs) != float(ds) or float(qz) != float(dz) or not float(qs) > 0:
            return None
        info = np.iinfo(_QUANTIZED.get(q.outputs[0].dtype, np.uint8))
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
        p = producers.get(op.operand(0))
        if (p is not None and p.kind == "sum_pwl" and p.params.get("fn") == "relu"
                and _single_use(graph, users, op.inputs[0])):
            op.inputs = list(p.inputs)
            graph.ops.remove(p)
            changed = True
    return changed


def _scaled_operand(graph: Graph, producers, users, op: Op | None) -> tuple[Op, float] | None:
    """(the producer of v, c) for ``mul(v, c)`` / ``mul(c, v)`` with a scalar c and v used once."""
    if op is None or op.kind != "mul" or len(op.inputs) != 2:
        return None
    for i in (0, 1):
        c, v = _scalar(op.inputs[i]), op.inputs[1 - i]
        if c is not None and v is not None and v in producers and _single_use(graph, users, v):
            return producers[v], float(c)
    return None


def _stair_of_clip(graph: Graph, producers, users, op: Op) -> tuple[dict, list[Op]] | None:
    """(fake_quant params, the absorbed ops) when ``op`` is ``mul(round(mul(clip(x, lo, hi), c)), d)``
    and equals that staircase bit for bit: c = 1/d a power of two (x·c == x/d exactly), lo·c and hi·c
    integers (round commutes with the clamp)."""
    outer = _scaled_operand(graph, producers, users, op)
    if outer is None or outer[0].kind != "sum_pwl" or outer[0].params.get("fn") != "round":
        return None
    rnd, d = outer
    src = rnd.inputs[0] if len(rnd.inputs) == 1 and _single_use(graph, users, rnd.inputs[0]) else None
    inner = _scaled_operand(graph, producers, users, producers.get(src) if src is not None else None)
    if inner is None or inner[0].kind != "sum_pwl" or inner[0].params.get("fn") != "clip":
        return None
    clip, c = inner
    lo, hi = clip.params.get("lo"), clip.params.get("hi")
    lo, hi = -np.inf if lo is None else lo * c, np.inf if hi is None else hi * c
    if not (c > 0 and np.frexp(c)[0] == 0.5 and c * d == 1.0):
        return None
    if any(np.isfinite(b) and b != np.round(b) for b in (lo, hi)):
        return None
    params = {"fn": "fake_quant", "scale": float(d), "zero_point": 0.0, "qmin": float(lo), "qmax": float(hi)}
    return params, [rnd, producers[src], clip]


def _fuse_clipped_rounds(graph: Graph) -> bool:
    """The clamp-scale-round-unscale staircase users write (module docstring) -> one fake_quant."""
    producers, users = graph.producers(), graph.users()
    dead: set[Op] = set()
    for op in graph.ops:
        match = None if op in dead else _stair_of_clip(graph, producers, users, op)
        if match is not None:
            params, absorbed = match
            op.kind, op.params, op.inputs = "sum_pwl", params, list(absorbed[-1].inputs)
            dead.update(absorbed)
    graph.ops = [op for op in graph.ops if op not in dead]
    return bool(dead)


def lower_activations(graph: Graph) -> bool:
    """The first three rule groups of the module docstring (the SiLU and Q/DQ patterns first)."""
    producers, users = graph.producers(), graph.users()
    dead: set[Op] = set()
    silu, gelu = _silu_rule(producers, users, dead), _gelu_rule(producers, users, dead)

    def mul_rule(rw: Rewriter, op: Op):
        if op in dead:  # an inner mul of a pattern matched earlier in the sweep
            return None
        out = gelu(rw, op)
        return silu(rw, op) if out is None else out

    changed = rewrite(graph, {"mul": mul_rule, "Mul": mul_rule,
                              "DequantizeLinear": _fake_quant_rule(producers, users, dead)})
    graph.ops = [op for op in graph.ops if op not in dead]  # the absorbed Sigmoid / QuantizeLinear / GELU parts
    changed |= rewrite(graph, {kind: low.rule for kind, low in LOWERINGS.items() if low.rule})
    changed |= _fuse_clipped_rounds(graph)
    return _absorb_relu(graph) or changed


@register_pass("fuse-activations")
class FuseActivations(Pass):
    lowerings: ClassVar[dict[str, Lowering]] = LOWERINGS

    def run(self, graph: Graph) -> bool:
        changed = lower_activations(graph)
        while True:
            producers, users = graph.producers(), graph.users()
            outputs = set(graph.outputs)
            dead: set[Op] = set()
            for op in reversed(graph.ops):  # consumers last-to-first: a whole chain folds into its end
                if op.kind not in FUSES_INTO or op in dead:
                    continue
                operands: list[Value | None] = []
                for v in op.inputs:
                    p = None if v is None else producers.get(v)
                    if (v is not None and p is not None and p not in dead and p.kind in FUSES_INTO[op.kind]
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
