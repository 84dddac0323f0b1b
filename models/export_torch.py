"""Export the bundled torch example models to ONNX (untrained weights).

These are the models projc is meant to train, so the weights are torch's
default init under a fixed seed per model, not trained ones.

    .venv/bin/python models/export_torch.py [--out DIR] [--only NAME]
"""
import argparse
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn


class MLPDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class MLPMnist(nn.Module):
    """Two hidden layers whose outputs are concatenated (a DAG, not a chain)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 128)
        self.fc2 = nn.Linear(128, 128)
        self.out = nn.Linear(256, 10)

    def forward(self, x):
        h1 = torch.relu(self.fc1(x))
        h2 = torch.relu(self.fc2(h1))
        return self.out(torch.cat([h1, h2], dim=1))


class CNNDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        h = torch.amax(torch.relu(self.conv(x)), dim=(2, 3), keepdim=True)
        # view(size(0), -1) on purpose: with a dynamic batch axis this exports
        # the Shape->Gather->Unsqueeze->Concat->Reshape chain that real-world
        # torch exports contain and that projc has to handle.
        return self.fc(h.view(h.size(0), -1))


class ResMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 32)
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        # A ResNet-style block, relu(fc2(h) + h): the skip closes an odd cycle of constraint
        # families (relu -> dot -> relu+skip), so training needs the bipartite repair.
        return self.out(torch.relu(self.fc2(h) + h))


class BinaryMLP(nn.Module):
    """Sign activation: zero gradient almost everywhere, so only a
    gradient-free trainer can train it."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.sign(self.fc1(x)))


# name -> (module class, input shape without batch, seed)
MODELS = {
    "mlp_digits": (MLPDigits, (64,), 0),
    "mlp_mnist": (MLPMnist, (784,), 1),
    "cnn_digits": (CNNDigits, (1, 8, 8), 2),
    "resmlp": (ResMLP, (64,), 3),
    "binary_mlp": (BinaryMLP, (64,), 4),
}


def export(name, out_dir):
    cls, in_shape, seed = MODELS[name]
    torch.manual_seed(seed)
    model = cls().eval()
    path = os.path.join(out_dir, f"{name}.onnx")
    with warnings.catch_warnings():
        # dynamo=False is deliberate (see below); silence its deprecation notice.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.randn(2, *in_shape),),
            path,
            dynamo=False,  # TorchScript exporter: plain opset-17 graph, stable names
            opset_version=17,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(path), full_check=True)

    check_against_onnxruntime(path, model, in_shape, seed)
    print(f"{name}: wrote {path}, onnxruntime matches torch at batch 1 and 7")


def export_checked(name, model, path, in_shape, output, expected_ops, seed):
    """Export ``model`` (TorchScript exporter, opset 17, dynamic batch) to ``path``, check it with
    onnx's full checker, require the op types ``expected_ops``, and compare it with torch
    (``check_against_onnxruntime``). Returns the loaded ModelProto."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.randn(2, *in_shape),), path,
            dynamo=False, opset_version=17,
            input_names=["x"], output_names=[output],
            dynamic_axes={"x": {0: "batch"}, output: {0: "batch"}},
        )
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ops = {n.op_type for n in m.graph.node}
    if not expected_ops <= ops:
        raise SystemExit(f"{name}: exported graph lacks {sorted(expected_ops - ops)} (ops: {sorted(ops)})")
    check_against_onnxruntime(path, model, in_shape, seed)
    return m


def check_against_onnxruntime(path, model, in_shape, seed):
    """The exported file and the torch module agree at batch sizes 1 and 7 (random inputs)."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    for batch in (1, 7):
        x = rng.standard_normal((batch, *in_shape)).astype(np.float32)
        (got,) = sess.run(None, {"x": x})
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def export_cli(doc, models, export_one):
    """``--out DIR`` (default: this folder) and ``--only NAME``: export the models of a script."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--only", choices=sorted(models))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in [args.only] if args.only else models:
        export_one(name, args.out)


def main():
    export_cli(__doc__, MODELS, export)


if __name__ == "__main__":
    main()
