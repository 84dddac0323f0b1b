"""Symbolic shape arithmetic, so that exported shape subgraphs fold at import.

torch exports ``x.view(x.size(0), -1)`` with a dynamic batch as Shape -> Gather -> Unsqueeze ->
Concat -> Reshape. With the batch symbolic, none of it is constant, yet Reshape needs a
compile-time shape. Here a *shape tensor* is a numpy object array whose entries are ints or
symbol names (``"B"``); the small set of ops that such subgraphs use is evaluated on it, and when
the result reaches Reshape (or Expand) the symbols are replaced by the placeholder values those
ops define (0 = copy the input dim, -1 = infer, 1 = broadcast), giving a plain constant.

Integer arithmetic on entries (Mul, Add, Sub, Div, Mod) is folded too: TorchScript reshapes
MultiheadAttention's heads to ``Mul(batch, heads)``. A symbol times a constant k > 1 is the
``Product`` "Bxk", named as ``projc.frontend.evaluate`` names the traced dim B*k (so that Reshape's
copy rule can match it); dividing a product by a divisor of k gives it back. Any other expression
of symbols is an opaque name (``"(B+1)"``): never a shape dim, it can only become Reshape's
inferred -1.
"""
from __future__ import annotations

import numpy as np
import onnx

from projc.ir import dtype_name
from projc.ops.layout import ints, normalize_axis, slice_

# Integer arithmetic on shape entries: ONNX's integer Div truncates toward zero, Mod (fmod=0)
# takes the divisor's sign.
ARITHMETIC = ("Mul", "Add", "Sub", "Div", "Mod")


class Product(str):
    """A symbol times a constant factor > 1, spelled ``f"{base}x{factor}"`` (e.g. "Bx2")."""

    base: str
    factor: int

    def __new__(cls, base: str, factor: int):
        out = super().__new__(cls, f"{base}x{factor}")
        out.base, out.factor = base, factor
        return out


def _factors(entry: str) -> tuple[str, int]:
    return (entry.base, entry.factor) if isinstance(entry, Product) else (entry, 1)


def _scaled(base: str, factor: int):
    return 0 if factor == 0 else base if factor == 1 else Product(base, factor)


def _opaque(a, op: str, b) -> str:
    return f"({a}{op}{b})"


def _arith(kind: str, a, b):
    """``a kind b`` for two entries (ints or symbol names)."""
    if isinstance(a, int) and isinstance(b, int):
        return _int_arith(kind, a, b)
    if kind == "Mul":
        if isinstance(a, int):
            a, b = b, a
        if isinstance(b, int) and b >= 0:
            base, factor = _factors(a)
            return _scaled(base, factor * b)
    elif kind in ("Add", "Sub") and b == 0:
        return a
    elif kind == "Add" and a == 0:
        return b
    elif kind in ("Sub", "Div") and a == b:
        return 0 if kind == "Sub" else 1
    elif kind == "Div" and isinstance(b, int) and b > 0:
        base, factor = _factors(a)
        if factor % b == 0:
            return _scaled(base, factor // b)
    return _opaque(a, {"Mul": "*", "Add": "+", "Sub": "-", "Div": "/", "Mod": "%"}[kind], b)


def _int_arith(kind: str, a: int, b: int) -> int:
    if kind == "Mul":
        return a * b
    if kind == "Add":
        return a + b
    if kind == "Sub":
        return a - b
    if b == 0:
        raise ValueError(f"integer {kind} by zero in a shape computation")
    if kind == "Div":  # truncation toward zero, as ONNX's integer Div
        return abs(a) // abs(b) * (1 if (a < 0) == (b < 0) else -1)
    return a % b


def _arithmetic(kind: str, args: list, params: dict):
    if len(args) != 2 or any(a is None for a in args):
        return None
    arrays = []
    for arg in args:
        array = np.asarray(arg)
        if array.dtype != object and array.dtype.kind not in "iu":  # float shape math
            return None
        arrays.append(as_entries(array) if array.dtype != object else array)
    if any(not isinstance(e, (int, str)) for a in arrays for e in a.reshape(-1)):
        return None
    return np.frompyfunc(lambda a, b: _arith(kind, a, b), 2, 1)(*arrays)


# Ops evaluated on shape tensors (anything else makes a symbolic value a runtime value).
SYMBOLIC_KINDS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice",
                            "Identity", "Cast", *ARITHMETIC})


def has_symbols(entries: np.ndarray) -> bool:
    return any(isinstance(e, str) for e in entries.reshape(-1))


def as_entries(array) -> np.ndarray:
    """A constant integer array as an object array of Python ints."""
    return np.asarray(np.asarray(array).tolist(), dtype=object)


def to_int64(entries: np.ndarray) -> np.ndarray:
    return np.asarray(entries.tolist(), dtype=np.int64)


def evaluate(kind: str, args: list, params: dict, input_shape=None) -> np.ndarray | None:
    """The shape tensor ``kind`` computes (see ``_evaluate``), always as an object array."""
    result = _evaluate(kind, args, params, input_shape)
    if result is None or (isinstance(result, np.ndarray) and result.dtype == object):
        return result
    out = np.empty((), dtype=object) if np.ndim(result) == 0 else None
    if out is not None:  # np.take of one index yields the bare entry
        out[()] = result.item() if isinstance(result, np.ndarray) else result
        return out
    return as_entries(result)


def _evaluate(kind: str, args: list, params: dict, input_shape=None):
    """The shape tensor ``kind`` computes from ``args`` (object arrays, numpy constants or None);
    ``input_shape`` is the IR shape of the first input (for Shape). None when not applicable."""
    if kind == "Shape":
        return np.asarray(list(input_shape)[slice(params.get("start", 0), params.get("end"))],
                          dtype=object)
    if kind == "Cast" and not _casts_to_integer(params.get("to")):
        return None
    if kind in ("Identity", "Cast"):
        return args[0]
    if kind in ARITHMETIC:
        if kind == "Mod" and params.get("fmod"):
            return None  # C fmod on shapes: never seen in an export
        return _arithmetic(kind, args, params)
    if kind == "Concat":
        parts = [as_entries(a) for a in args if a is not None]
        return np.concatenate(parts, axis=normalize_axis(params["axis"], parts[0].ndim))
    data = args[0]
    if kind == "Gather":
        axis = normalize_axis(params.get("axis", 0), data.ndim)
        idx = np.asarray(args[1]).astype(np.int64)
        idx = np.where(idx < 0, idx + data.shape[axis], idx)
        return np.take(data, idx, axis=axis)
    if kind == "Unsqueeze":
        axes = ints(args[1])
        rank = data.ndim + len(axes)
        return np.expand_dims(data, tuple(sorted(normalize_axis(a, rank) for a in axes)))
    if kind == "Squeeze":
        squeeze_axes = args[1] if len(args) > 1 else None
        if squeeze_axes is None:
            return np.squeeze(data)
        return np.squeeze(data, tuple(normalize_axis(a, data.ndim) for a in ints(squeeze_axes)))
    if kind == "Slice":
        return slice_(data, *args[1:])
    return None


def _casts_to_integer(to) -> bool:
    return to in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


def resolve_reshape(entries: np.ndarray, data_shape: tuple, allowzero: int) -> np.ndarray | None:
    """Reshape's shape with symbols replaced: an entry naming the data's dim at the same position
    becomes 0 (copy), one remaining symbol becomes -1 (infer). None when that is not possible."""
    out = list(entries.reshape(-1))
    for pos, entry in enumerate(out):
        if isinstance(entry, str) and not allowzero and pos < len(data_shape) \
                and data_shape[pos] == entry:
            out[pos] = 0
    left = [pos for pos, entry in enumerate(out) if isinstance(entry, str)]
    if len(left) > 1 or (left and -1 in out):
        return None
    for pos in left:
        out[pos] = -1
    return np.asarray(out, dtype=np.int64)


def resolve_expand(entries: np.ndarray, data_shape: tuple) -> np.ndarray | None:
    """Expand's shape with symbols replaced by 1 where the data already has that dim (numpy
    broadcasting keeps it). None when a symbol would have to create a new dim."""
    out = list(entries.reshape(-1))
    offset = len(out) - len(data_shape)
    for pos, entry in enumerate(out):
        if isinstance(entry, str):
            if pos < offset or data_shape[pos - offset] != entry:
                return None
            out[pos] = 1
    return np.asarray(out, dtype=np.int64)


def resolve_static(kind: str, index: int, entries: np.ndarray, data_shape: tuple,
                   params: dict) -> np.ndarray | None:
    """A constant for input ``index`` of a ``kind`` op whose value is the shape tensor
    ``entries``: the entries themselves when they hold no symbols, else Reshape/Expand rules."""
    if not has_symbols(entries):
        return to_int64(entries)
    if kind == "Reshape" and index == 1:
        return resolve_reshape(entries, data_shape, params.get("allowzero", 0))
    if kind == "Expand" and index == 1:
        return resolve_expand(entries, data_shape)
    if kind == "Resize" and index == 3:
        return resolve_resize_sizes(entries, data_shape, params)
    return None


def resolve_resize_sizes(entries: np.ndarray, data_shape: tuple, params: dict) -> np.ndarray | None:
    """Resize's ``sizes`` when its symbolic entries are the data's own dims on those axes (torch's
    ``Upsample(size=...)``: ``Concat(Shape(x)[:2], [h, w])``): those axes keep their size, which a
    stretching Resize leaves untouched, so they are dropped and ``params["axes"]`` (updated in place)
    names the resized ones. None when another symbol is involved or dropping would change the
    result (a crop box, a kept aspect ratio)."""
    flat = list(entries.reshape(-1))
    rank = len(data_shape)
    axes = list(range(rank)) if params.get("axes") is None else \
        [normalize_axis(int(a), rank) for a in params["axes"]]
    if len(axes) != len(flat) or params.get("coordinate_transformation_mode") == "tf_crop_and_resize" \
            or params.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return None
    kept = [(axis, e) for axis, e in zip(axes, flat)
            if not (isinstance(e, str) and data_shape[axis] == e)]
    if not kept or any(isinstance(e, str) for _, e in kept):
        return None
    params["axes"] = [axis for axis, _ in kept]
    return np.asarray([e for _, e in kept], dtype=np.int64)


# -- ops whose compile-time shape depends on a symbolic size -----------------------------------

def symbol_sources(graph_inputs) -> dict[str, tuple]:
    """symbol -> (graph input Value, axis) of the first input dim that carries it."""
    sources: dict[str, tuple] = {}
    for value in graph_inputs:
        for axis, dim in enumerate(value.shape):
            if isinstance(dim, str):
                sources.setdefault(dim, (value, axis))
    return sources


def _shape_like(entries: np.ndarray, sources: dict[str, tuple]):
    """(like Value, literal shape, dims) reading each symbol of ``entries`` from one input."""
    flat = list(entries.reshape(-1))
    symbols = {e for e in flat if isinstance(e, str)}
    if not symbols or any(s not in sources for s in symbols):
        return None
    likes = {sources[s][0] for s in symbols}
    if len(likes) != 1:  # symbols of two different inputs: no single value carries them all
        return None
    shape = [e if isinstance(e, int) else 1 for e in flat]
    dims = [sources[e][1] if isinstance(e, str) else -1 for e in flat]
    return likes.pop(), [int(s) for s in shape], dims


def rewrite_dynamic(kind: str, inputs: list, params: dict, shape_tensors: dict,
                    graph_inputs) -> tuple | None:
    """A ``(kind, inputs, params)`` stand-in (``projc.ops.shape_like``) for ConstantOfShape,
    Expand or Range whose compile-time operand is a shape tensor holding symbols; None when the op
    is not such a case (the importer then proceeds, and errors if the operand stays unknown)."""
    if kind not in ("ConstantOfShape", "Expand", "Range"):
        return None
    sources = symbol_sources(graph_inputs)
    if kind == "ConstantOfShape" and inputs[0] in shape_tensors:
        found = _shape_like(shape_tensors[inputs[0]], sources)
        if found is None:
            return None
        like, shape, dims = found
        value = params.get("value")
        value = np.zeros(1, np.float32) if value is None else np.asarray(value)
        return ("projc.fill_like", [like], {"shape": shape, "dims": dims,
                                           "value": value.reshape(-1)[0].item(),
                                           "dtype": dtype_name(value.dtype)})
    if kind == "Expand" and inputs[1] in shape_tensors and inputs[0] is not None:
        entries = shape_tensors[inputs[1]]
        if not has_symbols(entries) or resolve_expand(entries, inputs[0].shape) is not None:
            return None
        found = _shape_like(entries, sources)
        if found is None:
            return None
        like, shape, dims = found
        return "projc.expand_like", [inputs[0], like], {"shape": shape, "dims": dims}
    if kind == "Range" and inputs[1] in shape_tensors:
        return _range_like(inputs, shape_tensors[inputs[1]], sources)
    return None


def _range_like(inputs, limit: np.ndarray, sources) -> tuple | None:
    start, delta = inputs[0], inputs[2]
    entry = limit.reshape(-1)[0] if limit.size == 1 else None
    if not isinstance(entry, str) or entry not in sources:
        return None
    if any(v is None or v.role != "const" for v in (start, delta)):
        return None
    like, axis = sources[entry]
    return ("projc.range_like", [like], {"start": np.asarray(start.data).item(),
                                         "delta": np.asarray(delta.data).item(), "dim": axis,
                                         "dtype": start.dtype})
