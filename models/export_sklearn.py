"""Fit a small scikit-learn MLP on digits and export it to ONNX.

Unlike the torch models this one is trained. It exercises skl2onnx output
(Cast/MatMul/Add/Relu/Softmax/ArgMax and ai.onnx.ml.ArrayFeatureExtractor
for the label output) and fine-tuning from a fitted starting point.

    .venv/bin/python models/export_sklearn.py [--out DIR]
"""
import argparse
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)  # pixels are 0..16; scale to [0, 1]
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0)
    with warnings.catch_warnings():
        # A short fit is enough for an example; not converging is expected.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)

    onx = convert_sklearn(
        clf,
        initial_types=[("x", FloatTensorType([None, 64]))],
        # Plain tensor probabilities instead of a ZipMap (sequence of maps).
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    # skl2onnx names the graph with a random uuid; a fixed name keeps the
    # file byte-identical across re-runs.
    onx.graph.name = "sklearn_mlp"
    onnx.checker.check_model(onx, full_check=True)
    path = os.path.join(args.out, "sklearn_mlp.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    label, _proba = sess.run(None, {"x": X})
    agree = float(np.mean(label == clf.predict(X)))
    print(f"sklearn_mlp: wrote {path}, train accuracy {clf.score(X, y):.4f}, "
          f"onnxruntime/sklearn label agreement {agree:.4f}")
    assert agree == 1.0, "onnxruntime labels differ from clf.predict"


if __name__ == "__main__":
    main()
