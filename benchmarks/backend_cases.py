"""Every ONNX backend test case whose ops projc registers, through `projc compare` with its data.

    .venv/bin/python benchmarks/backend_cases.py [--suites node,pytorch-converted,...]
                                                 [--keep DIR] [--json PATH]

The four suites of the onnx wheel: ``pytorch-converted``, ``pytorch-operator`` and ``simple``
ship on disk as ``CASE/model.onnx`` + ``CASE/test_data_set_N/{input,output}_*.pb`` and are
compared where they lie; ``node`` ships as onnx's generators (the wheel has no data/node), which
are written to a temporary folder in that same layout, exactly as ``python -m
onnx.backend.test.cmd_tools generate-data`` writes them. Each selected case then goes through
what ``projc compare CASE_DIR`` runs (``projc.cli.compare_many.run_model``: the goldens beside
the model, the default tolerances: 1e-5, float16 1e-3). A case is *selected* when every node's op
is registered at the model's opset (at opset 13 for older models, which projc upgrades): the
rule of tests/test_backend_node.py, whose known failures are marked here.

Prints each failure and error, then per suite: cases, selected, passed, failed (an output
differs; and how many of those pass at onnx's own runner tolerance, rtol 1e-3 / atol 1e-7, the
bar of cases whose expected values onnx rounds by hand), errors (the case cannot be compared),
and how many failures and errors are known ones. Writes JSON (per-case status and
reason) to benchmarks/results/backend_cases.json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from common import format_table, write_json  # noqa: E402
from projc.cli.compare_many import ERROR, FAILED, PASSED, CompareOptions, run_model  # noqa: E402

SUITES = ("node", "pytorch-converted", "pytorch-operator", "simple")
ONNX_RTOL, ONNX_ATOL = 1e-3, 1e-7  # onnx's own backend runner: expected values rounded by hand


def _serialize(value, info: onnx.ValueInfoProto) -> bytes:
    """A test value as onnx's cmd_tools.generate_data writes it (by the declared type)."""
    kind = info.type.WhichOneof("value")
    if kind == "map_type":
        return numpy_helper.from_dict(value, info.name).SerializeToString()
    if kind == "sequence_type":
        return numpy_helper.from_list(value, info.name).SerializeToString()
    if kind == "optional_type":
        return numpy_helper.from_optional(value, info.name).SerializeToString()
    if isinstance(value, onnx.TensorProto):
        return value.SerializeToString()
    return numpy_helper.from_array(value, info.name).SerializeToString()


def write_case(folder: str, model: onnx.ModelProto, data_sets) -> str:
    """``folder/model.onnx`` and ``folder/test_data_set_N/{input,output}_M.pb``."""
    os.makedirs(folder)
    with open(os.path.join(folder, "model.onnx"), "wb") as f:
        f.write(model.SerializeToString())
    for n, (inputs, outputs) in enumerate(data_sets):
        data = os.path.join(folder, f"test_data_set_{n}")
        os.makedirs(data)
        for kind, values, infos in (("input", inputs, model.graph.input),
                                    ("output", outputs, model.graph.output)):
            for m, value in enumerate(values):
                with open(os.path.join(data, f"{kind}_{m}.pb"), "wb") as f:
                    f.write(_serialize(value, infos[m]))
    return folder


def case_folders(suites, scratch: str):
    """(suite, case name, folder, selected, known failure reason) for every case."""
    import test_backend_node as backend  # the selection rule and the known failures

    for case in backend.all_cases():
        if case.suite not in suites:
            continue
        selected = backend.is_selected(case.model)
        folder = case.data_dir
        if folder is None and selected:
            folder = write_case(os.path.join(scratch, case.suite, case.name), case.model,
                                case.data_sets)
        yield case.suite, case.name, folder, selected, backend.known_failure(case.id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default=",".join(SUITES))
    parser.add_argument("--keep", default=None, metavar="DIR",
                        help="write the node cases here (kept) instead of a temporary folder")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    suites = args.suites.split(",")
    counts = {s: dict(cases=0, selected=0, passed=0, failed=0, errors=0, known=0, pass_loose=0)
              for s in suites}
    records, start = [], time.perf_counter()
    with contextlib.ExitStack() as stack:
        scratch = args.keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="projc-node-"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the generators divide by zero on purpose
            cases = list(case_folders(suites, scratch))
        for suite, name, folder, selected, known in cases:
            row = counts[suite]
            row["cases"] += 1
            if not selected:
                continue
            row["selected"] += 1
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore", RuntimeWarning)  # float64 data beyond float32
                result = run_model(os.path.join(folder, "model.onnx"), CompareOptions())
            key = {PASSED: "passed", FAILED: "failed", ERROR: "errors"}[result.status]
            row[key] += 1
            row["known"] += result.status != PASSED and known is not None
            records.append({"suite": suite, "case": name, "status": result.status,
                            "reason": result.reason, "known_failure": known,
                            "reference": result.reference, "seconds": round(result.seconds, 3)})
            if result.status == FAILED:  # at onnx's own runner tolerance?
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore", RuntimeWarning)
                    loose = run_model(os.path.join(folder, "model.onnx"),
                                      CompareOptions(atol=ONNX_ATOL, rtol=ONNX_RTOL))
                records[-1]["passes_at_onnx_tolerance"] = loose.status == PASSED
                row["pass_loose"] += loose.status == PASSED
            if result.status != PASSED:
                tag = "known" if known else "NEW"
                loose = " (passes at --rtol 1e-3 --atol 1e-7)" if \
                    records[-1].get("passes_at_onnx_tolerance") else ""
                print(f"{result.status} ({tag}) {suite}/{name}: {result.reason[:220]}{loose}",
                      flush=True)
            elif known:
                print(f"UNEXPECTED PASS {suite}/{name}: remove it from the known failures")
    seconds = time.perf_counter() - start
    total = {k: sum(c[k] for c in counts.values()) for k in next(iter(counts.values()))}
    rows = [[s, c["cases"], c["selected"], c["passed"], c["failed"], c["pass_loose"], c["errors"],
             c["known"]] for s, c in [*counts.items(), ("all", total)]]
    print(format_table(["suite", "cases", "selected", "passed", "failed",
                        "of those pass at onnx's rtol 1e-3", "errors",
                        "failed or errors known (tests/test_backend_node.py)"], rows))
    print(f"{seconds:.0f} s")
    path = write_json("backend_cases", {"command": "benchmarks/backend_cases.py " + " ".join(sys.argv[1:]),
                                        "counts": counts, "total": total, "seconds": round(seconds, 1),
                                        "cases": records}, args.json)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
