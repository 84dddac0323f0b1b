"""Straight-through-estimator Adam baseline for the staircase MLPs (sign, round, fake-quant).

Gradient descent cannot train these as exported (the activation's gradient is zero almost
everywhere: `projc train --solver adam` only moves the last layer).  The straight-through estimator
passes the gradient of the identity through the activation instead.  Same file, same init (the
ONNX initializers), same digits split and batches as `projc train` (10 epochs, batch 256).

    .venv/bin/python benchmarks/ste_baseline.py models/binary_mlp.onnx [--act sign|round|quant] [--lr 1e-2] [--seed 0]
"""
from __future__ import annotations

import argparse

import onnx
import torch
from onnx import numpy_helper

from projc.train.batches import UpdateSchedule
from projc.train.data import load_data

QUANT_SCALE = 1.0 / 16


def ste(fn):
    """fn in the forward, identity in the backward."""
    return lambda x: x + (fn(x) - x).detach()


ACTS = {"sign": ste(torch.sign), "round": ste(torch.round),
        "quant": ste(lambda x: torch.fake_quantize_per_tensor_affine(x, QUANT_SCALE, 0, 0, 255))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--act", default="sign", choices=sorted(ACTS))
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="digits split and batch order, as projc train --seed")
    args = ap.parse_args(argv)
    inits = {i.name: torch.tensor(numpy_helper.to_array(i).copy()) for i in onnx.load(args.model).graph.initializer}
    weights = [v for v in inits.values() if v.ndim == 2]
    biases = [v for v in inits.values() if v.ndim == 1]
    # torch's Gemm export stores W as [out, in] with transB=1
    (w1, w2), (b1, b2) = weights, biases
    params = [t.requires_grad_() for t in (w1, b1, w2, b2)]
    opt = torch.optim.Adam(params, lr=args.lr)
    data = load_data("digits", seed=args.seed)
    act = ACTS[args.act]
    fwd = lambda x: act(x @ w1.T + b1) @ w2.T + b2  # noqa: E731
    n, batch = len(data.y_train), 256
    for _, idx in UpdateSchedule(n, batch, args.epochs * -(-n // batch), args.seed):  # projc train's batches
        x, y = torch.tensor(data.x_train[idx]), torch.tensor(data.y_train[idx])
        loss = torch.nn.functional.cross_entropy(fwd(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (fwd(torch.tensor(data.x_test)).argmax(-1).numpy() == data.y_test).mean()
    print(f"{args.model} STE Adam lr {args.lr}, {args.epochs} epochs, seed {args.seed}: test accuracy {acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
