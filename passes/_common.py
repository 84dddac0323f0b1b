"""Helpers shared by the passes: emitting ops in place of a matched op, consts, data-ness."""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeAlias

import numpy as np

from projc.ir import DTYPES, Graph, Op, Value
from projc.ir.constraints import FAMILIES, FIXED, LOSSES, MOVES, ShapeError, infer_shape

RuleResult: TypeAlias = "list[Value] | Value | None"  # the values replacing the op's outputs; None: no match
Rule = Callable[["Rewriter", Op], RuleResult]


class Lowering(NamedTuple):
    """How a pass rewrites one ONNX op kind towards constraint families: the rule, what it
    becomes and when it applies. A pass's table of these is the one place that says the op trains
    (``projc.passes.lowering_table``, ``projc ops --trainable``, the unsupported-op message)."""

    # (rewriter, op), or (rewriter, op, options) for a pass that binds its options when it runs (split);
    # None: matched as part of a pattern, or walked to from the outputs
    rule: Callable[..., RuleResult] | None
    becomes: str
    note: str = ""


def rules(table: dict[str, Lowering]) -> dict[str, Rule]:
    return {kind: lowering.rule for kind, lowering in table.items() if lowering.rule is not None}


def src_of(op: Op) -> str:
    return str(op.annots.get("src", "")) or op.kind


class Rewriter:
    """Builds the replacement of one op: ``emit`` new ops, ``const`` new initializers."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.emitted: list[Op] = []
        self.current: Op | None = None

    def emit(self, kind: str, inputs: list[Value], params: dict | None = None, *,
             shape: tuple | None = None, dtype: str | None = None) -> Value:
        params = dict(params or {})
        if shape is None:
            shape = infer_shape(kind, params, [v.shape for v in inputs])
            if shape is None:
                raise ShapeError(f"{kind}: a loss has no output value to emit")
        out = Value(dtype or inputs[0].dtype, tuple(shape), "tmp")
        annots = {"src": self.current.annots["src"]} if self.current and "src" in self.current.annots else {}
        self.emitted.append(Op(kind, list(inputs), [out], params, annots))
        return out

    def const(self, array, dtype: str, hint: str = "") -> Value:
        data = np.asarray(array, dtype=DTYPES[dtype])
        value = Value(dtype, data.shape, "const", hint=hint, data=data)
        self.graph.initializers.append(value)
        return value


def rewrite(graph: Graph, rules: dict[str, Rule]) -> bool:
    """One sweep: replace each op matched by ``rules[op.kind]`` by what the rule emits.

    A rule returns None (no match) or the values replacing the op's outputs; when such a value was
    emitted by the rule, the emitting op adopts the original output Value (keeping its name/type).
    """
    rw = Rewriter(graph)
    changed = False
    new_ops: list[Op] = []
    for op in list(graph.ops):
        rule = rules.get(op.kind)
        rw.current, rw.emitted = op, []
        result = rule(rw, op) if rule else None
        if result is None:
            new_ops.append(op)
            continue
        changed = True
        results = [result] if isinstance(result, Value) else list(result)
        emitted_outs = {o: e for e in rw.emitted for o in e.outputs}
        for old, new in zip(op.outputs, results):
            if new in emitted_outs:  # adopt the original output value
                e = emitted_outs[new]
                e.outputs = [old if o is new else o for o in e.outputs]
                for later in rw.emitted:
                    later.inputs = [old if v is new else v for v in later.inputs]
            else:
                graph.replace_uses(old, new)
                if not new.hint and old.hint:
                    new.hint = old.hint
        new_ops.extend(rw.emitted)
    graph.ops = new_ops
    return changed


def operands(op: Op) -> list[Value]:
    """Every input of ``op``, each required (``Op.operand``: an error for an omitted one)."""
    return [op.operand(i) for i in range(len(op.inputs))]


def optional_input(op: Op, i: int) -> Value | None:
    """Input ``i`` of ``op``; None when it is omitted or past the last input given."""
    return op.inputs[i] if i < len(op.inputs) else None


def const_data(v: Value | None) -> np.ndarray | None:
    """The data of a const value (None for non-const or elided data)."""
    return v.data if v is not None and v.role == "const" and v.data is not None else None


def data_values(graph: Graph) -> set[Value]:
    """Values that never move: data inputs, labels, consts, values computed only from them, and the
    outputs of ``fixed`` ops (constants of each update, e.g. a softmax's shift)."""
    fixed = {v for v in graph.inputs} | set(graph.consts)
    for op in graph.ops:
        if op.kind in FIXED or (op.inputs and all(v is None or v in fixed for v in op.inputs)):
            fixed.update(op.outputs)
    return fixed


def is_family(op: Op) -> bool:
    return op.kind in FAMILIES


def is_loss(op: Op) -> bool:
    return op.kind in LOSSES


def is_move(op: Op) -> bool:
    return op.kind in MOVES


def reshape_param(shape: tuple) -> list[int]:
    """A reshape target for ``shape``: its one symbolic dim (the batch) becomes -1."""
    symbolic = [d for d in shape if not isinstance(d, int)]
    if len(symbolic) > 1:
        raise ValueError(f"cannot reshape to {shape}: more than one symbolic dim")
    return [d if isinstance(d, int) else -1 for d in shape]
