"""Wall time to reach a test accuracy on mnist5k (models/mlp_mnist.onnx): fastest projc config vs copies-dr.

    .venv/bin/python benchmarks/time_to_accuracy.py [--target 0.90] [--cap 150] [--eval-every 5]
                                                    [--configs consensus-ap:256:10,copies-dr:256:50]

A config is ``layout-solver:batch:steps_per_update``. Each run starts from the file's initial
parameters, draws shuffled minibatches (seed 0), and evaluates test accuracy every ``--eval-every``
updates. Reported time is training wall time including the first update's jit compile and
excluding the evaluations (also reported: time including them); a run stops at the target or at
``--cap`` seconds of training time (then it did not reach the target).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import format_table, write_json  # noqa: E402

import jax  # noqa: E402

import projc  # noqa: E402
from projc.data import load_data, minibatches  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "mlp_mnist.onnx")


def run(config: str, target: float, cap: float, eval_every: int) -> dict:
    name, batch, steps = config.split(":")
    layout, solver = name.split("-")
    batch, steps = int(batch), int(steps)
    kw = {} if solver == "adam" else {"layout": layout}
    tr = projc.compile(MODEL, solver=solver, steps_per_update=steps, **kw)
    data = load_data("mnist5k", seed=0, input_shape=tr.input_shape)
    p = tr.init_params()
    train_t = 0.0
    t_start = time.perf_counter()
    n, ep, acc, reached, curve = 0, 0, 0.0, False, []
    while not reached and train_t < cap:
        for xb, yb in minibatches(data.x_train, data.y_train, batch, seed=ep):
            t0 = time.perf_counter()
            p, _ = tr.update(p, xb, yb)
            jax.block_until_ready(p)
            train_t += time.perf_counter() - t0
            n += 1
            if n % eval_every == 0:
                acc = tr.evaluate(p, data.x_test, data.y_test)["accuracy"]
                curve.append((n, round(train_t, 3), acc))
                if acc >= target:
                    reached = True
                    break
            if train_t >= cap:
                break
        ep += 1
    acc = tr.evaluate(p, data.x_test, data.y_test)["accuracy"]
    return {"config": config, "layout": tr.layout.name if solver != "adam" else "-", "solver": solver,
            "batch": batch, "steps": steps, "reached": reached, "updates": n,
            "train_seconds": train_t, "wall_seconds": time.perf_counter() - t_start,
            "final_accuracy": acc, "curve": curve}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--cap", type=float, default=150.0)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--configs", default="consensus-cp:128:50,consensus-ap:256:50,copies-dr:256:50")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for c in args.configs.split(","):
        r = run(c, args.target, args.cap, args.eval_every)
        rows.append(r)
        print(f"{c:24s} reached={r['reached']} updates={r['updates']} train {r['train_seconds']:.1f} s "
              f"(wall {r['wall_seconds']:.1f} s) acc {r['final_accuracy']:.4f}", flush=True)
    print(format_table(["config", "layout", "reached", "updates", "train s", "wall s (with evals)", "test acc"],
                       [[r["config"], r["layout"], r["reached"], r["updates"], r["train_seconds"],
                         r["wall_seconds"], r["final_accuracy"]] for r in rows]))
    print("wrote", write_json("time_to_accuracy", {"target": args.target, "cap_s": args.cap,
                                                   "model": "models/mlp_mnist.onnx", "data": "mnist5k",
                                                   "rows": rows}, args.json))


if __name__ == "__main__":
    main()
