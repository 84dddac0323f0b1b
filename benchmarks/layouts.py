"""Copies vs consensus layout: seconds per update and memory, against one Adam step.

    .venv/bin/python benchmarks/layouts.py [--repeats 5] [--models mlp_mnist,mlp512,cnn_digits]
                                           [--no-sweep] [--json PATH] [--cnn-steps 10]

Per model (batch 256, 50 projection steps per update): copies-ap, consensus-ap, copies-dr, one
consensus-ap step (an update with steps_per_update=1, and the 50-step update / 50), and one optax
Adam step on the same compiled forward (trainer solver="adam"). ``mlp512`` is a plain
784-512-512-10 ReLU MLP built here with onnx.helper; the inputs are random (timing does not depend
on the data). Timings: median of ``--repeats`` calls after one warm-up (compile) call.

CNN rows (``cnn2_digits``, ``lenet_digits``; ``cnn_digits`` with ``--cnn-rows``): copies-dr and
consensus-cp updates of ``--cnn-steps`` steps and one Adam step; the ratios are one projection step
(the update / steps) against one Adam step, from the same run (DR on a two-conv CNN is ~1 min per
50-step update on the project machine, hence fewer steps).

Memory: XLA's compiled memory analysis of the jitted update (argument + temp + output bytes, minus
aliased bytes) — deterministic, and what the update needs on top of the process; not RSS.

The sweep times consensus-ap and Adam on 784-W-W-10 MLPs over batch and width, and gives the copies
layout's memory from compilation alone (copies is not run there: it needs O(B·W²) floats).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402

import projc  # noqa: E402
from common import format_table, median_seconds, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp_onnx(path: str, widths=(784, 512, 512, 10), seed: int = 0) -> str:
    """A plain ReLU MLP (Gemm transB=1 + Relu), PyTorch-style init, dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    cur = "x"
    for i, (n, m) in enumerate(zip(widths[:-1], widths[1:])):
        bound = 1 / np.sqrt(n)
        w = rng.uniform(-bound, bound, size=(m, n)).astype(np.float32)
        b = rng.uniform(-bound, bound, size=m).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        last = i == len(widths) - 2
        out = "logits" if last else f"z{i}"
        nodes.append(helper.make_node("Gemm", [cur, f"fc{i}.weight", f"fc{i}.bias"], [out], transB=1,
                                      name=f"/fc{i}/Gemm"))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"h{i}"], name=f"/relu{i}/Relu"))
            cur = f"h{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", widths[0]])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", widths[-1]])],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _data(trainer, batch, seed=0):
    rng = np.random.default_rng(seed)
    shape = (batch,) + tuple(d for d in trainer.input_shape[1:])
    x = rng.normal(size=shape).astype(np.float32)
    y = rng.integers(0, trainer.num_classes, batch)
    return x, y


def _memory(trainer, x, y) -> int:
    """Bytes XLA reserves for one compiled update (arguments + temporaries + outputs - aliased)."""
    m = trainer.lower_update(x, y).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes
               - m.alias_size_in_bytes)


def measure(model_path, solver, layout, steps, batch, repeats, run=True) -> dict:
    # "copies-materialized": every slot stored, the reference library's cost structure (PAPER.md)
    kw = {} if solver == "adam" else {"layout": layout.replace("-materialized", "")}
    if layout == "copies-materialized":
        kw["factor_linear"] = False
    tr = projc.compile(model_path, solver=solver, steps_per_update=steps, **kw)
    x, y = _data(tr, batch)
    p = tr.init_params()

    def call():
        q, _st, _ = tr.update(p, tr.init_state(p), x, y)
        jax.block_until_ready(q)

    if solver == "adam":
        call()  # builds the jitted step
    sec = median_seconds(call, repeats) if run else float("nan")
    shown = layout if layout == "copies-materialized" else tr.layout.name if solver != "adam" else "-"
    return {"solver": solver, "layout": shown, "steps": steps,
            "batch": batch, "s_per_update": sec, "mem_bytes": _memory(tr, x, y)}


def bench_model(name, path, batch, repeats, steps=50, copies_repeats=None, materialized=False) -> list[dict]:
    cr = copies_repeats or repeats
    configs = [("ap", "copies", steps, cr), ("ap", "consensus", steps, repeats),
               ("dr", "copies", steps, cr), ("ap", "consensus", 1, repeats), ("adam", None, 1, repeats)]
    if materialized:
        configs.insert(0, ("ap", "copies-materialized", steps, 3))
    return measure_rows(name, path, batch, configs)


def measure_rows(name, path, batch, configs) -> list[dict]:
    """One measured row per (solver, layout, steps, repeats) config, printed as it comes."""
    rows = []
    for solver, layout, st, reps in configs:
        r = measure(path, solver, layout, st, batch, reps)
        r["model"] = name
        rows.append(r)
        print(f"{name:12s} {solver:4s} {r['layout']:9s} steps={st:<3d} {r['s_per_update']:.5f} s  "
              f"{r['mem_bytes'] / 2**20:.1f} MiB", flush=True)
    return rows


CNNS = ("cnn2_digits", "lenet_digits")


def bench_cnn(name, path, batch, repeats, steps) -> list[dict]:
    configs = [("adam", None, 1, repeats), ("cp", "consensus", steps, repeats), ("dr", "copies", steps, repeats)]
    return measure_rows(name, path, batch, configs)


def cnn_ratios(rows) -> dict:
    adam = next(r for r in rows if r["solver"] == "adam")["s_per_update"]
    return {f"{r['layout']}_{r['solver']}_step_over_adam_step": r["s_per_update"] / r["steps"] / adam
            for r in rows if r["solver"] != "adam"}


def ratios(rows) -> dict:
    by = {(r["solver"], r["layout"], r["steps"]): r for r in rows}
    cop, con = by[("ap", "copies", 50)], by[("ap", "consensus", 50)]
    one, adam = by[("ap", "consensus", 1)], by[("adam", "-", 1)]
    return {"copies_ap_over_consensus_ap": cop["s_per_update"] / con["s_per_update"],
            "consensus_step_over_adam_step": one["s_per_update"] / adam["s_per_update"],
            "consensus_update_per_step_over_adam_step": con["s_per_update"] / 50 / adam["s_per_update"],
            "copies_dr_over_consensus_ap": by[("dr", "copies", 50)]["s_per_update"] / con["s_per_update"],
            "consensus_mem_over_adam_mem": con["mem_bytes"] / adam["mem_bytes"],
            "copies_mem_over_consensus_mem": cop["mem_bytes"] / con["mem_bytes"],
            **({"materialized_copies_ap_over_consensus_ap": by[("ap", "copies-materialized", 50)]["s_per_update"]
                / con["s_per_update"]} if ("ap", "copies-materialized", 50) in by else {})}


def sweep(tmp, repeats, batches=(64, 256, 1024), widths=(128, 256, 512, 1024)) -> list[dict]:
    rows = []
    for w in widths:
        path = mlp_onnx(os.path.join(tmp, f"mlp{w}.onnx"), (784, w, w, 10))
        for b in batches:
            con = measure(path, "ap", "consensus", 50, b, repeats)
            adam = measure(path, "adam", None, 1, b, repeats)
            cop = measure(path, "ap", "copies", 50, b, 0, run=False)
            rows.append({"width": w, "batch": b, "consensus_ap_s": con["s_per_update"],
                         "adam_step_s": adam["s_per_update"], "consensus_mem": con["mem_bytes"],
                         "adam_mem": adam["mem_bytes"], "copies_mem": cop["mem_bytes"]})
            print(f"sweep W={w:<5d} B={b:<5d} consensus {con['s_per_update']:.4f} s "
                  f"adam {adam['s_per_update']:.5f} s  mem MiB: consensus {con['mem_bytes'] / 2**20:.1f} "
                  f"adam {adam['mem_bytes'] / 2**20:.1f} copies {cop['mem_bytes'] / 2**20:.1f}", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", default="mlp_mnist,mlp512,cnn_digits")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--cnn-steps", type=int, default=10, help="projection steps per update in CNN rows")
    ap.add_argument("--cnn-rows", action="store_true", help="time cnn_digits as a CNN row (dr, cp, adam)")
    args = ap.parse_args(argv)
    out = {"batch": args.batch, "steps_per_update": 50, "memory": "XLA compiled memory_analysis: "
           "argument + temp + output - alias bytes of the jitted update", "models": {}}
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"mlp_mnist": os.path.join(ROOT, "models", "mlp_mnist.onnx"),
                 "cnn_digits": os.path.join(ROOT, "models", "cnn_digits.onnx"),
                 "mlp512": mlp_onnx(os.path.join(tmp, "mlp512.onnx")),
                 **{n: os.path.join(ROOT, "models", f"{n}.onnx") for n in CNNS}}
        for name in args.models.split(","):
            if name in CNNS or (name == "cnn_digits" and args.cnn_rows):
                rows = bench_cnn(name, paths[name], args.batch, args.repeats, args.cnn_steps)
                out["models"][name] = {"rows": rows, "ratios": cnn_ratios(rows)}
                tables.append(format_table(
                    ["model", "config", "steps", "s/update (median)", "memory MiB"],
                    [[name, f"{r['layout']}-{r['solver']}" if r["solver"] != "adam" else "adam", r["steps"],
                      r["s_per_update"], r["mem_bytes"] / 2**20] for r in rows]))
                tables.append(format_table(["ratio", "value"], [[k, v] for k, v in cnn_ratios(rows).items()]))
                continue
            rows = bench_model(name, paths[name], args.batch, args.repeats,
                               copies_repeats=3 if name == "mlp512" else None,
                               materialized=name == "mlp_mnist")
            out["models"][name] = {"rows": rows, "ratios": ratios(rows)}
            tables.append(format_table(
                ["model", "config", "steps", "s/update (median)", "memory MiB"],
                [[name, f"{r['layout']}-{r['solver']}" if r["solver"] != "adam" else "adam", r["steps"],
                  r["s_per_update"], r["mem_bytes"] / 2**20] for r in rows]))
            tables.append(format_table(["ratio", "value"], [[k, v] for k, v in ratios(rows).items()]))
        if not args.no_sweep:
            rows = sweep(tmp, args.repeats)
            out["sweep"] = rows
            tables.append(format_table(
                ["width", "batch", "consensus-ap s/update", "adam s/step", "consensus MiB", "adam MiB",
                 "copies MiB (compiled only)"],
                [[r["width"], r["batch"], r["consensus_ap_s"], r["adam_step_s"], r["consensus_mem"] / 2**20,
                  r["adam_mem"] / 2**20, r["copies_mem"] / 2**20] for r in rows]))
    print("\n\n".join(tables))
    print("wrote", write_json("layouts", out, args.json))


if __name__ == "__main__":
    main()
