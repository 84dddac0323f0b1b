"""scikit-learn linear classifiers (skl2onnx): ai.onnx.ml LinearClassifier and Normalizer match
onnxruntime, and the classifiers train through the Python API (one dot family plus a bias)."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("skl2onnx")

from projc.cli import main  # noqa: E402
from projc.cli.compare import compare_model  # noqa: E402

CLASSIFIERS = ("LogisticRegression", "LinearSVC", "SGDClassifier")


def digits(n: int = 600):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x[:n] / 16.0).astype(np.float32), y[:n].astype(np.int64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, str]:
    """The three classifiers fitted briefly on 600 digits and exported as skl2onnx does by
    default (LogisticRegression comes out at opset 9 with a ZipMap and a Normalizer)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression, SGDClassifier
    from sklearn.svm import LinearSVC

    x, y = digits()
    folder = tmp_path_factory.mktemp("sklearn_linear")
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short fits do not converge, on purpose
        for clf in (LogisticRegression(max_iter=30), LinearSVC(max_iter=30),
                    SGDClassifier(max_iter=3, random_state=0)):
            clf.fit(x, y)
            onx = convert_sklearn(clf, initial_types=[("x", FloatTensorType([None, 64]))],
                                  target_opset={"": 17, "ai.onnx.ml": 3})
            name = type(clf).__name__
            paths[name] = str(folder / f"{name}.onnx")
            onnx.save(onx, paths[name])
    return paths


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_compare_exits_0(exported, name, capsys):
    assert main(["compare", exported[name], "--batch", "7"]) == 0
    out = capsys.readouterr().out
    assert "all outputs match" in out


def _classifier_model(rows: int, features: int, post_transform: str, labels=(0, 1, 2)):
    rng = np.random.default_rng(rows + features)
    node = helper.make_node(
        "LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
        coefficients=rng.standard_normal(rows * features).tolist(),
        intercepts=rng.standard_normal(rows).tolist(), classlabels_ints=list(labels),
        post_transform=post_transform)
    norm = helper.make_node("Normalizer", ["scores"], ["normed"], domain="ai.onnx.ml", norm="L2")
    graph = helper.make_graph(
        [node, norm], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                               ["N", features])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(labels)]),
         helper.make_tensor_value_info("normed", TensorProto.FLOAT, ["N", len(labels)])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", 1)])


@pytest.mark.parametrize("rows,labels,post_transform", [
    (3, (4, 5, 6), "NONE"), (3, (0, 1, 2), "SOFTMAX"), (3, (0, 1, 2), "LOGISTIC"),
    (3, (0, 1, 2), "SOFTMAX_ZERO"), (1, (3, 7), "NONE"), (1, (0, 1), "LOGISTIC")])
def test_linear_classifier_variants_match_onnxruntime(tmp_path, rows, labels, post_transform):
    path = str(tmp_path / "linear.onnx")
    onnx.save(_classifier_model(rows, 5, post_transform, labels), path)
    report = compare_model(path, batch=9, seed=4)
    assert report.ok, report.format()
    assert set(np.unique(report.outputs["label"])) <= set(labels)


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_normalizer_matches_onnxruntime_including_a_zero_row(tmp_path, norm):
    graph = helper.make_graph(
        [helper.make_node("Normalizer", ["x"], ["y"], domain="ai.onnx.ml", norm=norm)], "norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    path = str(tmp_path / "norm.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("ai.onnx.ml", 1)]), path)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    x[2] = 0.0
    report = compare_model(path, inputs={"x": x})
    assert report.ok, report.format()


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_training_from_zero_weights_beats_chance_and_exports(exported, name, tmp_path):
    import onnxruntime as ort

    import projc

    x, y = digits()
    trainer = projc.compile(exported[name], solver="dr", steps_per_update=20)
    params = {k: np.zeros_like(v) for k, v in trainer.init_params().items()}
    assert trainer.evaluate(params, x, y)["accuracy"] < 0.2  # all scores equal: one class
    state = trainer.init_state(params)
    for start in range(0, 600, 200):
        params, state, _ = trainer.update(params, state, x[start:start + 200], y[start:start + 200])
    accuracy = trainer.evaluate(params, x, y)["accuracy"]
    assert accuracy > 0.6, accuracy  # chance is 0.1
    out = trainer.export(params, str(tmp_path / "trained.onnx"))
    session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    label = session.run([session.get_outputs()[0].name], {"x": x})[0]
    assert np.mean(label.reshape(-1) == y) == pytest.approx(accuracy, abs=0.01)
