"""unroll: RNN / GRU / LSTM -> per-step constraint families over the static sequence length.

Every step of every direction becomes its own families; the weights are the same ``param`` values
in all of them, so weight tying needs nothing new (a parameter's target is already the mean over
all its consumer edges). Per direction d (gates g of width H, ``Wt = W[d]^T`` sliced per gate):

    xw    = dot(X, Wt)                                   # all steps' input products: one family
    RNN   h_t = act(xw[t], Wb, Rb, dot(h_{t-1}, Rt))     # sum_pwl (relu, ...) or sum_smooth
    GRU   z, r = sigmoid(xw[t, z|r], biases, dot(h_{t-1}, Rt[z|r]))
          h~  = tanh(xw[t, h], Wbh, dot(mul(r, h_{t-1}), Rt[h]), Rbh)          linear_before_reset=0
          h~  = tanh(xw[t, h], Wbh, mul(r, sum(dot(h_{t-1}, Rt[h]), Rbh)))      linear_before_reset=1
          h_t = sum(mul(1-z, h~), mul(z, h_{t-1}))    # 1-z: one_minus_sigmoid of z's operands
    LSTM  i, o, f = sigmoid(...), c~ = tanh(...)
          c_t = sum(mul(f, c_{t-1}), mul(i, c~));  h_t = mul(identity(o), tanh(c_t))

Elementwise gate products are bilinear ``mul`` families. The cells are emitted bipartite (the
identity on o, the 1-z family): the repair has at most a bias read at step 0 left to fix (a
repair identity on the path from the loss halves the pull that passes it). A zero initial state
(a constant, or torch's ``projc.fill_like`` zeros of the batch) drops the step-0 recurrent
terms. Y and Y_h are rebuilt from the steps' h by reshape and concat (moves, no constraints).
Tanh and sigmoid are ``sum_smooth`` families (the activations work); where that family is
missing the pass says so.

Not trainable (PassError): sequence_lens, LSTM peepholes and input_forget, clip on a smooth
activation, activations other than Relu, LeakyRelu, Tanh and Sigmoid.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from projc.errors import PassError
from projc.ir import Graph, Op, Value
from projc.ir.constraints import FAMILIES

from . import Pass, register_pass
from ._common import Lowering, Rewriter, const_data, reshape_param, rewrite, rules, src_of

DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}
SMOOTH = "sum_smooth"  # y = f(sum of operands), f in {tanh, sigmoid, ...}: the activations family


class _Unroller:
    """Emits one recurrent op's per-step families; helpers for its slices and outputs."""

    def __init__(self, rw: Rewriter, op: Op, gates: int, defaults: tuple[str, ...]):
        self.rw, self.op, self.gates = rw, op, gates
        self.memo: dict[tuple, Value | None] = {}  # weight and bias slices, shared by all steps
        p = op.params
        self.where = f"{op.kind} {src_of(op)}"
        self.layout = int(p.get("layout", 0))
        x, w = op.operand(0), op.operand(1)
        self.time_axis = 1 if self.layout else 0
        steps = x.shape[self.time_axis]
        self.batch = x.shape[1 - self.time_axis]
        rows = w.shape[1]
        if not isinstance(rows, int):
            raise PassError(f"{self.where}: the weight {w.type_str()} needs a static shape")
        self.rows = rows  # every gate's rows of W[d]: gates * hidden
        self.hidden = rows // gates
        self.directions = DIRECTIONS[p.get("direction", "forward")]
        if not isinstance(steps, int):
            raise PassError(f"{self.where}: the sequence length {steps!r} must be static to "
                            "unroll; export with a fixed number of time steps")
        self.steps = steps
        if len(op.inputs) > 4 and op.inputs[4] is not None:
            raise PassError(f"{self.where}: sequence_lens is not supported for training; pad the "
                            "sequences to one length and drop the input")
        self.acts = self._activations(defaults)

    # -- activations -------------------------------------------------------------------------
    def _activations(self, defaults) -> list[list[tuple[str, dict]]]:
        names = list(self.op.params.get("activations") or list(defaults) * len(self.directions))
        alphas = list(self.op.params.get("activation_alpha") or [])
        clip = self.op.params.get("clip")
        per = len(defaults)
        fams = [self._family_of(name, alphas, clip) for name in names]
        return [fams[d * per:(d + 1) * per] for d in range(len(self.directions))]

    def _family_of(self, name: str, alphas: list, clip) -> tuple[str, dict]:
        key = str(name).lower()
        if key == "relu":
            return ("sum_pwl", {"fn": "relu"} if clip is None
                    else {"fn": "clip", "lo": 0.0, "hi": float(clip)})  # relu(clip(s)) = clip(s, 0, c)
        if key == "leakyrelu" and clip is None:
            return "sum_pwl", {"fn": "leaky_relu", "alpha": float(alphas.pop(0) if alphas else 0.01)}
        if key in ("tanh", "sigmoid") and clip is None:
            if SMOOTH not in FAMILIES:
                raise PassError(f"{self.where}: the {name} activation trains as a {SMOOTH} family, "
                                "which this build of projc does not have yet (only Relu and "
                                "LeakyRelu recurrences train here)")
            return SMOOTH, {"fn": key}
        what = f"{name} with clip={clip}" if clip is not None else name
        raise PassError(f"{self.where}: activation {what} is not supported for training; use "
                        "Relu, LeakyRelu, Tanh or Sigmoid without clip")

    def act(self, family: tuple[str, dict], operands: list[Value]) -> Value:
        kind, params = family
        return self.rw.emit(kind, operands, dict(params), shape=(self.batch, self.hidden))

    # -- slices of weights, inputs and states ------------------------------------------------
    def take(self, v: Value, starts, ends, axes, shape) -> Value:
        """v[starts:ends] along axes, reshaped to ``shape`` (a move)."""
        cut = self.rw.emit("slice", [v], {"starts": list(starts), "ends": list(ends),
                                          "axes": list(axes), "steps": [1] * len(starts)})
        return self.rw.emit("reshape", [cut], {"shape": reshape_param(shape)}, shape=shape)

    def weight_t(self, w: Value, d: int, lo: int, hi: int) -> Value:
        """Rows lo:hi of W[d], transposed: [K, hi - lo] (one value shared by every step)."""
        key = ("w", id(w), d, lo, hi)
        if key not in self.memo:
            self.memo[key] = self._weight_t(w, d, lo, hi)
        w_t = self.memo[key]
        assert w_t is not None  # only an absent bias is memoized as None
        return w_t

    def _weight_t(self, w: Value, d: int, lo: int, hi: int) -> Value:
        block = self.take(w, [d, lo], [d + 1, hi], [0, 1], (hi - lo, w.shape[2]))
        return self.rw.emit("transpose", [block], {"perm": [1, 0]})

    def bias(self, d: int, gate: int, recurrent: bool) -> Value | None:
        key = ("b", d, gate, recurrent)
        if key not in self.memo:
            self.memo[key] = self._bias(d, gate, recurrent)
        return self.memo[key]

    def _bias(self, d: int, gate: int, recurrent: bool) -> Value | None:
        b = self.op.inputs[3] if len(self.op.inputs) > 3 else None
        if b is None:
            return None
        lo = (self.gates * self.hidden if recurrent else 0) + gate * self.hidden
        return self.take(b, [d, lo], [d + 1, lo + self.hidden], [0, 1], (self.hidden,))

    def biases(self, d: int, gate: int) -> list[Value]:
        return [v for v in (self.bias(d, gate, False), self.bias(d, gate, True)) if v is not None]

    def gate_of(self, v: Value, gate: int, width: int = 1) -> Value:
        """Gate columns of a step's [B, G*H] product."""
        lo, hi = gate * self.hidden, (gate + width) * self.hidden
        return self.take(v, [lo], [hi], [v.rank - 1], (self.batch, hi - lo))

    def input_products(self, d: int) -> Value:
        return self.rw.emit("dot", [self.op.operand(0), self.weight_t(self.op.operand(1), d, 0, self.rows)])

    def step_gate(self, xw: Value, t: int, gate: int, width: int = 1) -> Value:
        lo, hi = gate * self.hidden, (gate + width) * self.hidden
        return self.take(xw, [t, lo], [t + 1, hi], [self.time_axis, 2], (self.batch, hi - lo))

    def initial(self, index: int, d: int) -> Value | None:
        """Direction d's initial state from input ``index`` ([B, H]); None when it is zero."""
        v = self.op.inputs[index] if len(self.op.inputs) > index else None
        if v is None or _is_zero(self.rw.graph, v):
            return None
        axis = 1 if self.layout else 0
        return self.take(v, [d], [d + 1], [axis], (self.batch, self.hidden))

    def recurrent(self, h: Value | None, d: int, lo_gate: int, gates: int) -> Value | None:
        if h is None:
            return None
        r = self.op.operand(2)
        lo, hi = lo_gate * self.hidden, (lo_gate + gates) * self.hidden
        return self.rw.emit("dot", [h, self.weight_t(r, d, lo, hi)])

    def mul(self, a: Value, b: Value) -> Value:
        return self.rw.emit("mul", [a, b], shape=(self.batch, self.hidden))

    def negated(self, v: Value) -> Value:
        return self.mul(v, self.rw.const(np.array(-1.0), v.dtype, "minus_one"))

    def gru_state(self, d: int, z: Value, candidate: Value, h: Value | None, complement) -> Value:
        """h_t = (1 - z) h~ + z h_{t-1}.

        With sigmoid gates: sum(mul(1 - z, h~), mul(z, h_{t-1})), where 1 - z is a
        one_minus_sigmoid family on z's operands (``complement()``). Both products then read
        operands of one parity, so the cell is bipartite as emitted: the form below puts h~ and
        -z h~ (one family deeper) into one sum, and the repair needs identities at every step
        (18 in gru_digits), each of which halves what the loss's pull passes on. A zero initial
        state leaves h_0 = (1 - z) h~, behind an identity that keeps h_0 at the parity of the
        sums of the later steps.
        Other gate activations: sum(h~, -(z h~), z h_{t-1}), left to the bipartite repair.
        """
        if self.acts[d][0] == (SMOOTH, {"fn": "sigmoid"}):
            kept = self.mul(complement(), candidate)
            if h is None:
                return self.rw.emit("identity", [kept], shape=(self.batch, self.hidden))
            return self.rw.emit("sum", [kept, self.mul(z, h)], shape=(self.batch, self.hidden))
        terms = [candidate, self.negated(self.mul(z, candidate))]
        if h is not None:
            terms.append(self.mul(z, h))
        return self.rw.emit("sum", terms, shape=(self.batch, self.hidden))

    # -- the scan ----------------------------------------------------------------------------
    def run(self, cell, n_states: int) -> list[Value]:
        """Unroll ``cell(d, t, states) -> states`` over every direction; the op's outputs."""
        per_direction: list[list[Value]] = []
        finals: list[tuple] = []  # each direction's last states (the cell's values)
        for d, reverse in enumerate(self.directions):
            states = tuple(self.initial(5 + k, d) for k in range(n_states))
            hs: dict[int, Value] = {}
            for t in (reversed(range(self.steps)) if reverse else range(self.steps)):
                states = cell(d, t, states)
                hs[t] = states[0]
            per_direction.append([hs[t] for t in range(self.steps)])
            finals.append(states)
        y = self.stack_y(per_direction)
        return [y] + [self.stack_final([f[k] for f in finals]) for k in range(n_states)]

    def stack_y(self, per_direction: list[list[Value]]) -> Value:
        """Y [T, D, B, H] (layout 1: [B, T, D, H]) from every step's h."""
        one = (1, 1, self.batch, self.hidden) if not self.layout else (self.batch, 1, 1, self.hidden)
        steps = []
        for t in range(self.steps):
            parts = [self.rw.emit("reshape", [hs[t]], {"shape": reshape_param(one)}, shape=one)
                     for hs in per_direction]
            steps.append(self.concat(parts, 2 if self.layout else 1))
        return self.concat(steps, 1 if self.layout else 0)

    def stack_final(self, finals: list[Value]) -> Value:
        one = (self.batch, 1, self.hidden) if self.layout else (1, self.batch, self.hidden)
        parts = [self.rw.emit("reshape", [h], {"shape": reshape_param(one)}, shape=one)
                 for h in finals]
        return self.concat(parts, 1 if self.layout else 0)

    def concat(self, parts: list[Value], axis: int) -> Value:
        if len(parts) == 1:
            return parts[0]
        shape = list(parts[0].shape)
        shape[axis] = sum(int(p.shape[axis]) for p in parts)  # the step and direction axes: static
        return self.rw.emit("concat", parts, {"axis": axis}, shape=tuple(shape))


def _is_zero(graph: Graph, v: Value) -> bool:
    """A state that is all zeros: a zero constant or a zero fill of the batch's shape."""
    data = const_data(v)
    if data is not None:
        return not np.any(data)
    producer = graph.producers().get(v)
    return (producer is not None and producer.kind == "projc.fill_like"
            and float(producer.params.get("value", 0.0)) == 0.0)


def unroll_rnn(rw: Rewriter, op: Op):
    u = _Unroller(rw, op, 1, ("Tanh",))
    xws: dict[int, Value] = {}

    def cell(d, t, states):
        (h,) = states
        xw = xws.setdefault(d, u.input_products(d))
        operands = [u.step_gate(xw, t, 0)] + u.biases(d, 0)
        rec = u.recurrent(h, d, 0, 1)
        return (u.act(u.acts[d][0], operands + ([rec] if rec is not None else [])),)

    return u.run(cell, 1)


def unroll_gru(rw: Rewriter, op: Op):
    u = _Unroller(rw, op, 3, ("Sigmoid", "Tanh"))
    before_reset = int(op.params.get("linear_before_reset", 0))
    xws: dict[int, Value] = {}

    def gate(d, xw, t, g, rec, complement=False):
        extra = [] if rec is None else [u.gate_of(rec, g)]
        family = (SMOOTH, {"fn": "one_minus_sigmoid"}) if complement else u.acts[d][0]
        return u.act(family, [u.step_gate(xw, t, g)] + u.biases(d, g) + extra)

    def cell(d, t, states):
        (h,) = states
        xw = xws.setdefault(d, u.input_products(d))
        rec_zr = u.recurrent(h, d, 0, 2)
        z, r = gate(d, xw, t, 0, rec_zr), gate(d, xw, t, 1, rec_zr)
        wb_h, rb_h = u.bias(d, 2, False), u.bias(d, 2, True)
        operands = [u.step_gate(xw, t, 2)] + ([wb_h] if wb_h is not None else [])
        if before_reset:
            inner = [v for v in (u.recurrent(h, d, 2, 1), rb_h) if v is not None]
            if inner:
                inner_v = inner[0] if len(inner) == 1 else rw.emit("sum", inner)
                operands.append(u.mul(r, inner_v))
        else:
            if h is not None:
                rec_h = u.recurrent(u.mul(r, h), d, 2, 1)
                assert rec_h is not None  # a state h gives a recurrent term
                operands.append(rec_h)
            operands += [rb_h] if rb_h is not None else []
        candidate = u.act(u.acts[d][1], operands)
        return (u.gru_state(d, z, candidate, h, lambda: gate(d, xw, t, 0, rec_zr, complement=True)),)

    return u.run(cell, 1)


def unroll_lstm(rw: Rewriter, op: Op):
    if len(op.inputs) > 7 and op.inputs[7] is not None:
        raise PassError(f"LSTM {src_of(op)}: peephole weights (input P) are not supported for "
                        "training")
    if int(op.params.get("input_forget", 0)):
        raise PassError(f"LSTM {src_of(op)}: input_forget=1 is not supported for training")
    u = _Unroller(rw, op, 4, ("Sigmoid", "Tanh", "Tanh"))
    xws: dict[int, Value] = {}

    def cell(d, t, states):
        h, c = states
        xw = xws.setdefault(d, u.input_products(d))
        rec = u.recurrent(h, d, 0, 4)
        f_act, g_act, h_act = u.acts[d]

        def gate(g, family):
            extra = [] if rec is None else [u.gate_of(rec, g)]
            return u.act(family, [u.step_gate(xw, t, g)] + u.biases(d, g) + extra)

        i, o, f, cand = gate(0, f_act), gate(1, f_act), gate(2, f_act), gate(3, g_act)
        new_c = u.mul(i, cand)
        shape = (u.batch, u.hidden)
        # c_t = f c + i c~ is a sum one family after the products; a zero initial state leaves
        # c_0 = i c~, so an identity keeps c_0 at that parity
        new_c = rw.emit("sum", [u.mul(f, c), new_c], shape=shape) if c is not None else \
            rw.emit("identity", [new_c], shape=shape)
        # h = o tanh(c): o is a gate, tanh(c) two families later; the identity on o puts both
        # operands at one parity, so no repair lands on the path from h to the loss
        return u.mul(rw.emit("identity", [o], shape=shape), u.act(h_act, [new_c])), new_c

    return u.run(cell, 2)


LOWERINGS = {
    "RNN": Lowering(unroll_rnn, "dot, sum_pwl | sum_smooth per step", "unrolled; the steps share the weights"),
    "GRU": Lowering(unroll_gru, "dot, sum_smooth, mul, sum per step", "unrolled, each cell emitted bipartite"),
    "LSTM": Lowering(unroll_lstm, "dot, sum_smooth, mul, sum per step", "unrolled, each cell emitted bipartite"),
}


@register_pass("unroll")
class Unroll(Pass):
    lowerings: ClassVar[dict[str, Lowering]] = LOWERINGS

    def run(self, graph: Graph) -> bool:
        return rewrite(graph, rules(LOWERINGS))
