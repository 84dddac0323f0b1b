"""ai.onnx.ml ops that scikit-learn exports (skl2onnx) put around a network."""
from __future__ import annotations

import jax.numpy as jnp

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
