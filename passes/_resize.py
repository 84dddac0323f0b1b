"""Resize / Upsample for training (rules of the ``lower`` pass, kept here to keep lower.py small).

The geometry is the forward's own (``projc.ops.resize.resize_taps``): along every resized axis,
output i = Σ_t w[i, t] x[taps[i, t]] with constant taps and weights.

    nearest         -> take(x, taps, axis) per resized axis: a move (copies of the input; a
                       consumer-mean sees the mean of an input's copies, e.g. the s² copies of an
                       integer-factor upsampling); no constraint
    linear / cubic  -> take per axis (all taps, the tap axes moved last and merged: [.., *O, K]),
                       then one wsum family with the constant coefficients (the outer product of the
                       axes' weights): one fixed-coefficient sum per output element, DESIGN §8

Refused: sizes/scales/roi that are not constants, resizing the batch axis, and tf_crop_and_resize
positions outside the input (they read the extrapolation value, not the input).
"""
from __future__ import annotations

import math

import numpy as np

from projc.errors import PassError
from projc.ir import Op
from projc.ops.resize import resize_taps

from ._common import Rewriter, const_data, reshape_param, src_of

_ATTRS = ("mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a", "exclude_outside",
          "antialias", "axes", "keep_aspect_ratio_policy")


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def _operand(op: Op, i: int):
    """(present, constant value or None) of optional input ``i``."""
    v = op.inputs[i] if i < len(op.inputs) else None
    if v is None:
        return False, None
    data = const_data(v)
    return True, (None if data is None else np.asarray(data))


def _geometry(op: Op):
    """(roi, scales, sizes, attributes) of a Resize or Upsample; None when an operand is not constant."""
    x = op.operand(0)
    if op.kind == "Upsample":
        scales = op.params.get("scales")
        if scales is None:
            present, scales = _operand(op, 1)
            if scales is None:
                return None
        mode = _text(op.params.get("mode", "nearest"))
        attrs = {"mode": "nearest" if mode == "nearest" else "linear",
                 "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
        return None, np.asarray(scales, np.float32), None, attrs
    values = []
    for i in (1, 2, 3):
        present, data = _operand(op, i)
        if present and data is None:
            return None
        values.append(None if data is None or data.size == 0 else data)
    attrs = {k: _text(op.params[k]) for k in _ATTRS if op.params.get(k) is not None}
    if x.rank != len(x.shape):
        return None
    return (*values, attrs)


def resize(rw: Rewriter, op: Op):
    x = op.operand(0)
    geometry = _geometry(op)
    if geometry is None:
        return None  # runtime sizes: left for lower's error report
    roi, scales, sizes, attrs = geometry
    symbolic = [i for i, d in enumerate(x.shape) if not isinstance(d, int)]
    shape = [d if isinstance(d, int) else 1 for d in x.shape]
    if sizes is not None and symbolic:
        axes = attrs.get("axes")
        named = range(x.rank) if axes is None else [int(a) % x.rank for a in axes]
        if any(i in named for i in symbolic):
            raise PassError(f"{op.kind} {src_of(op)}: sizes over the batch axis of {x.type_str()}; export "
                            "with scales (or sizes of the spatial axes only, opset 18 axes)")
    try:
        taps = resize_taps(shape, roi, scales, sizes, **attrs)
    except Exception as e:  # noqa: BLE001 - an unsupported variant: the forward's own message
        raise PassError(f"{op.kind} {src_of(op)}: {e}") from None
    if any(axis in symbolic for axis, *_ in taps):
        raise PassError(f"{op.kind} {src_of(op)}: resizes the batch axis of {x.type_str()}")
    if any(outside is not None and outside.any() for *_, outside in taps):
        raise PassError(f"{op.kind} {src_of(op)}: tf_crop_and_resize reads its extrapolation value "
                        "outside the input, which does not train; crop inside the input")
    if not taps:
        return x
    mode = attrs.get("mode", "nearest")
    if mode == "nearest":
        v = x
        for axis, idx, _, _ in taps:
            v = rw.emit("take", [v], {"indices": idx[:, 0].tolist(), "axis": axis})
        return v
    # linear / cubic: gather every tap, last axis first so that earlier axis numbers stay put
    v = x
    for axis, idx, _, _ in reversed(taps):
        n, t = idx.shape
        v = rw.emit("take", [v], {"indices": idx.reshape(-1).tolist(), "axis": axis})
        split = v.shape[:axis] + (n, t) + v.shape[axis + 1:]
        v = rw.emit("reshape", [v], {"shape": reshape_param(split)}, shape=split)
    # v: [..., O_1, T_1, ..., O_k, T_k, ...]; the tap axis of resized axis j sits right after it
    positions, offset = [], 0
    for axis, *_ in taps:
        positions.append(axis + offset + 1)
        offset += 1
    keep = [i for i in range(v.rank) if i not in positions]
    v = rw.emit("transpose", [v], {"perm": keep + positions})
    k = math.prod(idx.shape[1] for _, idx, _, _ in taps)
    merged = v.shape[:len(keep)] + (k,)
    v = rw.emit("reshape", [v], {"shape": reshape_param(merged)}, shape=merged)
    full = np.ones([1] * (x.rank + len(taps)))
    for j, (axis, _idx, weights, _) in enumerate(taps):  # the outer product of the axes' weights
        shape_j = [1] * (x.rank + len(taps))
        shape_j[axis], shape_j[x.rank + j] = np.shape(weights)
        full = full * np.asarray(weights, np.float64).reshape(shape_j)
    coef = full.reshape(full.shape[:x.rank] + (k,))
    c = rw.const(coef, x.dtype, hint="resize.coefficients")
    return rw.emit("wsum", [v, c])
