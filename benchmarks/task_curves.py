"""The test metric of a task model along a run, per config, mean [min, max] over seeds, through the
Python API (the same batches and updates as `projc train --epochs E --seed S`; projc's evaluate
equals onnxruntime's score of the exported file to 1e-4, docs/tasks.md).

    .venv/bin/python benchmarks/task_curves.py MODEL DATA [--epochs 100] [--seeds 0,1,2]
        [--config ""] [--config "weight_decay=0.05"] [--config "solver=adam,lr=0.01"] [--json PATH]

A config is comma-separated option=value pairs (``projc.config`` names); "" is the defaults.
"""
from __future__ import annotations

import argparse
import ast
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import projc  # noqa: E402
from common import write_json  # noqa: E402
from projc.train.batches import UpdateSchedule  # noqa: E402
from projc.train.data import load_data  # noqa: E402

MARKS = (1, 2, 3, 5, 10, 20, 30, 50, 100, 200)


def parse_config(text: str) -> dict:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def curve(model: str, data_name: str, options: dict, epochs: int, seed: int, batch: int = 256) -> dict:
    probe = projc.compile(model, solver="adam")
    data = load_data(data_name, seed=seed, input_shape=probe.input_shape)
    tr = projc.compile(model, seed=seed, y=data.y_train, **options)
    if tr.task.target == "input":
        data = data.with_input_targets()
    n = len(data.y_train)
    schedule = UpdateSchedule(n, batch, -(-n // batch) * epochs, seed)
    p = tr.init_params()
    state = tr.init_state(p)
    marks = {}
    for epoch, idx in schedule:
        progress = min(max(schedule.done - 1, 0), schedule.total) / max(schedule.total, 1)
        p, state, _ = tr.update(p, state, data.x_train[idx], data.y_train[idx], progress=progress)
        if schedule.epoch_ends and epoch + 1 in MARKS:
            marks[epoch + 1] = {"test": tr.evaluate(p, data.x_test, data.y_test)[tr.task.headline],
                                "train": tr.evaluate(p, data.x_train, data.y_train)[tr.task.headline]}
    return {"metric": tr.task.headline, "marks": marks}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--config", action="append", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for text in args.config or [""]:
        t0 = time.perf_counter()
        runs = [curve(args.model, args.data, parse_config(text), args.epochs, s) for s in seeds]
        metric = runs[0]["metric"]
        cells = []
        for m in sorted(runs[0]["marks"]):
            test = [r["marks"][m]["test"] for r in runs]
            train = statistics.mean(r["marks"][m]["train"] for r in runs)
            cells.append(f"{m}: {statistics.mean(test):.3f} [{min(test):.3f}, {max(test):.3f}] (train {train:.3f})")
        print(f"{text or 'defaults'}: test {metric} by epoch  " + "  ".join(cells)
              + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
        results.append({"config": text, "metric": metric, "runs": runs})
    name = f"task_curves_{os.path.splitext(os.path.basename(args.model))[0]}"
    print("wrote", write_json(name, {"data": args.data, "epochs": args.epochs, "seeds": seeds,
                                     "results": results}, args.json))


if __name__ == "__main__":
    main()
