"""The ONNX backend tests shipped with the onnx package, run through projc's importer and forward.

Suites: ``node`` (one op per model), ``pytorch-converted``, ``pytorch-operator`` and ``simple``.
The onnx wheel ships the last three as directories under onnx/backend/test/data but not
``data/node``: the node cases are produced in memory by onnx's own generators
(``onnx.backend.test.case.node.collect_testcases``), which are what writes data/node.

Every on-disk model predates opset 13 (opsets 6-12): the harness passes it as shipped, as a user
would, and projc's importer upgrades it in memory with ``onnx.version_converter``; a model the
converter cannot upgrade fails (and is listed below with its reason). Selection comes from the
registry: a case runs when every node's op is registered at the model's opset, or at opset 13
for older models (the importer's upgrade target). Graph inputs that compile-time operands (a
Reshape shape, Slice bounds, Pad's pads, ...) are computed from are bound as constants from the
test data (``from_onnx(bind=...)``); the data inputs stay runtime inputs.

Tolerance (numpy.isclose: |projc - expected| <= atol + rtol * |expected|): float32 and float64
outputs use rtol 1e-5, atol 1e-5 (the project's bar against onnxruntime; float64 models compute
in float64); float16 uses rtol 1e-3, atol 1e-3; integers and booleans must match exactly.
onnx's own runner uses rtol 1e-3, atol 1e-7; only ROUNDED_EXPECTATIONS need that. Cases run
without jit (one eager evaluation each: compiling every case would cost minutes).

``python tests/test_backend_node.py`` prints per suite: cases, selected, passed, known failures.
"""
from __future__ import annotations

import contextlib
import functools
import glob
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from projc.backends.jax.forward import run_forward
from projc.frontend.importer import compile_time_inputs, from_onnx, model_opsets, node_opset
from projc.ops import MIN_OPSET, kind_of, lookup

DATA_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
SUITES = ("node", "pytorch-converted", "pytorch-operator", "simple")

_DTYPE = "element type outside projc's IR and JAX's x32 types (bfloat16, float8, int4/2, float4)"
_TRAINING = "training mode (batch statistics / random dropout mask): projc evaluates inference"
_PRELU_6 = ("onnx.version_converter keeps PRelu-6's per-channel slope [C], which opset-9 "
            "numpy broadcasting against [N, C, ...] rejects (the converted model is invalid)")

_ALIGN_CORNERS = ("align_corners with scales whose output size is fractional: onnx's reference "
                  "divides by scale * (in - 1), onnxruntime (projc's oracle, matched in "
                  "tests/test_forward_ops2.py) by the integer output size - 1")

# Genuinely unsupported variants of registered ops, run as strict xfails (a case that starts
# passing fails loudly: then delete its entry).
KNOWN_FAILURES: dict[str, str] = {
    "node/test_batchnorm_example_training_mode": _TRAINING,
    "node/test_batchnorm_epsilon_training_mode": _TRAINING,
    "node/test_training_dropout": _TRAINING,
    "node/test_training_dropout_default": _TRAINING,
    "node/test_training_dropout_default_mask": _TRAINING,
    "node/test_training_dropout_mask": _TRAINING,
    "node/test_equal_string": "string tensors: JAX holds no strings",
    "node/test_equal_string_broadcast": "string tensors: JAX holds no strings",
    "node/test_identity_sequence": "sequence-typed values: projc's IR holds tensors only",
    "node/test_identity_opt": "optional-typed values: projc's IR holds tensors only",
    "node/test_range_bfloat16_type_positive_delta": _DTYPE,
    "pytorch-converted/test_PReLU_1d_multiparam": _PRELU_6,
    "pytorch-converted/test_PReLU_2d_multiparam": _PRELU_6,
    "pytorch-converted/test_PReLU_3d_multiparam": _PRELU_6,
    "node/test_dynamicquantizelinear_expanded": "one uint8 level off (25 vs 26) at a round-half-to-even "
    "tie of x/scale: float32 division lands on the other side of .5 than the reference data",
    "node/test_dequantizelinear_blocked": "blocked quantization (block_size > 0) is not supported",
    "node/test_quantizelinear_blocked_asymmetric": "blocked quantization (block_size > 0) is not supported",
    "node/test_quantizelinear_blocked_symmetric": "blocked quantization (block_size > 0) is not supported",
    **{f"node/test_{op}_{t}": _DTYPE for op in ("quantizelinear", "dequantizelinear")
       for t in ("e4m3fn", "e5m2", "uint4", "int4", "uint2", "int2", "float4e2m1")},
    "node/test_dequantizelinear_e4m3fn_float16": _DTYPE,
    "node/test_dequantizelinear_e4m3fn_zero_point": _DTYPE,
    **{f"node/test_einsum_{case}_bfloat16": _DTYPE for case in ("batch_matmul", "sum", "transpose")},
    **{f"node/test_attention_{case}_bf16": _DTYPE for case in (
        "4d_causal", "4d_padded_kv", "4d_causal_padded_kv", "4d_attn_mask_causal", "3d_causal")},
    "node/test_resize_downsample_scales_linear_align_corners": _ALIGN_CORNERS,
    "node/test_resize_downsample_scales_cubic_align_corners": _ALIGN_CORNERS,
}
# Cast/CastLike cases to or from element types JAX cannot hold in projc's IR, by type name.
_UNSUPPORTED_TYPE_NAMES = ("BFLOAT16", "FLOAT8", "INT4", "UINT4", "INT2", "UINT2", "FLOAT4")

# Cases whose expected values onnx writes rounded by hand: compared at the case's own tolerance
# (onnx's runner: rtol 1e-3, atol 1e-7) instead of the 1e-5 bar.
ROUNDED_EXPECTATIONS = {"node/test_averagepool_2d_ceil_last_window_starts_on_pad"}


def known_failure(case_id: str) -> str | None:
    """Why ``case_id`` is expected to fail, or None."""
    if case_id in KNOWN_FAILURES:
        return KNOWN_FAILURES[case_id]
    tokens = case_id.split("/", 1)[1].split("_")
    if tokens[1].startswith("cast") and any(token.startswith(_UNSUPPORTED_TYPE_NAMES)
                                            for token in tokens):
        return _DTYPE
    return None


@dataclass
class Case:
    suite: str
    name: str
    model: onnx.ModelProto
    data_dir: str | None = None  # on-disk suites; node cases carry their data in memory
    data_sets: list | None = None

    @property
    def id(self) -> str:
        return f"{self.suite}/{self.name}"

    def datasets(self) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
        if self.data_sets is not None:
            return [([_as_array(t) for t in i], [_as_array(t) for t in o])
                    for i, o in self.data_sets]
        return [(_read_tensors(d, "input"), _read_tensors(d, "output"))
                for d in sorted(glob.glob(os.path.join(self.data_dir, "test_data_set_*")))]


def _as_array(tensor) -> np.ndarray:
    """Node cases hold special dtypes (float16, float8, ...) as TensorProto."""
    return numpy_helper.to_array(tensor) if isinstance(tensor, onnx.TensorProto) else tensor


def _read_tensors(folder: str, prefix: str) -> list[np.ndarray]:
    paths = sorted(glob.glob(os.path.join(folder, f"{prefix}_*.pb")),
                   key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))
    tensors = []
    for path in paths:
        tensor = onnx.TensorProto()
        with open(path, "rb") as f:
            tensor.ParseFromString(f.read())
        tensors.append(numpy_helper.to_array(tensor))
    return tensors


@functools.cache
def all_cases() -> tuple[Case, ...]:
    """Every backend test case of the four suites (selected or not)."""
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators divide by zero on purpose
        from onnx.backend.test.case.node import collect_testcases
        for tc in collect_testcases(None):
            cases.append(Case("node", tc.name, tc.model, data_sets=tc.data_sets))
    for suite in SUITES[1:]:
        for folder in sorted(glob.glob(os.path.join(DATA_DIR, suite, "test_*"))):
            model_path = os.path.join(folder, "model.onnx")
            if os.path.exists(model_path):
                cases.append(Case(suite, os.path.basename(folder), onnx.load(model_path),
                                  data_dir=folder))
    return tuple(cases)


def import_opsets(model: onnx.ModelProto) -> dict[str, int]:
    """The model's opsets as the importer sees them: older default opsets become 13."""
    opsets = model_opsets(model)
    if "" in opsets:
        opsets[""] = max(opsets[""], MIN_OPSET)
    return opsets


def is_selected(model: onnx.ModelProto) -> bool:
    """True when projc's registry covers every node of ``model`` at the opsets it imports."""
    opsets = import_opsets(model)
    return all(lookup(kind_of(n.op_type, n.domain), node_opset(n, opsets)) is not None
               for n in model.graph.node)


def selected_cases() -> list[Case]:
    return [c for c in all_cases() if is_selected(c.model)]


def tolerance(case: Case, dtype: np.dtype) -> tuple[float, float]:
    """(rtol, atol) for an output of ``dtype`` of ``case``."""
    if case.id in ROUNDED_EXPECTATIONS:
        return 1e-3, 1e-7
    if dtype == np.float16:
        return 1e-3, 1e-3
    if dtype.kind in "fc":
        return 1e-5, 1e-5
    return 0.0, 0.0


def run_case(case: Case) -> None:
    """Import and evaluate every data set of ``case``; raise AssertionError on a mismatch."""
    inputs_names = [i.name for i in case.model.graph.input
                    if i.name not in {t.name for t in case.model.graph.initializer}]
    static = compile_time_inputs(case.model)  # the importer's own walk
    for inputs, expected in case.datasets():
        feed = dict(zip(inputs_names, inputs))
        with contextlib.redirect_stderr(io.StringIO()):  # the importer's opset upgrade note
            graph = from_onnx(case.model, path=case.id,
                              bind={k: v for k, v in feed.items() if k in static})
        feed = {v.hint: feed[v.hint] for v in graph.inputs}
        outputs = run_forward(graph, None, feed, jit=False)
        assert len(outputs) == len(expected), f"{len(outputs)} outputs, expected {len(expected)}"
        for index, (ours, ref) in enumerate(zip(outputs, expected)):
            ref = np.asarray(ref)
            assert ours.shape == ref.shape, f"output {index}: shape {ours.shape} vs {ref.shape}"
            assert ours.dtype == ref.dtype, f"output {index}: dtype {ours.dtype} vs {ref.dtype}"
            rtol, atol = tolerance(case, ref.dtype)
            np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol, equal_nan=True,
                                       err_msg=f"output {index}")


def _params():
    for case in selected_cases():
        reason = known_failure(case.id)
        marks = pytest.mark.xfail(reason=reason, strict=True) if reason else ()
        yield pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_backend_case(case):
    run_case(case)


def test_known_failures_are_selected_cases():
    """Every KNOWN_FAILURES entry names a selected case (no stale entries)."""
    ids = {c.id for c in selected_cases()}
    assert sorted(set(KNOWN_FAILURES) - ids) == []


def summarize() -> dict[str, dict[str, int]]:
    """Run every selected case; print and return per suite: selected, passed, known failures."""
    counts = {s: {"cases": 0, "selected": 0, "passed": 0, "known_failures": 0, "failed": 0}
              for s in SUITES}
    for suite in SUITES:
        counts[suite]["cases"] = sum(c.suite == suite for c in all_cases())
    for case in selected_cases():
        row = counts[case.suite]
        row["selected"] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # float64 data beyond float32
                run_case(case)
            row["passed"] += 1
            if known_failure(case.id):
                print(f"UNEXPECTED PASS {case.id}: remove it from the known failures")
        except Exception as err:  # report every kind of failure, keep counting
            key = "known_failures" if known_failure(case.id) else "failed"
            row[key] += 1
            if key == "failed":
                print(f"FAILED {case.id}: {str(err).strip().splitlines()[0][:200]}")
    for suite, row in counts.items():
        print(f"{suite}: {row['cases']} cases, {row['selected']} selected, {row['passed']} "
              f"passed, {row['known_failures']} known failures, {row['failed']} unexpected "
              "failures")
    return counts


if __name__ == "__main__":
    summarize()
