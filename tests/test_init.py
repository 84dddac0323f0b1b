"""init="file" | "he": the starting parameters of a trainer (projc.train.init_params)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import projc
from projc.cli import main
from projc.errors import ProjcError
from projc.frontend.importer import load_model
from projc.train.init_params import initial_params

MODELS = Path(__file__).resolve().parents[1] / "models"


def _file_values(name):
    g = load_model(str(MODELS / f"{name}.onnx"))
    return g, {v.hint: np.asarray(v.data) for v in g.params}


def test_he_draws_weights_by_fan_in_and_zeroes_biases():
    g, vals = _file_values("lenet_digits")     # Conv weights [OC,C,3,3], Gemm weight [10,64] transB
    he = initial_params(g, vals, "he", seed=3)
    fans = {"conv1.weight": 9, "conv2.weight": 6 * 9, "fc.weight": 64}
    for name, fan in fans.items():
        w = he[name]
        assert w.shape == vals[name].shape and w.dtype == vals[name].dtype
        assert abs(w.std() / math.sqrt(2 / fan) - 1) < 0.35, name   # loose: few samples
        assert not np.allclose(w, vals[name])
    for name in ("conv1.bias", "conv2.bias", "fc.bias"):
        assert np.all(he[name] == 0) and np.any(vals[name] != 0)
    # BatchNorm scale/shift are not weights of Gemm/MatMul/Conv: they keep their file values
    for name in set(vals) - set(fans) - {"conv1.bias", "conv2.bias", "fc.bias"}:
        np.testing.assert_array_equal(he[name], vals[name])


def test_he_fan_in_on_a_large_layer_and_seeding():
    g, vals = _file_values("mlp_mnist")          # fc1.weight [128,784] (transB): fan_in 784
    a, b, c = (initial_params(g, vals, "he", seed=s) for s in (0, 0, 1))
    np.testing.assert_allclose(a["fc1.weight"].std(), math.sqrt(2 / 784), rtol=0.02)
    np.testing.assert_allclose(a["out.weight"].std(), math.sqrt(2 / 256), rtol=0.05)
    assert all(np.array_equal(a[k], b[k]) for k in a)                     # same seed, same start
    assert not np.array_equal(a["fc1.weight"], c["fc1.weight"])
    f = initial_params(g, vals, "file")
    assert all(np.array_equal(f[k], vals[k]) for k in vals)


def test_trainer_init_option_and_errors(capsys):
    tr = projc.compile(str(MODELS / "mlp_digits.onnx"), init="he", seed=2, steps_per_update=2)
    assert np.all(tr.init_params()["fc1.bias"] == 0) and tr.init == "he"
    assert np.any(projc.compile(str(MODELS / "mlp_digits.onnx"), steps_per_update=2, init="file")
                  .init_params()["fc1.bias"] != 0)  # init="file" keeps the file's values
    with pytest.raises(ProjcError, match="unknown init 'xavier'"):
        projc.compile(str(MODELS / "mlp_digits.onnx"), init="xavier")
    with pytest.raises(SystemExit) as e:
        main(["train", str(MODELS / "mlp_digits.onnx"), "--init", "xavier"])
    assert e.value.code == 2 and "--init" in capsys.readouterr().err


def test_cli_train_with_adam_and_init(capsys, tmp_path):
    out = tmp_path / "t.onnx"
    code = main(["train", str(MODELS / "mlp_digits.onnx"), "--solver", "adam", "--init", "file",
                 "--updates", "2", "--batch", "32", "-o", str(out)])
    assert code == 0 and out.exists() and "init file" in capsys.readouterr().out


def test_auto_init_is_he_for_convolutions_and_file_otherwise():
    from projc.config import CompilationConfig
    from projc.train.init_params import resolve_init

    assert CompilationConfig().init == "auto"
    g_cnn, vals_cnn = _file_values("cnn_digits")
    g_mlp, vals_mlp = _file_values("mlp_digits")
    assert resolve_init("auto", g_cnn) == "he" and resolve_init("auto", g_mlp) == "file"
    assert resolve_init("file", g_cnn) == "file" and resolve_init("he", g_mlp) == "he"
    auto, he = (initial_params(g_cnn, vals_cnn, i, seed=4) for i in ("auto", "he"))
    assert all(np.array_equal(auto[k], he[k]) for k in he)
    auto = initial_params(g_mlp, vals_mlp, "auto", seed=4)
    assert all(np.array_equal(auto[k], vals_mlp[k]) for k in vals_mlp)
    # the trainer records what auto resolved to (the CLI prints it)
    tr = projc.compile(str(MODELS / "mlp_digits.onnx"), steps_per_update=2)
    assert tr.init == "file"
    with pytest.raises(ProjcError, match="unknown init 'xavier'"):
        resolve_init("xavier", g_mlp)
