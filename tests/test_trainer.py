"""The Trainer API: other models train, adam baseline, bad input gives clear errors."""
from __future__ import annotations

import numpy as np
import pytest

import projc
from conftest import fit
from projc.errors import DataError, DivergenceError, ProjcError
from projc.train.data import load_data


@pytest.fixture(scope="module")
def mlp():
    return projc.compile("models/mlp_digits.onnx", solver="dr", steps_per_update=20)


def test_lazy_exports():
    import subprocess
    import sys
    code = "import projc.ir, sys; print('jax' in sys.modules, 'projc.train.trainer' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    assert callable(projc.compile) and callable(projc.load_data)


def test_api_shapes_and_stats(mlp, digits):
    p = mlp.init_params()
    assert set(p) == {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"}
    assert mlp.input_shape == (None, 64) and mlp.input_name == "x"
    p2, _st, st = mlp.update(p, mlp.init_state(p), digits.x_train[:32], digits.y_train[:32])
    assert set(st) >= {"residual", "violation"} and all(np.isfinite(v) for v in st.values())
    assert {k: np.shape(v) for k, v in p2.items()} == {k: v.shape for k, v in p.items()}
    m = mlp.evaluate(p2, digits.x_test, digits.y_test)
    assert set(m) == {"accuracy", "loss"} and 0 <= m["accuracy"] <= 1


@pytest.mark.slow
def test_resmlp_trains_through_bipartite_repair(digits):
    tr = projc.compile("models/resmlp.onnx", solver="dr", steps_per_update=50)
    assert any(op.kind == "identity" for op in tr.graph.ops)
    p, _ = fit(tr, digits, 64, 22)
    assert tr.evaluate(p, digits.x_test, digits.y_test)["accuracy"] >= 0.90


@pytest.mark.slow
def test_cnn_digits_trains():
    tr = projc.compile("models/cnn_digits.onnx", solver="dr", steps_per_update=50)
    data = load_data("digits", input_shape=tr.input_shape)
    assert data.x_train.shape[1:] == (1, 8, 8)
    p0 = tr.init_params()
    acc0 = tr.evaluate(p0, data.x_test, data.y_test)["accuracy"]
    p, _ = fit(tr, data, 64, 22, p0)
    acc = tr.evaluate(p, data.x_test, data.y_test)["accuracy"]
    assert acc >= acc0 + 0.2, (acc0, acc)


@pytest.mark.slow
def test_sklearn_mlp_trains(digits):
    tr = projc.compile("models/sklearn_mlp.onnx", solver="dr", steps_per_update=50)
    # fine-tuning the fitted model keeps it accurate
    p, _ = fit(tr, digits, 64, 10)
    assert tr.evaluate(p, digits.x_test, digits.y_test)["accuracy"] >= 0.95
    # from a fresh random start it learns
    rng = np.random.default_rng(0)
    p0 = {k: (rng.normal(size=v.shape) / np.sqrt(v.shape[0] if v.ndim == 2 and v.shape[0] > 1 else 8))
          .astype(np.float32) for k, v in tr.init_params().items()}
    acc0 = tr.evaluate(p0, digits.x_test, digits.y_test)["accuracy"]
    p, _ = fit(tr, digits, 64, 22, p0)
    acc = tr.evaluate(p, digits.x_test, digits.y_test)["accuracy"]
    assert acc >= max(0.85, acc0 + 0.3), (acc0, acc)


@pytest.mark.slow
def test_adam_baseline(digits):
    tr = projc.compile("models/mlp_digits.onnx", solver="adam", lr=1e-2)
    p, st = fit(tr, digits, 64, 60)
    assert tr.evaluate(p, digits.x_test, digits.y_test)["accuracy"] >= 0.85


def test_bad_labels(mlp, digits):
    p = mlp.init_params()
    y = digits.y_train[:8].copy()
    y[3] = 10
    with pytest.raises(DataError, match="label 10 is out of range.*0..9"):
        mlp.update(p, (), digits.x_train[:8], y)
    with pytest.raises(DataError, match="out of range"):
        mlp.evaluate(p, digits.x_train[:8], -np.ones(8, int))
    with pytest.raises(DataError, match="integer class labels"):
        mlp.update(p, (), digits.x_train[:8], np.full(8, 0.5))
    with pytest.raises(DataError, match="one per sample"):
        mlp.update(p, (), digits.x_train[:8], digits.y_train[:7])


def test_bad_features(mlp, digits):
    p = mlp.init_params()
    with pytest.raises(DataError, match="64 features per sample, got 63"):
        mlp.update(p, (), digits.x_train[:8, :63], digits.y_train[:8])
    x = digits.x_train[:8].copy()
    x[2, 5] = np.nan
    with pytest.raises(DataError, match="NaN or inf.*sample 2"):
        mlp.update(p, (), x, digits.y_train[:8])
    x[2, 5] = np.inf
    with pytest.raises(DataError, match="NaN or inf"):
        mlp.evaluate(p, x, digits.y_train[:8])


def test_bad_options_and_params(mlp, digits):
    with pytest.raises(ProjcError, match="unknown solver"):
        projc.compile("models/mlp_digits.onnx", solver="sgd")
    with pytest.raises(ProjcError, match="layout"):
        projc.compile("models/mlp_digits.onnx", layout="dense")
    p = mlp.init_params()
    del p["fc1.bias"]
    with pytest.raises(ProjcError, match="fc1.bias"):
        mlp.update(p, (), digits.x_train[:8], digits.y_train[:8])


def test_divergence_is_reported(mlp, digits):
    p = mlp.init_params()
    p["fc2.weight"] = np.full_like(p["fc2.weight"], np.inf)
    with pytest.raises(DivergenceError, match="non-finite"):
        mlp.update(p, (), digits.x_train[:8], digits.y_train[:8])
