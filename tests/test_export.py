"""Export: the original graph with trained initializers; onnxruntime agrees; failures write nothing."""
from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import projc
from projc.errors import ProjcError
from projc.frontend.export import export_onnx
from projc.train.data import load_data, minibatches


@pytest.fixture(scope="module")
def trained():
    tr = projc.compile("models/mlp_digits.onnx", solver="dr", steps_per_update=30)
    data = load_data("digits")
    p = tr.init_params()
    state = tr.init_state(p)
    for xb, yb in minibatches(data.x_train, data.y_train, 64, seed=0):
        p, state, _ = tr.update(p, state, xb, yb)
    return tr, data, p


@pytest.mark.slow
def test_round_trip_matches_onnxruntime(trained, tmp_path):
    tr, data, p = trained
    path = tmp_path / "trained.onnx"
    tr.export(p, path)
    m = onnx.load(path)
    onnx.checker.check_model(m)
    src = onnx.load("models/mlp_digits.onnx")
    assert [i.name for i in m.graph.initializer] == [i.name for i in src.graph.initializer]
    assert [i.data_type for i in m.graph.initializer] == [i.data_type for i in src.graph.initializer]
    assert [n.op_type for n in m.graph.node] == [n.op_type for n in src.graph.node]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run([tr.logits_name], {tr.input_name: data.x_test})
    np.testing.assert_allclose(logits, tr.logits(p, data.x_test), rtol=1e-4, atol=1e-4)
    acc = float(np.mean(np.argmax(logits, -1) == data.y_test))
    assert acc == tr.evaluate(p, data.x_test, data.y_test)["accuracy"]
    assert acc >= 0.9
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".projc-")]


def test_sklearn_round_trip(tmp_path):
    tr = projc.compile("models/sklearn_mlp.onnx", solver="dr", steps_per_update=10)
    data = load_data("digits")
    p = tr.init_params()
    p, _st, _ = tr.update(p, tr.init_state(p), data.x_train[:64], data.y_train[:64])
    path = tmp_path / "sk.onnx"
    tr.export(p, path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    label = sess.run(None, {tr.input_name: data.x_test})[0]
    assert float(np.mean(label == data.y_test)) == tr.evaluate(p, data.x_test, data.y_test)["accuracy"]


@pytest.mark.slow
def test_unwritable_destination_writes_nothing(trained, tmp_path):
    tr, _, p = trained
    missing = tmp_path / "no" / "such" / "dir" / "m.onnx"
    with pytest.raises(ProjcError, match=str(missing.parent)):
        tr.export(p, missing)
    assert not (tmp_path / "no").exists()
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write read-only folders")
        with pytest.raises(ProjcError, match="m.onnx"):
            tr.export(p, ro / "m.onnx")
        assert os.listdir(ro) == []
    finally:
        os.chmod(ro, 0o755)


@pytest.mark.slow
def test_failed_export_keeps_existing_file(trained, tmp_path):
    tr, _, p = trained
    dest = tmp_path / "keep.onnx"
    dest.write_bytes(b"old")
    bad = dict(p)
    bad["fc1.weight"] = np.full_like(np.asarray(p["fc1.weight"]), np.nan)
    with pytest.raises(ProjcError, match="non-finite"):
        export_onnx("models/mlp_digits.onnx", bad, dest)
    with pytest.raises(ProjcError, match="no initializer named"):
        export_onnx("models/mlp_digits.onnx", {"nope": np.zeros(3)}, dest)
    with pytest.raises(ProjcError, match="is a folder"):
        export_onnx("models/mlp_digits.onnx", p, tmp_path)
    assert dest.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["keep.onnx"]
