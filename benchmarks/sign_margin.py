"""The sign family's projection margin (proj_pwl.SIGN_MARGIN) against test accuracy on binary_mlp.

    .venv/bin/python benchmarks/sign_margin.py [--margins 0,0.5] [--seeds 0,1,2] [--epochs 10]
                                               [--model models/binary_mlp.onnx] [--json PATH]

Each run is `projc train MODEL --epochs N --seed S` with the defaults (DR, 50 steps per update, batch
256, lam 5, the file's init) except the margin: 0 projects onto the closure of sign's graph (the
behaviour before the margin), m > 0 onto the graph less the points within m of the jump.  The seed
sets the digits split and the batch order, as `projc train --seed` does.  Prints a table (train and
test accuracy), writes JSON.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import projc  # noqa: E402
from common import format_table, write_json  # noqa: E402
from projc.backends.jax import proj_pwl  # noqa: E402
from projc.config import Config  # noqa: E402
from projc.train.data import load_data  # noqa: E402
from projc.train.loop import TrainingRun  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(model: str, margin: float, seed: int, epochs: int, batch: int = 256) -> tuple[float, float]:
    """(train accuracy, test accuracy) after ``epochs`` epochs with the sign preset's margin set to ``margin``."""
    saved = proj_pwl.SIGN_MARGIN
    proj_pwl.SIGN_MARGIN = margin  # read when the "sign" preset is built, i.e. when the update is traced
    try:
        config = Config.build(seed=seed, epochs=epochs, batch=batch)
        tr = projc.compile(model, config)
        data = load_data("digits", seed=seed, input_shape=tr.input_shape)
        params = TrainingRun(config, tr, data, verbose=False, warn=lambda message: None).train()
    finally:
        proj_pwl.SIGN_MARGIN = saved
    return (tr.evaluate(params, data.x_train, data.y_train)["accuracy"],
            tr.evaluate(params, data.x_test, data.y_test)["accuracy"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "binary_mlp.onnx"))
    ap.add_argument("--margins", default="0,0.5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    rows = []
    for m in [float(v) for v in args.margins.split(",")]:
        for seed in [int(v) for v in args.seeds.split(",")]:
            train_acc, test_acc = run(args.model, m, seed, args.epochs)
            rows.append([m, seed, train_acc, test_acc])
            print(f"margin {m} seed {seed}: train {train_acc:.4f} test {test_acc:.4f}", flush=True)
    headers = ["margin", "seed", "train acc", "test acc"]
    print(format_table(headers, rows))
    path = write_json("sign_margin", {"model": args.model, "epochs": args.epochs,
                                      "rows": [dict(zip(headers, r)) for r in rows]}, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
