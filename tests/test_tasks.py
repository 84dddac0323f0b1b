"""Tasks beyond classification (issue 23): the task and its loss chosen from the output and y,
mismatches named in one line, the task's metrics, targets of any shape from an npz, regression,
binary, multi-label, per-step ids and reconstruction through the Trainer and the CLI, onnxruntime
scoring of the exported file with the same metric, --log keys and ``projc plot``."""
from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

from pass_util import save_onnx
from projc.errors import DataError, ProjcError
from projc.train.tasks import Outputs, probe_outputs, resolve_task


def outputs(classes=(10,), binary=None, values=None, inp=(64,), sigmoid=False):
    return Outputs(tuple(classes), tuple(binary or classes), tuple(values or classes),
                   {"values": "out"}, tuple(inp), sigmoid_head=sigmoid)


INT10 = np.arange(20) % 10
ZERO_ONE = np.arange(20) % 2


@pytest.mark.parametrize("out,y,kind,loss", [
    (outputs((10,)), INT10, "classification", "cross_entropy"),
    (outputs((16, 30)), np.zeros((20, 16), int), "sequence", "cross_entropy"),
    (outputs((1,)), ZERO_ONE, "binary", "binary_cross_entropy"),
    (outputs((1,)), ZERO_ONE.astype(float)[:, None], "binary", "binary_cross_entropy"),
    (outputs((4,)), np.eye(4)[np.arange(20) % 4] + np.eye(4)[(np.arange(20) + 1) % 4], "multilabel",
     "binary_cross_entropy"),
    (outputs((1,)), np.linspace(-1, 1, 20), "regression", "squared_error"),
    (outputs((1,)), np.arange(20) % 7, "regression", "squared_error"),  # integer targets, one output
    (outputs((3,)), np.random.default_rng(0).normal(size=(20, 3)), "regression", "squared_error"),
    (outputs((1, 8, 8), inp=(1, 8, 8)), np.ones((20, 64)) * 0.5, "regression", "squared_error"),
    (outputs((1, 8, 8), inp=(1, 8, 8)), INT10, "reconstruction", "squared_error"),  # the labels do not fit
])
def test_auto_picks_the_task_from_the_output_and_y(out, y, kind, loss):
    task = resolve_task("auto", "auto", out, y)
    assert (task.kind, task.loss) == (kind, loss)
    assert task.reason.startswith("auto")


def test_explicit_losses_and_mismatches_name_both_shapes():
    assert resolve_task("squared_error", "auto", outputs((10,)), INT10).onehot  # the old one-hot regression
    assert resolve_task("huber", "auto", outputs((1,)), np.linspace(0, 1, 20)).loss == "huber"
    assert resolve_task("auto", "input", outputs((64,)), None).kind == "reconstruction"
    assert resolve_task("auto", "auto", outputs((10,)), None).kind == "classification"  # output alone
    assert resolve_task("auto", "auto", outputs((1,), sigmoid=True), None).kind == "binary"
    assert resolve_task("auto", "auto", outputs((1,)), None).kind == "regression"
    cases = [("cross_entropy", outputs((1, 8, 8), inp=(1, 8, 8)), INT10, r"integer y \[N\] does not fit the "
              r"output 'out' \[B,1,8,8\] for loss cross_entropy"),
             ("auto", outputs((10,)), np.linspace(0, 1, 20), r"float y \[N\] does not fit the output 'out' \[B,10\]"),
             ("binary_cross_entropy", outputs((1,)), np.arange(20) % 3, r"integer y \[N\] does not fit"),
             ("auto", outputs((1, 8, 8), inp=(32,)), INT10, r"y \[N\] .* \[B,1,8,8\]")]
    for loss, out, y, message in cases:
        with pytest.raises(ProjcError, match=message) as err:
            resolve_task(loss, "labels" if loss != "auto" else "auto", out, y)
        assert "\n" not in str(err.value)
    with pytest.raises(ProjcError, match="regression loss"):
        resolve_task("cross_entropy", "input", outputs((64,)), None)


def test_metrics():
    from sklearn.metrics import r2_score

    rng = np.random.default_rng(1)
    t, o = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    reg = resolve_task("auto", "labels", outputs((3,)), t)
    m = reg.metrics(o, reg.check(np.zeros((50, 1)), t))
    assert m["r2"] == pytest.approx(r2_score(t, o), rel=1e-5)
    assert m["rmse"] == pytest.approx(np.sqrt(np.mean((o - t) ** 2)), rel=1e-5)
    assert m["loss"] == pytest.approx(np.mean(0.5 * np.sum((o - t) ** 2, -1)), rel=1e-5)
    y = (rng.uniform(size=(50, 4)) > 0.5).astype(float)
    ml = resolve_task("auto", "labels", outputs((4,)), y)
    lg = rng.normal(size=(50, 4))
    m = ml.metrics(lg, ml.check(lg, y))
    assert m["accuracy"] == pytest.approx(np.mean((lg > 0) == (y > 0)))
    assert m["exact_match"] == pytest.approx(np.mean(np.all((lg > 0) == (y > 0), -1)))


def mlp(path, n_in, n_out, sigmoid=False):
    """x [N, n_in] -> Gemm -> Relu -> Gemm -> [N, n_out] (-> Sigmoid)."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["out" if not sigmoid else "z"])]
    if sigmoid:
        nodes.append(helper.make_node("Sigmoid", ["z"], ["out"]))
    inits = {"W1": rng.normal(size=(n_in, 8)) / np.sqrt(n_in), "b1": np.zeros(8),
             "W2": rng.normal(size=(8, n_out)) / np.sqrt(8), "b2": np.zeros(n_out)}
    return save_onnx(path, nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
                     [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", n_out])], inits)


@pytest.mark.parametrize("solver", ["dr", "adam"])
@pytest.mark.parametrize("task", ["regression", "binary", "multilabel"])
def test_trainer_trains_each_task(tmp_path, task, solver):
    import projc

    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 5)).astype(np.float32)
    if task == "regression":
        y, n_out, key = x[:, :2] @ np.array([[1.0, -0.5], [0.5, 1.0]]), 2, "mse"
    elif task == "binary":
        y, n_out, key = (x[:, 0] + x[:, 1] > 0).astype(int), 1, "loss"
    else:
        y, n_out, key = (x[:, :3] > 0).astype(int), 3, "loss"
    path = mlp(tmp_path / "m.onnx", 5, n_out, sigmoid=task == "binary")
    tr = projc.compile(path, solver=solver, steps_per_update=20, lr=0.05, y=y)
    assert tr.task.kind == task
    p = tr.init_params()
    before = tr.evaluate(p, x, y)
    st = tr.init_state(p)
    for _ in range(4):
        p, st, _ = tr.update(p, st, x, y)
    after = tr.evaluate(p, x, y)
    assert set(after) >= {"loss", *tr.task.metric_names}
    assert after[key] < before[key]


def embedding_seq_model(path, vocab=6, dim=4, steps=5):
    """ids [N, T] (int64) -> Gather(E) [N, T, D] -> MatMul W [D, V] -> per-step logits [N, T, V]."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["e"]), helper.make_node("MatMul", ["e", "W"], ["logits"])]
    return save_onnx(path, nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", steps])],
                     [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", steps, vocab])],
                     {"E": rng.normal(size=(vocab, dim)), "W": rng.normal(size=(dim, vocab))})


def run_cli(capsys, argv):
    from projc.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_per_step_ids_from_npz(capsys, tmp_path):
    """Integer ids in, per-step classes out (y [N, T] from an npz): the next id of each step."""
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 6, size=(80, 5))
    np.savez(tmp_path / "d.npz", X=ids, y=(ids + 1) % 6)
    model = embedding_seq_model(tmp_path / "m.onnx")
    code, out, err = run_cli(capsys, ["train", model, "--data", f"npz:{tmp_path}/d.npz", "--updates", "3",
                                      "--batch", "32", "--steps", "10", "-o", str(tmp_path / "t.onnx")])
    assert code == 0, err
    assert "sequence: loss cross_entropy (auto: integer y [N,5] with per-step logits [B,5,6])" in out
    assert "test accuracy" in out and "(onnxruntime)" in out


def test_cli_regression_log_plot_and_onnxruntime(capsys, tmp_path):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(120, 5))
    np.savez(tmp_path / "d.npz", X=x, y=x[:, 0] - 0.5 * x[:, 1])
    model = mlp(tmp_path / "m.onnx", 5, 1)
    log = tmp_path / "h.jsonl"
    code, out, err = run_cli(capsys, ["train", model, "--data", f"npz:{tmp_path}/d.npz", "--updates", "4",
                                      "--batch", "32", "--steps", "10", "--log", str(log),
                                      "-o", str(tmp_path / "t.onnx")])
    assert code == 0, err
    first = out.splitlines()[0]
    assert "regression: loss squared_error (auto: float y [N] with the output [B,1])" in first
    assert "train rmse" in out and "test r2" in out
    scores = out.splitlines()[-1]
    assert "test rmse" in scores and "r2" in scores and "(onnxruntime)" in scores
    ort_r2, projc_r2 = (float(v) for v in scores.split("r2 ")[1].split(";")[0].replace("(onnxruntime),", "")
                        .replace("(projc)", "").split())
    assert ort_r2 == pytest.approx(projc_r2, abs=1e-4)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"train_rmse", "test_rmse", "train_r2", "test_r2", "loss"} <= set(records[-1])
    assert "test_accuracy" not in records[-1]
    from projc.cli.plot import plot_history
    assert plot_history(str(log), str(tmp_path / "c.png"))


def test_cli_reconstruction_target_input_and_mismatch(capsys, tmp_path):
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "d.npz", X=rng.uniform(size=(60, 6)), y=rng.integers(0, 3, 60))
    model = mlp(tmp_path / "ae.onnx", 6, 6)
    code, out, err = run_cli(capsys, ["train", model, "--data", f"npz:{tmp_path}/d.npz", "--updates", "2",
                                      "--batch", "30", "--steps", "10", "--target", "input",
                                      "-o", str(tmp_path / "t.onnx")])
    assert code == 0, err
    assert "reconstruction: loss squared_error (auto: y = x, --target input)" in out and "test mse" in out
    # y of floats on a 3-class... model: one line naming both shapes, no traceback
    np.savez(tmp_path / "f.npz", X=rng.uniform(size=(60, 6)), y=rng.normal(size=(60, 2)))
    clf = mlp(tmp_path / "clf.onnx", 6, 3)
    code, out, err = run_cli(capsys, ["train", clf, "--data", f"npz:{tmp_path}/f.npz", "--updates", "1",
                                      "-o", str(tmp_path / "c.onnx")])
    assert code != 0 and "float y [N,2] does not fit the output 'out' [B,3]" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_probe_outputs_of_the_bundled_task_models():
    from pathlib import Path

    from projc.frontend.importer import load_model

    root = Path(__file__).resolve().parents[1] / "models"
    ae = probe_outputs(load_model(str(root / "ae_digits.onnx")))
    assert ae.values == (1, 8, 8) and ae.input == (1, 8, 8)
    assert probe_outputs(load_model(str(root / "bce_cancer.onnx"))).binary == (1,)


def test_y_is_checked_against_the_task(tmp_path):
    import projc

    tr = projc.compile(mlp(tmp_path / "m.onnx", 5, 2), y=np.zeros((4, 2), np.float32))
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(DataError, match=r"y \[N,3\] does not fit the output \[B,2\]"):
        tr.evaluate(tr.init_params(), x, np.zeros((4, 3)))
    with pytest.raises(DataError, match="y is missing"):
        tr.evaluate(tr.init_params(), x)
