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


def test_resume_without_a_checkpoint_starts_fresh_and_says_so(capsys, tmp_path):
    # issue 27 item 6: a job script that always passes --resume works on its first run too
    code, out, err = run(capsys, "train", MLP, "--updates", "2", "--batch", "32", "--steps", "2",
                         "--checkpoint", tmp_path / "ck", "--resume", "-o", tmp_path / "t.onnx")
    notes = [line for line in err.splitlines() if "note" in line]
    assert code == 0 and len(notes) == 1 and "no checkpoint yet" in notes[0] and "fresh" in notes[0], err
    assert "resuming" not in out and (tmp_path / "t.onnx").exists()
    assert load_checkpoint(str(tmp_path / "ck")).schedule["done"] == 2


# SIGKILL from inside the run at a seeded point: right after checkpoint K is saved, after checkpoint
# K's temporary is written but before its rename, or before the export's rename (both leave a stale
# .projc-PID...tmp that the resumed run must remove); "timed" kills from outside, a seeded delay after
# the first checkpoint, wherever the run then is.
KILLER = """
import os, signal, sys
mode, at = sys.argv[1], int(sys.argv[2])
import projc.train.checkpoint as ck
real_save, real_replace = ck.save_checkpoint, os.replace
armed = []
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def replace(src, dst):
    if armed or (mode == "export" and dst.endswith(".onnx")):
        die()
    return real_replace(src, dst)
def save(folder, c):
    if mode == "mid-write" and c.schedule["done"] == at:
        armed.append(1)
    path = real_save(folder, c)
    if mode == "after" and c.schedule["done"] == at:
        die()
    return path
os.replace = replace
ck.save_checkpoint = save
from projc.cli import main
sys.exit(main(sys.argv[3:]))
"""
KILL_SEED = 27
UPDATES = 60


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every killed-and-resumed run must reproduce bit for bit."""
    folder = tmp_path_factory.mktemp("ref")
    cmd = [sys.executable, "-m", "projc.cli", "train", MLP, "--updates", str(UPDATES), "--batch", "64",
           "--steps", "2", "-o", str(folder / "ref.onnx")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return folder / "ref.onnx", cmd[3:-2]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["after", "mid-write", "export", "timed"])
def test_sigkilled_run_resumes_to_the_same_weights(tmp_path, reference, mode):
    at = int(np.random.default_rng([KILL_SEED, ["after", "mid-write", "export", "timed"].index(mode)])
             .integers(2, UPDATES - 1))
    ref, args = reference
    ck = tmp_path / "ck"
    argv = args + ["--checkpoint", str(ck), "--checkpoint-every", "1", "-o", str(tmp_path / "r.onnx")]
    if mode == "timed":
        proc = subprocess.Popen([sys.executable, "-m", "projc.cli", *argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not (ck / "checkpoint.npz").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.002 * at)  # a few more updates, then a hard kill wherever the run is
        proc.send_signal(signal.SIGKILL)
        code = proc.wait()
    else:
        code = subprocess.run([sys.executable, "-c", KILLER, mode, str(at), *argv], capture_output=True,
                              timeout=600).returncode
    assert code == -signal.SIGKILL
    done = load_checkpoint(str(ck)).schedule["done"]
    stale = [f for f in os.listdir(ck) + os.listdir(tmp_path) if f.startswith(".projc-")]
    print(f"{mode}: killed with the checkpoint at update {done}, stale temporaries {stale}")
    expected = {"after": at, "mid-write": at - 1, "export": UPDATES}.get(mode)
    # a fast machine may finish every update before the kill lands: resuming then only exports
    assert done == expected if expected is not None else 0 < done <= UPDATES, "not killed mid-way"
    assert bool(stale) == (mode in ("mid-write", "export")) or mode == "timed"
    assert not (tmp_path / "r.onnx").exists()
    proc = subprocess.run([sys.executable, "-m", "projc.cli", *argv, "--resume"], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert_same_initializers(ref, tmp_path / "r.onnx")
    assert [f for f in os.listdir(ck) + os.listdir(tmp_path) if f.startswith(".projc-")] == []
