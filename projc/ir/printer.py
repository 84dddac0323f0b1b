"""Print an IR graph as text, one definition or op per line (jaxpr-like).

Names are assigned here, in definition order: a value's cleaned ONNX name when it is free,
otherwise ``%0, %1, ...``. The output parses back (``projc.ir.parser``) to a graph that prints
identically.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from projc.ir import Graph, Op, Value

INLINE_CONST_LIMIT = 16  # consts with at most this many elements print their data


def clean_name(hint: str) -> str:
    """An ONNX name reduced to the IR's name alphabet, or '' when nothing usable is left."""
    name = re.sub(r"[^A-Za-z0-9_.]+", "_", hint).strip("_.")
    return "" if not name or name[0].isdigit() else name


def assign_names(graph: Graph) -> dict[Value, str]:
    """Deterministic printed names for every value of ``graph``."""
    names: dict[Value, str] = {}
    taken: set[str] = set()
    counter = 0
    for value in graph.values():
        if value in names:
            continue
        name = clean_name(value.hint)
        if not name or name in taken:
            while str(counter) in taken:
                counter += 1
            name = str(counter)
            counter += 1
        names[value] = name
        taken.add(name)
    return names


def format_literal(x: Any) -> str:
    """A param/annotation value: ints, floats (repr, so exact), strings (quoted), nested lists."""
    if isinstance(x, (bool, np.bool_)):
        return "1" if x else "0"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return repr(x)
    if isinstance(x, str):
        return json.dumps(x)
    if isinstance(x, np.ndarray):
        return format_literal(x.tolist())
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(format_literal(e) for e in x) + "]"
    raise TypeError(f"cannot print literal of type {type(x).__name__}: {x!r}")


def format_dict(d: dict[str, Any], open_: str, close: str) -> str:
    if not d:
        return ""
    return open_ + ", ".join(f"{k}={format_literal(d[k])}" for k in sorted(d)) + close


def format_decl(value: Value, names: dict[Value, str]) -> str:
    line = f"  {value.role} %{names[value]}: {value.type_str()}"
    if value.role == "const" and value.data is not None and np.size(value.data) <= INLINE_CONST_LIMIT:
        line += " = " + format_literal(np.asarray(value.data).tolist())
    return line


def format_op(op: Op, names: dict[Value, str]) -> str:
    operands = ", ".join("_" if v is None else f"%{names[v]}" for v in op.inputs)
    rhs = op.kind + format_dict(op.params, "[", "]") + (" " + operands if operands else "")
    if op.outputs:
        lhs = ", ".join(f"%{names[v]}: {v.type_str()}" for v in op.outputs)
        rhs = f"{lhs} = {rhs}"
    annots = format_dict(op.annots, "{", "}")
    return f"  {rhs}" + (f"  {annots}" if annots else "")


def format_graph(graph: Graph, names: dict[Value, str] | None = None) -> str:
    """The whole graph as text (ends with a newline)."""
    names = names or assign_names(graph)
    lines = [f"graph @{clean_name(graph.name) or 'main'} {{"]
    lines += [format_decl(v, names) for v in graph.inputs]
    lines += [format_decl(v, names) for v in graph.initializers]
    lines += [format_op(op, names) for op in graph.ops]
    lines.append(" ".join(["  return", ", ".join(f"%{names[v]}" for v in graph.outputs)]).rstrip())
    lines.append("}")
    return "\n".join(lines) + "\n"


def op_line_numbers(graph: Graph) -> dict[Op, int]:
    """1-based line of each op in ``format_graph(graph)`` (for error messages)."""
    first = 2 + len(graph.inputs) + len(graph.initializers)
    return {op: first + i for i, op in enumerate(graph.ops)}
