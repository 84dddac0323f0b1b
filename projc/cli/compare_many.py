"""`projc compare PATH...`: one model or many, with goldens, and reports for CI.

``find_models`` turns files, folders (searched recursively for ``*.onnx``, hidden folders
skipped) and glob patterns into model paths. ``run_model`` compares one model (against the
goldens given with ``--expected``, else those stored beside it, else onnxruntime) and never
raises for a model's own error in a many-model run: a ``ModelResult`` is PASSED, FAILED (an
output differs) or ERROR (the model cannot be compared: unreadable, unsupported, onnxruntime
refuses it, bad goldens). ``junit_xml`` and ``json_report`` write what CI systems read.

Exit status of a run: 0 when every model matches; 1 when some output of some model differs
(whatever else happened); 2 when no output differs but some model could not be compared, and
for bad usage.
"""
from __future__ import annotations

import contextlib
import datetime
import glob
import io
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from projc.cli import goldens
from projc.errors import DataError, ProjcError

PASSED, FAILED, ERROR = "PASSED", "FAILED", "ERROR"
REASON_WIDTH = 160  # characters of an error's reason in a table row (JSON/XML get all of it)


@dataclass
class CompareOptions:
    """What every model of a run is compared with (the CLI's options)."""

    atol: float | None = None
    rtol: float | None = None
    seed: int = 1
    batch: int | None = None
    dims: dict[str, int] = field(default_factory=dict)
    outputs: list[str] | None = None
    max_input_bytes: int = 1 << 30
    inputs: dict[str, np.ndarray] | None = None  # --load-inputs
    inputs_source: str | None = None
    expected: str | None = None  # --expected
    ignore_expected: bool = False
    save_expected: str | None = None


@dataclass
class ModelResult:
    """One model's outcome: status, a one-line reason, the reports (one per data set)."""

    model: str
    status: str
    reason: str = ""
    reports: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: BaseException | None = None
    message: str = ""  # the whole error message

    @property
    def reference(self) -> str:
        """"onnxruntime", "onnxruntime (opset 13)", "expected" or "expected (N sets)"."""
        refs = sorted({r.reference for r in self.reports})
        if refs == ["expected"] and len(self.reports) > 1:
            return f"expected ({len(self.reports)} sets)"
        return "; ".join(refs) if refs else "-"

    def max_over_outputs(self, attr: str) -> float | None:
        values = [getattr(c, attr) for r in self.reports for c in r.results]
        return max(values) if values else None

    def tables(self) -> str:
        return "\n\n".join(r.format() for r in self.reports)


# -- finding models ---------------------------------------------------------------------------

def find_models(paths: list[str]) -> list[str]:
    """Model files named by ``paths``: files as given, folders searched recursively for
    ``*.onnx`` (hidden folders skipped), glob patterns (``**`` recursive) expanded. A path that
    names nothing, or a folder or pattern without a model, is a ProjcError."""
    found: list[str] = []
    for arg in paths:
        if os.path.isfile(arg):
            found.append(arg)
        elif os.path.isdir(arg):
            models = _search(arg)
            if not models:
                raise ProjcError(f"{arg}: no .onnx file in this folder or below")
            found += models
        elif glob.has_magic(arg):
            models = []
            for match in sorted(glob.glob(arg, recursive=True)):
                models += _search(match) if os.path.isdir(match) else \
                    [match] if match.endswith(".onnx") else []
            if not models:
                raise ProjcError(f"{arg}: matches no .onnx file")
            found += models
        else:
            raise ProjcError(f"{arg}: no such file or folder")
    unique, seen = [], set()
    for path in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def _search(folder: str) -> list[str]:
    models = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        models += [os.path.join(root, f) for f in sorted(files) if f.endswith(".onnx")]
    return models


# -- comparing one model ----------------------------------------------------------------------

def run_model(path: str, options: CompareOptions, *, catch: bool = True,
              capture_notes: bool = True) -> ModelResult:
    """Compare one model. ``catch``: a model's error becomes an ERROR result (a ProjcError
    always; any other exception too, as "internal error", unless ``catch`` is false);
    ``capture_notes``: the importer's notes on stderr go into the result instead."""
    start = time.perf_counter()
    buffer = io.StringIO()
    result = ModelResult(path, PASSED)
    try:
        with contextlib.redirect_stderr(buffer) if capture_notes else contextlib.nullcontext():
            result.reports = _compare(path, options)
        failed = [f"{name}" for r in result.reports for name in r.failed]
        if failed:
            outputs = sum(len(r.results) for r in result.reports)
            result.status = FAILED
            result.reason = f"{len(failed)} of {outputs} outputs differ: {', '.join(failed)}"
    except ProjcError as err:
        if not catch:
            raise
        _set_error(result, err, str(err))
    except Exception as err:  # noqa: BLE001 - a projc bug: reported, the run goes on
        if not catch:
            raise
        text = (str(err).strip().splitlines() or [""])[0]
        _set_error(result, err, f"internal error ({type(err).__name__}: {text}); this is a "
                                "projc bug: rerun this model with --debug and report it")
    result.notes = [line.removeprefix("projc: note: ").removeprefix(f"{path}: ")
                    for line in buffer.getvalue().splitlines() if line.strip()]
    result.notes += [note for r in result.reports for note in r.notes]
    result.seconds = time.perf_counter() - start
    return result


def _set_error(result: ModelResult, err: BaseException, message: str) -> None:
    result.status, result.error, result.message = ERROR, err, message
    prefix = f"{result.model}: "
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("supported ops: run")]
    text = " ".join(lines[:1]) + ("" if len(lines) < 2 else " " + "; ".join(lines[1:]))
    result.reason = text[len(prefix):] if text.startswith(prefix) else text


def _compare(path: str, options: CompareOptions) -> list:
    from projc.cli import compare  # at call time: tests replace compare.compare_model
    from projc.frontend.importer import read_model

    source = read_model(path)
    kwargs: dict[str, Any] = dict(atol=options.atol, rtol=options.rtol, seed=options.seed,
                                  batch=options.batch, dims=options.dims, outputs=options.outputs,
                                  max_input_bytes=options.max_input_bytes, source=source)
    stored = [] if options.ignore_expected or options.save_expected else \
        [options.expected] if options.expected else goldens.beside(path)
    if not stored:
        return [compare.compare_model(path, inputs=options.inputs,
                                      inputs_source=options.inputs_source, **kwargs)]
    reports = []
    for data_set in (d for where in stored for d in goldens.read_expected(where, source.proto)):
        inputs = data_set.inputs
        inputs_source: str | None = data_set.label
        if options.inputs is not None:
            inputs, inputs_source = options.inputs, options.inputs_source
        if inputs is None:
            raise DataError(f"{data_set.label}: holds no inputs; pass them with --load-inputs "
                            "F.npz (--save-expected stores both)")
        reports.append(compare.compare_model(path, inputs=inputs, inputs_source=inputs_source,
                                             expected=data_set.outputs,
                                             expected_source=data_set.label, **kwargs))
    return reports


# -- reports ----------------------------------------------------------------------------------

def counts(results: list[ModelResult]) -> dict[str, int]:
    return {"passed": sum(r.status == PASSED for r in results),
            "failed": sum(r.status == FAILED for r in results),
            "errors": sum(r.status == ERROR for r in results), "total": len(results)}


def exit_code(results: list[ModelResult]) -> int:
    """1 if an output of some model differs; else 2 if some model errored; else 0."""
    c = counts(results)
    return 1 if c["failed"] else 2 if c["errors"] else 0


def summary_line(results: list[ModelResult], seconds: float | None = None) -> str:
    c = counts(results)
    errors = f"{c['errors']} error" + ("" if c["errors"] == 1 else "s")
    line = f"{c['passed']} passed, {c['failed']} failed, {errors}"
    return line + (f" in {seconds:.1f} s" if seconds is not None else "")


class RowPrinter:
    """The many-model table, one row printed as each model finishes."""

    HEADER = ["model", "outputs", "max|diff|", "max rel", "reference", "result"]

    def __init__(self, models: list[str]):
        self.width = max([len(m) for m in models] + [len("model")])

    def header(self) -> str:
        return self._line(self.HEADER)

    def row(self, result: ModelResult) -> str:
        def number(value):
            return "-" if value is None else f"{value:.3g}"
        outputs = sum(len(r.results) for r in result.reports)
        text = result.status if result.status == PASSED else f"{result.status} {result.reason}"
        if len(text) > REASON_WIDTH:
            text = text[:REASON_WIDTH - 3] + "..."
        return self._line([result.model, str(outputs) if result.reports else "-",
                           number(result.max_over_outputs("max_abs")),
                           number(result.max_over_outputs("max_rel")), result.reference, text])

    def _line(self, cells: list[str]) -> str:
        widths = [self.width, 7, 9, 9, 22]
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths + [0])).rstrip()


def json_report(results: list[ModelResult], options: CompareOptions, seconds: float) -> dict:
    """The run as one JSON object (``--json``): options, counts, exit code, a record per model."""
    from projc import __version__

    return {
        "tool": "projc compare", "version": __version__,
        "options": {"atol": options.atol, "rtol": options.rtol, "seed": options.seed,
                    "batch": options.batch, "dims": dict(options.dims), "outputs": options.outputs,
                    "expected": options.expected, "inputs": options.inputs_source},
        "summary": counts(results), "exit_code": exit_code(results),
        "seconds": round(seconds, 3),
        "models": [{"model": r.model, "status": r.status, "reason": r.reason,
                    "message": r.message or None, "reference": r.reference,
                    "seconds": round(r.seconds, 3), "notes": r.notes,
                    "data_sets": [rep.to_json() for rep in r.reports]} for r in results],
    }


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("?", text)


def junit_xml(results: list[ModelResult], seconds: float) -> bytes:
    """A JUnit XML report (``--junit-xml``): one testcase per model (classname "projc.compare",
    name the model path), a <failure> for a mismatch and an <error> for a model that could not be
    compared, each with its message; the per-output tables in <system-out>."""
    import xml.etree.ElementTree as ET

    c = counts(results)
    attrs = {"name": "projc compare", "tests": str(c["total"]), "failures": str(c["failed"]),
             "errors": str(c["errors"]), "time": f"{seconds:.3f}"}
    root = ET.Element("testsuites", attrs)
    suite = ET.SubElement(root, "testsuite", {
        **attrs, "skipped": "0", "hostname": socket.gethostname(),
        "timestamp": datetime.datetime.now().replace(microsecond=0).isoformat()})
    for r in results:
        case = ET.SubElement(suite, "testcase", {"classname": "projc.compare", "name": r.model,
                                                 "file": r.model, "time": f"{r.seconds:.3f}"})
        if r.status == FAILED:
            element = ET.SubElement(case, "failure", {"message": _xml_text(r.reason),
                                                      "type": "mismatch"})
            element.text = _xml_text(r.tables())
        elif r.status == ERROR:
            element = ET.SubElement(case, "error", {"message": _xml_text(r.reason),
                                                    "type": type(r.error).__name__})
            element.text = _xml_text(r.message)
        out = "\n".join([f"note: {n}" for n in r.notes] + ([r.tables()] if r.reports else []))
        if out:
            ET.SubElement(case, "system-out").text = _xml_text(out)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def write_reports(results: list[ModelResult], options: CompareOptions, seconds: float, *,
                  json_path: str | None, junit_path: str | None) -> None:
    """``--json`` and ``--junit-xml``, each written atomically."""
    import json

    if json_path:
        text = json.dumps(json_report(results, options, seconds), indent=2, allow_nan=False)
        goldens.write_atomic(json_path, lambda f: f.write(text.encode() + b"\n"))
    if junit_path:
        data = junit_xml(results, seconds)
        goldens.write_atomic(junit_path, lambda f: f.write(data))
