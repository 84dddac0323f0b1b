"""Import-time validation of op attributes and operand shapes (the registry's ``check=`` hooks).

onnxruntime refuses a model whose Conv has a zero stride or a kernel that does not match its
weight; without these checks projc would import it and fail later, deep in XLA or in a training
pass. A checker receives the node's input Values (None for omitted ones) and its attributes
(registry defaults filled in) and raises ``ValueError`` with a message naming the attribute or
input; the importer adds the file and node. ``check_input_types`` applies every op's ONNX schema
type constraints the same way.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID", "")


_ONNX_TYPE_NAMES = {"f16": "float16", "f32": "float", "f64": "double", "i8": "int8",
                    "i16": "int16", "i32": "int32", "i64": "int64", "u8": "uint8",
                    "u16": "uint16", "u32": "uint32", "u64": "uint64", "bool": "bool",
                    "str": "string"}


def check_input_types(node: onnx.NodeProto, inputs, opset: int) -> None:
    """Each input's element type is one the op's ONNX schema allows, and inputs sharing a type
    parameter (Gemm's A, B, C: T) share one type, as onnxruntime's type check demands."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    formal = list(schema.inputs)
    bound: dict[str, tuple[int, str]] = {}
    for index, value in enumerate(inputs):
        if value is None or not formal:
            continue
        param = formal[min(index, len(formal) - 1)]
        if index >= len(formal) and param.option != param.option.Variadic:
            raise ValueError(f"{len(inputs)} inputs given, the op takes at most {len(formal)}")
        actual = f"tensor({_ONNX_TYPE_NAMES[value.dtype]})"
        expected = allowed.get(param.type_str, {param.type_str})
        if actual not in expected:
            raise ValueError(f"input {index} ({param.name}) has type {actual}; allowed: "
                             f"{', '.join(sorted(expected))}")
        if param.type_str in allowed and (index < len(formal) or param.is_homogeneous):
            first = bound.setdefault(param.type_str, (index, actual))
            if first[1] != actual:
                raise ValueError(f"inputs {first[0]} and {index} must have the same type "
                                 f"({param.type_str}), got {first[1]} and {actual}")


def _known(dim) -> bool:
    return isinstance(dim, int)


def ints(params: dict[str, Any], name: str, length: int, *, minimum: int) -> list[int] | None:
    """The int list attribute ``name`` (None when absent), checked for length and minimum."""
    value = params.get(name)
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) != length:
        raise ValueError(f"attribute {name}={values} has {len(values)} entries, expected {length}")
    bad = [v for v in values if not isinstance(v, int) or v < minimum]
    if bad:
        raise ValueError(f"attribute {name}={values}: every entry must be an integer >= {minimum}")
    return values


def flag(params: dict[str, Any], name: str, allowed: Sequence[Any] = (0, 1)) -> None:
    """The attribute ``name`` is one of ``allowed`` (when present)."""
    value = params.get(name)
    if value is not None and value not in allowed:
        raise ValueError(f"attribute {name}={value!r}: expected one of {list(allowed)}")


def rank_at_least(value, rank: int, what: str) -> None:
    if value is not None and value.rank < rank:
        raise ValueError(f"{what} has rank {value.rank} ({value.type_str()}), expected at "
                         f"least {rank}")


def _window(params, n: int, kernel: list[int]) -> None:
    """strides, dilations, pads and auto_pad of a conv/pool window of ``n`` spatial axes."""
    ints(params, "strides", n, minimum=1)
    ints(params, "dilations", n, minimum=1)
    pads = ints(params, "pads", 2 * n, minimum=0)
    flag(params, "auto_pad", AUTO_PADS)
    if pads is not None and params.get("auto_pad") not in (None, "NOTSET", ""):
        raise ValueError(f"attributes pads and auto_pad={params['auto_pad']} are exclusive")
    del kernel


def _output_sizes_positive(x, params, kernel: list[int]) -> None:
    """Every spatial output size is at least 1 (explicit pads, known input sizes)."""
    if params.get("auto_pad") not in (None, "NOTSET", ""):
        return
    n = len(kernel)
    pads = params.get("pads") or [0] * (2 * n)
    dilations = params.get("dilations") or [1] * n
    for axis, size in enumerate(x.shape[2:]):
        if not _known(size):
            continue
        span = size + pads[axis] + pads[axis + n] - ((kernel[axis] - 1) * dilations[axis] + 1)
        if span < 0:
            raise ValueError(f"the window (kernel {kernel[axis]}, dilation {dilations[axis]}) "
                             f"is larger than spatial axis {axis + 2} of the input "
                             f"({size} plus pads {pads[axis]}+{pads[axis + n]})")


def check_conv(inputs, params) -> None:
    """Conv: kernel matches the weight, strides/dilations >= 1, pads >= 0, groups divide."""
    x, w = inputs[0], inputs[1] if len(inputs) > 1 else None
    b = inputs[2] if len(inputs) > 2 else None
    if w is None:
        raise ValueError("input 1 (the weight) is missing")
    rank_at_least(x, 3, "input 0 (X)")
    if x is not None and w.rank != x.rank:
        raise ValueError(f"the weight {w.type_str()} must have the rank of the input "
                         f"{x.type_str()}")
    n = w.rank - 2
    kernel = ints(params, "kernel_shape", n, minimum=1)
    if kernel is not None and all(map(_known, w.shape[2:])) and kernel != list(w.shape[2:]):
        raise ValueError(f"attribute kernel_shape={kernel} does not match the weight's spatial "
                         f"shape {list(w.shape[2:])}")
    _window(params, n, kernel or [])
    group = params.get("group", 1)
    if not isinstance(group, int) or group < 1:
        raise ValueError(f"attribute group={group!r} must be an integer >= 1")
    out_channels, in_per_group = w.shape[0], w.shape[1]
    if _known(out_channels) and out_channels % group:
        raise ValueError(f"the weight's {out_channels} output channels are not divisible by "
                         f"group={group}")
    if x is not None and _known(x.shape[1]) and _known(in_per_group) \
            and x.shape[1] != in_per_group * group:
        raise ValueError(f"the input has {x.shape[1]} channels, the weight expects "
                         f"{in_per_group} x group {group} = {in_per_group * group}")
    if b is not None and (b.rank != 1 or (_known(out_channels) and b.shape[0] != out_channels)):
        raise ValueError(f"the bias {b.type_str()} must be 1-D of the {out_channels} output "
                         "channels")
    kernel = kernel or list(w.shape[2:])
    if x is not None and all(map(_known, kernel)):
        _output_sizes_positive(x, params, kernel)


def check_pool(inputs, params) -> None:
    """MaxPool/AveragePool: kernel_shape given and >= 1, pads smaller than the kernel."""
    x = inputs[0]
    rank_at_least(x, 3, "input 0 (X)")
    n = x.rank - 2
    kernel = ints(params, "kernel_shape", n, minimum=1)
    if kernel is None:
        raise ValueError("attribute kernel_shape is required")
    _window(params, n, kernel)
    pads = params.get("pads")
    if pads is not None and any(p >= k for p, k in zip(list(pads[:n]) + list(pads[n:]),
                                                       kernel + kernel)):
        raise ValueError(f"attribute pads={list(pads)}: each pad must be smaller than the "
                         f"kernel {kernel}")
    flag(params, "ceil_mode")
    flag(params, "count_include_pad")
    flag(params, "storage_order")
    _output_sizes_positive(x, params, kernel)


def check_gemm(inputs, params) -> None:
    """Gemm: 2-D operands whose inner dims agree; C broadcasts to [M, N]."""
    a, b, c = (list(inputs) + [None, None, None])[:3]
    for name in ("transA", "transB"):  # any nonzero int32 transposes, as in onnxruntime
        value = params.get(name, 0)
        if not isinstance(value, int) or not -2**31 <= value < 2**31:
            raise ValueError(f"attribute {name}={value!r} is out of range (0 or 1)")
    for index, value in ((0, a), (1, b)):
        if value is not None and value.rank != 2:
            raise ValueError(f"input {index} {value.type_str()} must be 2-D")
    if a is None or b is None:
        return
    k_a = a.shape[0] if params.get("transA") else a.shape[1]
    k_b = b.shape[1] if params.get("transB") else b.shape[0]
    if _known(k_a) and _known(k_b) and k_a != k_b:
        raise ValueError(f"inner dimensions differ: A {a.type_str()} (transA="
                         f"{params.get('transA', 0)}) and B {b.type_str()} (transB="
                         f"{params.get('transB', 0)})")
    if c is not None and c.rank > 2:
        raise ValueError(f"input 2 (C) {c.type_str()} must have rank <= 2")


def check_batch_norm(inputs, params) -> None:
    """BatchNormalization: scale, bias, mean and var are 1-D of the input's channels."""
    x = inputs[0]
    rank_at_least(x, 2, "input 0 (X)")
    channels = x.shape[1] if x is not None else None
    names = ("scale", "B", "input_mean", "input_var")
    for index, name in enumerate(names, start=1):
        value = inputs[index] if index < len(inputs) else None
        if value is None:
            raise ValueError(f"input {index} ({name}) is missing")
        if value.rank != 1 or (_known(channels) and _known(value.shape[0])
                               and value.shape[0] != channels):
            raise ValueError(f"input {index} ({name}) {value.type_str()} must be 1-D of the "
                             f"input's {channels} channels")
