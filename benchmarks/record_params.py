"""Record (or compare) parameters after a few updates on fixed seeds: the refactoring check.

    .venv/bin/python benchmarks/record_params.py --save out/params_before.npz
    .venv/bin/python benchmarks/record_params.py --compare out/params_before.npz

Each run trains a fixed list of (model, solver, layout) for a few updates on the same minibatches and
stores every parameter; ``--compare`` reports, per run, whether the parameters are bit-for-bit equal
and the largest absolute difference otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import projc
from projc.train.data import load_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = {"mlp_digits": "digits", "mlp_mnist": "mnist5k"}
RUNS = [("mlp_digits", s, "auto") for s in ("ap", "dr", "cp", "dm", "cdr", "adam")] + [
    ("mlp_digits", "ap", "copies"), ("mlp_digits", "cp", "copies"),
    ("mlp_mnist", "ap", "consensus"), ("mlp_mnist", "dr", "copies")]


def run(model: str, solver: str, layout: str, updates: int, batch: int, steps: int) -> dict:
    trainer = projc.compile(os.path.join(ROOT, "models", f"{model}.onnx"), solver=solver,
                            steps_per_update=steps, layout=layout)
    data = load_data(DATA[model], seed=0, input_shape=trainer.input_shape)
    rng = np.random.default_rng(0)
    params = trainer.init_params()
    state = trainer.init_state(params)
    for _ in range(updates):
        idx = rng.choice(len(data.y_train), size=batch, replace=False)
        params, state, _ = trainer.update(params, state, data.x_train[idx], data.y_train[idx])
    return {k: np.asarray(v) for k, v in params.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save")
    ap.add_argument("--compare")
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    out, bad = {}, 0
    ref = np.load(args.compare) if args.compare else None
    for model, solver, layout in RUNS:
        params = run(model, solver, layout, args.updates, args.batch, args.steps)
        tag = f"{model}/{solver}/{layout}"
        for k, v in params.items():
            out[f"{tag}/{k}"] = v
        if ref is not None:
            diffs = [float(np.max(np.abs(v - ref[f"{tag}/{k}"]))) for k, v in params.items()]
            same = all(np.array_equal(v, ref[f"{tag}/{k}"]) for k, v in params.items())
            bad += not same
            verdict = "identical" if same else "DIFFERENT"
            print(f"{tag:32s} {verdict}  max |diff| {max(diffs):.3g}", flush=True)
        else:
            print(f"{tag:32s} recorded", flush=True)
    if args.save:
        os.makedirs(os.path.dirname(args.save) or ".", exist_ok=True)
        np.savez(args.save, **out)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
