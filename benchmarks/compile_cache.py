"""The persistent compilation cache: the first update of a repeated run against the first run's.

    .venv/bin/python benchmarks/compile_cache.py [--models mlp_digits,cnn2_digits] [--solvers dr,cp]
        [--repeats 3] [--steps 50] [--json PATH]

For each (model, solver): ``--repeats`` pairs of fresh processes, each pair on a new empty cache
directory (``PROJC_CACHE_DIR``): the first process compiles and stores the update, the second loads
it. Each process times ``projc.compile`` (import, passes, layout) and the first ``update`` (trace,
lower, compile or load, run) on one digits minibatch of 256 (solver ``recipe``: what ``projc train
MODEL`` runs, the recipe's solver, options and batch, ``--steps`` unused), and also a third process with
``PROJC_CACHE_DIR=off`` (no cache at all). Reported: medians of the first update's seconds and the
ratio second run / first run from the same pairs, and whether the parameters of all runs are
bit-identical.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import format_table, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = r"""
import hashlib, json, sys, time
t0 = time.perf_counter()
import numpy as np
import projc
from projc.train.data import load_data
model, solver, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
if solver == "recipe":  # what `projc train MODEL` runs: the recipe's solver, steps and batch
    tr = projc.compile(model)
    batch = tr.config.dataset.batch
else:
    tr = projc.compile(model, solver=solver, **({} if solver == "adam" else {"steps_per_update": steps}))
    batch = 256
t1 = time.perf_counter()
data = load_data("mnist5k" if "mnist" in model else "digits", seed=0, input_shape=tr.input_shape)
x, y = data.x_train[:batch], data.y_train[:batch]
p = tr.init_params()
plan_s, plan = [0.0], tr.memory_plan
def timed_plan(batch):  # the memory plan's share of the first update (its abstract trace)
    start = time.perf_counter()
    try:
        return plan(batch)
    finally:
        plan_s[0] += time.perf_counter() - start
tr.memory_plan = timed_plan
t2 = time.perf_counter()
q, _, _ = tr.update(p, tr.init_state(p), x, y)
t3 = time.perf_counter()
digest = hashlib.sha256(b"".join(np.asarray(q[k]).tobytes() for k in sorted(q))).hexdigest()
ex = tr.exported_update
phases = {"plan": plan_s[0], **(ex.seconds if ex else {})}
print(json.dumps({"batch": batch, "import_compile_s": t1 - t0, "first_update_s": t3 - t2, "params_sha256": digest,
                  "cache_dir": tr.cache_dir, "phases": phases,
                  "exported": ex and {"loaded": ex.loaded, "exported": ex.exported, "fallbacks": ex.fallbacks}}))
"""


def run(model: str, solver: str, steps: int, cache: str) -> dict:
    env = dict(os.environ, PROJC_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", DRIVER, model, solver, str(steps)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp_digits,cnn2_digits")
    ap.add_argument("--solvers", default="dr,cp")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    load = os.getloadavg()
    rows = []
    for model in args.models.split(","):
        path = os.path.join(ROOT, "models", f"{model}.onnx")
        for solver in args.solvers.split(","):
            first, second, off, same, loaded, phases, first_phases = [], [], [], True, True, [], []
            for _ in range(args.repeats):
                with tempfile.TemporaryDirectory() as d:
                    a = run(path, solver, args.steps, d)
                    b = run(path, solver, args.steps, d)
                c = run(path, solver, args.steps, "off")
                first.append(a["first_update_s"])
                second.append(b["first_update_s"])
                off.append(c["first_update_s"])
                same &= a["params_sha256"] == b["params_sha256"] == c["params_sha256"]
                loaded &= b["exported"] is not None and b["exported"]["loaded"] == 1
                print(f"{model} {solver}: first run {a['first_update_s']:.2f} s, second {b['first_update_s']:.2f} s, "
                      f"no cache {c['first_update_s']:.2f} s", flush=True)
                for name, r in (("first", a), ("second", b)):
                    print(f"  {name} run's phases: " + ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items())
                          + f"; the rest (run, dispatch) {r['first_update_s'] - sum(r['phases'].values()):.3f}")
                phases.append(b["phases"])
                first_phases.append(a["phases"])
            ratios = [s / f for s, f in zip(second, first)]
            # what the cache can remove: the first update less its own run (the phases' sum)
            prep_ratios = [sum(b.values()) / sum(a.values()) for a, b in zip(first_phases, phases)]
            rows.append({"model": model, "solver": solver, "batch": a["batch"], "first_run_s": statistics.median(first),
                         "second_run_s": statistics.median(second), "no_cache_s": statistics.median(off),
                         "second_over_first": statistics.median(ratios), "ratios": ratios,
                         "bit_identical": same, "second_run_loaded_the_export": loaded,
                         "second_run_phases": phases, "first_run_phases": first_phases,
                         "preparation_second_over_first": statistics.median(prep_ratios)})
    end = os.getloadavg()
    print(format_table(["model", "solver", "batch", "first update, first run s", "first update, second run s",
                        "no cache s", "second / first (median)", "preparation second / first",
                        "params bit-identical", "export loaded"],
                       [[r["model"], r["solver"], r["batch"], r["first_run_s"], r["second_run_s"], r["no_cache_s"],
                         r["second_over_first"], r["preparation_second_over_first"], r["bit_identical"],
                         r["second_run_loaded_the_export"]]
                        for r in rows]))
    print(f"load average (1 min) at start {load[0]:.2f}, at end {end[0]:.2f}; {os.cpu_count()} CPUs")
    print("wrote", write_json("compile_cache", {"steps": args.steps, "repeats": args.repeats, "load_start": load,
                                                "load_end": end, "rows": rows}, args.json))


if __name__ == "__main__":
    main()
