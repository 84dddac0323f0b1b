"""`projc compare PATH...`: many models (files, folders, globs), a row each and a summary, exit
codes, and the --json / --junit-xml reports for CI."""
from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from projc.cli import main
from projc.cli.compare_many import find_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")


def run(capsys, *argv):
    try:
        code = main(["compare", *argv])
    except SystemExit as exit:  # argparse's usage errors
        code = exit.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(tmp_path):
    """Two good models, one in a subfolder, and a hidden folder that is not searched."""
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    shutil.copy(os.path.join(MODELS, "mlp_digits.onnx"), tmp_path / "a.onnx")
    shutil.copy(os.path.join(MODELS, "tanh_mlp.onnx"), tmp_path / "sub" / "b.onnx")
    shutil.copy(os.path.join(MODELS, "tanh_mlp.onnx"), tmp_path / ".hidden" / "c.onnx")
    return tmp_path


def test_find_models(folder):
    found = find_models([str(folder)])
    assert found == [str(folder / "a.onnx"), str(folder / "sub" / "b.onnx")]
    assert find_models([str(folder / "**" / "*.onnx"), str(folder / "a.onnx")]) == found


def test_rows_summary_and_reports(capsys, folder):
    (folder / "broken.onnx").write_bytes(b"not a model")
    # a golden that disagrees: b.onnx is its folder's only model, so test_data_set_0 is its own
    b = str(folder / "sub" / "b.onnx")
    assert run(capsys, b, "--save-expected", str(folder / "sub"))[0] == 0
    output = folder / "sub" / "test_data_set_0" / "output_0.pb"
    import onnx
    from onnx import numpy_helper
    tensor = onnx.load_tensor(str(output))
    values = numpy_helper.to_array(tensor) + np.float32(0.5)
    output.write_bytes(numpy_helper.from_array(values, tensor.name).SerializeToString())

    report_json, report_xml = folder / "out" / "r.json", folder / "out" / "r.xml"
    code, out, err = run(capsys, str(folder), "--json", str(report_json), "--junit-xml",
                         str(report_xml))
    assert code == 1, out + err  # a mismatch wins over an error
    lines = out.splitlines()
    assert lines[-1].startswith("1 passed, 1 failed, 1 error in ")
    rows = {line.split()[0]: line for line in lines if line.startswith(str(folder))}
    assert rows[str(folder / "a.onnx")].endswith("PASSED")
    assert "ERROR not a readable ONNX model" in rows[str(folder / "broken.onnx")]
    assert "FAILED 1 of 1 outputs differ: logits" in rows[b] and " expected " in rows[b]

    data = json.loads(report_json.read_text())
    assert data["summary"] == {"passed": 1, "failed": 1, "errors": 1, "total": 3}
    assert data["exit_code"] == 1
    by_model = {m["model"]: m for m in data["models"]}
    assert by_model[b]["data_sets"][0]["outputs"][0]["max_abs"] == pytest.approx(0.5, abs=1e-6)

    suite = ET.parse(report_xml).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert cases[b].find("failure").get("message") == "1 of 1 outputs differ: logits"
    assert "not a readable ONNX model" in cases[str(folder / "broken.onnx")].find("error").get("message")
    assert cases[str(folder / "a.onnx")].find("failure") is None
    assert sorted(os.listdir(folder / "out")) == ["r.json", "r.xml"]  # no temp files left


def test_exit_2_when_only_errors(capsys, folder):
    (folder / "broken.onnx").write_bytes(b"")
    code, out, _ = run(capsys, str(folder))
    assert code == 2 and out.splitlines()[-1].startswith("2 passed, 0 failed, 1 error in ")
    assert run(capsys, str(folder / "a.onnx"), str(folder / "sub"))[0] == 0


def test_single_model_errors_still_write_reports(capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"")
    code, _, err = run(capsys, str(bad), "--junit-xml", str(tmp_path / "r.xml"))
    assert code == 2 and err.startswith("projc compare: error: ") and "Traceback" not in err
    case = ET.parse(tmp_path / "r.xml").getroot().find("testsuite/testcase")
    assert "empty" in case.find("error").get("message")


@pytest.mark.parametrize("argv, message", [
    (["{d}/none.onnx"], "none.onnx: no such file or folder"),
    (["{d}/*.nothing"], "matches no .onnx file"),
    (["{d}/empty"], "no .onnx file in this folder or below"),
    (["{d}", "--expected", "{d}/a.onnx"], "--expected applies to one model, and 2 were given"),
    (["{d}", "--load-inputs", "{d}/x.npz"], "--load-inputs applies to one model"),
    (["{d}", "--json", "{d}"], "--json"),
    (["{d}", "--junit-xml", "{d}/a.onnx/r.xml"], "cannot write here"),
    (["{d}", "--dim", "seq"], "expected NAME=N"),
])
def test_usage_errors_before_anything_runs(capsys, folder, argv, message):
    (folder / "empty").mkdir()
    before = sorted(os.listdir(folder))
    code, out, err = run(capsys, *[a.format(d=folder) for a in argv])
    assert code == 2 and message in err and out == "" and "Traceback" not in err
    assert sorted(os.listdir(folder)) == before
