"""Per-step logits [B, T, C] with a sequence loss: the mean cross-entropy over every sample and step.

attach-loss gives such logits a label i64[B, T]; the cross_entropy prox works on every step's row;
the Trainer takes and evaluates labels [B, T]; ``--data text`` has per-step next-character labels.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from pass_util import save_onnx
from projc.errors import DataError, PassError
from projc.frontend.importer import load_model
from projc.passes import compile_for_training

T, F, C = 5, 4, 3


def per_step_model(path, rng):
    """x [N, T, F] -> MatMul W [F, C] + b -> logits [N, T, C] (a linear readout at every step)."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"])]
    inits = {"W": rng.normal(size=(F, C)), "b": np.zeros(C)}
    return save_onnx(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, F])],
                     [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", T, C])], inits)


def test_attach_loss_gives_per_step_logits_step_labels(tmp_path):
    path = per_step_model(tmp_path / "m.onnx", np.random.default_rng(0))
    g = compile_for_training(load_model(path))
    (loss,) = [op for op in g.ops if op.kind == "cross_entropy"]
    logits, label = loss.inputs
    batch = logits.shape[0]
    assert logits.shape == (batch, T, C) and label.dtype == "i64" and label.shape == (batch, T)
    with pytest.raises(PassError, match=r"margin needs logits \[B, C\]"):
        compile_for_training(load_model(path), loss="margin")


def test_cross_entropy_prox_treats_every_step_as_a_row():
    from projc.backends.jax.proj_losses import cross_entropy_prox

    rng = np.random.default_rng(1)
    x0 = rng.normal(size=(2, T, C)).astype(np.float32)
    y = rng.integers(0, C, size=(2, T))
    got = np.asarray(cross_entropy_prox(x0, y, lam=2.0))
    rows = np.asarray(cross_entropy_prox(x0.reshape(-1, C), y.reshape(-1), lam=2.0))
    np.testing.assert_allclose(got, rows.reshape(got.shape), rtol=1e-6, atol=1e-6)
    # the prox's stationarity per step: (x - x0)/lam + softmax(x) - onehot = 0
    s = np.exp(got - got.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    np.testing.assert_allclose((got - x0) / 2.0 + s - np.eye(C)[y], 0, atol=1e-5)


@pytest.mark.parametrize("solver", ["ap", "adam"])
def test_trainer_updates_and_evaluates_per_step_labels(tmp_path, solver):
    from projc.train.trainer import Trainer

    rng = np.random.default_rng(2)
    tr = Trainer(per_step_model(tmp_path / "m.onnx", rng), solver=solver, steps_per_update=20, lr=0.1)
    assert tr.per_step and tr.label_steps == T
    x = rng.normal(size=(16, T, F)).astype(np.float32)
    y = np.argmax(x[..., :C], -1)  # a learnable per-step rule
    p0 = tr.init_params()
    before = tr.evaluate(p0, x, y)
    lg = tr.logits(p0, x).astype(np.float64)  # the loss is the mean over every sample and step
    lse = np.log(np.exp(lg).sum(-1))
    want = np.mean(lse - np.take_along_axis(lg, y[..., None], -1)[..., 0])
    assert before["loss"] == pytest.approx(want, rel=1e-6)
    assert before["accuracy"] == pytest.approx(np.mean(np.argmax(lg, -1) == y))
    p = p0
    state = tr.init_state(p)
    for _ in range(3):
        p, state, _ = tr.update(p, state, x, y)
    assert tr.evaluate(p, x, y)["loss"] < before["loss"] - 0.05
    with pytest.raises(DataError, match=r"y must be \[16, 5\]"):
        tr.update(p0, (), x, y[:, 0])


def test_text_data_has_per_step_next_character_labels():
    from projc.train.data import load_data

    last = load_data("text", seed=3)
    seq = load_data("text", seed=3, per_step=True)
    assert seq.y_train.shape == (len(seq.x_train), 16) and seq.num_classes == 30
    np.testing.assert_array_equal(seq.x_train, last.x_train)
    np.testing.assert_array_equal(seq.y_train[:, -1], last.y_train)  # the last step: the old label
    np.testing.assert_array_equal(seq.y_train[:, :-1], np.argmax(seq.x_train[:, 1:], -1))  # shifted input
    with pytest.raises(DataError, match="only for --data text"):
        load_data("digits", per_step=True)


def test_bundled_per_step_char_model_matches_onnxruntime():
    """models/char_rnn_seq.onnx: the unrolled training graph's per-step logits equal onnxruntime's."""
    from pathlib import Path

    import onnxruntime as ort

    from pass_util import evaluate

    path = str(Path(__file__).resolve().parents[1] / "models" / "char_rnn_seq.onnx")
    g = compile_for_training(load_model(path))
    (loss,) = [op for op in g.ops if op.kind == "cross_entropy"]
    assert loss.inputs[1].shape[1:] == (16,)
    x = np.eye(30, dtype=np.float32)[np.random.default_rng(4).integers(0, 30, size=(3, 16))]
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(evaluate(g, {"x": x})[0], want, rtol=1e-4, atol=1e-5)
