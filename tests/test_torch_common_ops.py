"""Image-model torch modules whose exports use the common ops projc added (Resize, ConvTranspose,
DepthToSpace, SpaceToDepth, CumSum, TopK, Mish, Softsign, ...), both exporters, checked with
`projc compare` (see tests/test_torch_transformer.py for the exporter details)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from test_torch_transformer import export_module  # noqa: E402

from projc.cli import main  # noqa: E402


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _topk(x):
    values, indices = torch.topk(x, 2, dim=-1)
    return values * indices.float()


MODULES = {
    "upsample_nearest": lambda: nn.Upsample(scale_factor=2, mode="nearest"),
    "upsample_bilinear": lambda: nn.Upsample(scale_factor=2, mode="bilinear"),
    "upsample_bilinear_align_corners": lambda: nn.Upsample(size=(5, 7), mode="bilinear",
                                                           align_corners=True),
    "upsample_bicubic": lambda: nn.Upsample(scale_factor=1.5, mode="bicubic"),
    "conv_transpose": lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1,
                                                 groups=2),
    "pixel_shuffle": lambda: nn.Sequential(nn.PixelShuffle(2), nn.PixelUnshuffle(2)),
    "mish_softsign": lambda: nn.Sequential(nn.Mish(), nn.Softsign()),
    "cumsum": lambda: Lambda(lambda x: torch.cumsum(x, dim=2)),
    "topk": lambda: Lambda(_topk),
}


# An explicit output size exports Resize's sizes as Concat(Shape(x)[:2], [5, 7]): with a dynamic
# batch its first entry is the batch symbol, which projc.frontend.symbolic.resolve_resize_sizes
# drops (that axis keeps its size; the Resize gets axes=[1, 2, 3]).


def _params():
    for name in MODULES:
        for exporter in ("torchscript", "dynamo"):
            for dynamic in (True, False) if name.endswith("align_corners") else (True,):
                yield pytest.param(name, exporter, dynamic,
                                   id=f"{name}-{exporter}-{'dynamic' if dynamic else 'static'}")


@pytest.mark.parametrize("name,exporter,dynamic", list(_params()))
def test_compare_matches_onnxruntime(name, exporter, dynamic, tmp_path, capsys):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    path = str(tmp_path / f"{name}.onnx")
    export_module(MODULES[name], lambda: (torch.randn(2, 4, 4, 6),), f"{name}", exporter, 17,
                  path, dynamic=dynamic)
    code = main(["compare", path, "--batch", "3"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
