"""`projc compare`: projc's JAX forward against onnxruntime on the same inputs.

An element passes when ``|projc - ort| <= atol + rtol * |ort|`` (numpy.isclose, NaN equal to
NaN); integer and boolean outputs must match exactly. A shape or dtype mismatch fails the output.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from projc.backends.jax.forward import graph_param_values, run_forward
from projc.errors import DataError, ModelLoadError, ProjcError
from projc.frontend.importer import load_model
from projc.ir import Graph, Value
from projc.ops.dtypes import np_dtype

DEFAULT_BATCH = 3
OTHER_SYMBOL_SIZE = 3  # size given to symbolic dims other than the batch
DEFAULT_MAX_INPUT_BYTES = 1 << 30  # random inputs above 1 GiB in all are refused


@dataclass
class OutputComparison:
    """How one output of projc compares with onnxruntime's."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    ort_dtype: str
    ort_shape: tuple[int, ...]
    max_abs: float = 0.0
    max_abs_index: tuple[int, ...] | None = None
    max_rel: float = 0.0
    max_rel_index: tuple[int, ...] | None = None
    n_failed: int = 0
    passed: bool = True
    note: str = ""

    def row(self) -> list[str]:
        def idx(i):
            return "-" if i is None else "(" + ",".join(str(k) for k in i) + ")"
        return [self.name, self.dtype, "[" + ",".join(map(str, self.shape)) + "]",
                f"{self.max_abs:.3g}", idx(self.max_abs_index), f"{self.max_rel:.3g}",
                idx(self.max_rel_index),
                "PASSED" if self.passed else f"FAILED {self.note}".strip()]


@dataclass
class CompareReport:
    """The result of ``compare_model``: ``ok``, per-output rows, the inputs used, both outputs."""

    model: str
    atol: float
    rtol: float
    batch: int
    seed: int
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # projc's
    ort_outputs: dict[str, np.ndarray]
    results: list[OutputComparison] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    def format(self) -> str:
        header = ["output", "dtype", "shape", "max|diff|", "at", "max rel", "at", "result"]
        rows = [header] + [r.row() for r in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [f"compare {self.model} against onnxruntime (batch {self.batch}, seed "
                 f"{self.seed}, atol {self.atol:g}, rtol {self.rtol:g})"]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                  for row in rows]
        failed = [r.name for r in self.results if not r.passed]
        lines.append("all outputs match" if not failed else
                     f"{len(failed)} of {len(self.results)} outputs differ: {', '.join(failed)}")
        return "\n".join(lines)


def compare_model(path, *, atol: float = 1e-5, rtol: float = 1e-5, seed: int = 1,
                  batch: int | None = None, inputs: dict[str, np.ndarray] | None = None,
                  graph: Graph | None = None,
                  max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> CompareReport:
    """Run projc's forward and onnxruntime on the model at ``path`` and compare every output.

    Inputs are ``inputs`` (keyed by ONNX input name) or random and reproducible from ``seed``:
    floats standard normal, integers in [0, 5), the batch dim ``batch`` (default 3). ``graph``
    evaluates an already imported (e.g. modified) graph of that model instead of importing it.
    Random inputs larger than ``max_input_bytes`` in all are refused before any allocation.
    """
    check_options(atol=atol, rtol=rtol, seed=seed, batch=batch)
    path = os.fspath(path)
    graph = load_model(path) if graph is None else graph
    batch = DEFAULT_BATCH if batch is None else int(batch)
    if inputs is not None:
        feed = _check_inputs(graph, inputs)
    else:
        _check_input_size(graph, batch, max_input_bytes)
        feed = random_inputs(graph, batch, seed)
    ours = _projc_forward(path, graph, feed)
    theirs = run_onnxruntime(path, feed, [v.hint for v in graph.outputs])
    report = CompareReport(path, atol, rtol, batch, seed, feed,
                           {v.hint: o for v, o in zip(graph.outputs, ours)},
                           dict(zip([v.hint for v in graph.outputs], theirs)))
    report.results = [compare_arrays(v.hint, a, b, atol=atol, rtol=rtol)
                      for v, a, b in zip(graph.outputs, ours, theirs)]
    return report


def check_options(*, atol: float, rtol: float, seed: int, batch: int | None) -> None:
    """Tolerances finite and >= 0, seed >= 0, batch >= 1 (ProjcError naming the option)."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value >= 0):
            raise ProjcError(f"--{name} {value}: give a finite tolerance >= 0 (e.g. 1e-5)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ProjcError(f"--seed {seed}: give an integer >= 0")
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise ProjcError(f"--batch {batch}: give the batch size as an integer >= 1")


def _input_shape(value: Value, batch: int) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else (batch if d == "B" else OTHER_SYMBOL_SIZE)
                 for d in value.shape)


def _check_input_size(graph: Graph, batch: int, limit: int) -> None:
    """Refuse random inputs that would not fit in memory, before allocating them."""
    sizes = {v.hint: math.prod(_input_shape(v, batch)) * np_dtype(v.dtype).itemsize
             for v in graph.inputs if v.dtype != "str"}
    total = sum(sizes.values())
    if total > limit:
        name = max(sizes, key=sizes.get)
        shape = _input_shape(next(v for v in graph.inputs if v.hint == name), batch)
        raise ProjcError(
            f"the random inputs would take {_bytes(total)} (input \"{name}\" of shape "
            f"{list(shape)} alone {_bytes(sizes[name])}), above the {_bytes(limit)} limit; use a "
            "smaller --batch, raise the limit with --max-input-mb, or pass --load-inputs")


def _bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.4g} {unit}" if unit != "B" else f"{count} B"
        count /= 1024
    return f"{count} B"


def _projc_forward(path: str, graph: Graph, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """projc's outputs; a failure inside JAX/XLA (out of memory, a shape XLA refuses) is
    reported as the model's error, not as a mismatch."""
    try:
        return run_forward(graph, graph_param_values(graph), feed)
    except ProjcError:
        raise
    except Exception as err:  # XlaRuntimeError, TypeError from jax, MemoryError, ...
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelLoadError(f"{path}: projc's forward cannot evaluate the model "
                             f"({type(err).__name__}: {text[:300]})") from err


def random_inputs(graph: Graph, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Reproducible random inputs for every data input of ``graph``."""
    rng = np.random.default_rng(seed)
    return {v.hint: _random_array(rng, v, batch) for v in graph.inputs}


def _random_array(rng: np.random.Generator, value: Value, batch: int) -> np.ndarray:
    shape = _input_shape(value, batch)
    dtype = np_dtype(value.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        return rng.integers(0, 5, shape).astype(dtype)
    raise DataError(f"cannot make random values for input \"{value.hint}\" of type {value.dtype}")


def _check_inputs(graph: Graph, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    missing = [v.hint for v in graph.inputs if v.hint not in inputs]
    if missing:
        raise DataError(f"inputs missing: {', '.join(missing)} (expected "
                        f"{', '.join(v.hint + ': ' + v.type_str() for v in graph.inputs)})")
    sizes: dict[str, int] = {}  # symbolic dim -> the size the given arrays give it
    feed = {}
    for v in graph.inputs:
        array = np.asarray(inputs[v.hint])
        want = np_dtype(v.dtype)
        if array.dtype.kind not in "biuf" or (want.kind in "biu" and array.dtype.kind == "f"):
            raise DataError(f"input \"{v.hint}\" holds {array.dtype} values; the model expects "
                            f"{v.type_str()}")
        if array.ndim != len(v.shape) or any(
                sizes.setdefault(d, n) != n if isinstance(d, str) else d != n
                for d, n in zip(v.shape, array.shape)):
            raise DataError(f"input \"{v.hint}\" has shape {list(array.shape)}; the model "
                            f"expects {v.type_str()} (symbolic dims the same size in every input)")
        feed[v.hint] = array.astype(want, copy=False)
    return feed


def run_onnxruntime(path: str, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """onnxruntime's outputs ``names``; a ZipMap's list of {label: prob} maps becomes [B, C]."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # onnxruntime's own error log would add lines to the one-line error reported below
    options.log_severity_level = 4
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        outputs = session.run(names, feed)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidArgument/... types
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{path}: onnxruntime cannot run the model ({message})") from err
    return [_zipmap_to_array(out) if isinstance(out, list) else np.asarray(out)
            for out in outputs]


def _zipmap_to_array(rows: list) -> np.ndarray:
    return np.asarray([[row[key] for key in row] for row in rows], dtype=np.float32)


def compare_arrays(name: str, ours: np.ndarray, theirs: np.ndarray, *, atol: float,
                   rtol: float) -> OutputComparison:
    """Compare one output; integer and boolean outputs compare exactly."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    result = OutputComparison(name, str(ours.dtype), ours.shape, str(theirs.dtype), theirs.shape)
    if ours.shape != theirs.shape:
        return _failed(result, f"shape {list(ours.shape)} vs onnxruntime {list(theirs.shape)}")
    if ours.dtype != theirs.dtype:
        return _failed(result, f"dtype {ours.dtype} vs onnxruntime {theirs.dtype}")
    if ours.size == 0:
        return result
    if ours.dtype.kind not in "fc":
        atol = rtol = 0.0
    a, b = ours.astype(np.float64), theirs.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, handled below
        diff = np.abs(a - b)
    diff[np.isnan(a) & np.isnan(b)] = 0.0
    diff[np.isnan(diff)] = np.inf  # NaN on one side only, or inf - inf
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(b))
    result.max_abs, result.max_abs_index = _max_at(diff)
    result.max_rel, result.max_rel_index = _max_at(rel)
    failing = ~np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    result.n_failed = int(failing.sum())
    if result.n_failed:
        first = tuple(int(i) for i in np.argwhere(failing)[0])
        return _failed(result, f"{result.n_failed} element(s) beyond atol+rtol*|ort|, first at "
                               f"{first}")
    return result


def _max_at(values: np.ndarray) -> tuple[float, tuple[int, ...]]:
    flat = int(np.argmax(values))
    index = tuple(int(i) for i in np.unravel_index(flat, values.shape))
    return float(values.reshape(-1)[flat]), index


def _failed(result: OutputComparison, note: str) -> OutputComparison:
    result.passed = False
    result.note = note
    return result
