"""Export the grouped and transposed convolution example models to ONNX (untrained weights).

    .venv/bin/python models/export_mbv2.py [--out DIR] [--only NAME]

- ``mbv2_digits``: a MobileNetV2 inverted-residual block on 8x8 digits: stem conv 1->16 3x3 +
  ReLU6; the block: 1x1 expand 16->64 + ReLU6, depthwise 3x3 (group=64) + ReLU6, 1x1 project
  64->16 (linear), residual add; then AveragePool 2 (4x4 maps), Flatten, linear 256->10.
- ``ae_convt_digits``: a convolutional autoencoder whose decoder is transposed convolutions:
  conv 1->8 3x3 stride 2 + ReLU (4x4), conv 8->16 3x3 stride 2 + ReLU (2x2); ConvTranspose
  16->8 3x3 stride 2 (output_padding 1) + ReLU (4x4), ConvTranspose 8->1 3x3 stride 2
  (output_padding 1): the reconstruction [B,1,8,8] (output ``recon``), trained with squared error
  against the input.

Same exporter settings and checks as ``export_cnn.py`` (TorchScript exporter, opset 17,
onnx.checker, onnxruntime equals torch at batch 1 and 7).
"""
import os

import torch
from export_torch import export_checked, export_cli  # models/ is the script's folder
from torch import nn


class MBV2Digits(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.expand = nn.Conv2d(16, 64, 1)
        self.depthwise = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.project = nn.Conv2d(64, 16, 1)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        x = nn.functional.relu6(self.stem(x))
        h = nn.functional.relu6(self.expand(x))
        h = nn.functional.relu6(self.depthwise(h))
        x = x + self.project(h)                      # the inverted residual
        return self.fc(torch.flatten(self.pool(x), 1))


class AEConvTDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.dec1 = nn.ConvTranspose2d(16, 8, 3, stride=2, padding=1, output_padding=1)
        self.dec2 = nn.ConvTranspose2d(8, 1, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x):
        h = torch.relu(self.enc2(torch.relu(self.enc1(x))))   # [B,16,2,2]
        return self.dec2(torch.relu(self.dec1(h)))             # [B,1,8,8]


# name -> (module class, seed, expected ONNX op types, output name)
MODELS = {
    "mbv2_digits": (MBV2Digits, 11, {"Conv", "Clip", "Add", "AveragePool", "Gemm"}, "logits"),
    "ae_convt_digits": (AEConvTDigits, 12, {"Conv", "ConvTranspose", "Relu"}, "recon"),
}


def export(name, out_dir):
    cls, seed, expected, output = MODELS[name]
    torch.manual_seed(seed)
    model = cls().eval()
    path = os.path.join(out_dir, f"{name}.onnx")
    m = export_checked(name, model, path, (1, 8, 8), output, expected, seed)
    ops = {n.op_type for n in m.graph.node}
    groups = sorted({a.i for n in m.graph.node for a in n.attribute if a.name == "group"})
    print(f"{name}: wrote {path} ({' '.join(sorted(ops))}; conv groups {groups}), onnxruntime matches "
          "torch at batch 1 and 7")


def main():
    export_cli(__doc__, MODELS, export)


if __name__ == "__main__":
    main()
