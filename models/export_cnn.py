"""Export the bundled CNN example models to ONNX (untrained weights, torch's default init).

    .venv/bin/python models/export_cnn.py [--out DIR] [--only NAME]

Five 8x8 digit CNNs that exercise what real CNN exports contain:

- ``cnn2_digits``: the reference library's benchmark shape: conv 1->16 3x3 SAME + ReLU, conv
  16->32 3x3 SAME + ReLU, a global max pool of each, concatenated, linear 48->10.
- ``lenet_digits``: LeNet-style: conv 1->6 3x3 SAME, BatchNorm, ReLU, AveragePool 2; conv 6->16
  3x3 SAME, BatchNorm, ReLU, AveragePool 2; flatten; linear 64->10. BatchNormalization stays a
  node (``do_constant_folding=False`` keeps torch from folding it into the conv).
- ``gap_digits``: conv 1->16 + ReLU, conv 16->32 + ReLU, GlobalAveragePool, Flatten, linear 32->10.
- ``maxlogits_digits``: conv 1->16 + ReLU, conv 16->10, a global max pool (exported as an 8x8
  MaxPool), Flatten: the logits are the flattened [B,10,1,1] pooled tensor (no linear layer after the pool).
  Its class maps see 5x5 pixels, so even Adam ends near 0.8 on digits.
- ``fcn_maxlogits_digits``: the same Flatten-ed max-pool logits on an all-convolutional net whose
  class maps see the whole image: conv 1->16 + ReLU, MaxPool 2, conv 16->32 + ReLU, conv 1x1
  32->10, a global max pool over the 4x4 maps, Flatten.

Same exporter settings and checks as ``export_torch.py`` (TorchScript exporter, opset 17,
onnx.checker, onnxruntime equals torch at batch 1 and 7); the BatchNorm running statistics are
set to fixed non-trivial values so that the frozen affine is exercised.
"""
import os
import warnings

import onnx
import torch
from export_torch import check_against_onnxruntime, export_cli  # models/ is the script's folder
from torch import nn


def conv3(cin, cout):
    return nn.Conv2d(cin, cout, 3, padding=1)


class CNN2Digits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = conv3(1, 16), conv3(16, 32)
        self.fc = nn.Linear(48, 10)

    def forward(self, x):
        h1 = torch.relu(self.conv1(x))
        h2 = torch.relu(self.conv2(h1))
        pooled = torch.cat([torch.amax(h1, dim=(2, 3)), torch.amax(h2, dim=(2, 3))], dim=1)
        return self.fc(pooled)


class LeNetDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = conv3(1, 6), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = conv3(6, 16), nn.BatchNorm2d(16)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = self.pool(torch.relu(self.bn1(self.conv1(x))))   # [B,6,4,4]
        h = self.pool(torch.relu(self.bn2(self.conv2(h))))   # [B,16,2,2]
        return self.fc(torch.flatten(h, 1))


class GAPDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = conv3(1, 16), conv3(16, 32)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.gap(h), 1))


class MaxLogitsDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = conv3(1, 16), conv3(16, 10)
        self.pool = nn.AdaptiveMaxPool2d(1)

    def forward(self, x):
        return torch.flatten(self.pool(self.conv2(torch.relu(self.conv1(x)))), 1)


class FCNMaxLogitsDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = conv3(1, 16), conv3(16, 32)
        self.classes = nn.Conv2d(32, 10, 1)
        self.down, self.pool = nn.MaxPool2d(2), nn.AdaptiveMaxPool2d(1)

    def forward(self, x):
        h = torch.relu(self.conv2(self.down(torch.relu(self.conv1(x)))))  # [B,32,4,4]
        return torch.flatten(self.pool(self.classes(h)), 1)


def _frozen_bn_stats(model: nn.Module, seed: int) -> None:
    """Non-trivial running mean/var and affine so the exported BatchNorm is not an identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(1.0 + 0.2 * torch.rand(c, generator=g))


# name -> (module class, seed, expected ONNX op types that must be present)
MODELS = {
    "cnn2_digits": (CNN2Digits, 5, {"Conv", "ReduceMax", "Concat"}),
    "lenet_digits": (LeNetDigits, 6, {"Conv", "BatchNormalization", "AveragePool"}),
    "gap_digits": (GAPDigits, 7, {"Conv", "GlobalAveragePool", "Flatten"}),
    "maxlogits_digits": (MaxLogitsDigits, 8, {"Conv", "MaxPool", "Flatten"}),
    "fcn_maxlogits_digits": (FCNMaxLogitsDigits, 9, {"Conv", "MaxPool", "Flatten"}),
}


def export(name, out_dir):
    cls, seed, expected = MODELS[name]
    torch.manual_seed(seed)
    model = cls()
    _frozen_bn_stats(model, seed)
    model = model.eval()
    path = os.path.join(out_dir, f"{name}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (torch.randn(2, 1, 8, 8),), path,
            dynamo=False, opset_version=17,
            input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.EVAL,
            do_constant_folding=False,  # keeps BatchNormalization a node instead of folding it
        )
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    ops = {n.op_type for n in m.graph.node}
    if not expected <= ops:
        raise SystemExit(f"{name}: exported graph lacks {sorted(expected - ops)} (ops: {sorted(ops)})")

    check_against_onnxruntime(path, model, (1, 8, 8), seed)
    print(f"{name}: wrote {path} ({' '.join(sorted(ops))}), onnxruntime matches torch at batch 1 and 7")


def main():
    export_cli(__doc__, MODELS, export)


if __name__ == "__main__":
    main()
