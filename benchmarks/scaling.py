"""Data-parallel scaling: seconds per update, memory per device and all-reduce bytes per update.

    .venv/bin/python benchmarks/scaling.py [--devices 1,2,4] [--batches 256,512,1024,2048,4096]
        [--model mlp_mnist] [--solver ap] [--steps 50] [--repeats 5] [--json PATH]

Each device count runs in its own child process. On a CPU the children get that many forced host
devices (XLA_FLAGS=--xla_force_host_platform_device_count=N): they are threads of one machine sharing
its cores, so the times show the overhead of sharding rather than a speed-up. On a GPU/TPU machine
the same command uses the real devices (a count the machine lacks is skipped).

Strong scaling: the same global batch over more devices (speed-up = t(1 device) / t(N)). Weak
scaling: the same batch per device (efficiency = t(1 device, b) / t(N devices, N·b)). Memory per
device is XLA's compiled estimate (arguments + outputs + temporaries of one device's program);
all-reduce bytes are read from the compiled HLO, loop bodies counted once per trip.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import format_table, median_seconds, write_json  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = {"mlp_digits": "digits", "mlp_mnist": "mnist5k", "cnn_digits": "digits"}


def measure(model: str, solver: str, steps: int, devices: int, batch: int, repeats: int) -> dict:
    """One (device count, global batch) point, in this process."""
    import jax
    import numpy as np

    import projc
    from projc.train.data import load_data
    from projc.train.distributed import all_reduce_stats

    trainer = projc.compile(os.path.join(ROOT, "models", f"{model}.onnx"), solver=solver,
                            steps_per_update=steps, devices=devices)
    data = load_data(DATA[model], seed=0, input_shape=trainer.input_shape)
    idx = np.random.default_rng(0).choice(len(data.y_train), size=batch, replace=batch > len(data.y_train))
    x, y = trainer._check_data(data.x_train[idx], data.y_train[idx])
    dp = trainer.parallel
    params = dp.put_replicated(trainer.init_params())
    xy = dp.put_batch({trainer.input_name: x, trainer.label_name: y})
    t0 = time.perf_counter()
    compiled = trainer._update.lower(params, xy).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    per_device = None if mem is None else int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                              + mem.temp_size_in_bytes)
    comm = all_reduce_stats(compiled.as_text())
    # time the executable alone: the host-side placement of the batch is not part of the update
    seconds = median_seconds(lambda: jax.block_until_ready(compiled(params, xy)), repeats)
    return {"devices": devices, "batch": batch, "per_device_batch": batch // devices,
            "s_per_update": seconds, "compile_s": compile_s, "bytes_per_device": per_device,
            "all_reduce_ops": comm["ops"], "all_reduce_bytes": comm["bytes"],
            "loops_with_unknown_trips": comm["unknown_loops"],
            "other_collectives": comm["other_collectives"],
            "platform": jax.devices()[0].platform}


def child(args) -> None:
    import jax

    n = args.child
    if len(jax.devices()) < n:
        print(json.dumps({"skipped": f"{n} devices requested, {len(jax.devices())} present"}))
        return
    rows = []
    for batch in args.batches:
        if batch % n:
            continue
        rows.append(measure(args.model, args.solver, args.steps, n, batch, args.repeats))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"rows": rows}))


def run_children(args) -> list[dict]:
    rows = []
    for n in args.devices:
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={n}").strip()
        cmd = [sys.executable, os.path.abspath(__file__), "--child", str(n),
               *sys.argv[1:]]
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if "skipped" in result:
            print(f"{n} devices: skipped ({result['skipped']})", flush=True)
        rows += result.get("rows", [])
    return rows


def add_ratios(rows: list[dict]) -> None:
    by = {(r["devices"], r["batch"]): r for r in rows}
    for r in rows:
        strong = by.get((1, r["batch"]))
        weak = by.get((1, r["per_device_batch"]))
        r["strong_speedup"] = strong["s_per_update"] / r["s_per_update"] if strong else None
        r["weak_efficiency"] = weak["s_per_update"] / r["s_per_update"] if weak else None


def main(argv=None) -> None:
    ints = lambda s: [int(v) for v in s.split(",")]  # noqa: E731
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=ints, default=[1, 2, 4])
    ap.add_argument("--batches", type=ints, default=[256, 512, 1024, 2048, 4096])
    ap.add_argument("--model", default="mlp_mnist", choices=sorted(DATA))
    ap.add_argument("--solver", default="ap")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return child(args)
    rows = sorted(run_children(args), key=lambda r: (r["batch"], r["devices"]))
    add_ratios(rows)
    mib = lambda b: None if b is None else b / 2**20  # noqa: E731
    headers = ["devices", "batch", "batch/device", "s/update", "strong speed-up", "weak efficiency",
               "MiB/device", "all-reduce KiB/update", "all-reduce ops"]
    print(f"{args.model}, solver {args.solver}, {args.steps} steps/update, "
          f"platform {rows[0]['platform'] if rows else '?'}")
    print(format_table(headers, [[r["devices"], r["batch"], r["per_device_batch"], r["s_per_update"],
                                  r["strong_speedup"] or "-", r["weak_efficiency"] or "-",
                                  mib(r["bytes_per_device"]), r["all_reduce_bytes"] / 1024,
                                  r["all_reduce_ops"]] for r in rows]))
    print("wrote", write_json("scaling", {"model": args.model, "solver": args.solver,
                                          "steps": args.steps, "rows": rows}, args.json))


if __name__ == "__main__":
    main()
