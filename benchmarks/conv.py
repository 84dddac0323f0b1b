"""Convolutions: one projection step against one Adam step, time and memory, per layout and lowering.

    .venv/bin/python benchmarks/conv.py [--models cnn2_digits,lenet_digits] [--steps 5] [--batch 256]
        [--rounds 7] [--configs adam,cp,cp-anderson,cp-patches,hybrid-dr,copies-dr] [--json PATH]

Configs (each a ``projc.compile`` of the bundled model, digits-shaped random inputs):

- ``adam``: one optax Adam step on the compiled forward (the gradient baseline);
- ``cp``: consensus CP, the ``conv`` family (lax convolutions and their transposes), plain steps
  (``anderson=0``: until 2026-12-07 this config took the recipe's options, which give cnn2_digits
  Anderson acceleration);
- ``cp-anderson``: the same with Anderson acceleration of memory 1, as the ``conv-pairs`` recipe
  rules run it;
- ``cp-patches``: consensus CP on the earlier lowering (``lower{conv=patches}``: im2col ``patches``
  move + ``dot`` family), the same parameters;
- ``hybrid-dr``: Douglas-Rachford in the hybrid layout (conv families as consensus edge means,
  every other family's slots stored);
- ``copies-dr``: Douglas-Rachford with every slot stored (the conv slots ``[N, OC, *O, C·K]``);
- ``<config>@S``: any of them with S steps per update instead of ``--steps``.

One projection step = the update of ``--steps`` steps / steps (the forward that builds the state and
the readout are in it). Timing: the first call of each config (jit compile) is reported apart;
then ``--rounds`` rounds call every config once, in turn, and each config's median is taken, so a
change in the machine's load hits every config alike. The ratios are one step over one Adam step
from the same rounds. CPU time (``time.process_time`` of the process, all its threads) is reported beside
wall time: on a shared machine a wait for a core inflates wall time but not CPU time; with
``--threads 1`` (one XLA thread, no parallel kernels) the CPU time is the work of the step.

Memory: XLA's compiled memory analysis of the jitted update (argument + temp +
output - alias bytes).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import format_table, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {  # name -> compile options
    "adam": {"solver": "adam"},
    "cp": {"solver": "cp", "layout": "consensus", "anderson": 0},
    "cp-anderson": {"solver": "cp", "layout": "consensus", "anderson": 1},
    "cp-patches": {"solver": "cp", "layout": "consensus", "anderson": 0},
    "hybrid-dr": {"solver": "dr", "layout": "hybrid"},
    "copies-dr": {"solver": "dr", "layout": "copies"},
}


@contextlib.contextmanager
def patches_lowering():
    """Compile with ``lower{conv=patches}`` (the earlier im2col lowering)."""
    import projc.passes as passes

    original = passes.compile_for_training

    def patched(graph, **options):
        pipeline = passes.training_pipeline(**options)
        for p in pipeline:
            if p.name == "lower":
                p.conv = "patches"
        return original(graph, pipeline=pipeline)
    passes.compile_for_training = patched
    try:
        yield
    finally:
        passes.compile_for_training = original


def build(model: str, config: str, steps: int, batch: int):
    name, _, at = config.partition("@")
    steps = int(at) if at else steps
    opts = dict(CONFIGS[name])
    if name != "adam":
        opts["steps_per_update"] = steps
    import jax

    import projc

    path = os.path.join(ROOT, "models", f"{model}.onnx")
    with patches_lowering() if name == "cp-patches" else contextlib.nullcontext():
        tr = projc.compile(path, **opts)
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + tuple(tr.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, tr.num_classes, batch)
    p = tr.init_params()
    st = tr.init_state(p)

    def call():
        q, _, _ = tr.update(p, st, x, y)
        jax.block_until_ready(q)

    def memory() -> int:
        m = tr.lower_update(x, y).compile().memory_analysis()
        return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)
    return {"config": config, "steps": 1 if name == "adam" else steps, "call": call, "memory": memory,
            "layout": getattr(tr.layout, "name", "-") if name != "adam" else "-"}


def bench_model(model: str, configs: list[str], steps: int, batch: int, rounds: int) -> list[dict]:
    rows = [build(model, c, steps, batch) for c in configs]
    for r in rows:
        t0 = time.perf_counter()
        r["call"]()
        r["first_s"] = time.perf_counter() - t0
        r["mem_bytes"] = r.pop("memory")()
        print(f"{model:14s} {r['config']:12s} first call (compile) {r['first_s']:.2f} s", flush=True)
    times: dict[str, list[float]] = {r["config"]: [] for r in rows}
    cpu: dict[str, list[float]] = {r["config"]: [] for r in rows}
    for _ in range(rounds):
        for r in rows:
            t0, c0 = time.perf_counter(), time.process_time()
            r["call"]()
            times[r["config"]].append(time.perf_counter() - t0)
            cpu[r["config"]].append(time.process_time() - c0)
    adam = adam_cpu = None
    for r in rows:
        r["s_per_update"] = statistics.median(times[r["config"]])
        r["s_per_step"] = r["s_per_update"] / r["steps"]
        r["cpu_s_per_step"] = statistics.median(cpu[r["config"]]) / r["steps"]
        if r["config"] == "adam":
            adam, adam_cpu = r["s_per_step"], r["cpu_s_per_step"]
        del r["call"]
    for r in rows:
        r["model"] = model
        r["step_over_adam_step"] = r["s_per_step"] / adam if adam else None
        r["cpu_step_over_adam_step"] = r["cpu_s_per_step"] / adam_cpu if adam_cpu else None
        print(f"{model:14s} {r['config']:12s} {r['s_per_update']:.4f} s/update  {r['s_per_step']:.5f} s/step  "
              f"{r['mem_bytes'] / 2**20:.1f} MiB" + (f"  {r['step_over_adam_step']:.2f}x Adam (wall), "
                                                     f"{r['cpu_step_over_adam_step']:.2f}x (CPU time)" if adam else ""),
              flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="cnn2_digits,lenet_digits")
    ap.add_argument("--configs", default="adam,cp,cp-anderson,cp-patches,hybrid-dr")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0,
                    help="1: XLA runs every op on one thread (--xla_cpu_multi_thread_eigen=false, one "
                         "intra-op thread), so CPU time measures work also on a loaded machine")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if args.threads == 1:
        if "jax" in sys.modules:
            raise SystemExit("--threads 1 must be set before JAX is imported")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   "intra_op_parallelism_threads=1").strip()
    load = os.getloadavg()
    rows = []
    for model in args.models.split(","):
        rows += bench_model(model, args.configs.split(","), args.steps, args.batch, args.rounds)
    table = format_table(
        ["model", "config", "layout", "steps", "s/update (median)", "s/step", "step / Adam step (wall)",
         "step / Adam step (CPU time)", "memory MiB", "first call s"],
        [[r["model"], r["config"], r["layout"], r["steps"], r["s_per_update"], r["s_per_step"],
          r["step_over_adam_step"], r["cpu_step_over_adam_step"], r["mem_bytes"] / 2**20, r["first_s"]]
         for r in rows])
    end_load = os.getloadavg()
    print(table)
    print(f"load average (1 min) at start {load[0]:.2f}, at end {end_load[0]:.2f}; {os.cpu_count()} CPUs")
    print("wrote", write_json("conv", {"batch": args.batch, "steps": args.steps, "rounds": args.rounds,
                                       "threads": args.threads or "default", "load_start": load,
                                       "load_end": end_load, "rows": rows}, args.json))


if __name__ == "__main__":
    main()
