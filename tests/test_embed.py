"""The embedding family: Gather of a parameter table [V, D] along axis 0 by integer data.

The projection is checked against the nearest point of {(E, y): y[n] = E[idx[n]]} computed
independently (dense least squares on the equality constraints); the lowered forward against
onnxruntime; one training update in each state layout moves exactly the looked-up table rows.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from pass_util import evaluate, op_counts, save_onnx
from projc.errors import DataError, PassError
from projc.frontend.importer import load_model
from projc.passes import compile_for_training

V, D, T, C = 7, 3, 4, 5


def _nearest_point(e0, idx, y0):
    """argmin |E-E0|² + |y-y0|² s.t. y[n, d] = E[idx[n], d]: z0 - Aᵀ(AAᵀ)⁻¹A z0 with z = (E, y) flat."""
    idx = idx.reshape(-1)
    n = idx.size
    z0 = np.concatenate([e0.reshape(-1), y0.reshape(-1)])
    rows = []
    for k in range(n):
        for d in range(D):
            a = np.zeros(z0.size)
            a[V * D + k * D + d] = 1.0
            a[idx[k] * D + d] = -1.0
            rows.append(a)
    A = np.array(rows)
    z = z0 - A.T @ np.linalg.solve(A @ A.T, A @ z0)
    return z[:V * D].reshape(V, D), z[V * D:].reshape(y0.shape)


def test_embed_projection_is_the_nearest_point():
    from projc.backends.jax.projections import embed

    rng = np.random.default_rng(0)
    for _ in range(4):
        e0 = rng.normal(size=(V, D))
        idx = rng.integers(0, V - 2, size=(3, T))  # repeats, and rows V-2, V-1 never looked up
        y0 = rng.normal(size=(3, T, D))
        e1, y1 = (np.asarray(a) for a in embed(e0, idx, y0))
        want_e, want_y = _nearest_point(e0, idx, y0)
        np.testing.assert_allclose(e1, want_e, atol=1e-6)  # float32
        np.testing.assert_allclose(y1, want_y, atol=1e-6)
        np.testing.assert_array_equal(y1, e1[idx])           # on the constraint set
        np.testing.assert_array_equal(e1[V - 2:], e0[V - 2:].astype(e1.dtype))  # rows not looked up stay
        feasible_e = rng.normal(size=(50, V, D))  # no sampled feasible point is nearer
        d1 = np.sum((e1 - e0) ** 2) + np.sum((y1 - y0) ** 2)
        d = np.sum((feasible_e - e0) ** 2, (1, 2)) + np.sum((feasible_e[:, idx] - y0) ** 2, (1, 2, 3))
        assert np.all(d >= d1 - 1e-5)


def embed_model(path, rng, relu_first=False):
    """x: int64 [N, T] -> Gather(E, x) -> Relu -> Flatten -> Gemm -> logits [N, C]
    (``relu_first``: Gather(Relu(E), x), a lookup in a computed table)."""
    if relu_first:
        front = [helper.make_node("Relu", ["E"], ["Er"]), helper.make_node("Gather", ["Er", "x"], ["r"], axis=0)]
    else:
        front = [helper.make_node("Gather", ["E", "x"], ["g"], axis=0), helper.make_node("Relu", ["g"], ["r"])]
    nodes = front + [helper.make_node("Flatten", ["r"], ["f"]),
                     helper.make_node("Gemm", ["f", "W", "b"], ["logits"], transB=1)]
    inits = {"E": rng.normal(size=(V, D)), "W": rng.normal(size=(C, T * D)) / 3, "b": np.zeros(C)}
    return save_onnx(path, nodes, [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", T])],
                     [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", C])], inits)


def test_embedding_lowers_to_embed_and_matches_onnxruntime(tmp_path):
    rng = np.random.default_rng(1)
    path = embed_model(tmp_path / "m.onnx", rng)
    compiled = compile_for_training(load_model(path))
    counts = op_counts(compiled)
    assert counts["embed"] == 1 and "Gather" not in counts
    (op,) = [op for op in compiled.ops if op.kind == "embed"]
    assert op.annots["proj"] == "closed" and op.inputs[0].role == "param"
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = rng.integers(-V, V, size=(batch, T)).astype(np.int64)  # negative ids count from the end
        got = evaluate(compiled, {"x": x})[0]
        np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_lookup_in_a_computed_table_is_refused(tmp_path):
    path = embed_model(tmp_path / "m.onnx", np.random.default_rng(2), relu_first=True)
    with pytest.raises(PassError, match="embedding lookup"):
        compile_for_training(load_model(path))


@pytest.mark.parametrize("layout", ["copies", "consensus"])
def test_embed_family_in_a_layout_projects_to_the_nearest_point(tmp_path, layout):
    """The layout's family reads the indices as data and projects its table slot exactly."""
    from projc.train.trainer import make_state_layout

    rng = np.random.default_rng(3)
    compiled = compile_for_training(load_model(embed_model(tmp_path / "m.onnx", rng)))
    lay = make_state_layout(layout, "ap", compiled)
    params = {v.hint: v.data for v in compiled.params}
    x = rng.integers(0, V - 1, size=(6, T)).astype(np.int32)
    ctx = lay.make_ctx(params, {"x": x, "y": np.zeros(6, np.int32)})
    fam = next(f for f in lay.families if f.kind == "embed")
    y0 = rng.normal(size=(6, T, D)).astype(np.float32)
    (e1,), y1 = fam.storage.project(fam, lay.init_state(ctx)[fam.key], ctx, lambda fallback: y0, lay.opts)
    want_e, want_y = _nearest_point(params["E"].astype(np.float64), x, y0.astype(np.float64))
    np.testing.assert_allclose(np.asarray(e1), want_e, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y1), want_y, atol=1e-5)


@pytest.mark.parametrize("layout", ["copies", "consensus"])
def test_one_update_moves_only_the_looked_up_rows(tmp_path, layout):
    from projc.train.trainer import Trainer

    rng = np.random.default_rng(4)
    tr = Trainer(embed_model(tmp_path / "m.onnx", rng), solver="ap", layout=layout, steps_per_update=5)
    x = rng.integers(0, V - 2, size=(8, T))  # rows V-2, V-1 never looked up
    y = rng.integers(0, C, size=8)
    p0 = tr.init_params()
    p1, _st, stats = tr.update(p0, tr.init_state(p0), x, y)
    moved = np.abs(np.asarray(p1["E"]) - p0["E"]).max(1)
    assert np.all(moved[V - 2:] == 0)
    assert np.all(moved[np.unique(x)] > 1e-5), moved
    with pytest.raises(DataError, match="integer ids"):
        tr.update(p0, (), x + 0.5, y)



def test_cli_trains_an_embedding_model_on_token_ids(tmp_path, capsys):
    """`projc train` on integer ids from an npz: the exported file runs in onnxruntime with int64
    ids, its accuracy is the compiled forward's, and the table was trained."""
    from projc.cli import main

    rng = np.random.default_rng(5)
    path = embed_model(tmp_path / "m.onnx", rng)
    ids = rng.integers(0, V, size=(120, T))
    np.savez(tmp_path / "ids.npz", X=ids, y=ids[:, 0] % C)
    out_path = tmp_path / "trained.onnx"
    code = main(["train", path, "--data", f"npz:{tmp_path / 'ids.npz'}", "--solver", "ap", "--updates", "2",
                 "--batch", "32", "--steps", "5", "-o", str(out_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    found = re.search(r"test accuracy ([\d.]+) \(onnxruntime\), ([\d.]+) \(projc\)", out)
    assert found and found.group(1) == found.group(2), out
    before, after = (numpy_helper.to_array(next(t for t in onnx.load(p).graph.initializer if t.name == "E"))
                     for p in (path, str(out_path)))
    assert not np.allclose(before, after)
