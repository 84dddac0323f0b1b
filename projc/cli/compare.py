"""`projc compare`: projc's JAX forward against onnxruntime, or against stored expected outputs.

An element passes when ``|projc - ref| <= atol + rtol * |ref|`` (numpy.isclose, NaN equal to
NaN); integer and boolean outputs must match exactly. A shape or dtype mismatch fails the output.
Without explicit tolerances, float32/float64 outputs use atol = rtol = 1e-5 and float16 outputs
1e-3 (float16 carries ~3 significant digits).

The reference is onnxruntime on the same inputs, or expected outputs (goldens: ``expected=``,
read by ``projc.cli.goldens``). When onnxruntime has dropped the kernels of an old opset (opset-6
AveragePool, BatchNormalization, Gemm, ...), it runs the model upgraded to opset 13 with
onnx.version_converter, as projc's importer does, and the report says so in one note.

Random inputs give the batch size (``batch``, default 3) to the model's batch dim: the symbolic
dim whose ONNX name says batch ("batch", "batch_size", "N", ...) wherever it is (a sequence-first
export has [T, B, ...]), else the symbolic axis 0 ("B" in projc's IR). Other symbolic dims get 3,
or the size ``dims`` gives them by ONNX name. A model with static shapes runs at its own sizes,
with a note when ``batch`` asked for another.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from dataclasses import dataclass, field

import numpy as np

from projc.backends.jax.forward import graph_param_values, run_forward
from projc.errors import DataError, ModelLoadError, ProjcError
from projc.frontend.importer import (
    compile_time_inputs,
    from_onnx,
    list_initializers_as_inputs,
    model_opsets,
    read_model,
    upgrade_opset,
)
from projc.ir import Graph, Value
from projc.ops import MIN_OPSET
from projc.ops.dtypes import np_dtype

DEFAULT_BATCH = 3
OTHER_SYMBOL_SIZE = 3  # size given to symbolic dims other than the batch
DEFAULT_MAX_INPUT_BYTES = 1 << 30  # random inputs above 1 GiB in all are refused
DEFAULT_TOLERANCE = 1e-5  # atol and rtol of float32/float64 outputs
FLOAT16_TOLERANCE = 1e-3  # atol and rtol of float16 outputs
BATCH_NAMES = ("n", "b", "bs", "bsz", "nbatch")  # ONNX dim names read as the batch (also *batch*)


def default_tolerance(dtype, atol: float | None = None, rtol: float | None = None
                      ) -> tuple[float, float]:
    """(atol, rtol) for an output of ``dtype``: the given values, else 1e-5 (1e-3 for float16)."""
    default = FLOAT16_TOLERANCE if np.dtype(dtype) == np.float16 else DEFAULT_TOLERANCE
    return (default if atol is None else float(atol), default if rtol is None else float(rtol))


@dataclass
class OutputComparison:
    """How one output of projc compares with the reference's."""

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
    atol: float = DEFAULT_TOLERANCE
    rtol: float = DEFAULT_TOLERANCE

    def row(self) -> list[str]:
        def idx(i):
            return "-" if i is None else "(" + ",".join(str(k) for k in i) + ")"
        return [self.name, self.dtype, "[" + ",".join(map(str, self.shape)) + "]",
                f"{self.max_abs:.3g}", idx(self.max_abs_index), f"{self.max_rel:.3g}",
                idx(self.max_rel_index),
                "PASSED" if self.passed else f"FAILED {self.note}".strip()]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "reference_dtype": self.ort_dtype, "reference_shape": list(self.ort_shape),
                "max_abs": _json_float(self.max_abs), "max_abs_index": _json_index(self.max_abs_index),
                "max_rel": _json_float(self.max_rel), "max_rel_index": _json_index(self.max_rel_index),
                "n_failed": self.n_failed, "passed": self.passed, "note": self.note,
                "atol": self.atol, "rtol": self.rtol}


def _json_float(value: float):
    """JSON has no inf or NaN: those become the strings "inf" and "nan"."""
    return float(value) if math.isfinite(value) else str(value)


def _json_index(index):
    return None if index is None else list(index)


@dataclass
class CompareReport:
    """The result of ``compare_model``: ``ok``, per-output rows, the inputs used, both outputs.

    ``ort_outputs`` holds the reference's outputs (onnxruntime's, or the expected ones).
    """

    model: str
    atol: float | None
    rtol: float | None
    batch: int | None
    seed: int
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]  # projc's
    ort_outputs: dict[str, np.ndarray]
    results: list[OutputComparison] = field(default_factory=list)
    reference: str = "onnxruntime"  # short: "onnxruntime", "onnxruntime (opset 13)", "expected"
    notes: list[str] = field(default_factory=list)
    reference_source: str | None = None  # where the expected outputs came from
    inputs_source: str | None = None  # None: random inputs; else where they came from
    batch_place: str = ""  # where the batch size went, when not axis 0 of the first input

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[str]:
        return [r.name for r in self.results if not r.passed]

    def header(self) -> str:
        if self.inputs_source is not None and self.inputs_source == self.reference_source:
            given = "inputs stored with them"
        elif self.inputs_source is not None:
            given = f"inputs from {self.inputs_source}"
        elif self.batch is None:
            given = f"static shapes, seed {self.seed}"
        else:
            given = f"batch {self.batch}{self.batch_place}, seed {self.seed}"
        atol, rtol = default_tolerance(np.float32, self.atol, self.rtol)
        tolerances = f"atol {atol:g}, rtol {rtol:g}"
        if (self.atol is None or self.rtol is None) and any(r.dtype == "float16" for r in self.results):
            half = default_tolerance(np.float16, self.atol, self.rtol)
            tolerances += f"; float16: atol {half[0]:g}, rtol {half[1]:g}"
        return f"compare {self.model} against {self.reference_text} ({given}, {tolerances})"

    @property
    def reference_text(self) -> str:
        if self.reference == "expected":
            return f"expected outputs {self.reference_source}" if self.reference_source else \
                "expected outputs"
        if self.reference.startswith("onnxruntime ("):
            return f"onnxruntime on the model upgraded to {self.reference[13:-1]}"
        return self.reference

    def format(self) -> str:
        header = ["output", "dtype", "shape", "max|diff|", "at", "max rel", "at", "result"]
        rows = [header] + [r.row() for r in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [self.header()] + [f"note: {note}" for note in self.notes]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                  for row in rows]
        failed = self.failed
        lines.append("all outputs match" if not failed else
                     f"{len(failed)} of {len(self.results)} outputs differ: {', '.join(failed)}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"reference": self.reference_text, "inputs_source": self.inputs_source,
                "batch": self.batch, "seed": self.seed, "notes": list(self.notes),
                "inputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape)}
                           for k, v in self.inputs.items()},
                "ok": self.ok, "outputs": [r.to_json() for r in self.results]}


def compare_model(path, *, atol: float | None = None, rtol: float | None = None, seed: int = 1,
                  batch: int | None = None, dims: dict[str, int] | None = None,
                  inputs: dict[str, np.ndarray] | None = None, graph: Graph | None = None,
                  expected: dict[str, np.ndarray] | None = None, outputs: list[str] | None = None,
                  max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES, inputs_source: str | None = None,
                  expected_source: str | None = None, runtime: OnnxRuntime | None = None,
                  source=None) -> CompareReport:
    """Run projc's forward on the model at ``path`` and compare every output (or ``outputs``)
    with onnxruntime's, or with ``expected`` (output name -> array) when given.

    Inputs are ``inputs`` (keyed by ONNX input name; graph inputs that compile-time operands
    such as a Reshape shape are computed from are bound to their values) or random and
    reproducible from ``seed``: floats standard normal, integers in [0, 5), the batch dim
    ``batch`` (default 3), other symbolic dims 3 or ``dims[ONNX name]``. ``graph`` evaluates an
    already imported (e.g. modified) graph of that model instead of importing it. Random inputs
    larger than ``max_input_bytes`` in all are refused before any allocation. ``inputs_source``
    and ``expected_source`` only name the data in the report; ``source`` (``read_model(path)``)
    and ``runtime`` (an ``OnnxRuntime`` of it) reuse what an earlier call read and made.
    """
    check_options(atol=atol, rtol=rtol, seed=seed, batch=batch)
    path = os.fspath(path)
    source = read_model(path) if source is None else source
    label = source.path or source.label
    bound: dict[str, np.ndarray] = {}
    if inputs is not None:
        bound = {name: np.asarray(inputs[name]) for name in compile_time_inputs(source.proto)
                 if name in inputs}
    if graph is None:
        graph = from_onnx(source.proto, path=label, bind=bound)
    selected = _select_outputs(graph, outputs, expected, expected_source)
    notes: list[str] = []
    place = ""
    if inputs is not None:
        feed = _check_inputs(graph, inputs)
        used_batch = _given_batch(graph, feed)
        if inputs_source is None:
            inputs_source = "the given arrays"
        if batch is not None and batch != used_batch:
            notes.append(f"--batch {batch} does not apply: the inputs from {inputs_source} give "
                         f"the sizes (batch {used_batch if used_batch is not None else 'static'})")
    else:
        sizes, batch_symbol, notes = symbol_sizes(graph, batch, dims, label)
        _check_input_size(graph, sizes, max_input_bytes)
        feed = random_inputs(graph, sizes, seed)
        used_batch = sizes.get(batch_symbol) if batch_symbol else None
        place = _batch_place(graph, batch_symbol)
    ours = dict(zip([v.hint for v in graph.outputs], _projc_forward(label, graph, feed)))
    names = [v.hint for v in selected]
    if expected is not None:
        theirs = [np.asarray(expected[name]) for name in names]
        reference = "expected"
        missing = [v.hint for v in graph.outputs if v.hint not in expected and
                   (outputs is None or v.hint in outputs)]
        if missing:
            notes.append(f"not compared (no expected value): {', '.join(missing)}")
    else:
        runtime = runtime if runtime is not None else OnnxRuntime(source)
        theirs = runtime.run({**feed, **bound}, names)
        notes += runtime.notes
        reference = runtime.reference
    report = CompareReport(label, atol, rtol, used_batch, seed, {**feed, **bound},
                           {name: ours[name] for name in names}, dict(zip(names, theirs)),
                           reference=reference, notes=notes, inputs_source=inputs_source,
                           batch_place=place, reference_source=expected_source)
    for name, theirs_one in zip(names, theirs):
        ours_one = np.asarray(ours[name])
        out_atol, out_rtol = default_tolerance(ours_one.dtype if ours_one.dtype.kind == "f"
                                               else np.float32, atol, rtol)
        report.results.append(compare_arrays(name, ours_one, theirs_one, atol=out_atol,
                                             rtol=out_rtol))
    return report


def _select_outputs(graph: Graph, outputs, expected, expected_source) -> list[Value]:
    names = [v.hint for v in graph.outputs]
    if outputs is not None:
        unknown = [name for name in outputs if name not in names]
        if unknown or not outputs:
            raise DataError(f"{graph.meta.get('path') or graph.name}: no output named "
                            f"{', '.join(unknown) or '(none given)'}; the model's outputs: "
                            f"{', '.join(names)}")
    selected = [v for v in graph.outputs if outputs is None or v.hint in outputs]
    if expected is not None:
        where = expected_source or "the expected outputs"
        unknown = [name for name in expected if name not in names]
        if unknown:
            raise DataError(f"{where}: holds {', '.join(unknown)}, which the model does not "
                            f"output (its outputs: {', '.join(names)})")
        selected = [v for v in selected if v.hint in expected]
        if not selected:
            raise DataError(f"{where}: holds no expected value for the outputs compared "
                            f"({', '.join(outputs or names)})")
    return selected


def check_options(*, atol: float | None, rtol: float | None, seed: int, batch: int | None) -> None:
    """Tolerances finite and >= 0 (None: per dtype), seed >= 0, batch >= 1 (ProjcError naming
    the option)."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is not None and not (isinstance(value, (int, float)) and np.isfinite(value)
                                      and value >= 0):
            raise ProjcError(f"--{name} {value}: give a finite tolerance >= 0 (e.g. 1e-5)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ProjcError(f"--seed {seed}: give an integer >= 0")
    if batch is not None and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise ProjcError(f"--batch {batch}: give the batch size as an integer >= 1")


# -- symbolic sizes -----------------------------------------------------------------------------

def input_symbols(graph: Graph) -> list[str]:
    """The symbolic dims of the graph's inputs, in order of first appearance."""
    symbols: list[str] = []
    for v in graph.inputs:
        symbols += [d for d in v.shape if isinstance(d, str) and d not in symbols]
    return symbols


def batch_symbol(graph: Graph) -> str | None:
    """The symbol of the model's batch dim: one whose ONNX name says batch ("batch",
    "batch_size", "N", ...), else the symbolic axis 0 ("B"), else None."""
    symbols = input_symbols(graph)
    names = graph.meta.get("dim_names", {})
    for name, symbol in names.items():
        if symbol in symbols and is_batch_name(name):
            return symbol
    return "B" if "B" in symbols else None


def is_batch_name(name: str) -> bool:
    lower = name.lower()
    return "batch" in lower or lower in BATCH_NAMES


def symbol_sizes(graph: Graph, batch: int | None, dims: dict[str, int] | None = None,
                 label: str | None = None) -> tuple[dict[str, int], str | None, list[str]]:
    """(symbol -> size, the batch symbol, notes) for random inputs: ``batch`` (default 3) for
    the batch symbol, ``dims`` by ONNX dim name (or projc symbol), 3 for the others. A note says
    where an explicit ``batch`` could not go (static shapes, no symbolic batch dim) or went by
    default only (axis 0 of a model with other symbolic dims and no dim named as a batch)."""
    label = label or graph.meta.get("path") or graph.name
    symbols = input_symbols(graph)
    names = graph.meta.get("dim_names", {})
    chosen = batch_symbol(graph)
    sizes = {s: OTHER_SYMBOL_SIZE for s in symbols}
    if chosen is not None:
        sizes[chosen] = DEFAULT_BATCH if batch is None else int(batch)
    for name, size in (dims or {}).items():
        symbol = names.get(name, name if name in symbols else None)
        if symbol is None or symbol not in symbols:
            known = [n for n, s in names.items() if s in symbols]
            known += [s for s in symbols if s not in names.values()]
            raise ProjcError(f"--dim {name}={size}: {label} has no symbolic dim {name!r} (its "
                             f"symbolic dims: {', '.join(known) or 'none, every shape is static'})")
        sizes[symbol] = int(size)
    return sizes, chosen, _batch_notes(graph, batch, chosen, symbols, names)


def _batch_notes(graph: Graph, batch: int | None, chosen: str | None, symbols: list[str],
                 names: dict[str, str]) -> list[str]:
    if batch is None:
        return []
    if not symbols:
        first = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else None
        if first == batch:
            return []
        shapes = "; ".join(f"{v.hint}: {list(v.shape)}" for v in graph.inputs)
        return [f"every input has a static shape ({shapes}), so --batch {batch} does not apply: "
                "compared at the model's own sizes"]
    if chosen is None:
        return [f"no symbolic batch dim found (symbolic dims: {', '.join(symbols)}), so --batch "
                f"{batch} does not apply; set their sizes with --dim NAME=N"]
    onnx_name = next((n for n, s in names.items() if s == chosen), None)
    if len(symbols) > 1 and not (onnx_name and is_batch_name(onnx_name)):
        shown = f" (ONNX dim \"{onnx_name}\")" if onnx_name else ""
        return [f"no input dim is named as a batch (batch, N, ...): --batch {batch} went to the "
                f"symbolic axis 0{shown}; the other symbolic dims are 3 unless --dim NAME=N"]
    return []


def _batch_place(graph: Graph, symbol: str | None) -> str:
    """' on axis 1 of "x" (dim "batch")' when the batch dim is not axis 0 of the first input."""
    if symbol is None:
        return ""
    for v in graph.inputs:
        if symbol in v.shape:
            axis = v.shape.index(symbol)
            if v is graph.inputs[0] and axis == 0:
                return ""
            return f" on axis {axis} of \"{v.hint}\""
    return ""


def _given_batch(graph: Graph, feed: dict[str, np.ndarray]) -> int | None:
    symbol = batch_symbol(graph)
    for v in graph.inputs:
        if symbol is not None and symbol in v.shape:
            return int(feed[v.hint].shape[v.shape.index(symbol)])
    return None


def _input_shape(value: Value, sizes) -> tuple[int, ...]:
    if not isinstance(sizes, dict):  # a batch size: the old calling convention
        sizes = {"B": int(sizes)}
    return tuple(d if isinstance(d, int) else sizes.get(d, OTHER_SYMBOL_SIZE) for d in value.shape)


def _check_input_size(graph: Graph, sizes, limit: int) -> None:
    """Refuse random inputs that would not fit in memory, before allocating them."""
    shapes = {v.hint: _input_shape(v, sizes) for v in graph.inputs if v.dtype != "str"}
    bytes_of = {v.hint: math.prod(shapes[v.hint]) * np_dtype(v.dtype).itemsize
                for v in graph.inputs if v.dtype != "str"}
    total = sum(bytes_of.values())
    if total > limit:
        name = max(bytes_of, key=lambda k: bytes_of[k])
        raise ProjcError(
            f"the random inputs would take {_bytes(total)} (input \"{name}\" of shape "
            f"{list(shapes[name])} alone {_bytes(bytes_of[name])}), above the {_bytes(limit)} "
            "limit; use a smaller --batch, raise the limit with --max-input-mb, or pass "
            "--load-inputs")


def _bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.4g} {unit}" if unit != "B" else f"{count} B"
        count /= 1024
    return f"{count} B"


def _projc_forward(path: str, graph: Graph, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """projc's outputs; a failure inside JAX/XLA (out of memory, a shape XLA refuses) is
    reported as the model's error, not as a mismatch."""
    from projc.frontend.limits import eager_ops
    try:  # a very large graph runs op by op: XLA would compile it for minutes (frontend/limits.py)
        return run_forward(graph, graph_param_values(graph), feed, jit=len(graph.ops) <= eager_ops())
    except ProjcError:
        raise
    except Exception as err:  # XlaRuntimeError, TypeError from jax, MemoryError, ...
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ModelLoadError(f"{path}: projc's forward cannot evaluate the model "
                             f"({type(err).__name__}: {text[:300]})") from err


def random_inputs(graph: Graph, batch, seed: int) -> dict[str, np.ndarray]:
    """Reproducible random inputs for every data input of ``graph``; ``batch`` is the batch size
    or a symbol -> size map (``symbol_sizes``)."""
    sizes = batch if isinstance(batch, dict) else symbol_sizes(graph, int(batch))[0]
    rng = np.random.default_rng(seed)
    return {v.hint: _random_array(rng, v, sizes) for v in graph.inputs}


def _random_array(rng: np.random.Generator, value: Value, sizes: dict) -> np.ndarray:
    shape = _input_shape(value, sizes)
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


# -- onnxruntime --------------------------------------------------------------------------------

class OnnxRuntime:
    """An onnxruntime session of a model read by ``read_model``, made on first use.

    The session loads the file by its path (onnxruntime then reads external data beside it).
    When that fails, an old-opset model is given to onnxruntime upgraded to opset 13 (its
    kernels of old opsets are gone); any other model is given with its external data loaded by
    projc (a symbolic link, data onnxruntime refuses to read). Either fallback adds one line to
    ``notes``; if every attempt fails, the error is onnxruntime's first.
    """

    def __init__(self, source):
        self.source = source
        self.label = source.path or source.label
        self.reference = "onnxruntime"
        self.notes: list[str] = []
        self._session = None

    def session(self):
        if self._session is None:
            self._session = self._create()
        return self._session

    def _create(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # onnxruntime's own error log would add lines to the one-line error reported below
        options.log_severity_level = 4
        ort.set_default_logger_severity(4)

        def make(model):
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

        first = None
        try:
            return make(self.source.path if self.source.path else self._bytes(self.source.proto))
        except Exception as err:  # onnxruntime raises its own Fail/InvalidArgument/... types
            first = err
        version = model_opsets(self.source.proto).get("")
        if version is not None and version < MIN_OPSET:
            try:
                upgraded = upgrade_opset(list_initializers_as_inputs(self.source.proto), self.label,
                                         note=False)
                session = make(self._bytes(upgraded))
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
            else:
                self.reference = f"onnxruntime (opset {MIN_OPSET})"
                self.notes.append(f"onnxruntime cannot run opset {version} ({_first_line(first)}); "
                                  f"compared against onnxruntime on the model upgraded to opset "
                                  f"{MIN_OPSET} with onnx.version_converter, as projc's importer does")
                return session
        if self.source.path:
            try:
                session = make(self._bytes(self.source.proto))
            except Exception:  # noqa: BLE001
                pass
            else:
                self.notes.append(f"onnxruntime cannot load the file itself ({_first_line(first)}); "
                                  "it ran the model with the external data projc loaded beside it")
                return session
        raise ModelLoadError(f"{self.label}: onnxruntime cannot run the model "
                             f"({_first_line(first)})") from first

    @staticmethod
    def _bytes(proto) -> bytes:
        return proto.SerializeToString()

    def input_names(self) -> list[str]:
        return [i.name for i in self.session().get_inputs()]

    def run(self, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
        """onnxruntime's outputs ``names``; a ZipMap's list of {label: prob} maps becomes [B, C]."""
        session = self.session()
        wanted = {i.name for i in session.get_inputs()}
        try:
            outputs = session.run(names, {k: v for k, v in feed.items() if k in wanted})
        except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types
            raise ModelLoadError(f"{self.label}: onnxruntime cannot run the model "
                                 f"({_first_line(err)})") from err
        return [_zipmap_to_array(out) if isinstance(out, list) else np.asarray(out)
                for out in outputs]


def run_onnxruntime(path: str, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """onnxruntime's outputs ``names`` for the model file at ``path`` (see ``OnnxRuntime``)."""
    with contextlib.redirect_stderr(io.StringIO()):
        source = read_model(path)
    return OnnxRuntime(source).run(feed, names)


def _first_line(err: BaseException | None) -> str:
    text = str(err).strip() if err is not None else ""
    return text.splitlines()[0][:300] if text else type(err).__name__


def _zipmap_to_array(rows: list) -> np.ndarray:
    return np.asarray([[row[key] for key in row] for row in rows], dtype=np.float32)


# -- one output ---------------------------------------------------------------------------------

def compare_arrays(name: str, ours: np.ndarray, theirs: np.ndarray, *, atol: float,
                   rtol: float) -> OutputComparison:
    """Compare one output; integer and boolean outputs compare exactly."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    result = OutputComparison(name, str(ours.dtype), ours.shape, str(theirs.dtype), theirs.shape,
                              atol=atol, rtol=rtol)
    if ours.shape != theirs.shape:
        return _failed(result, f"shape {list(ours.shape)} vs reference {list(theirs.shape)}")
    if ours.dtype != theirs.dtype:
        return _failed(result, f"dtype {ours.dtype} vs reference {theirs.dtype}")
    if ours.size == 0:
        return result
    if ours.dtype.kind not in "fc":
        atol = rtol = 0.0
        result.atol = result.rtol = 0.0
    a, b = ours.astype(np.float64), theirs.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, handled below
        diff = np.array(np.abs(a - b), dtype=np.float64)  # an array also for 0-d outputs
    diff[np.isnan(a) & np.isnan(b)] = 0.0
    diff[(a == b)] = 0.0  # inf == inf
    diff[np.isnan(diff)] = np.inf  # NaN on one side only, or inf - (-inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(diff == 0, 0.0, diff / np.abs(b))
    result.max_abs, result.max_abs_index = _max_at(diff)
    result.max_rel, result.max_rel_index = _max_at(rel)
    failing = ~np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
    result.n_failed = int(failing.sum())
    if result.n_failed:
        first = tuple(int(i) for i in np.argwhere(failing)[0])
        return _failed(result, f"{result.n_failed} element(s) beyond atol+rtol*|ref|, first at "
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
