"""One update of a recurrent model with its gates (sigmoid, tanh, 1 - sigmoid) projected by the grid
search (proj_smooth) and by the grid-free path (proj_smooth_fast), in the same process.

    .venv/bin/python benchmarks/smooth_gates.py [--models rnn_digits,gru_digits] [--steps 5]
        [--batch 64] [--repeats 5] [--json PATH]

The grid row is made by taking the gate functions out of ``families.FAST_FNS`` for that compile
(training always takes the grid-free path). Seconds: compile and first update, then the median of
``repeats`` updates on digits batches; the compile cache is off.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax

import projc
from projc.backends.jax import families
from projc.train.data import load_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATES = ("sigmoid", "tanh", "one_minus_sigmoid")


def measure(model: str, grid: bool, steps: int, batch: int, repeats: int) -> dict:
    saved = families.FAST_FNS
    families.FAST_FNS = tuple(f for f in saved if f not in GATES) if grid else saved
    try:
        tr = projc.compile(os.path.join(ROOT, "models", f"{model}.onnx"), steps_per_update=steps, cache=False)
        data = load_data("digits", seed=0, input_shape=tr.input_shape)
        x, y = data.x_train[:batch], data.y_train[:batch]
        p = tr.init_params()
        st = tr.init_state(p)
        t0 = time.perf_counter()
        jax.block_until_ready(tr.update(p, st, x, y)[0])
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(tr.update(p, st, x, y)[0])
            times.append(time.perf_counter() - t0)
    finally:
        families.FAST_FNS = saved
    return {"model": model, "path": "grid" if grid else "grid-free", "first_s": first,
            "update_ms": statistics.median(times) * 1e3, "load": os.getloadavg()[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rnn_digits,gru_digits")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results", "smooth_gates.json"))
    args = ap.parse_args(argv)
    rows = []
    print(f"{args.steps} steps per update, batch {args.batch}, median of {args.repeats}")
    print("| model | path | compile + first update s | update ms | per step ms | grid / grid-free |")
    print("|---|---|---|---|---|---|")
    for model in args.models.split(","):
        pair = [measure(model, grid, args.steps, args.batch, args.repeats) for grid in (True, False)]
        for r in pair:
            ratio = pair[0]["update_ms"] / r["update_ms"]
            print(f"| {model} | {r['path']} | {r['first_s']:.1f} | {r['update_ms']:.1f} | "
                  f"{r['update_ms'] / args.steps:.2f} | {ratio:.1f} |")
        rows += pair
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump({"steps": args.steps, "batch": args.batch, "rows": rows}, fh, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
