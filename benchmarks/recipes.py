"""Every bundled classifier with its recipe, over seeds: the measurements behind projc/train/recipe.py.

    .venv/bin/python benchmarks/recipes.py [--models a,b] [--seeds 0,1,2] [--no-adam] [--jobs 2]
                                           [--json PATH] [--resume] [--extra "--steps 50"]

Each run is the command a user types, ``projc train MODEL --epochs 10 --seed S`` and nothing else
(``cnn_digits``: ``--updates 60``), in its own process; the score is onnxruntime's test accuracy
on the exported file (the task models: R² for ``reg_diabetes``, MSE for ``ae_digits``, where lower
is better; the "accuracy" fields of the JSON hold that metric), the time the run's wall time
(compilation included). Adam runs the same file from the same start and batches (the recipe's batch
and init, ``--solver adam --lr LR``) at lr 1e-3 and 1e-2; the table gives the better lr's mean.
``--extra`` adds flags to the projection runs (to measure a rule's alternative); ``--resume`` skips
runs the JSON already holds. Prints a table (mean [min-max] over the seeds, the gap to Adam),
writes JSON after every run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, format_table, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJC = os.path.join(os.path.dirname(sys.executable), "projc")

# name -> (data, budget flags): the untrained classifiers bundled in models/
MODELS = {
    "mlp_digits": ("digits", "--epochs 10"),
    "resmlp": ("digits", "--epochs 10"),
    "tanh_mlp": ("digits", "--epochs 10"),
    "sigmoid_mlp": ("digits", "--epochs 10"),
    "hardswish_mlp": ("digits", "--epochs 10"),
    "binary_mlp": ("digits", "--epochs 10"),
    "quant_mlp": ("digits", "--epochs 10"),
    "round_mlp": ("digits", "--epochs 10"),
    "staircase_mlp": ("digits", "--epochs 10"),
    "rnn_digits": ("digits", "--epochs 10"),
    "rnn_tanh_digits": ("digits", "--epochs 10"),
    "gru_digits": ("digits", "--epochs 10"),
    "lstm_digits": ("digits", "--epochs 10"),
    "cnn_digits": ("digits", "--updates 60"),
    "lenet_digits": ("digits", "--epochs 10"),
    "cnn2_digits": ("digits", "--epochs 10"),
    "gap_digits": ("digits", "--epochs 10"),
    "maxlogits_digits": ("digits", "--epochs 10"),
    "fcn_maxlogits_digits": ("digits", "--epochs 10"),
    "mlp_mnist": ("mnist5k", "--epochs 10"),
    "mbv2_digits": ("digits", "--epochs 10"),
    "ln_mlp": ("digits", "--epochs 10"),
    "tfm_digits": ("digits", "--epochs 10"),
    "vit_digits": ("digits", "--epochs 10"),
    "gpt_text": ("text", "--epochs 2"),   # its headline here is per-step accuracy; cross-entropy: text_ce.py
    "reg_diabetes": ("diabetes", "--epochs 10"),
    "bce_cancer": ("cancer", "--epochs 10"),
    "ae_digits": ("digits", "--epochs 10"),
}
LOWER_IS_BETTER = {"ae_digits"}  # its metric is the test MSE
ADAM_LRS = (1e-3, 1e-2)
# the task's headline metric on the final line: accuracy, else R² (regression), else MSE (reconstruction)
ACCURACY = re.compile(r"\b(?:accuracy|r2) (-?[0-9.]+) \(onnxruntime\)|\bmse (-?[0-9.]+) \(onnxruntime\)")


def recipe_of(name: str) -> dict:
    """The recipe `projc train` picks for the model: rule name and the options it resolves."""
    import projc
    from projc.train.data import load_data
    y = load_data(MODELS[name][0]).y_train  # the task, hence the rule, follows the targets
    tr = projc.compile(os.path.join(ROOT, "models", f"{name}.onnx"), y=y)
    c = tr.config
    return {"rule": tr.recipe.rule.name if tr.recipe.rule else None, "solver": c.method.solver,
            "batch": c.dataset.batch, "steps": c.method.steps_per_update, "init": tr.init,
            "options": {k: str(v) for k, v in tr.recipe.applied.items()}}


def run_one(name: str, seed: int, flags: str, nice: int) -> dict:
    """One `projc train` process: (accuracy, seconds, the header line)."""
    data, budget = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ([PROJC, "train", os.path.join(ROOT, "models", f"{name}.onnx"), "--data", data, "--seed", str(seed),
                "-o", os.path.join(tmp, "out.onnx"), "--log", os.path.join(tmp, "log.jsonl")]
               + shlex.split(budget) + shlex.split(flags))
        if nice:
            cmd = ["nice", "-n", str(nice)] + cmd
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - t0
        curve = []
        log = os.path.join(tmp, "log.jsonl")
        if os.path.exists(log):
            with open(log) as f:
                records = [json.loads(line) for line in f if line.strip()]
            key = next((k for k in ("test_accuracy", "test_r2", "test_mse") if any(k in r for r in records)), None)
            curve = [round(r[key], 4) for r in records if key in r]
    m = ACCURACY.search(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "")
    header = next((line for line in proc.stdout.splitlines() if line.startswith("projc train:")), "")
    return {"model": name, "seed": seed, "flags": flags, "accuracy": float(m.group(1) or m.group(2)) if m else None,
            "seconds": round(seconds, 1), "curve": curve, "header": header,
            "error": None if m else (proc.stderr.strip().splitlines() or ["?"])[-1]}


def summarize(results: list[dict], models: list[str], recipes: dict) -> tuple[list[list], list[dict]]:
    rows, summary = [], []
    for name in models:
        own = [r for r in results if r["model"] == name and r["kind"] == "projc" and r["accuracy"] is not None]
        if not own:
            continue
        acc = [r["accuracy"] for r in own]
        adam = {}
        for lr in ADAM_LRS:
            a = [r["accuracy"] for r in results if r["model"] == name and r["kind"] == f"adam {lr:g}"
                 and r["accuracy"] is not None]
            if a:
                adam[lr] = a
        sign = -1 if name in LOWER_IS_BETTER else 1
        best = max(adam.items(), key=lambda kv: sign * statistics.mean(kv[1])) if adam else None
        mean = statistics.mean(acc)
        gap = sign * (mean - statistics.mean(best[1])) if best else None  # > 0: projc is better
        rec = recipes.get(name, {})
        entry = {"model": name, "recipe": rec.get("rule"), "seeds": [r["seed"] for r in own], "accuracy": acc,
                 "mean": round(mean, 4), "min": min(acc), "max": max(acc),
                 "seconds_mean": round(statistics.mean(r["seconds"] for r in own), 1),
                 "seconds_max": max(r["seconds"] for r in own),
                 "adam": {f"{lr:g}": v for lr, v in adam.items()},
                 "adam_best_lr": best[0] if best else None,
                 "adam_best_mean": round(statistics.mean(best[1]), 4) if best else None,
                 "gap": round(gap, 4) if gap is not None else None}
        summary.append(entry)
        adam_text = (f"{entry['adam_best_mean']:.3f} [{min(best[1]):.3f}-{max(best[1]):.3f}] (lr {best[0]:g})"
                     if best else "-")
        rows.append([name, rec.get("rule", "?"), f"{mean:.3f} [{min(acc):.3f}-{max(acc):.3f}]", adam_text,
                     f"{gap:+.3f}" if gap is not None else "-",
                     f"{entry['seconds_mean']:.0f} (max {entry['seconds_max']:.0f})"])
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--no-adam", action="store_true", help="projc runs only")
    ap.add_argument("--adam-only", action="store_true", help="Adam runs only")
    ap.add_argument("--extra", default="", help="flags added to the projection runs")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once")
    ap.add_argument("--nice", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--resume", action="store_true", help="skip the runs the JSON file already holds")
    args = ap.parse_args()
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    path = args.json or os.path.join(RESULTS, "recipes.json")
    results: list[dict] = []
    if args.resume and os.path.exists(path):
        with open(path) as f:
            results = json.load(f).get("runs", [])
    recipes = {name: recipe_of(name) for name in models}
    jobs = []
    for name in models:
        rec = recipes[name]
        if not args.adam_only:
            jobs += [(name, s, "projc", args.extra) for s in seeds]
        if not args.no_adam:
            base = f"--batch {rec['batch']} --init {rec['init']} --solver adam"
            jobs += [(name, s, f"adam {lr:g}", f"{base} --lr {lr:g}") for lr in ADAM_LRS for s in seeds]
    done = {(r["model"], r["seed"], r["kind"], r["flags"]) for r in results}
    jobs = [j for j in jobs if j not in done]

    def work(job):
        name, seed, kind, flags = job
        r = run_one(name, seed, flags, args.nice)
        r["kind"] = kind
        r["recipe"] = recipes[name]
        print(f"{name} seed {seed} {kind} {flags!r}: {r['accuracy']} in {r['seconds']:.0f}s"
              + (f" ({r['error']})" if r["error"] else ""), flush=True)
        return r

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        for r in pool.map(work, jobs):
            results = [x for x in results if (x["model"], x["seed"], x["kind"], x["flags"]) !=
                       (r["model"], r["seed"], r["kind"], r["flags"])] + [r]
            rows, summary = summarize(results, models, recipes)
            write_json("recipes", {"args": vars(args), "runs": results, "summary": summary}, path)
    rows, summary = summarize([r for r in results if r["flags"] == args.extra or r["kind"] != "projc"],
                              models, recipes)
    print()
    print(format_table(["model", "recipe", "projc mean [range]", "Adam best mean [range]", "gap",
                        "s per run"], rows))
    print("wrote", path)


if __name__ == "__main__":
    main()
