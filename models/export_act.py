"""Export the activation example models (issue 11) to ONNX, untrained.

MLPs on digits (64 -> 32 -> 10) whose hidden activation is not ReLU: tanh, sigmoid, a QAT-style
fake quantizer (torch.fake_quantize_per_tensor_affine, exported as a QuantizeLinear ->
DequantizeLinear pair), round, HardSwish (MobileNetV3's activation, two hidden layers), and a
user-written staircase round(clamp(h, 0, 2) * 2) / 2 (staircase_mlp).

Init: torch's default Linear init under a fixed seed, except where a model's entry says otherwise:
"torch_x10" scales every parameter of that init by 10, "he" is He-normal weights std sqrt(2/fan_in)
and zero biases (the reference library's init); the projection map is not scale-invariant
(DESIGN.md §8).

    .venv/bin/python models/export_act.py [--out DIR] [--only NAME]
"""
import os
import warnings

import numpy as np
import onnx
import torch
from export_torch import check_against_onnxruntime, export_cli  # models/ is the script's folder
from torch import nn

QUANT_SCALE = 1.0 / 16  # quint8 activations: levels 0, 1/16, ..., 255/16


class FakeQuant(nn.Module):
    def forward(self, x):
        return torch.fake_quantize_per_tensor_affine(x, QUANT_SCALE, 0, 0, 255)


class Round(nn.Module):
    def forward(self, x):
        return torch.round(x)


class HalfSteps(nn.Module):
    """A user's quantized activation: clamp to [0, 2], then round to halves (levels 0, 0.5, ..., 2)."""

    def forward(self, x):
        return torch.round(torch.clamp(x, 0, 2) * 2) / 2


class MLP(nn.Module):
    def __init__(self, act, hidden=(32,)):
        super().__init__()
        dims = (64,) + tuple(hidden)
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(dims[-1], 10))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


# name -> (module factory, seed, init)
MODELS = {
    "tanh_mlp": (lambda: MLP(nn.Tanh), 11, "torch"),
    "sigmoid_mlp": (lambda: MLP(nn.Sigmoid), 12, "torch"),
    "quant_mlp": (lambda: MLP(FakeQuant), 13, "torch"),
    # round: a unit staircase; torch's init gives pre-activations within ±0.5 (all round to 0), so the
    # init is scaled ×10 to spread them over several levels (0.76 -> 0.93 test accuracy, README)
    "round_mlp": (lambda: MLP(Round), 14, "torch_x10"),
    "hardswish_mlp": (lambda: MLP(nn.Hardswish, hidden=(32, 32)), 15, "torch"),
    # a staircase as a user writes it, round(clamp(h, 0, 2) * 2) / 2, with torch's default init (no
    # rescaling in the file: --init data spreads the pre-activations at the start, docs/recipes.md)
    "staircase_mlp": (lambda: MLP(HalfSteps), 16, "torch"),
}


def he_init(model):
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=float(np.sqrt(2.0 / m.in_features)))
            nn.init.zeros_(m.bias)


def export(name, out_dir):
    factory, seed, init = MODELS[name]
    torch.manual_seed(seed)
    model = factory().eval()
    if init == "he":
        he_init(model)
    if init == "torch_x10":
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(10.0)
    path = os.path.join(out_dir, f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(2, 64),), path, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
                          do_constant_folding=True)
    onnx.checker.check_model(onnx.load(path), full_check=True)
    check_against_onnxruntime(path, model, (64,), seed)
    ops = sorted({n.op_type for n in onnx.load(path).graph.node})
    print(f"{name}: wrote {path} ({' '.join(ops)}), onnxruntime matches torch at batch 1 and 7")


def main():
    export_cli(__doc__, MODELS, export)


if __name__ == "__main__":
    main()
