"""The IR verifier: structural invariants plus per-op type rules, reported in the dump's words.

``verify(graph)`` raises VerificationError whose message shows the offending line of the printed
graph with two lines of context on each side, so a failure reads like a compiler diagnostic.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

from projc.errors import VerificationError
from projc.ir import Graph, Op, Value
from projc.ir.printer import assign_names, format_graph, op_line_numbers

# A rule looks at one op and returns a problem description or None.
OpRule = Callable[[Op], "str | None"]
# A graph check returns (op or None, problem) pairs.
GraphCheck = Callable[[Graph], Iterable[tuple["Op | None", str]]]


def _structural_problems(graph: Graph) -> Iterable[tuple[Op | None, str]]:
    defined: set[Value] = set()
    for v in graph.inputs:
        if v.role not in ("input", "label"):
            yield None, f"graph input {v!r} has role {v.role}"
    for v in graph.initializers:
        if v.role not in ("param", "const"):
            yield None, f"initializer {v!r} has role {v.role}"
    for v in [*graph.inputs, *graph.initializers]:
        if v in defined:
            yield None, f"{v!r} is declared twice"
        defined.add(v)
    for op in graph.ops:
        for i, operand in enumerate(op.inputs):
            if operand is not None and operand not in defined:
                yield op, f"operand {i} of {op.kind} is used before it is defined"
        for v in op.outputs:
            if v in defined:
                yield op, f"{op.kind} redefines a value (single assignment)"
            if v.role != "tmp":
                yield op, f"{op.kind} output has role {v.role}, expected tmp"
            defined.add(v)
    for v in graph.outputs:
        if v not in defined:
            yield None, f"graph output {v!r} is never defined"


def _rule_problems(graph: Graph, rules: dict[str, OpRule]) -> Iterable[tuple[Op | None, str]]:
    for op in graph.ops:
        rule = rules.get(op.kind)
        problem = rule(op) if rule else None
        if problem:
            yield op, f"{op.kind}: {problem}"


def format_problem(graph: Graph, op: Op | None, problem: str, context: int = 2) -> str:
    """``problem`` followed by the offending dump line (marked ``>``) and its neighbours."""
    if op is None:
        return f"IR verification failed in @{graph.name}: {problem}"
    try:
        lines = format_graph(graph, assign_names(graph)).splitlines()
    except Exception:  # a graph too broken to print still gets its message
        return f"IR verification failed in @{graph.name}: {problem}"
    at = op_line_numbers(graph)[op] - 1
    shown = []
    for i in range(max(0, at - context), min(len(lines), at + context + 1)):
        shown.append(f"{'>' if i == at else ' '} {i + 1:4d} | {lines[i]}")
    return f"IR verification failed in @{graph.name}: {problem}\n" + "\n".join(shown)


def verify(graph: Graph, rules: dict[str, OpRule] | None = None,
           checks: Iterable[GraphCheck] = ()) -> None:
    """Raise VerificationError on the first broken invariant; return None when the graph is sound."""
    for problems in (_structural_problems(graph), _rule_problems(graph, rules or {}),
                     *(check(graph) for check in checks)):
        for op, problem in problems:
            raise VerificationError(format_problem(graph, op, problem))
