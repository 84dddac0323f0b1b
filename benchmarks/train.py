"""Seconds per update and accuracy after a fixed number of updates, per solver (and Adam).

    .venv/bin/python benchmarks/train.py [--updates 30] [--models mlp_digits,mlp_mnist]
                                         [--solvers ap,dr,ar,dm,cp,cdr,adam] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import projc  # noqa: E402
from common import format_table, write_json  # noqa: E402
from projc.train.data import load_data  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = {"mlp_digits": "digits", "mlp_mnist": "mnist5k", "cnn_digits": "digits"}


def run_one(model: str, solver: str, updates: int, batch: int, steps: int, seed: int = 0) -> dict:
    trainer = projc.compile(os.path.join(ROOT, "models", f"{model}.onnx"), solver=solver,
                            steps_per_update=steps)
    data = load_data(DATA[model], seed=seed, input_shape=trainer.input_shape)
    params = trainer.init_params()
    rng = __import__("numpy").random.default_rng(seed)
    times = []
    state = trainer.init_state(params)
    for i in range(updates + 1):  # update 0 compiles and is not timed
        idx = rng.choice(len(data.y_train), size=batch, replace=False)
        t0 = time.perf_counter()
        params, state, stats = trainer.update(params, state, data.x_train[idx], data.y_train[idx])
        __import__("jax").block_until_ready(params)
        if i:
            times.append(time.perf_counter() - t0)
    acc = trainer.evaluate(params, data.x_test, data.y_test)["accuracy"]
    return {"model": model, "solver": solver, "layout": "-" if solver == "adam" else trainer.layout.name,
            "updates": updates, "batch": batch, "steps": steps,
            "s_per_update": statistics.median(times), "test_accuracy": float(acc)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--models", default="mlp_digits,mlp_mnist")
    ap.add_argument("--solvers", default="ap,dr,ar,dm,cp,cdr,adam")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for model in args.models.split(","):
        for solver in args.solvers.split(","):
            r = run_one(model, solver, args.updates, args.batch, args.steps)
            rows.append(r)
            print(f"{model:12s} {solver:5s} {r['s_per_update']:.4f} s/update  acc {r['test_accuracy']:.4f}",
                  flush=True)
    headers = ["model", "solver", "layout", "updates", "s/update (median)", "test acc"]
    print(format_table(headers, [[r["model"], r["solver"], r["layout"], r["updates"],
                                  r["s_per_update"], r["test_accuracy"]] for r in rows]))
    print("wrote", write_json("train", {"rows": rows}, args.json))


if __name__ == "__main__":
    main()
