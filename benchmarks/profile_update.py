"""Where one update's time goes: a JAX profiler trace of a few updates, each XLA op attributed to
the projc source lines that emitted it.

    .venv/bin/python benchmarks/profile_update.py MODEL [--solver cp] [--layout auto] [--steps 5]
        [--batch 256] [--repeats 3] [--top 30] [--by op|line|file] [--option key=value ...]

Prints the median time of an update, then the top XLA ops (``--by op``: each op with the innermost
projc frame of the code that emitted it), or the time summed per source line (``line``) or per file
(``file``), per update. Inputs are digits-shaped random data (``--data digits`` uses the digits
training set, whose values make the bilinear root solve converge as in training). The attribution
reads the compiled module's stack-frame table (the ``metadata`` of every HLO instruction).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

import projc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTROL = ("while", "cond", "call", "conditional")  # their events contain their bodies' ops: not counted


def frames(hlo: str) -> dict[str, str]:
    """HLO instruction name -> 'file:line function' of its innermost projc frame (or its op_name)."""
    def table(title: str) -> dict[int, str]:
        m = re.search(rf"^{title}\n(.*?)(?:\n\n|\Z)", hlo, re.S | re.M)
        out = {}
        for line in (m.group(1).splitlines() if m else []):
            k, _, v = line.partition(" ")
            out[int(k)] = v
        return out
    files = {k: v.strip('"') for k, v in table("FileNames").items()}
    funcs = {k: v.strip('"') for k, v in table("FunctionNames").items()}
    locs = {}
    for k, v in table("FileLocations").items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        locs[k] = (files.get(int(f["file_name_id"]), "?"), funcs.get(int(f["function_name_id"]), "?"), int(f["line"]))
    stack = {}
    for k, v in table("StackFrames").items():
        f = dict(re.findall(r"(\w+)=(\d+)", v))
        stack[k] = (int(f["file_location_id"]), int(f["parent_frame_id"]))

    def where(fid: int) -> str:
        seen = set()
        while fid in stack and fid not in seen:
            seen.add(fid)
            loc, parent = stack[fid]
            file, func, line = locs.get(loc, ("?", "?", 0))
            if "/projc/" in file or "/backends/" in file or "/passes/" in file:
                short = file.split("/wt-speed/")[-1] if "/wt-speed/" in file else os.path.relpath(file, ROOT)
                return f"{short}:{line} {func}"
            fid = parent
        return "?"

    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?metadata=\{([^}]*)\}", hlo, re.M):
        meta = m.group(2)
        sf = re.search(r"stack_frame_id=(\d+)", meta)
        name = re.search(r'op_name="([^"]*)"', meta)
        out[m.group(1)] = where(int(sf.group(1))) if sf else (name.group(1) if name else "?")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--solver", default="cp")
    ap.add_argument("--layout", default="auto")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--by", choices=("op", "line", "file"), default="op")
    ap.add_argument("--data", choices=("random", "digits"), default="digits")
    ap.add_argument("--option", action="append", default=[], help="key=value passed to projc.compile")
    args = ap.parse_args(argv)
    options = {}
    for kv in args.option:
        k, v = kv.split("=", 1)
        options[k] = int(v) if v.isdigit() else (float(v) if v.replace(".", "", 1).isdigit() else v)
    path = args.model if args.model.endswith(".onnx") else os.path.join(ROOT, "models", f"{args.model}.onnx")
    kw = {} if args.solver == "adam" else {"steps_per_update": args.steps, "layout": args.layout}
    tr = projc.compile(path, solver=args.solver, **kw, **options)
    if args.data == "digits":
        from projc.train.data import load_data
        data = load_data("digits", seed=0, input_shape=tr.input_shape)
        x, y = data.x_train[:args.batch], data.y_train[:args.batch]
    else:
        rng = np.random.default_rng(0)
        x = rng.random((args.batch,) + tuple(tr.input_shape[1:])).astype(np.float32)
        y = rng.integers(0, tr.num_classes, args.batch)
    p = tr.init_params()
    st = tr.init_state(p)

    def call():
        jax.block_until_ready(tr.update(p, st, x, y)[0])
    t0 = time.perf_counter()
    call()
    print(f"first update (compile) {time.perf_counter() - t0:.2f} s")
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        call()
        ts.append(time.perf_counter() - t0)
    med = statistics.median(ts)
    print(f"update median {med * 1e3:.1f} ms, per step {med / args.steps * 1e3:.2f} ms "
          f"(load {os.getloadavg()[0]:.1f})")
    names = frames(tr.lower_update(x, y).compile().as_text())
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        for _ in range(args.repeats):
            call()
        jax.profiler.stop_trace()
        trace = sorted(glob.glob(d + "/**/*.trace.json.gz", recursive=True))[-1]
        events = json.load(gzip.open(trace))["traceEvents"]
    tot: collections.Counter = collections.Counter()
    cnt: collections.Counter = collections.Counter()
    for e in events:
        if (e.get("ph") == "X" and "dur" in e and e["name"] in names
                and not e["name"].startswith(CONTROL)):
            key = {"op": f"{e['name']}  [{names[e['name']]}]", "line": names[e["name"]],
                   "file": names[e["name"]].split(":")[0]}[args.by]
            tot[key] += e["dur"]
            cnt[key] += 1
    total = sum(tot.values()) / args.repeats / 1e3
    print(f"XLA ops (control flow not counted, its bodies are): {total:.1f} ms per update")
    for k, v in tot.most_common(args.top):
        ms = v / args.repeats / 1e3
        print(f"{ms:9.2f} ms {100 * ms / total:5.1f}%  x{cnt[k] // args.repeats:<4d} {k[:150]}")


if __name__ == "__main__":
    sys.exit(main())
