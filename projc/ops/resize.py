"""Resize (opset 13+) and Upsample: separable interpolation, one axis at a time.

The geometry (output sizes, source coordinates, taps and their weights) is computed at compile
time with numpy from the static scales/sizes/roi; the forward gathers the taps along the axis and
sums them weighted. Coordinates are computed in float32 as onnxruntime does, so that a nearest
neighbour picked at a rounding tie is the one onnxruntime picks.

Models older than opset 13 reach projc through onnx's version converter, which turns Upsample
and Resize-10 into Resize-13 with its default (half_pixel) coordinates; their own semantics are
asymmetric coordinates and, for nearest, truncation. ``pin_legacy_resize`` restores those
semantics on the converted nodes (the importer calls it after the conversion).
"""
from __future__ import annotations

from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import onnx

from projc.errors import UnsupportedModelError

from .checks import flag
from .layout import normalize_axis
from .registry import register

_COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
                     "asymmetric", "tf_crop_and_resize")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _floats(array):
    return None if array is None or np.asarray(array).size == 0 else \
        np.asarray(array, np.float32).reshape(-1)


def _sizes(array):
    return None if array is None or np.asarray(array).size == 0 else \
        [int(v) for v in np.asarray(array).reshape(-1)]


def _geometry(shape, roi, scales, sizes, axes, policy):
    """(output sizes, float32 scales, roi begin/end per axis) over all axes of ``shape``."""
    rank = len(shape)
    axes = [normalize_axis(a, rank) for a in axes] if axes is not None else list(range(rank))
    if (scales is None) == (sizes is None):
        raise UnsupportedModelError("Resize needs exactly one of scales and sizes")
    given = scales if scales is not None else sizes
    if len(given) != len(axes):
        raise UnsupportedModelError(f"Resize: {len(given)} scales/sizes for {len(axes)} axes")
    full_scales = np.ones(rank, np.float32)
    out = list(shape)
    if scales is not None:
        for axis, s in zip(axes, scales):
            full_scales[axis] = s
            out[axis] = int(np.floor(np.float32(shape[axis]) * np.float32(s)))
    else:
        ratios = [np.float32(n) / np.float32(shape[a]) for a, n in zip(axes, sizes)]
        if policy in ("not_larger", "not_smaller"):
            common = min(ratios) if policy == "not_larger" else max(ratios)
            ratios = [common] * len(axes)
            sizes = [int(np.floor(np.float32(common) * np.float32(shape[a]) + 0.5)) for a in axes]
        for axis, ratio, n in zip(axes, ratios, sizes):
            full_scales[axis], out[axis] = ratio, n
    begins, ends = np.zeros(rank, np.float32), np.ones(rank, np.float32)
    if roi is not None:
        if len(roi) != 2 * len(axes):
            raise UnsupportedModelError(f"Resize: roi has {len(roi)} values for {len(axes)} axes")
        for i, axis in enumerate(axes):
            begins[axis], ends[axis] = roi[i], roi[len(axes) + i]
    return out, full_scales, begins, ends


def _source_coordinates(mode, size_in, size_out, scale, begin, end):
    """float32 source coordinate of every output index along one axis, and the positions
    outside the input (tf_crop_and_resize only)."""
    f = np.float32
    x = np.arange(size_out, dtype=np.float32)
    scale, size_in_f, size_out_f = f(scale), f(size_in), f(size_out)
    outside = None
    if mode == "asymmetric":
        src = x / scale
    elif mode == "align_corners":
        src = np.zeros_like(x) if size_out == 1 else x * (size_in_f - 1) / (size_out_f - 1)
    elif mode == "pytorch_half_pixel":
        src = np.zeros_like(x) if size_out == 1 else (x + f(0.5)) / scale - f(0.5)
    elif mode == "half_pixel_symmetric":
        adjustment = size_out_f / (scale * size_in_f)
        offset = size_in_f / 2 * (1 - adjustment)
        src = offset + (x + f(0.5)) / scale - f(0.5)
    elif mode == "tf_crop_and_resize":
        if size_out == 1:
            src = np.full_like(x, f(begin) * (size_in_f - 1)
                              + (f(end) - f(begin)) * (size_in_f - 1) / 2)
        else:
            src = f(begin) * (size_in_f - 1) + x * (f(end) - f(begin)) * (size_in_f - 1) \
                / (size_out_f - 1)
        outside = (src < 0) | (src > size_in_f - 1)
    else:  # half_pixel
        src = (x + f(0.5)) / scale - f(0.5)
    return src.astype(np.float32), outside


def _nearest(src, nearest_mode, size_in):
    if nearest_mode == "floor":
        idx = np.floor(src)
    elif nearest_mode == "ceil":
        idx = np.ceil(src)
    elif nearest_mode == "round_prefer_ceil":
        idx = np.floor(src + np.float32(0.5))
    else:  # round_prefer_floor: halves go down
        idx = np.ceil(src - np.float32(0.5))
    return np.clip(idx, 0, size_in - 1).astype(np.int64)[:, None], np.ones((len(src), 1))


def _linear(src, size_in):
    src = np.clip(src, 0, size_in - 1).astype(np.float64)
    lo = np.floor(src)
    frac = src - lo
    idx = np.stack([lo, lo + 1], axis=1).astype(np.int64)
    return np.clip(idx, 0, size_in - 1), np.stack([1 - frac, frac], axis=1)


def _cubic(src, size_in, a, exclude_outside):
    src = src.astype(np.float64)
    lo = np.floor(src)
    t = src - lo
    idx = (lo[:, None] + np.arange(-1, 3)[None, :]).astype(np.int64)
    d = np.stack([t + 1, t, 1 - t, 2 - t], axis=1)  # distances to the four taps

    def kernel(d):
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return np.where(d <= 1, near, np.where(d < 2, far, 0.0))

    weights = kernel(d)
    if exclude_outside:
        weights = np.where((idx < 0) | (idx >= size_in), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1, total)
    return np.clip(idx, 0, size_in - 1), weights


def _antialiased(src, size_in, scale, mode, a, exclude_outside):
    """Taps and weights of a linear or cubic filter stretched by 1/scale (downsampling with
    antialias=1): the kernel evaluated at (tap - x) * scale, normalized to sum 1."""
    src = src.astype(np.float64)
    reach = 1 if mode == "linear" else 2
    first = int(np.floor(-reach / scale)) + 1  # offset of the first tap from floor(x)
    taps = 2 - 2 * first
    lo = np.floor(src)
    ratio = np.where(src == lo, 1.0, src - lo)  # an integer x counts as the right end
    base = np.where(src == lo, lo - 1, lo)
    offsets = np.arange(first, first + taps)
    d = np.abs((offsets[None, :] - ratio[:, None]) * scale)
    if mode == "linear":
        weights = np.clip(1 - d, 0, 1)
    else:
        near = (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1
        far = a * d ** 3 - 5 * a * d ** 2 + 8 * a * d - 4 * a
        weights = np.where(d <= 1, near, np.where(d < 2, far, 0.0))
    weights = weights / weights.sum(axis=1, keepdims=True)
    idx = (base[:, None] + offsets[None, :]).astype(np.int64)
    if exclude_outside:
        weights = np.where((idx < 0) | (idx >= size_in), 0.0, weights)
        total = weights.sum(axis=1, keepdims=True)
        weights = weights / np.where(total == 0, 1, total)
    return np.clip(idx, 0, size_in - 1), weights


def _axis_taps(size_in, size_out, scale, begin, end, *, mode, coordinate_mode, nearest_mode,
               cubic_coeff_a, exclude_outside, antialias):
    """(taps [size_out, T] int, weights [size_out, T], positions outside the input or None) of
    one axis: output i = Σ_t weights[i, t] x[taps[i, t]]."""
    src, outside = _source_coordinates(coordinate_mode, size_in, size_out, scale, begin, end)
    if antialias and mode in ("linear", "cubic") and scale < 1:
        idx, weights = _antialiased(src, size_in, float(scale), mode, cubic_coeff_a,
                                    exclude_outside)
    elif mode == "nearest":
        idx, weights = _nearest(src, nearest_mode, size_in)
    elif mode == "linear":
        idx, weights = _linear(src, size_in)
    elif mode == "cubic":
        idx, weights = _cubic(src, size_in, cubic_coeff_a, exclude_outside)
    else:
        raise UnsupportedModelError(f"Resize mode {mode!r} is not supported")
    return idx, weights, outside


def _resize_axis(x, axis, size_out, scale, begin, end, *, mode, coordinate_mode, nearest_mode,
                 cubic_coeff_a, exclude_outside, extrapolation_value, antialias):
    idx, weights, outside = _axis_taps(x.shape[axis], size_out, scale, begin, end, mode=mode,
                                       coordinate_mode=coordinate_mode, nearest_mode=nearest_mode,
                                       cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside,
                                       antialias=antialias)
    shape = [1] * x.ndim
    shape[axis] = size_out
    if mode == "nearest":
        y = jnp.take(x, jnp.asarray(idx[:, 0]), axis=axis)
    else:
        compute = x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)
        total = sum(jnp.take(compute, jnp.asarray(idx[:, t]), axis=axis)
                    * jnp.asarray(np.reshape(weights[:, t], shape), compute.dtype)
                    for t in range(idx.shape[1]))
        y = cast(jax.Array, total).astype(x.dtype)  # an array: every output has at least one tap
    if outside is not None and outside.any():
        y = jnp.where(jnp.asarray(np.reshape(outside, shape)),
                      jnp.asarray(extrapolation_value, y.dtype), y)
    return y


def resize_taps(shape, roi=None, scales=None, sizes=None, *, mode="nearest",
                coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor",
                cubic_coeff_a=-0.75, exclude_outside=0, antialias=0, axes=None,
                keep_aspect_ratio_policy="stretch", **_):
    """The forward's geometry as data: [(axis, taps [out, T], weights [out, T], outside or None)]
    for every axis of ``shape`` the resize changes, in axis order (what ``resize`` computes one axis
    at a time; the training lowering turns it into ``take`` moves and a ``wsum`` family)."""
    out, full_scales, begins, ends = _geometry(tuple(shape), _floats(roi), _floats(scales),
                                               _sizes(sizes), axes, keep_aspect_ratio_policy)
    result = []
    for axis in range(len(shape)):
        unchanged = out[axis] == shape[axis] and full_scales[axis] == 1
        if unchanged and (coordinate_transformation_mode != "tf_crop_and_resize"
                          or (begins[axis] == 0 and ends[axis] == 1)):
            continue
        idx, weights, outside = _axis_taps(
            shape[axis], out[axis], full_scales[axis], begins[axis], ends[axis], mode=mode,
            coordinate_mode=coordinate_transformation_mode, nearest_mode=nearest_mode,
            cubic_coeff_a=cubic_coeff_a, exclude_outside=exclude_outside, antialias=antialias)
        result.append((axis, idx, weights, outside))
    return result


def check_resize(inputs, params) -> None:
    """Resize: known mode, coordinate_transformation_mode, nearest_mode, policy; exclude_outside
    and antialias 0 or 1; scales and sizes not both given."""
    flag(params, "mode", ("nearest", "linear", "cubic"))
    flag(params, "coordinate_transformation_mode", _COORDINATE_MODES)
    flag(params, "nearest_mode", _NEAREST_MODES)
    flag(params, "exclude_outside")
    flag(params, "antialias")
    flag(params, "keep_aspect_ratio_policy", ("stretch", "not_larger", "not_smaller"))
    scales = inputs[2] if len(inputs) > 2 else None
    sizes = inputs[3] if len(inputs) > 3 else None
    if scales is not None and sizes is not None and all(
            isinstance(d, int) and d > 0 for d in scales.shape + sizes.shape):
        raise ValueError("inputs scales and sizes are exclusive")


_RESIZE_13 = {"coordinate_transformation_mode": "half_pixel", "cubic_coeff_a": -0.75,
              "exclude_outside": 0, "extrapolation_value": 0.0, "mode": "nearest",
              "nearest_mode": "round_prefer_floor"}
_RESIZE_18 = {**_RESIZE_13, "antialias": 0, "axes": None, "keep_aspect_ratio_policy": "stretch"}


@register("Resize", since=13, attrs=_RESIZE_13, static=(1, 2, 3), check=check_resize)
@register("Resize", since=18, attrs=_RESIZE_18, static=(1, 2, 3), check=check_resize)
@register("Resize", since=19, attrs=_RESIZE_18, static=(1, 2, 3), check=check_resize)
def resize(x, roi=None, scales=None, sizes=None, *, coordinate_transformation_mode,
           cubic_coeff_a, exclude_outside, extrapolation_value, mode, nearest_mode,
           antialias=0, axes=None, keep_aspect_ratio_policy="stretch"):
    """x resampled to the static ``sizes`` (or ``scales``): nearest, linear or cubic, per axis,
    with the coordinate transformation and nearest rounding the attributes name (antialias:
    linear and cubic filters widened when downsampling)."""
    out, full_scales, begins, ends = _geometry(x.shape, _floats(roi), _floats(scales),
                                               _sizes(sizes), axes, keep_aspect_ratio_policy)
    for axis in range(x.ndim):
        unchanged = out[axis] == x.shape[axis] and full_scales[axis] == 1
        if unchanged and (coordinate_transformation_mode != "tf_crop_and_resize"
                          or (begins[axis] == 0 and ends[axis] == 1)):
            continue
        x = _resize_axis(x, axis, out[axis], full_scales[axis], begins[axis], ends[axis],
                         mode=mode, coordinate_mode=coordinate_transformation_mode,
                         nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a,
                         exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
                         antialias=antialias)
    return x


def _upsample(x, scales, mode):
    if mode not in ("nearest", "linear", "bilinear"):
        raise UnsupportedModelError(f"Upsample mode {mode!r} is not supported")
    return resize(x, None, scales, None, coordinate_transformation_mode="asymmetric",
                  cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0,
                  mode="nearest" if mode == "nearest" else "linear", nearest_mode="floor")


@register("Upsample", since=7, attrs={"mode": "nearest", "scales": None})
def upsample_7(x, *, mode, scales):
    """Resize by the ``scales`` attribute with asymmetric coordinates (nearest: floor); models
    this old are upgraded to Resize at import (see ``pin_legacy_resize``)."""
    return _upsample(x, scales, mode)


@register("Upsample", since=9, attrs={"mode": "nearest"}, static=(1,))
def upsample(x, scales, *, mode):
    """Resize by the static ``scales`` with asymmetric coordinates (nearest: floor); models
    this old are upgraded to Resize at import (see ``pin_legacy_resize``)."""
    return _upsample(x, scales, mode)


def _constant_scales(model: onnx.ModelProto, name: str):
    """The value of ``name`` when an initializer or a Constant node of ``model`` holds it."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return onnx.numpy_helper.to_array(tensor).reshape(-1)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name and node.attribute:
            value = onnx.helper.get_attribute_value(node.attribute[0])
            if isinstance(value, onnx.TensorProto):
                return onnx.numpy_helper.to_array(value).reshape(-1)
    return None


def _legacy_nearest_mode(model: onnx.ModelProto, node: onnx.NodeProto) -> str:
    """onnxruntime's opset < 11 nearest rule: truncation, but ceil on downsampled axes (where
    it differs: 1/scale not an integer)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("mode", b"nearest") not in (b"nearest", "nearest"):
        return "floor"
    scales = attrs.get("scales")
    if scales is None and len(node.input) > 1:
        scales = _constant_scales(model, node.input[1])
    rounded_up = [s for s in (scales if scales is not None else ())
                  if s < 1 and not float(1 / np.float32(s)).is_integer()]
    if not rounded_up:
        return "floor"
    assert scales is not None  # rounded_up lists some of them
    if any(s > 1 for s in scales):
        raise UnsupportedModelError(
            f"{node.op_type} node \"{node.name or node.output[0]}\" (opset < 11, nearest) "
            "downsamples some axes and upsamples others: onnxruntime rounds those axes "
            "differently, which Resize-13 cannot express")
    return "ceil"


def pin_legacy_resize(original: onnx.ModelProto, converted: onnx.ModelProto) -> None:
    """Give the Resize nodes that onnx's version converter made of ``original``'s Upsample and
    Resize-10 nodes (matched by output name) their old semantics: asymmetric coordinates and,
    for nearest, truncation (ceil when downsampling: onnxruntime's opset < 11 rule). Edits
    ``converted``."""
    opsets = {e.domain or "ai.onnx": e.version for e in original.opset_import}
    version = opsets.get("ai.onnx", 0)
    legacy = {node.output[0]: node for node in original.graph.node
              if node.domain in ("", "ai.onnx") and (node.op_type == "Upsample"
                                                     or (node.op_type == "Resize" and version < 11))}
    for node in converted.graph.node:
        if node.op_type != "Resize" or not node.output or node.output[0] not in legacy:
            continue
        nearest = _legacy_nearest_mode(original, legacy[node.output[0]])
        kept = [a for a in node.attribute
                if a.name not in ("coordinate_transformation_mode", "nearest_mode")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.extend([
            onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
            onnx.helper.make_attribute("nearest_mode", nearest)])
