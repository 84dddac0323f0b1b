"""Wall time to reach a test accuracy: projection configurations side by side with Adam, one run.

    .venv/bin/python benchmarks/time_to_accuracy.py [--model mlp_mnist] [--target 0.90] [--cap 150]
        [--eval-every 5] [--configs adam:256,consensus-cp:128:50,...] [--png PATH] [--json PATH]

A config is ``layout-solver:batch:steps_per_update[:option=value...]`` (options are passed to
``projc.compile``, e.g. ``anderson=3``, ``inertia=0.5``, ``update_scale=1.5``, ``tol=1e-6`` or
``lam=10``; ``init=he``), ``adam:batch[:lr=0.001]`` for the gradient baseline on the same compiled
forward, or ``recipe``: what ``projc train MODEL`` runs (the recipe's solver, batch, steps and
options; docs/recipes.md). Each run starts from the trainer's initial parameters (the file's, or
the init the config or the recipe names), draws shuffled minibatches (seed 0, reshuffled
every epoch), and evaluates test accuracy every
``--eval-every`` updates. Reported time is training wall time excluding the evaluations, with the
first update's jit compile both included (``train s``) and excluded (``s after compile``); a run stops
at the target or after ``--cap`` seconds of training after the compile (then it did not reach the
target; the cap leaves out the compile because on a loaded machine it varies from 3 to 20 s).
``steps run`` counts the projection steps of all updates (fewer than updates × steps with ``tol``).
The ratio printed last is the fastest projection configuration's time to the target over the
fastest Adam configuration's, both from this run. ``--png`` draws test accuracy against training
seconds for every configuration.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax  # noqa: E402

import projc  # noqa: E402
from common import RESULTS, format_table, write_json  # noqa: E402
from projc.train.data import load_data, minibatches  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = {"mlp_mnist": "mnist5k"}  # every other bundled model trains on digits
# the plain baseline, then the accelerations that won (docs/benchmarks.md "Time to accuracy")
DEFAULT_CONFIGS = ("adam:256,adam:256:lr=0.01,consensus-cp:128:50:inertia=0.5,"
                   "consensus-cp:128:20:anderson=1:update_scale=1.5,consensus-cp:64:20:anderson=1:update_scale=2")


INT_OPTIONS = ("anderson",)


def _number_or_word(v: str):
    try:
        return float(v)
    except ValueError:
        return v   # init=he, layout names


def parse_config(config: str) -> tuple[str, int, int, dict]:
    """(solver, batch, steps, compile options) from ``layout-solver:batch:steps[:k=v...]``."""
    head, *rest = config.split(":")
    options = dict(kv.split("=", 1) for kv in rest if "=" in kv)
    numbers = [int(r) for r in rest if "=" not in r]
    options = {k: int(v) if k in INT_OPTIONS else _number_or_word(v) for k, v in options.items()}
    if head == "adam":
        return "adam", numbers[0], 1, options
    layout, solver = head.split("-")
    return solver, numbers[0], numbers[1], {"layout": layout, **options}


def compile_config(model: str, config: str):
    """(trainer, solver, batch, steps, options); ``recipe``: the options ``projc train`` picks."""
    path = os.path.join(ROOT, "models", f"{model}.onnx")
    if config == "recipe":
        tr = projc.compile(path)
        m = tr.config.method
        return tr, m.solver, tr.config.dataset.batch, m.steps_per_update, dict(tr.recipe.applied)
    solver, batch, steps, options = parse_config(config)
    return projc.compile(path, solver=solver, steps_per_update=steps, **options), solver, batch, steps, options


def run(model: str, config: str, target: float, cap: float, eval_every: int) -> dict:
    tr, solver, batch, steps, options = compile_config(model, config)
    data = load_data(DATA.get(model, "digits"), seed=0, input_shape=tr.input_shape)
    p = tr.init_params()
    train_t, compile_t = 0.0, 0.0
    t_start = time.perf_counter()
    n, ep, acc, reached, curve, steps_run = 0, 0, 0.0, False, [], 0
    state = tr.init_state(p)
    while not reached and train_t - compile_t < cap:
        for xb, yb in minibatches(data.x_train, data.y_train, batch, seed=ep):
            t0 = time.perf_counter()
            p, state, stats = tr.update(p, state, xb, yb)
            jax.block_until_ready(p)
            steps_run += int(stats.get("steps", 1))
            dt = time.perf_counter() - t0
            train_t += dt
            compile_t = compile_t or dt
            n += 1
            if n % eval_every == 0:
                acc = tr.evaluate(p, data.x_test, data.y_test)["accuracy"]
                curve.append((n, round(train_t, 3), acc))
                if acc >= target:
                    reached = True
                    break
            if train_t - compile_t >= cap:
                break
        ep += 1
    acc = tr.evaluate(p, data.x_test, data.y_test)["accuracy"]
    per_update = (train_t - compile_t) / max(n - 1, 1)
    return {"config": config, "layout": tr.layout.name if solver != "adam" else "-", "solver": solver,
            "batch": batch, "steps": steps, "options": options, "reached": reached, "updates": n,
            "steps_run": steps_run, "train_seconds": train_t, "seconds_after_compile": per_update * n,
            "wall_seconds": time.perf_counter() - t_start, "final_accuracy": acc, "curve": curve}


def ratio_to_adam(rows: list[dict], key: str) -> float | None:
    adam = [r[key] for r in rows if r["solver"] == "adam" and r["reached"]]
    proj = [r[key] for r in rows if r["solver"] != "adam" and r["reached"]]
    return min(proj) / min(adam) if adam and proj else None


def plot(rows: list[dict], path: str, target: float, model: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["curve"]:
            ax.plot([c[1] for c in r["curve"]], [c[2] for c in r["curve"]], label=r["config"])
    ax.axhline(target, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("training seconds (log)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"time to accuracy, {model}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp_mnist", help="a bundled model (mnist5k for mlp_mnist, else digits)")
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--cap", type=float, default=150.0)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=os.path.join(RESULTS, "time_to_accuracy.png"))
    args = ap.parse_args(argv)
    rows = []
    for c in args.configs.split(","):
        r = run(args.model, c, args.target, args.cap, args.eval_every)
        rows.append(r)
        print(f"{c:40s} reached={r['reached']} updates={r['updates']} steps={r['steps_run']} "
              f"train {r['train_seconds']:.1f} s (after compile {r['seconds_after_compile']:.1f} s) "
              f"acc {r['final_accuracy']:.4f}", flush=True)
    print(format_table(["config", "layout", "reached", "updates", "steps run", "train s", "s after compile",
                        "test acc"],
                       [[r["config"], r["layout"], r["reached"], r["updates"], r["steps_run"], r["train_seconds"],
                         r["seconds_after_compile"], r["final_accuracy"]] for r in rows]))
    ratios = {k: ratio_to_adam(rows, k) for k in ("train_seconds", "seconds_after_compile")}
    for k, v in ratios.items():
        print(f"fastest projection config / Adam ({k}): " + ("n/a" if v is None else f"{v:.1f}x"))
    os.makedirs(os.path.dirname(os.path.abspath(args.png)), exist_ok=True)
    plot(rows, args.png, args.target, args.model)
    print("wrote", args.png)
    print("wrote", write_json("time_to_accuracy", {"target": args.target, "cap_s": args.cap,
                                                   "model": f"models/{args.model}.onnx",
                                                   "data": DATA.get(args.model, "digits"),
                                                   "ratios_to_adam": ratios, "rows": rows}, args.json))


if __name__ == "__main__":
    main()
