"""Throughput of the projection operator library (millions of projections per second).

Usage: .venv/bin/python benchmarks/projections.py [--batch 1000000] [--repeats 5] [--json PATH]
       [--dtype float32|float64] [--only NAME[,NAME...]]

Every operator is jit-compiled and run on a batch of `batch` independent projections; the time is
the median of `repeats` runs after one warm-up (compile) run, each ended by block_until_ready.
Vector ops (sum_reduce, linear, bilinear, max) use vectors of length 16; losses use C = 10 classes.
Prints a table and writes JSON (default benchmarks/results/projections.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from projc.backends.jax import proj_smooth_fast as PF
from projc.backends.jax import projections as P

VEC = 16
CLASSES = 10


def cases(B: int, dt, rng):
    """name -> (description of one projection, function, args)."""
    def arr(*shape, scale=1.0):
        return jnp.asarray(rng.normal(size=shape) * scale, dt)

    def three(scale=1.0):
        return (arr(B, scale=scale), arr(B, scale=scale), arr(B, scale=scale))

    def smooth(fn):
        return lambda a, b, y: P.sum_smooth(a, b, y, fn=fn)

    def grid_free(fn):   # what training runs for these fns (families.py): proj_smooth_fast
        return lambda a, b, y: PF.sum_smooth(a, b, y, fn=fn)

    def pwl(fn):
        return lambda a, b, y: P.sum_pwl(a, b, y, fn=fn)

    lab = jnp.asarray(rng.integers(0, CLASSES, size=B))
    return {
        "identity": ("scalar", P.identity, (arr(B), arr(B))),
        "sum (n=2)": ("2 scalars", P.sum, (arr(B), arr(B), arr(B))),
        "sum (n=4)": ("4 scalars", P.sum, (arr(B), arr(B), arr(B), arr(B), arr(B))),
        f"sum_reduce (n={VEC})": (f"vector {VEC}", P.sum_reduce, (arr(B, VEC), arr(B))),
        "sum_pwl relu (n=2)": ("2 scalars", pwl("relu"), three()),
        "sum_pwl clip (n=2)": ("2 scalars", pwl(P.clip(-1, 1)), three()),
        "sum_pwl sign (n=1)": ("scalar", lambda a, y: P.sum_pwl(a, y, fn="sign"), (arr(B), arr(B))),
        "sum_pwl quantize16 (n=2)": ("2 scalars", pwl(P.quantize(16, 0.25)), three()),
        "sum_pwl round (n=2)": ("2 scalars", pwl("round"), three(scale=3)),
        "sum_pwl fake_quant u8 (n=2)": ("2 scalars", pwl(P.fake_quant(1 / 16, 0, 0, 255)), three()),
        "sum_pwl hardsigmoid (n=2)": ("2 scalars", pwl(P.hardsigmoid()), three()),
        **{f"sum_smooth {fn} (n=2)": ("2 scalars", smooth(fn), (arr(B, scale=3), arr(B, scale=3), arr(B)))
           for fn in ("tanh", "sigmoid", "exp", "silu", "gelu", "hardswish")},
        **{f"sum_smooth {fn} grid-free (n=2)": ("2 scalars", grid_free(fn), (arr(B, scale=3), arr(B, scale=3), arr(B)))
           for fn in ("tanh", "sigmoid", "exp")},
        f"linear (n={VEC})": (f"vector {VEC}", P.linear, (arr(B, VEC), arr(B, VEC), arr(B, scale=4.0))),
        f"bilinear (n={VEC})": (f"vector {VEC}", P.bilinear, (arr(B, VEC), arr(B, VEC), arr(B, scale=4.0))),
        f"max (n={VEC})": (f"vector {VEC}", P.max, (arr(B, VEC), arr(B))),
        f"cross_entropy newton (C={CLASSES})": (f"logits {CLASSES}", P.cross_entropy_prox,
                                                (arr(B, CLASSES, scale=3.0), lab)),
        f"cross_entropy fixed-point (C={CLASSES})": (
            f"logits {CLASSES}", lambda x, labels: P.cross_entropy_prox(x, labels, method="fixed-point"),
            (arr(B, CLASSES, scale=3.0), lab)),
        f"margin (C={CLASSES})": (f"logits {CLASSES}", P.margin, (arr(B, CLASSES), lab)),
        f"squared_error (C={CLASSES})": (f"logits {CLASSES}", lambda x, t: P.squared_error(x, t, lam=1.0),
                                         (arr(B, CLASSES), arr(B, CLASSES))),
    }


def bench(fn, args, repeats: int):
    f = jax.jit(fn)
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return compile_s, times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                   "projections.json"))
    ap.add_argument("--only", default="", help="comma-separated substrings of operator names")
    args = ap.parse_args(argv)

    with jax.enable_x64(args.dtype == "float64"):
        dt = jnp.dtype(args.dtype)
        rng = np.random.default_rng(0)
        rows = []
        wanted = [w for w in args.only.split(",") if w]
        for name, (what, fn, fargs) in cases(args.batch, dt, rng).items():
            if wanted and not any(w in name for w in wanted):
                continue
            compile_s, times = bench(fn, fargs, args.repeats)
            med = statistics.median(times)
            rows.append(dict(op=name, projection=what, median_s=med, mproj_per_s=args.batch / med / 1e6,
                             compile_s=compile_s, times_s=times))
            print(f"  {name:40s} {med * 1e3:9.2f} ms  {args.batch / med / 1e6:8.2f} M/s", file=sys.stderr, flush=True)

    dev = jax.devices()[0]
    header = (f"projection throughput: batch {args.batch}, {args.dtype}, median of {args.repeats} after warm-up, "
              f"{dev.platform} ({dev.device_kind}), {os.cpu_count()} CPUs, jax {jax.__version__}")
    print(header)
    print(f"| {'operator':40s} | {'one projection':14s} | {'median ms':>9s} | {'M proj/s':>8s} |")
    print(f"|{'-' * 42}|{'-' * 16}|{'-' * 11}|{'-' * 10}|")
    for r in rows:
        print(f"| {r['op']:40s} | {r['projection']:14s} | {r['median_s'] * 1e3:9.2f} | {r['mproj_per_s']:8.2f} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    meta = dict(batch=args.batch, repeats=args.repeats, dtype=args.dtype, vector_length=VEC, classes=CLASSES,
                platform=dev.platform, device_kind=dev.device_kind, cpu_count=os.cpu_count(),
                machine=platform.machine(), jax=jax.__version__, python=platform.python_version())
    with open(args.json, "w") as f:
        json.dump(dict(meta=meta, results=rows), f, indent=1)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
