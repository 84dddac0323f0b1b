"""Export the task example models (issue 23) to ONNX (untrained weights, torch's default init).

    .venv/bin/python models/export_tasks.py [--out DIR] [--only NAME]

- ``reg_diabetes``: regression on scikit-learn's diabetes data (10 standardized features, the
  standardized disease progression): Linear(10,32) -> ReLU -> Linear(32,1) -> ``y`` [B,1].
- ``bce_cancer``: binary classification on scikit-learn's breast cancer data (30 standardized
  features, 0 malignant / 1 benign), one logit trained with BCEWithLogits:
  Linear(30,16) -> ReLU -> Linear(16,1) -> ``logit`` [B,1] (no Sigmoid in the file).
- ``ae_digits``: a convolutional autoencoder of the 8x8 digits, ``x`` [B,1,8,8] -> ``x_hat``
  [B,1,8,8]: encoder Conv(1,8,3 pad 1) -> ReLU -> MaxPool 2 -> Conv(8,4,3 pad 1) -> ReLU ->
  MaxPool 2 (a [4,2,2] code); decoder Upsample x2 nearest (Resize: asymmetric, floor) ->
  Conv(4,8,3 pad 1) -> ReLU -> Upsample x2 bilinear (Resize linear, pytorch_half_pixel) ->
  Conv(8,1,3 pad 1).

Same exporter settings and checks as ``export_torch.py`` (TorchScript exporter, opset 17,
onnx.checker, onnxruntime equals torch at batch 1 and 7).
"""
import os

import onnx
import torch
from export_torch import export_checked, export_cli  # models/ is the script's folder
from torch import nn


class RegDiabetes(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(10, 32), nn.Linear(32, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class BCECancer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(30, 16), nn.Linear(16, 1)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class AEDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.dec1, self.dec2 = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 1, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.up_nearest = nn.Upsample(scale_factor=2, mode="nearest")
        self.up_linear = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x):
        code = self.pool(torch.relu(self.enc2(self.pool(torch.relu(self.enc1(x))))))  # [B,4,2,2]
        h = torch.relu(self.dec1(self.up_nearest(code)))                               # [B,8,4,4]
        return self.dec2(self.up_linear(h))                                             # [B,1,8,8]


# name -> (module class, seed, input shape, output name, ONNX op types that must be present)
MODELS = {
    "reg_diabetes": (RegDiabetes, 21, (10,), "y", {"Gemm", "Relu"}),
    "bce_cancer": (BCECancer, 22, (30,), "logit", {"Gemm", "Relu"}),
    "ae_digits": (AEDigits, 23, (1, 8, 8), "x_hat", {"Conv", "MaxPool", "Resize"}),
}


def export(name, out_dir):
    cls, seed, in_shape, out_name, expected = MODELS[name]
    torch.manual_seed(seed)
    model = cls().eval()
    path = os.path.join(out_dir, f"{name}.onnx")
    m = export_checked(name, model, path, in_shape, out_name, expected, seed)
    ops = {n.op_type for n in m.graph.node}
    modes = sorted({onnx.helper.get_attribute_value(a).decode() for n in m.graph.node if n.op_type == "Resize"
                    for a in n.attribute if a.name == "mode"})
    print(f"{name}: wrote {path} ({' '.join(sorted(ops))}{'; Resize ' + ', '.join(modes) if modes else ''}), "
          "onnxruntime matches torch at batch 1 and 7")


def main():
    export_cli(__doc__, MODELS, export)


if __name__ == "__main__":
    main()
