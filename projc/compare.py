"""`projc compare`: projc's JAX forward against onnxruntime on the same inputs.

An element passes when ``|projc - ort| <= atol + rtol * |ort|`` (numpy.isclose, NaN equal to
NaN); integer and boolean outputs must match exactly. A shape or dtype mismatch fails the output.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from projc.backends.jax.forward import graph_param_values, run_forward
from projc.errors import DataError, ModelLoadError
from projc.ir import Graph, Value
from projc.onnx_import import load_model
from projc.ops.dtypes import np_dtype

DEFAULT_BATCH = 3
OTHER_SYMBOL_SIZE = 3  # size given to symbolic dims other than the batch


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
                  graph: Graph | None = None) -> CompareReport:
    """Run projc's forward and onnxruntime on the model at ``path`` and compare every output.

    Inputs are ``inputs`` (keyed by ONNX input name) or random and reproducible from ``seed``:
    floats standard normal, integers in [0, 5), the batch dim ``batch`` (default 3). ``graph``
    evaluates an already imported (e.g. modified) graph of that model instead of importing it.
    """
    path = os.fspath(path)
    graph = load_model(path) if graph is None else graph
    batch = DEFAULT_BATCH if batch is None else int(batch)
    feed = _check_inputs(graph, inputs) if inputs is not None else random_inputs(graph, batch, seed)
    ours = run_forward(graph, graph_param_values(graph), feed)
    theirs = run_onnxruntime(path, feed, [v.hint for v in graph.outputs])
    report = CompareReport(path, atol, rtol, batch, seed, feed,
                           {v.hint: o for v, o in zip(graph.outputs, ours)},
                           dict(zip([v.hint for v in graph.outputs], theirs)))
    report.results = [compare_arrays(v.hint, a, b, atol=atol, rtol=rtol)
                      for v, a, b in zip(graph.outputs, ours, theirs)]
    return report


def random_inputs(graph: Graph, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Reproducible random inputs for every data input of ``graph``."""
    rng = np.random.default_rng(seed)
    return {v.hint: _random_array(rng, v, batch) for v in graph.inputs}


def _random_array(rng: np.random.Generator, value: Value, batch: int) -> np.ndarray:
    shape = tuple(d if isinstance(d, int) else (batch if d == "B" else OTHER_SYMBOL_SIZE)
                  for d in value.shape)
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
    return {v.hint: np.asarray(inputs[v.hint]).astype(np_dtype(v.dtype), copy=False)
            for v in graph.inputs}


def run_onnxruntime(path: str, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """onnxruntime's outputs ``names``; a ZipMap's list of {label: prob} maps becomes [B, C]."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
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
