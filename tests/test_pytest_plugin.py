"""The pytest plugin (entry point pytest11 "projc"): `pytest --projc-models DIR` and the
projc_parity fixture, run with pytester on copies of a few bundled models."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

pytest_plugins = ["pytester"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ("mlp_digits", "tanh_mlp", "sklearn_mlp")


@pytest.fixture(scope="module", autouse=True)
def warm_imports():
    """pytester's in-process runs drop the modules they import when they end; JAX and
    onnxruntime abort when imported twice, so they are imported (and used once) out here."""
    import onnxruntime  # noqa: F401

    from projc.cli.compare import compare_model
    compare_model(os.path.join(ROOT, "models", "sklearn_mlp.onnx"))


@pytest.fixture
def models(pytester):
    folder = pytester.path / "models"
    folder.mkdir()
    for name in SMALL:
        shutil.copy(os.path.join(ROOT, "models", f"{name}.onnx"), folder / f"{name}.onnx")
    return folder


def test_plugin_is_registered(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("projc")


def test_models_folder_becomes_parity_tests(pytester, models):
    result = pytester.runpytest("--projc-models", "models", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result = pytester.runpytest("--projc-models", "models", "-k", "tanh", "-v")
    result.assert_outcomes(passed=1, deselected=2)
    result.stdout.fnmatch_lines(["*models/tanh_mlp.onnx::parity PASSED*"])


def test_mismatching_goldens_fail_with_the_table(pytester, models):
    from projc.cli.compare import compare_model

    report = compare_model(str(models / "mlp_digits.onnx"))
    np.savez(models / "mlp_digits.expected.npz", **{"inputs/x": report.inputs["x"]},
             logits=report.ort_outputs["logits"] + np.float32(0.25))
    (models / "broken.onnx").write_bytes(b"")
    result = pytester.runpytest("--projc-models", "models", "--projc-atol", "1e-4")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "projc compare: error: models/broken.onnx: the file is empty*",
        "1 of 1 outputs differ: logits",
        "compare models/mlp_digits.onnx against expected outputs models/mlp_digits.expected.npz "
        "(inputs stored with them, atol 0.0001, rtol 1e-05)", "logits*FAILED*",
        "FAILED models/mlp_digits.onnx::parity - 1 of 1 outputs differ: logits"])


def test_nothing_collected_without_the_option(pytester, models):
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result = pytester.runpytest("--projc-models", "nowhere")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--projc-models: nowhere: no such file or folder*"])


def test_projc_parity_fixture(pytester, models):
    pytester.makepyfile(f"""
        import numpy as np

        MODEL = {str(models / "sklearn_mlp.onnx")!r}

        def test_selected_output(projc_parity):
            x = np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 64)
            report = projc_parity(MODEL, inputs={{"x": x}}, atol=1e-4, outputs=["probabilities"])
            assert [r.name for r in report.results] == ["probabilities"]
            assert report.results[0].atol == 1e-4

        def test_expected_mismatch(projc_parity):
            x = np.zeros((1, 64), np.float32)
            projc_parity(MODEL, inputs={{"x": x}}, outputs=["probabilities"],
                         expected={{"probabilities": np.zeros((1, 10), np.float32)}})
    """)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*against expected outputs*", "probabilities*FAILED*"])
