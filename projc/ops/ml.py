"""ai.onnx.ml ops that scikit-learn exports (skl2onnx) put around a network."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .dtypes import jax_dtype
from .registry import register


@register("ml.ArrayFeatureExtractor", since=1)
def array_feature_extractor(x, indices):
    """x[..., indices] along the last axis (onnxruntime's rule: a 1-D x gives [1, len(indices)])."""
    idx = jnp.reshape(jnp.asarray(indices), (-1,))
    idx = jnp.where(idx < 0, idx + x.shape[-1], idx)
    y = jnp.take(x, idx, axis=-1, mode="clip")
    return jnp.reshape(y, (1, -1)) if x.ndim == 1 else y


@register("ml.ZipMap", since=1, attrs={"classlabels_int64s": None, "classlabels_strings": None})
def zip_map(x, *, classlabels_int64s, classlabels_strings):
    """Class probabilities [B, C]; ONNX returns them as one {label: prob} map per row, projc keeps
    the tensor (the labels are in the op's params). Evaluation only: not a trainable op."""
    return x


# -- linear models (LogisticRegression, LinearSVC, SGDClassifier, ... through skl2onnx) --------

_POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")


def check_linear_classifier(inputs, params) -> None:
    """The coefficients fill [classes or 1, features]; one intercept per row (or none)."""
    x = inputs[0]
    coefficients = params.get("coefficients") or []
    features = x.shape[-1] if x is not None and x.rank >= 1 else None
    if x is not None and x.rank not in (1, 2):
        raise ValueError(f"input X {x.type_str()} must be 1-D or 2-D")
    if not isinstance(features, int) or features < 1 or not coefficients \
            or len(coefficients) % features:
        raise ValueError(f"attribute coefficients has {len(coefficients)} values, not a "
                         f"multiple of the {features} input features")
    rows = len(coefficients) // features
    labels = params.get("classlabels_ints") or params.get("classlabels_strings") or []
    if rows != 1 and rows != len(labels):
        raise ValueError(f"attribute coefficients has {rows} rows for {len(labels)} class labels")
    if rows == 1 and (len(labels) != 2 or params.get("post_transform", "NONE") not in
                      ("NONE", "LOGISTIC")):
        raise ValueError(f"one coefficient row (a binary classifier) needs 2 class labels "
                         f"(got {len(labels)}) and post_transform NONE or LOGISTIC")
    intercepts = params.get("intercepts")
    if intercepts is not None and len(intercepts) != rows:
        raise ValueError(f"attribute intercepts has {len(intercepts)} values for {rows} rows")
    if params.get("post_transform", "NONE") not in _POST_TRANSFORMS:
        raise ValueError(f"attribute post_transform={params['post_transform']!r}: expected one "
                         f"of {list(_POST_TRANSFORMS)}")


@register("ml.LinearClassifier", since=1, check=check_linear_classifier,
          weight_attrs=("coefficients", "intercepts"),
          attrs={"classlabels_ints": None, "classlabels_strings": None, "multi_class": 0,
                 "post_transform": "NONE"})
def linear_classifier(x, coefficients, intercepts=None, *, classlabels_ints, classlabels_strings,
                      multi_class, post_transform):
    """Scores X @ W.T + b (W = coefficients as [rows, features]), post-transformed, and the
    label of the largest raw score; one row (binary) scores [1-s, s] (or [1-p, p] after
    LOGISTIC, as onnxruntime does) and picks the second label when s > 0."""
    x = jnp.atleast_2d(x).astype(jnp.float32)
    weights = jnp.reshape(coefficients, (-1, x.shape[-1]))
    scores = jnp.matmul(x, weights.T, precision=lax.Precision.HIGHEST)
    if intercepts is not None:
        scores = scores + intercepts
    labels = jnp.asarray(np.asarray(classlabels_ints or range(len(classlabels_strings or [0, 1])),
                                    dtype=jax_dtype(np.int64)))
    if weights.shape[0] == 1 and len(labels) == 2:
        raw = scores[:, 0]
        label = jnp.where(raw > 0, labels[1], labels[0])
        p = jax.nn.sigmoid(raw) if post_transform == "LOGISTIC" else raw
        return label, jnp.stack([1 - p, p], axis=1)  # onnxruntime's binary scores, 1 - s too
    return labels[jnp.argmax(scores, axis=1)], _post_transform(scores, post_transform)


def _post_transform(scores, kind: str):
    if kind == "SOFTMAX":
        return jax.nn.softmax(scores, axis=-1)
    if kind == "LOGISTIC":
        return jax.nn.sigmoid(scores)
    if kind == "SOFTMAX_ZERO":  # softmax over the nonzero scores; zeros stay zero
        nonzero = jnp.abs(scores) > 1e-7
        exps = jnp.where(nonzero, jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)), 0)
        return exps / jnp.sum(exps, axis=-1, keepdims=True)
    if kind == "PROBIT":
        return jnp.sqrt(2.0) * jax.scipy.special.erfinv(2 * scores - 1)
    return scores


@register("ml.Normalizer", since=1, attrs={"norm": "MAX"},
          check=lambda inputs, params: _check_norm(params))
def normalizer(x, *, norm):
    """Each row divided by its MAX, L1 (sum of |x|) or L2 norm (rows of norm 0 left as they are);
    the result is float32."""
    x = x.astype(jnp.float32)
    if norm == "MAX":
        scale = jnp.max(x, axis=-1, keepdims=True)
    elif norm == "L1":
        scale = jnp.sum(jnp.abs(x), axis=-1, keepdims=True)
    else:
        scale = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    return jnp.where(scale == 0, x, x / jnp.where(scale == 0, 1, scale))


def _check_norm(params) -> None:
    if params.get("norm") not in ("MAX", "L1", "L2"):
        raise ValueError(f"attribute norm={params.get('norm')!r}: expected MAX, L1 or L2")
