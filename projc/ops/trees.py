"""ai.onnx.ml tree ensembles (scikit-learn's decision trees, random forests and gradient boosting
through skl2onnx): TreeEnsembleClassifier and TreeEnsembleRegressor, forward only.

The forest's node table becomes flat numpy arrays at compile time (every node of every tree at
one global index); the forward walks all trees of all rows at once, one level per step, for as
many steps as the deepest tree needs, then sums the leaves' weights. The score post-processing
follows onnxruntime's (its rules for two classes included: a forest that votes for one class only
gets the complementary score written beside it).
"""
from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .dtypes import jax_dtype
from .registry import register

_MODES = {"BRANCH_LEQ": 0, "BRANCH_LT": 1, "BRANCH_GTE": 2, "BRANCH_GT": 3, "BRANCH_EQ": 4,
          "BRANCH_NEQ": 5, "LEAF": 6}
_POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")
_MEMBER = 7  # TreeEnsemble's BRANCH_MEMBER (its mode 6)


@dataclass
class Forest:
    """The node table as flat arrays (index = a node's global position)."""

    feature: np.ndarray
    threshold: np.ndarray
    mode: np.ndarray
    true_next: np.ndarray
    false_next: np.ndarray
    missing_true: np.ndarray
    roots: np.ndarray
    depth: int
    weights: np.ndarray  # [nodes, targets]: each leaf's weight per target (0 elsewhere)
    touched: np.ndarray  # [nodes, targets]: whether the leaf has a weight for the target
    members: np.ndarray | None = None  # [nodes, M]: BRANCH_MEMBER sets, NaN-padded


def _tensor_or_list(params, name):
    value = params.get(name + "_as_tensor")
    if value is None:
        value = params.get(name)
    return None if value is None else np.asarray(value, np.float64).reshape(-1)


def build_forest(params, n_targets: int, prefix: str) -> Forest:
    """The flat forest of a TreeEnsembleClassifier (``prefix`` "class") or Regressor
    ("target"); raises ValueError on an inconsistent node table."""
    tree_ids = list(params.get("nodes_treeids") or [])
    node_ids = list(params.get("nodes_nodeids") or [])
    count = len(tree_ids)
    lists = {name: list(params.get(name) or []) for name in (
        "nodes_featureids", "nodes_modes", "nodes_truenodeids", "nodes_falsenodeids")}
    values = _tensor_or_list(params, "nodes_values")
    missing = list(params.get("nodes_missing_value_tracks_true") or [0] * count)
    if not count or len(node_ids) != count or any(len(v) != count for v in lists.values()) \
            or values is None or len(values) != count or len(missing) != count:
        raise ValueError("the nodes_* attributes must all list the same number of nodes")
    index = {(t, n): i for i, (t, n) in enumerate(zip(tree_ids, node_ids))}
    if len(index) != count:
        raise ValueError("a (tree id, node id) pair appears twice in the node table")
    unknown = [m for m in lists["nodes_modes"] if m not in _MODES]
    if unknown:
        raise ValueError(f"unknown node mode {unknown[0]!r} (BRANCH_MEMBER is not supported)")
    mode = np.array([_MODES[m] for m in lists["nodes_modes"]], np.int32)
    leaf = mode == _MODES["LEAF"]

    def target(tree, node, i):
        if leaf[i]:
            return i
        if (tree, node) not in index:
            raise ValueError(f"node {node_ids[i]} of tree {tree} points to missing node {node}")
        return index[(tree, node)]

    true_next = np.array([target(t, n, i) for i, (t, n) in
                          enumerate(zip(tree_ids, lists["nodes_truenodeids"]))], np.int32)
    false_next = np.array([target(t, n, i) for i, (t, n) in
                           enumerate(zip(tree_ids, lists["nodes_falsenodeids"]))], np.int32)
    trees = sorted(set(tree_ids))
    roots = np.array([index.get((t, 0), min(i for i, u in enumerate(tree_ids) if u == t))
                      for t in trees], np.int32)
    weights = np.zeros((count, n_targets), np.float64)
    touched = np.zeros((count, n_targets), bool)
    w = _tensor_or_list(params, prefix + "_weights")
    ids = list(params.get(prefix + "_ids") or [])
    w_nodes = list(params.get(prefix + "_nodeids") or [])
    w_trees = list(params.get(prefix + "_treeids") or [])
    if w is None or not len(w) == len(ids) == len(w_nodes) == len(w_trees):
        raise ValueError(f"the {prefix}_* attributes must all list the same number of weights")
    for tree, node, k, value in zip(w_trees, w_nodes, ids, w):
        if (tree, node) not in index or not 0 <= k < n_targets:
            raise ValueError(f"weight for node {node} of tree {tree}, {prefix} id {k}: no such "
                             "node or id")
        weights[index[(tree, node)], k] += value
        touched[index[(tree, node)], k] = True
    return Forest(np.array(lists["nodes_featureids"], np.int32), values, mode, true_next,
                  false_next, np.asarray(missing, bool), roots, _depth(true_next, false_next,
                                                                       roots, leaf),
                  weights, touched)


def _depth(true_next, false_next, roots, leaf) -> int:
    """Steps from the roots to the deepest leaf (refusing cycles)."""
    depth, frontier = 0, set(int(r) for r in roots if not leaf[r])
    while frontier:
        depth += 1
        if depth > len(leaf):
            raise ValueError("the node table has a cycle")
        frontier = {int(n) for i in frontier for n in (true_next[i], false_next[i]) if not leaf[n]}
    return depth


def leaves(forest: Forest, x):
    """The leaf each row of x [N, F] reaches in each tree: [N, trees] global node indices."""
    x = jnp.reshape(x, (x.shape[0] if x.ndim > 1 else 1, -1))
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    x = x.astype(dtype)
    feature, mode = jnp.asarray(forest.feature), jnp.asarray(forest.mode)
    threshold = jnp.asarray(forest.threshold.astype(dtype))
    true_next, false_next = jnp.asarray(forest.true_next), jnp.asarray(forest.false_next)
    missing_true = jnp.asarray(forest.missing_true)

    def step(_, node):
        v = jnp.take_along_axis(x, feature[node], axis=1)
        t, m = threshold[node], mode[node]
        go = jnp.select([m == 0, m == 1, m == 2, m == 3, m == 4],
                        [v <= t, v < t, v >= t, v > t, v == t], v != t)
        if forest.members is not None:
            member = jnp.any(v[..., None] == jnp.asarray(forest.members.astype(dtype))[node],
                             axis=-1)
            go = jnp.where(m == _MEMBER, member, go)
        go = jnp.where(jnp.isnan(v) & missing_true[node], True, go)
        return jnp.where(m == _MODES["LEAF"], node, jnp.where(go, true_next[node],
                                                                false_next[node]))

    start = jnp.broadcast_to(jnp.asarray(forest.roots), (x.shape[0], len(forest.roots)))
    return lax.fori_loop(0, forest.depth, step, start)


def _transform(scores, kind: str):
    if kind == "SOFTMAX":
        return jax.nn.softmax(scores, axis=-1)
    if kind == "LOGISTIC":
        return jax.nn.sigmoid(scores)
    if kind == "SOFTMAX_ZERO":
        top = jnp.max(scores, axis=-1, keepdims=True)
        nonzero = jnp.abs(scores) > 1e-7
        exps = jnp.where(nonzero, jnp.exp(scores - top), scores * jnp.exp(-top))
        return exps / jnp.sum(jnp.where(nonzero, exps, 0), axis=-1, keepdims=True)
    if kind == "PROBIT":
        return jnp.sqrt(2.0) * jax.scipy.special.erfinv(2 * scores - 1)
    return scores


def _check_common(inputs, params, prefix: str, n_targets: int | None) -> None:
    x = inputs[0]
    if x is not None and x.rank not in (1, 2):
        raise ValueError(f"input X {x.type_str()} must be 1-D or 2-D")
    if params.get("post_transform", "NONE") not in _POST_TRANSFORMS:
        raise ValueError(f"attribute post_transform={params['post_transform']!r}: expected one "
                         f"of {list(_POST_TRANSFORMS)}")
    if n_targets is None or n_targets < 1:
        raise ValueError("the number of classes/targets must be at least 1")
    build_forest(params, n_targets, prefix)
    features = x.shape[-1] if x is not None else None
    used = max(params.get("nodes_featureids") or [0])
    if isinstance(features, int) and used >= features:
        raise ValueError(f"the trees read feature {used}, the input has {features}")


# -- classifier ---------------------------------------------------------------------------------

def _labels(params):
    return params.get("classlabels_int64s") or params.get("classlabels_strings") or []


def check_tree_classifier(inputs, params) -> None:
    """TreeEnsembleClassifier: a consistent node table, weights for known classes, known
    post_transform, features within the input."""
    _check_common(inputs, params, "class", len(_labels(params)))


_CLASSIFIER_ATTRS: dict[str, str | None] = {name: None for name in (
    "base_values", "class_ids", "class_nodeids", "class_treeids", "class_weights",
    "classlabels_int64s", "classlabels_strings", "nodes_falsenodeids", "nodes_featureids",
    "nodes_hitrates", "nodes_missing_value_tracks_true", "nodes_modes", "nodes_nodeids",
    "nodes_treeids", "nodes_truenodeids", "nodes_values")}
_CLASSIFIER_ATTRS["post_transform"] = "NONE"
_AS_TENSOR = ("base_values_as_tensor", "nodes_hitrates_as_tensor", "nodes_values_as_tensor")


def _binary_scores(s0, s1, h0, h1, base, weights_positive, binary_case, post, labels):
    """onnxruntime's label and [N, 2] scores of a two-class ensemble: class sums s0, s1 (h0,
    h1: whether any leaf reached votes for the class)."""
    if len(base) == 2:
        merged = base[1] + s0
        s0 = jnp.where(h1, -merged, s0 + base[0])
        s1 = jnp.where(h1, merged, s1 + base[1])
        single = jnp.zeros_like(h1)
    else:
        if len(base) == 1:
            s0 = s0 + base[0]
        single = ~h1  # only one score computed: the second is derived from it
    positive = jnp.where(h1, s1, jnp.where(h0, s0, 0))
    case = jnp.full(s0.shape, 3 if not base else -1)
    if binary_case:
        wins = positive > (0.5 if weights_positive else 0)
        case = jnp.where(wins, 0, 1) if weights_positive else jnp.where(wins, 2, 3)
        label = jnp.where(wins, labels[1], labels[0])
    else:
        label = jnp.where(positive > 0, 1, 0)  # literally 1/0 here, as in onnxruntime
    pair = _transform(jnp.stack([s0, s1], axis=1), post)
    zero = jnp.zeros_like(s0)
    if post == "PROBIT":
        one = jnp.stack([_transform(s0, "PROBIT"), zero], axis=1)
    else:
        mixed = ((jax.nn.sigmoid(-s0), jax.nn.sigmoid(s0)) if post == "LOGISTIC" else None)
        case = case[:, None]
        one = jnp.select(
            [(case == 0) | (case == 1), (case == 2) | (case == 3), case == -1],
            [jnp.stack([1 - s0, s0], axis=1), jnp.stack(mixed or (-s0, s0), axis=1),
             jnp.stack([s0, zero], axis=1)])
    return label, jnp.where(single[:, None], one, pair)


@register("ml.TreeEnsembleClassifier", since=1, attrs=_CLASSIFIER_ATTRS,
          check=check_tree_classifier)
@register("ml.TreeEnsembleClassifier", since=3,
          attrs={**_CLASSIFIER_ATTRS, **dict.fromkeys(_AS_TENSOR + ("class_weights_as_tensor",))},
          check=check_tree_classifier)
def tree_ensemble_classifier(x, **params):
    """Sum of the leaf weights each class gets over the trees, plus base_values,
    post-transformed; the label of the top class (two classes: onnxruntime's binary rules)."""
    labels = _labels(params)
    forest = build_forest(params, len(labels), "class")
    reached = leaves(forest, x)
    scores = jnp.sum(jnp.asarray(forest.weights.astype(np.float32))[reached], axis=1)
    has = jnp.any(jnp.asarray(forest.touched)[reached], axis=1)
    base = _tensor_or_list(params, "base_values")
    base = [] if base is None else [np.float32(b) for b in base]
    post = params.get("post_transform") or "NONE"
    label_values = jnp.asarray(np.asarray(params.get("classlabels_int64s")
                                          or range(len(labels)), dtype=jax_dtype(np.int64)))
    if len(labels) > 2:
        if base:
            scores = scores + jnp.asarray(np.asarray(base, np.float32)[:len(labels)])
            has = has | jnp.asarray(np.arange(len(labels)) < len(base))
        best = jnp.argmax(jnp.where(has, scores, -jnp.inf), axis=1)
        return label_values[best], _transform(scores, post)
    class_ids = set(params.get("class_ids") or [])
    w = _tensor_or_list(params, "class_weights")
    label, probs = _binary_scores(scores[:, 0], scores[:, 1], has[:, 0], has[:, 1], base,
                                  bool(np.all(w >= 0)), len(class_ids) == 1, post,
                                  label_values)
    return label.astype(label_values.dtype), probs.astype(jnp.float32)


# -- regressor ----------------------------------------------------------------------------------

def check_tree_regressor(inputs, params) -> None:
    """TreeEnsembleRegressor: a consistent node table, target ids below n_targets, known
    aggregate_function and post_transform."""
    if params.get("aggregate_function", "SUM") not in ("SUM", "AVERAGE", "MIN", "MAX"):
        raise ValueError(f"attribute aggregate_function={params['aggregate_function']!r}: "
                         "expected SUM, AVERAGE, MIN or MAX")
    _check_common(inputs, params, "target", params.get("n_targets"))


_REGRESSOR_ATTRS: dict[str, str | None] = {name: None for name in (
    "base_values", "n_targets", "nodes_falsenodeids", "nodes_featureids", "nodes_hitrates",
    "nodes_missing_value_tracks_true", "nodes_modes", "nodes_nodeids", "nodes_treeids",
    "nodes_truenodeids", "nodes_values", "target_ids", "target_nodeids", "target_treeids",
    "target_weights")}
_REGRESSOR_ATTRS.update(aggregate_function="SUM", post_transform="NONE")


@register("ml.TreeEnsembleRegressor", since=1, attrs=_REGRESSOR_ATTRS, check=check_tree_regressor)
@register("ml.TreeEnsembleRegressor", since=3,
          attrs={**_REGRESSOR_ATTRS, **dict.fromkeys(_AS_TENSOR + ("target_weights_as_tensor",))},
          check=check_tree_regressor)
def tree_ensemble_regressor(x, **params):
    """The leaf weights of each target aggregated over the trees (SUM, AVERAGE, MIN or MAX),
    plus base_values, post-transformed (one target: PROBIT only, as onnxruntime)."""
    n_targets = int(params["n_targets"])
    forest = build_forest(params, n_targets, "target")
    reached = leaves(forest, x)
    scores = _aggregate(forest, reached, params.get("aggregate_function") or "SUM")
    base = _tensor_or_list(params, "base_values")
    post = params.get("post_transform") or "NONE"
    if base is not None and (len(base) == n_targets or (n_targets == 1 and len(base) == 1)):
        scores = scores + jnp.asarray(base.astype(np.float32))
    if n_targets == 1:
        return _transform(scores, "PROBIT") if post == "PROBIT" else scores
    return _transform(scores, post)


def _aggregate(forest: Forest, reached, kind: str, dtype=np.float32):
    """Each target's leaf weights over the trees: SUM, AVERAGE, MIN or MAX ([N, targets])."""
    values = jnp.asarray(forest.weights.astype(dtype))[reached]  # [N, trees, targets]
    has = jnp.asarray(forest.touched)[reached]
    if kind in ("SUM", "AVERAGE"):
        scores = jnp.sum(values, axis=1)
        if kind == "AVERAGE":
            scores = scores / len(forest.roots)
    else:
        fill = jnp.inf if kind == "MIN" else -jnp.inf
        reduce = jnp.min if kind == "MIN" else jnp.max
        scores = reduce(jnp.where(has, values, fill), axis=1)
        scores = jnp.where(jnp.any(has, axis=1), scores, 0)
    return scores


# -- TreeEnsemble (ai.onnx.ml opset 5) ----------------------------------------------------------

_AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
# post_transform codes as onnxruntime reads them (its enum order). The ONNX spec says 1 SOFTMAX,
# 2 LOGISTIC; onnxruntime 1.32 computes LOGISTIC for 1 and SOFTMAX for 2: projc follows its oracle.
_ORT_POST_TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX", "SOFTMAX_ZERO", "PROBIT")


def _members(modes, values) -> np.ndarray | None:
    """Each BRANCH_MEMBER node's set (NaN-delimited in membership_values, in node order)."""
    if 6 not in modes:
        return None
    sets: list[list[float]] = []
    current: list[float] = []
    for v in list(values if values is not None else []) + [np.nan]:
        if np.isnan(v):
            sets.append(current)
            current = []
        else:
            current.append(v)
    member_nodes = [i for i, m in enumerate(modes) if m == 6]
    if len(sets) < len(member_nodes):
        raise ValueError(f"membership_values holds {len(sets)} sets for {len(member_nodes)} "
                         "BRANCH_MEMBER nodes")
    table = np.full((len(modes), max(1, *(len(s) for s in sets))), np.nan)
    for node, members in zip(member_nodes, sets):
        table[node, :len(members)] = members
    return table


def build_forest_5(params) -> Forest:
    """The flat forest of a TreeEnsemble: interior nodes first, then one node per leaf."""
    modes = [int(m) for m in np.asarray(params.get("nodes_modes")).reshape(-1)]
    count = len(modes)
    splits = np.asarray(params.get("nodes_splits"), np.float64).reshape(-1)
    leaf_weights = np.asarray(params.get("leaf_weights"), np.float64).reshape(-1)
    targets = list(params.get("leaf_targetids") or [])
    n_targets = int(params.get("n_targets") or 0)
    fields = [list(params.get(name) or []) for name in (
        "nodes_featureids", "nodes_truenodeids", "nodes_falsenodeids", "nodes_trueleafs",
        "nodes_falseleafs")]
    if any(len(f) != count for f in fields) or len(splits) != count or \
            len(targets) != len(leaf_weights) or any(m not in range(7) for m in modes):
        raise ValueError("the nodes_* (and leaf_*) attributes must all have one entry per node "
                         "(per leaf), with modes 0..6")
    features, true_ids, false_ids, true_leaf, false_leaf = fields
    leaves_count = len(leaf_weights)

    def target(index, is_leaf):
        limit = leaves_count if is_leaf else count
        if not 0 <= index < limit:
            raise ValueError(f"branch to {'leaf' if is_leaf else 'node'} {index} of {limit}")
        return count + index if is_leaf else index

    true_next = np.array([target(i, t) for i, t in zip(true_ids, true_leaf)]
                         + list(range(count, count + leaves_count)), np.int32)
    false_next = np.array([target(i, f) for i, f in zip(false_ids, false_leaf)]
                          + list(range(count, count + leaves_count)), np.int32)
    mode = np.array([_MEMBER if m == 6 else m for m in modes] + [_MODES["LEAF"]] * leaves_count,
                    np.int32)
    weights = np.zeros((count + leaves_count, max(n_targets, 1)))
    touched = np.zeros(weights.shape, bool)
    for j, (k, w) in enumerate(zip(targets, leaf_weights)):
        if not 0 <= k < n_targets:
            raise ValueError(f"leaf {j} targets {k}, outside 0..{n_targets - 1}")
        weights[count + j, k] += w
        touched[count + j, k] = True
    roots = np.array(list(params.get("tree_roots") or []), np.int32)
    missing = list(params.get("nodes_missing_value_tracks_true") or [0] * count)
    members = _members(modes, params.get("membership_values"))
    pad = np.zeros(leaves_count)
    return Forest(np.array(features + [0] * leaves_count, np.int32),
                  np.concatenate([splits, pad]), mode, true_next, false_next,
                  np.array(list(missing) + [0] * leaves_count, bool), roots,
                  _depth(true_next, false_next, roots, mode == _MODES["LEAF"]), weights, touched,
                  None if members is None else np.concatenate(
                      [members, np.full((leaves_count, members.shape[1]), np.nan)]))


def check_tree_ensemble(inputs, params) -> None:
    """TreeEnsemble: a consistent node and leaf table, known aggregate_function (0..3) and
    post_transform (0..4), features within the input."""
    if params.get("aggregate_function", 1) not in range(4):
        raise ValueError(f"attribute aggregate_function={params['aggregate_function']!r}: "
                         "expected 0..3")
    if params.get("post_transform", 0) not in range(5):
        raise ValueError(f"attribute post_transform={params['post_transform']!r}: expected 0..4")
    if not params.get("tree_roots"):
        raise ValueError("attribute tree_roots is required")
    build_forest_5(params)
    x = inputs[0]
    used = max(params.get("nodes_featureids") or [0])
    if x is not None and isinstance(x.shape[-1], int) and used >= x.shape[-1]:
        raise ValueError(f"the trees read feature {used}, the input has {x.shape[-1]}")


@register("ml.TreeEnsemble", since=5, check=check_tree_ensemble, attrs={
    "aggregate_function": 1, "leaf_targetids": None, "leaf_weights": None,
    "membership_values": None, "n_targets": None, "nodes_falseleafs": None,
    "nodes_falsenodeids": None, "nodes_featureids": None, "nodes_hitrates": None,
    "nodes_missing_value_tracks_true": None, "nodes_modes": None, "nodes_splits": None,
    "nodes_trueleafs": None, "nodes_truenodeids": None, "post_transform": 0, "tree_roots": None})
def tree_ensemble(x, **params):
    """Each target's leaf weights aggregated over the trees (AVERAGE, SUM, MIN or MAX),
    post-transformed (codes as onnxruntime reads them: 1 LOGISTIC, 2 SOFTMAX); nodes compare
    with <=, <, >=, >, ==, != or set membership."""
    forest = build_forest_5(params)
    reached = leaves(forest, x)
    dtype = np.float64 if jnp.dtype(x.dtype) == jnp.float64 else np.float32
    scores = _aggregate(forest, reached, _AGGREGATES[params.get("aggregate_function", 1)], dtype)
    return _transform(scores, _ORT_POST_TRANSFORMS[params.get("post_transform", 0)]).astype(x.dtype)
