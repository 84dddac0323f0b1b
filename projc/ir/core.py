"""projc IR: values, ops and graphs.

A graph holds data values (``input``, ``label``), initializers (``param``: trainable,
``const``: frozen) and a topologically ordered list of ops. Values are identified by object
identity; names are assigned only when printing (``projc.ir.printer``), so dumps are deterministic.
Op ``params`` carry meaning (ONNX attributes, constraint options); ``annots`` carry analysis
results (chosen projection, set, ONNX source node) and never change what is computed.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Dim = int | str  # a str dim is symbolic (e.g. "B", the batch)

DTYPES: dict[str, Any] = {
    "f16": np.float16, "f32": np.float32, "f64": np.float64,
    "i8": np.int8, "i16": np.int16, "i32": np.int32, "i64": np.int64,
    "u8": np.uint8, "u16": np.uint16, "u32": np.uint32, "u64": np.uint64,
    "bool": np.bool_, "str": np.str_,
}
ROLES = ("input", "label", "param", "const", "tmp")


def dtype_name(np_dtype) -> str:
    """The IR name of a numpy dtype (``float32`` -> ``f32``)."""
    dt = np.dtype(np_dtype)
    for name, typ in DTYPES.items():
        if dt == np.dtype(typ):
            return name
    if dt.kind in "US":
        return "str"
    raise ValueError(f"dtype {dt} has no IR name")


@dataclass(eq=False)
class Value:
    """A tensor value. ``data`` is set for initializers (param/const); ``hint`` is the preferred name."""

    dtype: str
    shape: tuple[Dim, ...]
    role: str = "tmp"
    hint: str = ""
    data: np.ndarray | None = None

    def __post_init__(self):
        self.shape = tuple(self.shape)
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        """True when every dim is a known integer."""
        return all(isinstance(d, int) for d in self.shape)

    @property
    def is_constant(self) -> bool:
        return self.role == "const"

    def type_str(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    def __repr__(self) -> str:
        return f"Value({self.hint or '?'}: {self.type_str()} {self.role})"


@dataclass(eq=False)
class Op:
    """One op. ``inputs`` may hold ``None`` for an omitted optional ONNX input."""

    kind: str
    inputs: list[Value | None]
    outputs: list[Value]
    params: dict[str, Any] = field(default_factory=dict)
    annots: dict[str, Any] = field(default_factory=dict)

    def operand(self, i: int) -> Value:
        """Input ``i``, which must be present: an error when it is an omitted optional input."""
        v = self.inputs[i]
        if v is None:
            raise ValueError(f"{self.kind}: input {i} is omitted")
        return v

    def __repr__(self) -> str:
        return f"Op({self.kind}, {len(self.inputs)} in, {len(self.outputs)} out)"


@dataclass(eq=False)
class Graph:
    """A model: data inputs (role input/label), initializers (param/const), ops in order, outputs."""

    name: str
    inputs: list[Value] = field(default_factory=list)
    initializers: list[Value] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # opset imports, source file, ...

    # -- queries ---------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        """Every defined value, in definition order."""
        yield from self.inputs
        yield from self.initializers
        for op in self.ops:
            yield from op.outputs

    def producers(self) -> dict[Value, Op]:
        return {v: op for op in self.ops for v in op.outputs}

    def users(self) -> dict[Value, list[tuple[Op, int]]]:
        """value -> [(consumer op, operand index)], in op order."""
        uses: dict[Value, list[tuple[Op, int]]] = {}
        for op in self.ops:
            for i, v in enumerate(op.inputs):
                if v is not None:
                    uses.setdefault(v, []).append((op, i))
        return uses

    @property
    def params(self) -> list[Value]:
        return [v for v in self.initializers if v.role == "param"]

    @property
    def consts(self) -> list[Value]:
        return [v for v in self.initializers if v.role == "const"]

    @property
    def labels(self) -> list[Value]:
        return [v for v in self.inputs if v.role == "label"]

    @property
    def data_inputs(self) -> list[Value]:
        return [v for v in self.inputs if v.role == "input"]

    # -- edits -----------------------------------------------------------------------------
    def replace_uses(self, old: Value, new: Value) -> None:
        """Point every use of ``old`` (operands and graph outputs) at ``new``."""
        for op in self.ops:
            op.inputs = [new if v is old else v for v in op.inputs]
        self.outputs = [new if v is old else v for v in self.outputs]

    def clone(self) -> Graph:
        """A structural copy: new Value and Op objects, initializer arrays shared (read-only)."""
        memo = {id(v.data): v.data for v in self.values() if v.data is not None}
        return copy.deepcopy(self, memo)


def remove_dead_code(graph: Graph) -> bool:
    """Drop ops none of whose outputs reaches a graph output (an op without outputs, a loss, is a
    root and stays), then initializers nothing uses. Returns whether anything was removed."""
    live = set(graph.outputs)
    kept = []
    for op in reversed(graph.ops):
        if not op.outputs or any(v in live for v in op.outputs):
            kept.append(op)
            live.update(v for v in op.inputs if v is not None)
    kept.reverse()
    inits = [v for v in graph.initializers if v in live]
    changed = len(kept) != len(graph.ops) or len(inits) != len(graph.initializers)
    graph.ops, graph.initializers = kept, inits
    return changed
