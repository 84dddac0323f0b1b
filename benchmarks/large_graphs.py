"""How projc copes with very large graphs: a chain of N Adds, each with its own constant.

    python benchmarks/large_graphs.py 1000 2000 4000 20000      # each size in a fresh process
    python benchmarks/large_graphs.py --jit 1000 2000 4000      # also time XLA's compile of the forward

Per size: import seconds, op-by-op (eager) forward seconds, `projc compare` seconds and exit code,
and with --jit the jitted forward's seconds and peak RSS (XLA's compile is what grows faster than the
op count: the reason compare evaluates graphs above projc.frontend.limits.EAGER_OPS op by op).
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def add_chain(n: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, prev = [], [], "x"
    for i in range(n):
        inits.append(numpy_helper.from_array(np.full((4,), 0.001 * i, np.float32), f"c{i}"))
        out = f"a{i}" if i < n - 1 else "y"
        nodes.append(helper.make_node("Add", [prev, f"c{i}"], [out], name=f"add{i}"))
        prev = out
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4])], inits)
    return helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def child(n: int, jit: bool, path: str) -> None:
    from projc.backends.jax.forward import graph_param_values, run_forward
    from projc.frontend.importer import load_model

    t0 = time.perf_counter()
    graph = load_model(path)
    print(f"  import {time.perf_counter() - t0:.1f} s ({len(graph.ops)} ops)", flush=True)
    feed = {"x": np.ones((3, 4), np.float32)}
    t0 = time.perf_counter()
    run_forward(graph, graph_param_values(graph), feed, jit=False)
    print(f"  op-by-op forward {time.perf_counter() - t0:.1f} s", flush=True)
    if jit:
        t0 = time.perf_counter()
        run_forward(graph, graph_param_values(graph), feed, jit=True)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"  jitted forward {time.perf_counter() - t0:.1f} s, peak RSS {rss:.0f} MB", flush=True)


def main(argv: list[str]) -> None:
    jit = "--jit" in argv
    sizes = [int(a) for a in argv if a != "--jit"] or [1000, 2000, 4000, 20000]
    with tempfile.TemporaryDirectory() as folder:
        for n in sizes:
            path = os.path.join(folder, f"chain{n}.onnx")
            with open(path, "wb") as f:
                f.write(add_chain(n).SerializeToString())
            print(f"{n} Adds:", flush=True)
            proc = subprocess.run([sys.executable, __file__, "--child", str(n), str(jit), path], timeout=3600)
            if proc.returncode:
                print(f"  child exited {proc.returncode}")
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "projc.cli", "compare", path], capture_output=True,
                                  text=True, timeout=3600)
            last = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or [""])[-1]
            print(f"  projc compare: exit {proc.returncode} in {time.perf_counter() - t0:.1f} s ({last[:80]})",
                  flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), sys.argv[3] == "True", sys.argv[4])
    else:
        main(sys.argv[1:])
