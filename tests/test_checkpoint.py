"""Checkpoint and resume: the batch order resumes exactly, checkpoints are atomic and checked
against the command, and an interrupted run (KeyboardInterrupt, SIGKILL) resumed with --resume
exports the same initializers, bit for bit, as an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from projc.cli import main
from projc.errors import ProjcError
from projc.train.batches import UpdateSchedule
from projc.train.checkpoint import Checkpoint, check_fingerprint, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp_digits.onnx")


def initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def assert_same_initializers(a, b):
    ia, ib = initializers(a), initializers(b)
    assert ia.keys() == ib.keys()
    for k in ia:
        assert np.array_equal(ia[k], ib[k]), k


@pytest.mark.parametrize("stop", [1, 4, 5, 7, 10])
def test_schedule_resumes_the_same_batches(stop):
    # 23 samples in batches of 5: 5 updates per epoch, the last one topped up
    full = [(e, idx.tolist()) for e, idx in UpdateSchedule(23, 5, 12, seed=3)]
    first = UpdateSchedule(23, 5, 12, seed=3)
    head = [(e, idx.tolist()) for _, (e, idx) in zip(range(stop), first)]  # stops without over-drawing
    state = json.loads(json.dumps(first.state()))  # it travels as JSON
    second = UpdateSchedule(23, 5, 12, seed=3)
    second.load_state(state)
    assert head + [(e, idx.tolist()) for e, idx in second] == full
    assert all(len(idx) == 5 for _, idx in full) and len({e for e, _ in full}) == 3


def test_schedule_refuses_an_empty_training_set():
    with pytest.raises(ProjcError, match="empty"):
        UpdateSchedule(0, 5, 3, seed=0)


def test_checkpoint_round_trip_is_atomic(tmp_path):
    ckpt = Checkpoint(params={"w": np.arange(6, dtype=np.float32).reshape(2, 3), "a/b": np.ones(2)},
                      solver_state=[np.int32(4), np.zeros(3)], schedule={"done": 4},
                      counters={"seconds": 1.5}, fingerprint={"seed": 0})
    save_checkpoint(str(tmp_path / "ck"), ckpt)
    assert os.listdir(tmp_path / "ck") == ["checkpoint.npz"]
    back = load_checkpoint(str(tmp_path / "ck"))
    assert np.array_equal(back.params["w"], ckpt.params["w"]) and list(back.params) == ["w", "a/b"]
    assert back.solver_state[0] == 4 and back.schedule == {"done": 4} and back.fingerprint == {"seed": 0}
    with pytest.raises(ProjcError, match="seed"):
        check_fingerprint("ck", {"seed": 0}, {"seed": 1})
    with pytest.raises(ProjcError, match="without --resume"):
        load_checkpoint(str(tmp_path / "none"))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def interrupt_after(monkeypatch, n):
    from projc.train.trainer import Trainer
    real, calls = Trainer.update, []

    def update(self, *a, **kw):
        calls.append(1)
        if len(calls) > n:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(Trainer, "update", update)
    return lambda: monkeypatch.setattr(Trainer, "update", real)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["dr", "adam"])
def test_interrupted_run_resumes_to_the_same_weights(capsys, tmp_path, monkeypatch, solver):
    # 1438 digits in batches of 400: 4 updates per epoch; 7 updates cross an epoch boundary
    args = ["train", MLP, "--updates", "7", "--batch", "400", "--steps", "2", "--solver", solver]
    code, _, _ = run(capsys, *args, "-o", tmp_path / "ref.onnx")
    assert code == 0
    ck, log = tmp_path / "ck", tmp_path / "h.jsonl"
    resumed = [*args, "--checkpoint", ck, "--checkpoint-every", "2", "--log", log, "-o", tmp_path / "r.onnx"]
    restore = interrupt_after(monkeypatch, 5)
    code, _, err = run(capsys, *resumed)
    assert code == 130 and "--resume" in err and not (tmp_path / "r.onnx").exists()
    assert load_checkpoint(str(ck)).schedule["done"] == 4
    restore()
    code, _, err = run(capsys, *resumed)
    assert code == 2 and "add --resume" in err  # an existing checkpoint is never overwritten silently
    code, out, _ = run(capsys, *resumed, "--resume")
    assert code == 0 and "update 4 of 7" in out
    assert_same_initializers(tmp_path / "ref.onnx", tmp_path / "r.onnx")
    updates = [json.loads(line)["update"] for line in log.read_text().splitlines()]
    assert updates == [0, 4, 7]  # the epoch-end record kept once, none after the checkpoint repeated


def test_resume_refuses_another_command(capsys, tmp_path):
    ck = tmp_path / "ck"
    save_checkpoint(str(ck), Checkpoint({}, None, {"done": 1}, {"seconds": 0}, {"seed": 5}))
    code, out, err = run(capsys, "train", MLP, "--updates", "2", "--checkpoint", ck, "--resume",
                         "-o", tmp_path / "t.onnx")
    assert code == 2 and "different run" in err and "seed" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.onnx").exists()


def test_resume_without_a_checkpoint_says_so(capsys, tmp_path):
    code, _, err = run(capsys, "train", MLP, "--updates", "2", "--checkpoint", tmp_path / "ck",
                       "--resume", "-o", tmp_path / "t.onnx")
    assert code == 2 and "no checkpoint to resume" in err


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_weights(tmp_path):
    cmd = [sys.executable, "-m", "projc.cli", "train", MLP, "--updates", "150", "--batch", "64",
           "--steps", "2"]
    ck = tmp_path / "ck"
    killed = cmd + ["--checkpoint", str(ck), "--checkpoint-every", "1", "-o", str(tmp_path / "r.onnx")]
    proc = subprocess.Popen(killed, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (ck / "checkpoint.npz").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # a few more updates, then a hard kill mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(str(ck)).schedule["done"]
    print("killed after checkpoint of update", done)
    assert 0 < done < 150, f"the run was not killed mid-way (checkpoint at update {done})"
    assert not (tmp_path / "r.onnx").exists()
    subprocess.run(killed + ["--resume"], check=True, capture_output=True, timeout=600)
    subprocess.run(cmd + ["-o", str(tmp_path / "ref.onnx")], check=True, capture_output=True, timeout=600)
    assert_same_initializers(tmp_path / "ref.onnx", tmp_path / "r.onnx")
