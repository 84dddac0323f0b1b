"""Test cross-entropy of per-step character models on ``--data text``, against the unigram baseline.

    .venv/bin/python benchmarks/text_ce.py [--seed N] MODEL.onnx [MODEL.onnx ...]

Prints, for the unigram baseline (train character frequencies, every step) and for each model
(onnxruntime on the exported file), the mean cross-entropy in nats over every test sample and step
and the per-step accuracy. The split is ``projc train``'s for the same --seed, so a file written by
``projc train MODEL --data text --seed N`` is scored on the samples it did not train on.
"""
from __future__ import annotations

import argparse

import numpy as np
import onnxruntime as ort

from projc.train.data import load_data


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy of logits [..., C] against integer labels [...]."""
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-np.take_along_axis(logp, labels[..., None], -1).mean())


def unigram(y_train: np.ndarray, y_test: np.ndarray, classes: int) -> tuple[float, float]:
    """(cross-entropy, accuracy) of predicting the train character frequencies at every step.
    Add-one smoothing keeps a character unseen in training finite (none is, on this text)."""
    freq = np.bincount(y_train.ravel(), minlength=classes) + 1.0
    logp = np.log(freq / freq.sum())
    return float(-logp[y_test].mean()), float((y_test == freq.argmax()).mean())


def score(path: str, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
    return cross_entropy(logits, y), float((logits.argmax(-1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = load_data("text", seed=args.seed, per_step=True)
    ce, acc = unigram(data.y_train, data.y_test, data.num_classes)
    print(f"{'unigram baseline':40s} test cross-entropy {ce:.3f}  accuracy {acc:.3f}")
    for path in args.models:
        ce, acc = score(path, data.x_test, data.y_test)
        print(f"{path:40s} test cross-entropy {ce:.3f}  accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
