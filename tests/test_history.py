"""Training history: `projc train --log` records, `projc plot` images, clear errors."""
import json
import os
import sys

import pytest

from projc.cli import main
from projc.errors import ProjcError
from projc.train.history import HistoryLog, read_history

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp_digits.onnx")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_log(path, n=4):
    log = HistoryLog(str(path))
    for i in range(n):
        log.write(update=3 * i, epoch=i, train_accuracy=0.1 + 0.2 * i, test_accuracy=0.1 + 0.19 * i,
                  loss=2.3 / (i + 1), residual=None if i == 0 else 1e-3, seconds=0.5 * i)
    log.close()
    return path


@pytest.mark.slow
def test_train_log_has_one_record_per_evaluation(capsys, tmp_path):
    log = tmp_path / "h.jsonl"
    code, _, err = run(capsys, "train", MLP, "--updates", "7", "--batch", "400", "--steps", "2",
                       "--log", log, "-o", tmp_path / "t.onnx")
    assert code == 0, err
    records = [json.loads(line) for line in log.read_text().splitlines()]
    # before training, at the end of epoch 1 (4 updates of 400 out of 1438), at the end (7)
    assert [r["update"] for r in records] == [0, 4, 7] and [r["epoch"] for r in records] == [0, 1, 2]
    assert set(records[1]) == {"update", "epoch", "train_accuracy", "test_accuracy", "loss", "residual",
                               "seconds"}
    assert records[2]["loss"] < records[0]["loss"] and records[2]["residual"] > 0
    assert records[0]["seconds"] <= records[1]["seconds"] <= records[2]["seconds"]
    # --eval-every N adds evaluations inside the epochs
    code, _, err = run(capsys, "train", MLP, "--updates", "7", "--batch", "400", "--steps", "2",
                       "--eval-every", "3", "--log", log, "-o", tmp_path / "t.onnx")
    assert code == 0, err
    assert [json.loads(line)["update"] for line in log.read_text().splitlines()] == [0, 3, 4, 6, 7]


def test_resumed_log_drops_records_after_the_checkpoint(tmp_path):
    path = write_log(tmp_path / "h.jsonl")
    HistoryLog(str(path), resume_at=4).close()
    assert [r["update"] for r in read_history(str(path))] == [0, 3]


def test_plot_writes_a_png(capsys, tmp_path):
    log = write_log(tmp_path / "h.jsonl")
    code, out, _ = run(capsys, "plot", log, "-o", tmp_path / "curves" / "c.png")
    png = tmp_path / "curves" / "c.png"
    assert code == 0 and str(png) in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    code, _, _ = run(capsys, "plot", log)  # default: beside the log
    assert code == 0 and (tmp_path / "h.png").exists()


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read"), ("", "no records"), ("{not json\n", ":1: not a JSON"),
    ('{"epoch": 1}\n', "integer 'update'"),
])
def test_plot_bad_logs_exit_2_one_line(capsys, tmp_path, content, needle):
    log = tmp_path / "h.jsonl"
    if content is not None:
        log.write_text(content)
    code, _, err = run(capsys, "plot", log, "-o", tmp_path / "c.png")
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()


def test_plot_without_matplotlib_says_how_to_install(capsys, tmp_path, monkeypatch):
    log = write_log(tmp_path / "h.jsonl")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, _, err = run(capsys, "plot", log, "-o", tmp_path / "c.png")
    assert code == 2 and "projc[plot]" in err and not (tmp_path / "c.png").exists()


def test_read_history_names_the_line(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"update": 0}\n[1, 2]\n')
    with pytest.raises(ProjcError, match=r"h.jsonl:2"):
        read_history(str(path))
