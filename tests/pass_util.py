"""Helpers for the pass tests: FileCheck-style matching, random initializer data, evaluation."""
from __future__ import annotations

import importlib
import pkgutil

import jax
import numpy as np

import projc.ops
from projc.ir import DTYPES, Graph
from projc.ir.parser import parse_graph
from projc.ir.printer import format_graph
from projc.passes import PassManager

for _m in pkgutil.iter_modules(projc.ops.__path__):  # every op module registers its ops on import
    importlib.import_module("projc.ops." + _m.name)


def filecheck(output: str, checks: list[str]) -> None:
    """Each CHECK must match (substring, stripped) a line after the previous match; CHECK-NOT
    lines must match no line between the previous and the next CHECK match."""
    lines = [ln.strip() for ln in output.splitlines()]
    pos, pending_not = 0, []
    for kind, pattern in checks:
        if kind == "CHECK-NOT":
            pending_not.append(pattern)
            continue
        for i in range(pos, len(lines)):
            if pattern in lines[i]:
                for bad in pending_not:
                    hit = [ln for ln in lines[pos:i] if bad in ln]
                    assert not hit, f"CHECK-NOT: {bad!r} matched {hit[0]!r}\n--- output ---\n{output}"
                pending_not, pos = [], i + 1
                break
        else:
            raise AssertionError(f"CHECK: {pattern!r} not found after line {pos}\n--- output ---\n{output}")
    for bad in pending_not:
        hit = [ln for ln in lines[pos:] if bad in ln]
        assert not hit, f"CHECK-NOT: {bad!r} matched {hit[0]!r}\n--- output ---\n{output}"


def check_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for ln in text.splitlines():
        s = ln.strip()
        for kind in ("CHECK-NOT:", "CHECK:"):
            if s.startswith("# " + kind):
                out.append((kind[:-1], s[len(kind) + 2:].strip()))
                break
    return out


def run_ir(text: str, pipeline: str) -> tuple[Graph, str]:
    """Parse IR text (CHECK lines are comments), run the pipeline (verifying), check, return."""
    graph = parse_graph(text)
    PassManager(pipeline).run(graph)
    out = format_graph(graph)
    filecheck(out, check_lines(text))
    # the printed result parses back to the same text
    assert format_graph(parse_graph(out)) == out
    return graph, out


def fill_data(graph: Graph, seed: int = 0) -> None:
    """Random data for params (and consts whose data the parser elided)."""
    rng = np.random.default_rng(seed)
    for v in graph.initializers:
        if v.data is None:
            v.data = rng.standard_normal(v.shape).astype(DTYPES[v.dtype])


def evaluate(graph: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run the graph with projc's one interpreter (``backends.jax.forward``) on the CPU; params are
    the graph's initializer data, data inputs are fed by hint."""
    from projc.backends.jax.forward import make_forward

    params = {v.hint: v.data for v in graph.params}
    with jax.default_device(jax.devices("cpu")[0]):
        return [np.asarray(out) for out in make_forward(graph)(params, feeds)]


def op_counts(graph: Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in graph.ops:
        counts[op.kind] = counts.get(op.kind, 0) + 1
    return dict(sorted(counts.items()))


def save_onnx(path, nodes, inputs, outputs, inits: dict, opset: int = 17) -> str:
    """A checked ONNX model (float32 initializers from ``inits``) saved at ``path``; returns the path."""
    import onnx
    from onnx import helper, numpy_helper

    g = helper.make_graph(nodes, "m", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return str(path)


def jit_update(layout, solver, steps: int, **kw):
    """The projection update of ``solver`` on ``layout`` as ``update(params, inputs) -> (params,
    stats)``, jitted (the projection methods carry no state between updates)."""
    import jax

    from projc.backends.jax.emit import projection_method

    update = jax.jit(projection_method(layout, solver, steps, **kw).update)

    def run(params, inputs):
        new, _, stats = update(params, (), inputs)
        return new, stats
    return run


def rel_diff(a, b) -> float:
    """Largest |a - b| relative to the largest |b|: the tolerance measure of the layout tests."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))
