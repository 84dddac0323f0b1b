"""The memory plan (projc.train.plan) against XLA's own numbers, per model, solver and batch.

    python benchmarks/memory_plan.py                      # the table of docs/reliability.md
    python benchmarks/memory_plan.py mlp_digits:dr:256    # chosen configurations (model:solver:batch)

Each row: the plan's estimate (no compile) and XLA's memory analysis of the compiled update
(arguments + temporaries + outputs - aliased), their ratio, and the seconds each took.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["mlp_digits:dr:256", "mlp_digits:cp:256", "mlp_digits:dr:1024", "mlp_digits:cdr:256",
           "mlp_digits:dm:256", "tanh_mlp:dr:256", "tanh_mlp:dr:64", "tanh_mlp:cp:256", "sigmoid_mlp:dr:256",
           "hardswish_mlp:dr:256", "round_mlp:dr:256", "quant_mlp:dr:256", "binary_mlp:dr:256",
           "sklearn_mlp:dr:256", "resmlp:dr:256", "rnn_tanh_digits:dr:64", "char_rnn:dr:64",
           "gru_digits:cp:16", "maxlogits_digits:cp:64", "fcn_maxlogits_digits:cp:32", "lenet_digits:dr:64",
           "lenet_digits:cp:256", "cnn_digits:dr:128", "cnn2_digits:dr:32", "cnn2_digits:cp:256",
           "gap_digits:cp:64", "mlp_digits:adam:256", "cnn2_digits:adam:256"]


def measure(spec: str) -> dict:
    import projc
    from projc.train.plan import plan_update

    name, solver, batch = spec.split(":")
    batch = int(batch)
    trainer = projc.compile(os.path.join(ROOT, "models", f"{name}.onnx"), solver=solver, steps_per_update=5)
    t0 = time.perf_counter()
    estimate = plan_update(trainer, batch).total
    plan_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    shape = (batch, *trainer.input_shape[1:])
    ids = trainer._input.dtype in ("i64", "i32")
    x = rng.integers(0, 5, shape) if ids else rng.normal(size=shape).astype(np.float32)
    y = rng.integers(0, trainer.num_classes, (batch, trainer.label_steps) if trainer.per_step else batch)
    t0 = time.perf_counter()
    m = trainer.lower_update(x, y).compile().memory_analysis()
    compile_s = time.perf_counter() - t0
    xla = m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return {"spec": spec, "estimate": estimate, "xla": xla, "ratio": xla / estimate, "plan_s": plan_s,
            "compile_s": compile_s}


def main(argv: list[str]) -> None:
    rows = []
    print("| model:solver:batch | estimate MiB | XLA MiB | XLA / estimate | plan s | compile s |")
    print("|---|---|---|---|---|---|")
    for spec in argv or CONFIGS:
        r = measure(spec)
        rows.append(r)
        print(f"| {spec} | {r['estimate'] / 2**20:.1f} | {r['xla'] / 2**20:.1f} | {r['ratio']:.2f} | "
              f"{r['plan_s']:.2f} | {r['compile_s']:.1f} |", flush=True)
    ratios = [r["ratio"] for r in rows]
    print(f"\n{len(rows)} configurations: XLA / estimate in {min(ratios):.2f} .. {max(ratios):.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
