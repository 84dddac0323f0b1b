"""The task models of issue 23 through the CLI: projc's defaults, the recipes, and Adam (lr 1e-3 and
1e-2), seeds 0-2, each scored by onnxruntime on the exported file (the last line `projc train`
prints). Prints a table (mean [min, max] over the seeds) and writes JSON.

    .venv/bin/python benchmarks/tasks.py [--only reg_diabetes,bce_cancer,ae_digits] [--seeds 0,1,2]
                                         [--epochs 10] [--json PATH]

Each run is `projc train models/MODEL.onnx --data DATA --epochs E --seed S [FLAGS] -o OUT`.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import format_table, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJC = os.path.join(os.path.dirname(sys.executable), "projc")

# model -> (data, the metric the target is stated in, [(label, flags)])
RUNS = {
    "reg_diabetes": ("diabetes", "r2", [("projc (defaults)", []),
                                        ("projc --weight-decay 0.05", ["--weight-decay", "0.05"]),
                                        ("projc --solver ap --weight-decay 0.05",
                                         ["--solver", "ap", "--weight-decay", "0.05"]),
                                        ("adam lr 1e-3", ["--solver", "adam", "--lr", "0.001"]),
                                        ("adam lr 1e-2", ["--solver", "adam", "--lr", "0.01"])]),
    "bce_cancer": ("cancer", "accuracy", [("projc (defaults)", []),
                                          ("adam lr 1e-3", ["--solver", "adam", "--lr", "0.001"]),
                                          ("adam lr 1e-2", ["--solver", "adam", "--lr", "0.01"])]),
    "ae_digits": ("digits", "mse", [("projc (defaults)", []),
                                    ("adam lr 1e-3", ["--solver", "adam", "--lr", "0.001"]),
                                    ("adam lr 1e-2", ["--solver", "adam", "--lr", "0.01"])]),
}
NAMES = {"accuracy": "accuracy", "r2": "r2", "mse": "mse", "rmse": "rmse"}


def run(model: str, data: str, flags: list[str], epochs: int, seed: int, out_dir: str) -> dict:
    out = os.path.join(out_dir, f"{model}.{seed}.onnx")
    cmd = [PROJC, "train", os.path.join(ROOT, "models", f"{model}.onnx"), "--data", data, "--epochs", str(epochs),
           "--seed", str(seed), *flags, "-o", out]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    last = proc.stdout.strip().splitlines()[-1]
    scores = {m: float(v) for m, v in re.findall(r"(\w+) ([-\d.]+) \(onnxruntime\)", last)}
    header = proc.stdout.splitlines()[0]
    return {"command": " ".join(["projc", *cmd[1:-2]]), "seed": seed, "onnxruntime": scores,
            "header": header, "seconds": time.perf_counter() - t0}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(RUNS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.only.split(","):
            data, metric, configs = RUNS[model]
            for label, flags in configs:
                runs = [run(model, data, flags, args.epochs, s, tmp) for s in seeds]
                values = [r["onnxruntime"][metric] for r in runs]
                results.append({"model": model, "data": data, "config": label, "metric": metric,
                                "epochs": args.epochs, "values": values, "runs": runs})
                rows.append([model, label, metric, statistics.mean(values), min(values), max(values),
                             statistics.mean(r["seconds"] for r in runs)])
                print(f"{model:13s} {label:40s} {metric} {statistics.mean(values):.4f} "
                      f"[{min(values):.4f}, {max(values):.4f}]", flush=True)
    print(format_table(["model", "config", "test metric (onnxruntime)", "mean", "min", "max", "s/run"], rows))
    print("wrote", write_json("tasks", {"epochs": args.epochs, "seeds": seeds, "results": results}, args.json))


if __name__ == "__main__":
    main()
