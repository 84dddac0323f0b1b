"""The gradient baseline trains every bundled model (issue 23): ``solver="adam"`` differentiates the
imported graph's own forward with the task's loss attached, lowering nothing, so it runs wherever
the forward runs. Two updates on a small batch of each model in models/, targets drawn for the task
the output implies; the parameters move and stay finite. Where projection lowering succeeds, Adam
trains the same parameters (BatchNorm's affine frozen, unused initializers constant)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

MODELS = sorted((Path(__file__).resolve().parents[1] / "models").glob("*.onnx"))


def batch_for(trainer, rng, n=4):
    shape = [n if d is None else d for d in trainer.input_shape]
    if trainer._input.dtype in ("i64", "i32"):
        x = rng.integers(0, 4, size=shape)
    else:
        x = rng.uniform(0, 1, size=shape).astype(np.float32)
    task = trainer.task
    if task.kind == "classification":
        y = rng.integers(0, task.classes, n)
    elif task.kind == "sequence":
        y = rng.integers(0, task.classes, (n, task.out_shape[0]))
    elif task.kind in ("binary", "multilabel"):
        y = rng.integers(0, 2, (n, *task.out_shape))
    else:
        y = rng.normal(size=(n, *task.out_shape)).astype(np.float32)
    return x, y


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_adam_trains_every_bundled_model(path):
    import projc

    tr = projc.compile(str(path), solver="adam", lr=1e-2)
    x, y = batch_for(tr, np.random.default_rng(0))
    p0 = tr.init_params(x)  # a batch: a recipe may choose init "data"
    p, state = p0, tr.init_state(p0)
    for _ in range(2):
        p, state, stats = tr.update(p, state, x, y)
    assert np.isfinite(stats["loss"])
    moved = [k for k in p0 if not np.allclose(np.asarray(p[k]), p0[k])]
    assert moved, f"{path.stem}: no parameter moved"
    assert np.isfinite(tr.evaluate(p, x, y)["loss"])


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_adam_trains_the_parameters_projection_trains(path):
    from projc.errors import ProjcError
    from projc.frontend.importer import load_model
    from projc.passes import compile_for_training
    from projc.train.tasks import probe_outputs, resolve_task
    from projc.train.trainer import gradient_graph

    source = load_model(str(path))
    task = resolve_task("auto", "auto", probe_outputs(source), None)
    try:
        lowered = compile_for_training(source, loss=task.loss)
    except ProjcError:
        pytest.skip("does not lower")  # adam still trains it (the test above)
    forward = gradient_graph(source, loss=task.loss)
    assert sorted(v.hint for v in forward.params) == sorted(v.hint for v in lowered.params)


def test_adam_trains_a_model_that_does_not_lower(tmp_path, capsys):
    """A sine has no projection: the projection solvers refuse the model (one line naming the op),
    and --solver adam trains it through the forward, scored by onnxruntime."""
    from onnx import TensorProto, helper

    from pass_util import save_onnx
    from projc.cli import main

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"]), helper.make_node("Sin", ["h"], ["logits"])]
    model = save_onnx(tmp_path / "div.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                      [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                      {"W": rng.normal(size=(64, 10)) * 0.1, "b": np.zeros(10)})
    assert main(["train", model, "--updates", "1", "-o", str(tmp_path / "a.onnx")]) != 0
    assert "Sin" in capsys.readouterr().err
    assert main(["train", model, "--solver", "adam", "--lr", "0.01", "--updates", "5", "-o",
                 str(tmp_path / "b.onnx")]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "(onnxruntime)" in out
