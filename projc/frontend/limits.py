"""Extents projc refuses at import: tensors no device could hold, whose sizes overflow XLA's shape
arithmetic (it aborts the process on them: "overflow in static extent product").

Every static dim must fit in a signed 32-bit integer and every tensor's element count (symbolic dims
counted as 1) in ``MAX_ELEMENTS``; a graph input or recurrent op with a 0-sized batch or sequence is
refused as well (onnxruntime aborts on a GRU of batch 0). ``check_shape`` raises one
``UnsupportedModelError`` naming the file, the node and the tensor.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from projc.errors import UnsupportedModelError

MAX_DIM = 2**31 - 1          # XLA's dims are int64, but every product must stay well inside it
MAX_ELEMENTS = 2**40         # 4 TiB of float32: no device holds one such tensor


def check_shape(shape: Sequence, label: str, where: str, tensor: str) -> None:
    """Refuse a static shape whose dims or element count exceed the limits (see the module)."""
    dims = [d for d in shape if isinstance(d, int)]
    bad = [d for d in dims if d < 0 or d > MAX_DIM]
    if bad:
        raise UnsupportedModelError(
            f"{label}: {where}: {tensor} would have shape {_fmt(shape)}, a dim of {bad[0]} is beyond "
            f"{MAX_DIM} (check the node's attributes, e.g. pads, strides, or the input shape)")
    count = math.prod(dims) if dims else 1
    if count > MAX_ELEMENTS:
        raise UnsupportedModelError(
            f"{label}: {where}: {tensor} would have shape {_fmt(shape)}, {count:.3g} elements, beyond the "
            f"{MAX_ELEMENTS:.3g} projc accepts (check the node's attributes or the input shape)")


RECURRENT = ("RNN", "GRU", "LSTM")


def check_recurrent_input(op_type: str, shape: Sequence, layout: int, label: str, node: str) -> None:
    """A recurrent op's X with a static 0 in its sequence or batch dim (onnxruntime aborts on it)."""
    if op_type not in RECURRENT or len(shape) != 3:
        return
    seq, batch = (shape[1], shape[0]) if layout == 1 else (shape[0], shape[1])
    for name, d in (("sequence", seq), ("batch", batch)):
        if d == 0:
            raise UnsupportedModelError(f"{label}: node \"{node}\" ({op_type}): input X has shape "
                                        f"{_fmt(shape)}, an empty {name}; give it at least one step and "
                                        f"one sample")


def _fmt(shape: Sequence) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# XLA's compile time and memory grow faster than linearly in a graph's op count: a chain of Adds with
# a constant each took 3.9 s at 1,000 ops, 10.6 s at 2,000, 69.7 s (2.1 GB) at 4,000, and died of
# std::bad_alloc at 20,000, where op-by-op evaluation takes 2.9 s (docs/reliability.md). Above
# EAGER_OPS ops a forward (``projc compare``) runs op by op instead of compiling the whole graph.
EAGER_OPS = 1000
# A training update compiles every projection of every constraint op, unrolled over the solver's
# sets: lstm_digits's 244 ops took 123 s. Above MAX_TRAIN_OPS constraint ops projc refuses to train.
MAX_TRAIN_OPS = 2000


def _env_int(name: str, default: int) -> int:
    import os
    text = os.environ.get(name)
    try:
        return int(text) if text else default
    except ValueError:
        return default


def eager_ops() -> int:
    """EAGER_OPS, or ``PROJC_EAGER_OPS`` when set."""
    return _env_int("PROJC_EAGER_OPS", EAGER_OPS)


def max_train_ops() -> int:
    """MAX_TRAIN_OPS, or ``PROJC_MAX_TRAIN_OPS`` when set."""
    return _env_int("PROJC_MAX_TRAIN_OPS", MAX_TRAIN_OPS)
