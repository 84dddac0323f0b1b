"""Export the transformer example models (issue 22) to ONNX, with either torch exporter.

Untrained weights (torch's default init under a fixed seed), like the other export scripts: these
are the models projc is meant to train. Small on purpose (d_model 16-32, 2 heads, one block), so
a CPU epoch on digits takes seconds to a minute.

- ``tfm_digits``: digits as 8 tokens of 8 pixels (rows) -> Linear(8, 16) + learned positions ->
  one post-norm encoder layer (softmax self-attention, 2 heads; LayerNorm; ReLU MLP 16-32-16;
  LayerNorm) -> mean over the tokens -> Linear(16, 10). Input ``x`` float[batch, 8, 8].
- ``vit_digits``: digits as an image ``x`` float[batch, 1, 8, 8] -> a 2x2 stride-2 Conv (1 -> 16: 16
  patch tokens) + learned positions -> one pre-norm block (x + attn(LN(x)); x + mlp(LN(x))) -> LN ->
  mean over the tokens -> Linear(16, 10).
- ``gpt_text``: a causal character decoder for ``--data text``: 16 one-hot characters float[batch, 16,
  30] -> Linear(30, 32, no bias) (an embedding of one-hot input) + learned positions -> one pre-norm
  block with causal self-attention (a constant additive -inf mask above the diagonal) -> LN ->
  Linear(32, 30) on every step: per-step ``logits`` float[batch, 16, 30].
- ``ln_mlp``: Linear(64, 32) -> LayerNorm(32) -> ReLU -> Linear(32, 10), input float[batch, 64].
- ``relu_attn_digits``: the reference library's (pjax) attention block, ReLU in place of softmax
  (scores relu(q kᵀ + 1/√d): pjax adds the scale), q/k/v/out linear layers without bias, as its
  ``MultiHeadAttention``; on the tfm_digits tokens: embed + positions -> x + attn(x) -> mean over the
  tokens -> Linear(16, 10). No LayerNorm (pjax has none).

Attention is written out (Linear q/k/v, reshape to heads, MatMul, Softmax, MatMul) rather than
``nn.MultiheadAttention``: the TorchScript exporter computes the latter's head split from
``Shape * heads`` with a dynamic batch (tests/test_torch_transformer.py, its known limit).

    .venv/bin/python models/export_transformer.py [--out DIR] [--only NAME] [--dynamo]

The default is the TorchScript exporter (``dynamo=False``) at opset 17; ``--dynamo`` uses the
default (dynamo) exporter at opset 18 (onnxscript). Each export is checked against torch with
onnxruntime.
"""
import argparse
import math
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention written out: softmax (or, ``relu``, the reference's ReLU scores)."""

    def __init__(self, d, heads, causal=False, relu=False, bias=True):
        super().__init__()
        self.heads, self.causal, self.relu = heads, causal, relu
        self.q, self.k, self.v = (nn.Linear(d, d, bias=bias) for _ in range(3))
        self.out = nn.Linear(d, d, bias=bias)

    def forward(self, x):
        t, d = x.shape[1], x.shape[2]
        h, dh = self.heads, d // self.heads

        def split(z):  # [B, T, d] -> [B, H, T, dh]
            return z.reshape(-1, t, h, dh).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2)
        if self.relu:
            p = torch.relu(scores + 1.0 / math.sqrt(dh))  # pjax: "simple scaling via addition"
        else:
            scores = scores * (1.0 / math.sqrt(dh))
            if self.causal:
                scores = scores + torch.triu(torch.full((t, t), float("-inf")), 1)
            p = torch.softmax(scores, dim=-1)
        o = (p @ v).transpose(1, 2).reshape(-1, t, d)
        return self.out(o)


class MLP(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, hidden), nn.Linear(hidden, d)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class TfmDigits(nn.Module):
    """Rows as tokens, one post-norm encoder layer, mean pool, linear head."""

    def __init__(self, d=16, heads=2, hidden=32, tokens=8, width=8, classes=10):
        super().__init__()
        self.embed = nn.Linear(width, d)
        self.pos = nn.Parameter(torch.randn(tokens, d) * 0.1)
        self.attn, self.ln1 = SelfAttention(d, heads), nn.LayerNorm(d)
        self.mlp, self.ln2 = MLP(d, hidden), nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        h = self.ln1(h + self.attn(h))
        h = self.ln2(h + self.mlp(h))
        return self.head(h.mean(dim=1))


class Block(nn.Module):
    """Pre-norm: x + attn(LN(x)); x + mlp(LN(x))."""

    def __init__(self, d, heads, hidden, causal=False):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), SelfAttention(d, heads, causal=causal)
        self.ln2, self.mlp = nn.LayerNorm(d), MLP(d, hidden)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class VitDigits(nn.Module):
    def __init__(self, d=16, heads=2, hidden=32, classes=10):
        super().__init__()
        self.patch = nn.Conv2d(1, d, 2, stride=2)
        self.pos = nn.Parameter(torch.randn(16, d) * 0.1)
        self.block, self.ln = Block(d, heads, hidden), nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # [B, 16, d]
        return self.head(self.ln(self.block(h)).mean(dim=1))


class GptText(nn.Module):
    def __init__(self, vocab=30, d=32, heads=2, hidden=64, steps=16):
        super().__init__()
        self.embed = nn.Linear(vocab, d, bias=False)
        self.pos = nn.Parameter(torch.randn(steps, d) * 0.1)
        self.block, self.ln = Block(d, heads, hidden, causal=True), nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, x):
        return self.head(self.ln(self.block(self.embed(x) + self.pos)))


class LnMlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(64, 32), nn.LayerNorm(32), nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.ln(self.fc1(x))))


class ReluAttnDigits(nn.Module):
    def __init__(self, d=16, heads=2, tokens=8, width=8, classes=10):
        super().__init__()
        self.embed = nn.Linear(width, d)
        self.pos = nn.Parameter(torch.randn(tokens, d) * 0.1)
        self.attn = SelfAttention(d, heads, relu=True, bias=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        return self.head((h + self.attn(h)).mean(dim=1))


# name -> (constructor, seed, example input shape without the batch)
MODELS = {
    "tfm_digits": (TfmDigits, 0, (8, 8)),
    "vit_digits": (VitDigits, 0, (1, 8, 8)),
    "gpt_text": (GptText, 0, (16, 30)),
    "ln_mlp": (LnMlp, 0, (64,)),
    "relu_attn_digits": (ReluAttnDigits, 0, (8, 8)),
}


def build(name: str) -> nn.Module:
    ctor, seed, _ = MODELS[name]
    torch.manual_seed(seed)
    return ctor().eval()


def export(model: nn.Module, path: str, shape: tuple, dynamo: bool = False, check: bool = True) -> None:
    """Export with a dynamic batch axis (TorchScript at opset 17, or dynamo at 18); check against torch."""
    example = torch.zeros((2,) + tuple(shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (example,), path, dynamo=True, opset_version=18,
                              input_names=["x"], output_names=["logits"],
                              dynamic_shapes={"x": {0: batch}}, external_data=False)
        else:
            torch.onnx.export(model, (example,), path, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    untie(path)
    if check:
        x = np.random.default_rng(0).standard_normal((5,) + tuple(shape)).astype(np.float32)
        got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def untie(path: str) -> None:
    """Give every torch parameter its own initializer. The TorchScript exporter merges initializers
    with equal values (two fresh LayerNorms' weights, all ones) into one, read by the others through
    Identity nodes named after them; trained, they would be one parameter. These models tie no
    weights, so each such Identity becomes an initializer of its own under its torch name."""
    model = onnx.load(path)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
            inits[copy.name] = copy
        else:
            nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--only", choices=sorted(MODELS))
    ap.add_argument("--dynamo", action="store_true", help="the dynamo exporter (opset 18)")
    args = ap.parse_args()
    for name in [args.only] if args.only else MODELS:
        path = os.path.join(args.out, f"{name}.onnx")
        export(build(name), path, MODELS[name][2], dynamo=args.dynamo)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
