"""init="file" vs init="he": test accuracy after a fixed number of updates, per bundled untrained model.

    .venv/bin/python benchmarks/init.py [--models mlp_digits,resmlp,...] [--updates 30] [--solver dr]
                                        [--seed 0] [--json PATH]

Each model trains on its data set (digits; mlp_mnist on mnist5k) with batch 256 and 50 projection
steps per update, the same batches for both inits (data seed = ``--seed``, He draws seeded by it too),
and reports the test accuracy every ``--every`` updates. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import projc  # noqa: E402
from common import format_table, write_json  # noqa: E402
from projc.config import Config  # noqa: E402
from projc.train.data import load_data  # noqa: E402
from projc.train.loop import TrainingRun  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNTRAINED = ["mlp_digits", "resmlp", "binary_mlp", "cnn_digits", "mlp_mnist", "cnn2_digits",
             "lenet_digits", "gap_digits", "maxlogits_digits"]
DATA = {"mlp_mnist": "mnist5k"}


def run(name: str, init: str, solver: str, updates: int, every: int, seed: int, batch: int = 256,
        update_scale: float | str = "auto"):
    """[(update, test accuracy)] every ``every`` updates, and seconds per update (evaluation included)."""
    config = Config.build(solver=solver, steps_per_update=50, init=init, seed=seed, update_scale=update_scale,
                          batch=batch, updates=updates, eval_every=every)
    tr = projc.compile(os.path.join(ROOT, "models", f"{name}.onnx"), config)
    data = load_data(DATA.get(name, "digits"), seed=seed, input_shape=tr.input_shape)
    run = TrainingRun(config, tr, data, verbose=False, warn=lambda message: None)
    t0 = time.perf_counter()
    run.train()
    curve = [(r["update"], r["test_accuracy"]) for r in run.history if r["update"] > 0]
    return curve, (time.perf_counter() - t0) / updates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp_digits,resmlp,binary_mlp,cnn_digits,mlp_mnist")
    ap.add_argument("--inits", default="file,he")
    ap.add_argument("--updates", type=int, default=30)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--solver", default="dr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--update-scale", default="auto",
                    help="auto (the trainer's default) or a number (the README table used 1)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    update_scale = args.update_scale if args.update_scale == "auto" else float(args.update_scale)
    rows, results = [], []
    for name in args.models.split(","):
        for init in args.inits.split(","):
            curve, spu = run(name, init, args.solver, args.updates, args.every, args.seed,
                             update_scale=update_scale)
            results.append({"model": name, "init": init, "solver": args.solver, "curve": curve,
                            "s_per_update": spu})
            rows.append([name, init, args.solver, " ".join(f"{a:.3f}@{i}" for i, a in curve), spu])
            print(format_table(["model", "init", "solver", "test accuracy @ updates", "s/update"], rows[-1:]),
                  flush=True)
    print()
    print(format_table(["model", "init", "solver", "test accuracy @ updates", "s/update"], rows))
    print("wrote", write_json("init", {"args": vars(args), "results": results}, args.json))


if __name__ == "__main__":
    main()
