"""Transformer-era torch modules exported by both torch exporters, checked with `projc compare`.

Each module (tiny sizes, eval mode, dropout 0) is exported into tmp_path by the TorchScript
exporter (``dynamo=False``) and by the default dynamo exporter (``dynamo=True``, needs
onnxscript), at opset 17, at each exporter's default opset, and (dynamo only: the TorchScript
exporter stops at opset 20) at opset 23, where torch emits the ONNX ops RMSNormalization,
GroupNormalization-21 and Attention. The batch axis is exported dynamic, and for the TorchScript
exporter also static. A combination torch itself cannot export is skipped with torch's reason.

With a dynamic batch the TorchScript exporter computes MultiheadAttention's head split as
``Reshape(x, Concat(..., Mul(Gather(Shape(x)), heads), ...))``; projc's symbolic shape evaluation
(``projc.frontend.symbolic``) folds that Mul into the symbol "Bx2", which the Reshape infers (-1).
The dynamo exporter reshapes with ``-1`` directly.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from projc.cli import main  # noqa: E402

DEFAULT = None  # the exporter's default opset


class SDPA(nn.Module):
    def __init__(self, is_causal: bool):
        super().__init__()
        self.is_causal = is_causal

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=self.is_causal)


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


class Wrapped(nn.Module):
    """forward(x) only: the TorchScript exporter turns the defaulted arguments of a module's own
    forward (TransformerEncoderLayer's is_causal=False) into tensors, which torch then rejects."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def _encoder(**kw):
    return Wrapped(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, **kw))


def _seq():
    return (torch.randn(2, 3, 8),)


MODULES = {
    "layer_norm": (lambda: nn.LayerNorm(8), _seq),
    "rms_norm": (lambda: nn.RMSNorm(8), _seq),
    "group_norm": (lambda: nn.GroupNorm(2, 4), lambda: (torch.randn(2, 4, 3, 3),)),
    "multihead_attention": (SelfAttention, _seq),
    "sdpa": (lambda: SDPA(False), lambda: tuple(torch.randn(2, 2, 3, 4) for _ in range(3))),
    "sdpa_causal": (lambda: SDPA(True), lambda: tuple(torch.randn(2, 2, 3, 4) for _ in range(3))),
    "encoder_relu_post_norm": (lambda: _encoder(), _seq),
    "encoder_gelu_pre_norm": (lambda: _encoder(activation="gelu", norm_first=True), _seq),
    "encoder_relu_pre_norm": (lambda: _encoder(norm_first=True), _seq),
    "encoder_gelu_post_norm": (lambda: _encoder(activation="gelu"), _seq),
}
# (exporter, opset, dynamic batch)
COMBOS = [("torchscript", 17, False), ("torchscript", DEFAULT, False),
          ("torchscript", 17, True), ("torchscript", DEFAULT, True),
          ("dynamo", 17, True), ("dynamo", DEFAULT, True), ("dynamo", 23, True)]
KNOWN_FAILURES: dict[tuple, str] = {}  # (name, exporter, opset, dynamic) -> reason: strict xfail


def _params():
    for name in MODULES:
        for exporter, opset, dynamic in COMBOS:
            reason = KNOWN_FAILURES.get((name, exporter, opset, dynamic))
            marks = pytest.mark.xfail(reason=reason, strict=True) if reason else ()
            ident = f"{name}-{exporter}-{opset or 'default'}-{'dynamic' if dynamic else 'static'}"
            yield pytest.param(name, exporter, opset, dynamic, id=ident, marks=marks)


def export(name: str, exporter: str, opset, path: str, dynamic: bool = True) -> None:
    """Export module ``name`` to ``path``; pytest.skip with torch's reason when torch cannot."""
    make_module, make_args = MODULES[name]
    export_module(make_module, make_args, name, exporter, opset, path, dynamic)


def export_module(make_module, make_args, name: str, exporter: str, opset, path: str,
                  dynamic: bool = True) -> None:
    """Export ``make_module()`` on ``make_args()`` (tiny, eval mode, perturbed parameters) with
    a dynamic batch axis if asked; pytest.skip with torch's reason when torch cannot."""
    torch.manual_seed(0)
    module = make_module().eval()
    for p in module.parameters():  # non-trivial affine parameters (torch initializes 1 and 0)
        p.data.add_(0.1 * torch.randn_like(p))
    args = make_args()
    names = [f"x{i}" for i in range(len(args))]
    kwargs = {} if opset is DEFAULT else {"opset_version": opset}
    if exporter == "dynamo" and dynamic:
        batch = torch.export.Dim("batch", min=1, max=64)
        kwargs["dynamic_shapes"] = tuple({0: batch} for _ in args)
    elif dynamic:
        kwargs["dynamic_axes"] = {n: {0: "batch"} for n in names}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, path, input_names=names, output_names=["y"],
                              dynamo=exporter == "dynamo", **kwargs)
    except Exception as err:  # torch's UnsupportedOperatorError, TorchExportError, ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        pytest.skip(f"torch {torch.__version__} cannot export {name} with the {exporter} "
                    f"exporter at opset {opset or 'default'}: {first[:200]}")


@pytest.mark.parametrize("name,exporter,opset,dynamic", list(_params()))
def test_compare_matches_onnxruntime(name, exporter, opset, dynamic, tmp_path, capsys):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    path = str(tmp_path / f"{name}.onnx")
    export(name, exporter, opset, path, dynamic)
    code = main(["compare", path, "--batch", "3"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "all outputs match" in out.out


def test_opset_23_exports_use_the_new_onnx_ops(tmp_path):
    """At opset 23 the dynamo exporter emits RMSNormalization and Attention nodes (so the
    comparisons above exercise them), and GroupNormalization-21."""
    pytest.importorskip("onnxscript")
    seen = set()
    for name in ("rms_norm", "sdpa_causal", "group_norm"):
        path = str(tmp_path / f"{name}.onnx")
        export(name, "dynamo", 23, path)
        seen |= {n.op_type for n in onnx.load(path).graph.node}
    assert {"RMSNormalization", "Attention", "GroupNormalization"} <= seen


def test_layer_norm_statistics_outputs_match_the_reference(tmp_path):
    """LayerNormalization's optional Mean and InvStdDev outputs (torch never asks for them)."""
    from onnx import TensorProto, helper, numpy_helper

    from projc.cli.compare import compare_model

    rng = np.random.default_rng(0)
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"], axis=1,
                            epsilon=1e-3)
    graph = helper.make_graph(
        [node], "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in
         (("y", ["N", 3, 4]), ("mean", ["N", 1, 1]), ("inv", ["N", 1, 1]))],
        [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "s"),
         numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float32), "b")])
    path = str(tmp_path / "ln.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    report = compare_model(path, batch=2)
    assert report.ok, report.format()
    assert report.outputs["mean"].shape == (2, 1, 1)
