"""Adam through the imported graph's forward (since issue 23) vs through the lowered graph's forward
(before): the same init and batches, --epochs 10 on digits, seeds 0-2; the test accuracy of each and
the largest parameter difference.

    .venv/bin/python benchmarks/adam_forward_parity.py [--models mlp_digits,cnn_digits,lenet_digits]
"""
from __future__ import annotations

import argparse
import os

import jax
import numpy as np

import projc
from projc.passes import compile_for_training
from projc.train.batches import UpdateSchedule
from projc.train.data import load_data
from projc.train.methods import _adam_optimizer, _optax
from projc.train.trainer import make_state_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mlp_digits,cnn_digits,lenet_digits")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args(argv)
    for model in args.models.split(","):
        for seed in (0, 1, 2):
            tr = projc.compile(os.path.join(ROOT, "models", f"{model}.onnx"), solver="adam", seed=seed)
            data = load_data("digits", seed=seed, input_shape=tr.input_shape)
            layout = make_state_layout("copies", "dr", compile_for_training(tr.source_graph, loss=tr.task.loss))
            before = _optax(_adam_optimizer)(layout, tr.config)  # the gradient entry on the lowered forward
            step = jax.jit(before.update)
            p_now, s_now = tr.init_params(), None
            s_now = tr.init_state(p_now)
            p_old = {k: jax.numpy.asarray(v) for k, v in tr.init_params().items()}
            s_old = before.init(p_old)
            n = len(data.y_train)
            for _, idx in UpdateSchedule(n, 256, -(-n // 256) * args.epochs, seed):
                xb, yb = data.x_train[idx], data.y_train[idx]
                p_now, s_now, _ = tr.update(p_now, s_now, xb, yb)
                p_old, s_old, _ = step(p_old, s_old, {tr.input_name: xb, tr.label_name: yb.astype(np.int32)}, 0.0)
            p_old = {k: np.asarray(v) for k, v in p_old.items()}
            acc_now = tr.evaluate(p_now, data.x_test, data.y_test)["accuracy"]
            acc_old = tr.evaluate(p_old, data.x_test, data.y_test)["accuracy"]
            diff = max(float(np.max(np.abs(np.asarray(p_now[k]) - p_old[k]))) for k in p_now)
            print(f"{model} seed {seed}: test accuracy {acc_now:.4f} (imported forward), {acc_old:.4f} "
                  f"(lowered forward), largest parameter difference {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
