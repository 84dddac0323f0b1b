"""ai.onnx.ml tree ensembles: scikit-learn trees, forests and gradient boosting exported by
skl2onnx (TreeEnsembleClassifier with its ZipMap, TreeEnsembleRegressor) and hand-made ensembles
for onnxruntime's less common rules, projc's forward against onnxruntime."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

pytest.importorskip("skl2onnx")

from projc.cli import main  # noqa: E402
from projc.cli.compare import compare_model  # noqa: E402


def _data(kind: str):
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris

    loader = {"iris": load_iris, "cancer": load_breast_cancer, "diabetes": load_diabetes}[kind]
    x, y = loader(return_X_y=True)
    return x.astype(np.float32), y


def _estimator(name: str):
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    return {
        "DecisionTreeClassifier": DecisionTreeClassifier(max_depth=4, random_state=0),
        "RandomForestClassifier": RandomForestClassifier(6, max_depth=3, random_state=0),
        "GradientBoostingClassifier": GradientBoostingClassifier(n_estimators=6, max_depth=2,
                                                                 random_state=0),
        "DecisionTreeRegressor": DecisionTreeRegressor(max_depth=4, random_state=0),
        "RandomForestRegressor": RandomForestRegressor(6, max_depth=3, random_state=0),
        "GradientBoostingRegressor": GradientBoostingRegressor(n_estimators=6, max_depth=2,
                                                               random_state=0),
    }[name]


CASES = [(name, data) for name in ("DecisionTreeClassifier", "RandomForestClassifier",
                                   "GradientBoostingClassifier") for data in ("iris", "cancer")]
CASES += [(name, "diabetes") for name in ("DecisionTreeRegressor", "RandomForestRegressor",
                                          "GradientBoostingRegressor")]


@pytest.mark.parametrize("name,data", CASES, ids=[f"{n}-{d}" for n, d in CASES])
def test_sklearn_trees_match_onnxruntime(name, data, tmp_path, capsys):
    """Default skl2onnx exports (opset 9-17 with ai.onnx.ml 1; classifiers end in a ZipMap) on
    the training data: labels exact, probabilities and values at 1e-5."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    x, y = _data(data)
    model = _estimator(name).fit(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(model, initial_types=[("x", FloatTensorType([None, x.shape[1]]))])
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(onx, path)
    report = compare_model(path, inputs={"x": x[::7]})
    assert report.ok, report.format()
    if "Classifier" in name:
        label = report.outputs[onx.graph.output[0].name]
        assert (label == model.predict(x[::7])).mean() > 0.95
    assert main(["compare", path, "--batch", "5"]) == 0, capsys.readouterr().err


def _tree_model(op: str, attrs: dict, outputs, features=2):
    node = helper.make_node(op, ["x"], [o[0] for o in outputs], domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph(
        [node], "trees", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", 3)])


# two trees: tree 0 splits x0 <= 0.1 (nan goes true), tree 1 splits x1 > -0.2 then x0 == 0.
_NODES = dict(
    nodes_treeids=[0, 0, 0, 1, 1, 1, 1, 1], nodes_nodeids=[0, 1, 2, 0, 1, 2, 3, 4],
    nodes_featureids=[0, 0, 0, 1, 0, 0, 0, 0],
    nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF", "BRANCH_GT", "LEAF", "BRANCH_NEQ", "LEAF", "LEAF"],
    nodes_values=[0.1, 0, 0, -0.2, 0, 0.0, 0, 0], nodes_truenodeids=[1, 0, 0, 1, 0, 3, 0, 0],
    nodes_falsenodeids=[2, 0, 0, 2, 0, 4, 0, 0],
    nodes_missing_value_tracks_true=[1, 0, 0, 0, 0, 0, 0, 0])
_LEAVES = [(0, 1), (0, 2), (1, 1), (1, 3), (1, 4)]


@pytest.mark.parametrize("aggregate", ["SUM", "AVERAGE", "MIN", "MAX"])
@pytest.mark.parametrize("post_transform", ["NONE", "SOFTMAX", "LOGISTIC"])
def test_regressor_aggregates_and_transforms(aggregate, post_transform, tmp_path):
    rng = np.random.default_rng(0)
    leaves = [leaf for leaf in _LEAVES for _ in range(2)]
    attrs = dict(_NODES, n_targets=2, aggregate_function=aggregate, post_transform=post_transform,
                 base_values=[0.5, -1.0], target_treeids=[t for t, _ in leaves],
                 target_nodeids=[n for _, n in leaves], target_ids=[0, 1] * len(_LEAVES),
                 target_weights=rng.standard_normal(2 * len(_LEAVES)).tolist())
    path = str(tmp_path / "reg.onnx")
    onnx.save(_tree_model("TreeEnsembleRegressor", attrs,
                          [("y", TensorProto.FLOAT, ["N", 2])]), path)
    x = rng.standard_normal((12, 2)).astype(np.float32)
    x[0, 0], x[1, 1], x[2, 0] = np.nan, np.nan, 0.0
    report = compare_model(path, inputs={"x": x})
    assert report.ok, report.format()


@pytest.mark.parametrize("labels,class_ids,post_transform,base_values", [
    ([4, 9], [0] * 5, "NONE", None),  # binary case, positive weights: [1 - p, p] at 0.5
    ([4, 9], [0] * 5, "LOGISTIC", [0.3]),  # binary case, mixed weights (gradient boosting)
    ([4, 9], [0] * 5, "SOFTMAX_ZERO", None),  # binary case, mixed weights, [-s, s]
    ([0, 1], [0, 1, 0, 1, 1], "NONE", None),  # two classes voted for separately
    ([3, 5, 7], [0, 1, 2, 1, 0], "SOFTMAX", [0.1, 0.2, 0.3]),
])
def test_classifier_rules_match_onnxruntime(labels, class_ids, post_transform, base_values,
                                            tmp_path):
    rng = np.random.default_rng(1)
    weights = rng.uniform(0, 1, 5) if post_transform == "NONE" else rng.standard_normal(5)
    attrs = dict(_NODES, classlabels_int64s=labels, post_transform=post_transform,
                 class_treeids=[t for t, _ in _LEAVES], class_nodeids=[n for _, n in _LEAVES],
                 class_ids=class_ids, class_weights=weights.tolist())
    if base_values is not None:
        attrs["base_values"] = base_values
    path = str(tmp_path / "clf.onnx")
    onnx.save(_tree_model("TreeEnsembleClassifier", attrs,
                          [("label", TensorProto.INT64, ["N"]),
                           ("scores", TensorProto.FLOAT, ["N", len(labels)])]), path)
    x = rng.standard_normal((20, 2)).astype(np.float32)
    report = compare_model(path, inputs={"x": x})
    assert report.ok, report.format()


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
@pytest.mark.parametrize("post_transform", [0, 1, 2])
def test_tree_ensemble_5_matches_onnxruntime(aggregate, post_transform, tmp_path):
    """ai.onnx.ml TreeEnsemble (opset 5): leaves as their own table, set-membership splits;
    post_transform 1 and 2 as onnxruntime reads them (LOGISTIC and SOFTMAX, the spec swapped)."""
    from onnx import numpy_helper

    attrs = dict(
        tree_roots=[0, 2], nodes_featureids=[0, 1, 0], nodes_modes=numpy_helper.from_array(
            np.array([0, 6, 3], np.uint8)), nodes_splits=numpy_helper.from_array(
            np.array([1.5, np.nan, -1.0], np.float32)), membership_values=numpy_helper.from_array(
            np.array([1.0, 3.0, np.nan], np.float32)),
        nodes_truenodeids=[1, 1, 3], nodes_trueleafs=[0, 1, 1], nodes_falsenodeids=[0, 2, 0],
        nodes_falseleafs=[1, 1, 1], nodes_missing_value_tracks_true=[0, 1, 0],
        leaf_targetids=[0, 1, 0, 1], leaf_weights=numpy_helper.from_array(
            np.array([0.5, -1.25, 2.0, 0.75], np.float32)),
        n_targets=2, aggregate_function=aggregate, post_transform=post_transform)
    node = helper.make_node("TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph(
        [node], "te", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("ai.onnx.ml", 5)])
    path = str(tmp_path / "te.onnx")
    onnx.save(model, path)
    x = np.random.default_rng(2).integers(-2, 5, (24, 2)).astype(np.float32)
    x[0, 1] = np.nan
    report = compare_model(path, inputs={"x": x})
    assert report.ok, report.format()
