"""Import-time evaluation of registered ops: constant folding and shape/dtype inference.

Both run under ``jax.enable_x64(True)`` (a context manager, not a global switch) so that int64 and
float64 tensors keep their ONNX types while folding and while inferring output types.

Output shapes come from ``jax.eval_shape`` of the op's function: with every symbolic dim set to
a concrete size, twice (two different sets of sizes) when an operand has symbolic dims; a dim
that differs between the two traces is symbolic and named after the symbol whose sizes it
follows (``B``, ``B*k`` as ``Bxk``, or a fresh name).
"""
from __future__ import annotations

import itertools
from typing import Any

import jax
import numpy as np

from projc.ir import Dim, Value
from projc.ops import OpDef
from projc.ops.dtypes import np_dtype

BATCH = "B"


class SymbolSizes:
    """The concrete sizes each symbolic dim takes in the two shape traces."""

    def __init__(self):
        self.sizes: dict[str, tuple[int, int]] = {BATCH: (3, 5)}
        self._fresh = itertools.count()

    def declare(self, symbol: str) -> None:
        if symbol not in self.sizes:
            k = len(self.sizes) - 1
            self.sizes[symbol] = (7 + 4 * k, 9 + 6 * k)  # distinct pairs, distinct ratios

    def concrete(self, shape: tuple[Dim, ...], trial: int) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else self.sizes[d][trial] for d in shape)

    def name(self, first: int, second: int) -> str:
        """The symbol of a dim that measured ``first`` then ``second`` in the two traces."""
        for symbol, (a, b) in self.sizes.items():
            if (a, b) == (first, second):
                return symbol
        for symbol, (a, b) in list(self.sizes.items()):
            if first % a == 0 and second % b == 0 and first // a == second // b > 1:
                derived = f"{symbol}x{first // a}"
                self.sizes[derived] = (first, second)
                return derived
        derived = f"d{next(self._fresh)}"
        while derived in self.sizes:
            derived = f"d{next(self._fresh)}"
        self.sizes[derived] = (first, second)
        return derived


def call_kwargs(opdef: OpDef, params: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``opdef.fn``: registry defaults, then the op's params."""
    return {**opdef.attrs, **params}


def fold(opdef: OpDef, inputs: list[Value | None], params: dict) -> list[np.ndarray]:
    """Evaluate an op whose inputs are all constants; one numpy array per output."""
    args = [None if v is None else v.data for v in inputs]
    with jax.enable_x64(True):
        result = opdef.fn(*args, **call_kwargs(opdef, params))
        results = result if isinstance(result, tuple) else (result,)
        return [np.asarray(r) for r in results]


def trace(opdef: OpDef, inputs: list[Value | None], params: dict,
          sizes: SymbolSizes) -> list[tuple[np.dtype, tuple[Dim, ...]]]:
    """(dtype, IR shape) of each output of the op, from abstract evaluation."""
    runtime = [v is not None and v.role != "const" for v in inputs]
    symbolic = any(run and v is not None and not v.is_static for run, v in zip(runtime, inputs))
    trials = [_trace_once(opdef, inputs, params, sizes, runtime, t)
              for t in ((0, 1) if symbolic else (0,))]
    outputs = []
    for per_trial in zip(*trials):
        dtype, first = per_trial[0]
        if len(per_trial) == 1:
            outputs.append((dtype, first))
            continue
        second = per_trial[1][1]
        if len(first) != len(second):
            raise ValueError(f"output rank depends on the batch size ({first} vs {second})")
        outputs.append((dtype, tuple(a if a == b else sizes.name(a, b)
                                     for a, b in zip(first, second))))
    return outputs


def _traceable_dtype(value: Value) -> np.dtype:
    # JAX holds no strings: a string tensor traces as int32 indices of the same shape (the
    # output dtype then comes from ONNX's declared type).
    return np.dtype(np.int32) if value.dtype == "str" else np_dtype(value.dtype)


def _placeholder(value: Value) -> np.ndarray | None:
    if value.dtype == "str":
        assert value.data is not None, f"{value!r}: a string constant without its data"
        return np.zeros(value.data.shape, np.int32)
    return value.data


def _trace_once(opdef, inputs, params, sizes, runtime, trial):
    def call(*dynamic):
        supply = iter(dynamic)
        args = [next(supply) if run else (None if v is None else _placeholder(v))
                for v, run in zip(inputs, runtime)]
        return opdef.fn(*args, **call_kwargs(opdef, params))

    structs = [jax.ShapeDtypeStruct(sizes.concrete(v.shape, trial), _traceable_dtype(v))
               for v, run in zip(inputs, runtime) if run]
    with jax.enable_x64(True):
        out = jax.eval_shape(call, *structs)
    outs = out if isinstance(out, tuple) else (out,)
    return [(np.dtype(o.dtype), tuple(int(d) for d in o.shape)) for o in outs]
