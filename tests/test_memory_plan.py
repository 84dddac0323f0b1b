"""The memory plan (issue 27, finding 6): one update's bytes estimated from shapes, layout and solver
before XLA compiles anything, checked against what the process may allocate, and refused with one
line naming the estimate and what fits; the estimate is checked against XLA's own numbers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import projc
from projc.cli import main
from projc.errors import ProjcError
from projc.train import plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model(name):
    return os.path.join(ROOT, "models", f"{name}.onnx")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def xla_bytes(trainer, batch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, *trainer.input_shape[1:])).astype(np.float32)
    y = rng.integers(0, trainer.num_classes, batch)
    m = trainer.lower_update(x, y).compile().memory_analysis()
    return m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


# the copies and consensus layouts, smooth families, Adam; benchmarks/memory_plan.py has 28 (docs/reliability.md)
@pytest.mark.slow
@pytest.mark.parametrize("name, solver, batch", [
    ("mlp_digits", "dr", 256), ("tanh_mlp", "dr", 64), ("cnn2_digits", "dr", 32), ("gap_digits", "cp", 64),
    ("mlp_digits", "adam", 256),
])
def test_the_estimate_is_within_plan_factor_of_xla(name, solver, batch):
    trainer = projc.compile(model(name), solver=solver, steps_per_update=5)
    estimate = plan.plan_update(trainer, batch).total
    measured = xla_bytes(trainer, batch)
    ratio = measured / estimate
    print(f"{name} {solver} batch {batch}: XLA {measured} B, estimate {estimate} B, ratio {ratio:.2f}")
    assert 1 / plan.PLAN_FACTOR <= ratio <= plan.PLAN_FACTOR


def test_the_estimate_grows_with_the_batch_and_knows_the_layouts():
    trainer = projc.compile(model("cnn2_digits"), solver="dr")
    small, large = plan.plan_update(trainer, 256), plan.plan_update(trainer, 1024)
    assert small.layout == "copies" and 3.5 < large.state_bytes / small.state_bytes < 4.5
    # the README: DR on cnn2_digits materializes 2 x 256*64*32*144 floats (0.6 GB) per state at batch 256
    assert 2 * 256 * 64 * 32 * 144 * 4 < small.state_bytes < 2 * 2 * 256 * 64 * 32 * 144 * 4
    cp = projc.compile(model("cnn2_digits"), solver="cp")
    assert plan.plan_update(cp, 1024).layout == "consensus"
    assert plan.plan_update(cp, 1024).total < large.total / 10


def test_train_refuses_with_the_estimate_and_what_fits(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PROJC_MEMORY_LIMIT", "1G")
    code, out, err = run(capsys, "train", model("cnn2_digits"), "--solver", "dr", "--batch", "512",
                         "-o", tmp_path / "t.onnx")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "batch 512" in err and "needs about" in err and "GiB" in err and "PROJC_MEMORY_LIMIT" in err
    assert "--batch 64 (about 5" in err and "--solver cp" in err  # what fits in 1 GiB (128 needs ~1.0)
    assert out == "" and os.listdir(tmp_path) == []


def test_the_api_raises_a_projc_error_not_an_xla_one(monkeypatch):
    from projc.train.plan import MemoryPlanError
    monkeypatch.setenv("PROJC_MEMORY_LIMIT", "1M")
    trainer = projc.compile(model("mlp_digits"), steps_per_update=2)
    params = trainer.init_params()
    x, y = np.zeros((256, 64), np.float32), np.zeros(256, np.int64)
    with pytest.raises(MemoryPlanError, match="more than the 1.0 MiB"):
        trainer.update(params, trainer.init_state(params), x, y)
    assert issubclass(MemoryPlanError, ProjcError)
    # XLA running out anyway (the plan is an estimate): a MemoryPlanError too
    monkeypatch.delenv("PROJC_MEMORY_LIMIT")

    def exhausted(*a, **kw):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 4354367224 bytes.")

    monkeypatch.setattr(trainer, "_update", exhausted)
    monkeypatch.setattr(trainer, "exported_update", None)  # the update it runs is the jitted one
    with pytest.raises(MemoryPlanError, match="ran out of memory.*RESOURCE_EXHAUSTED"):
        trainer.update(params, trainer.init_state(params), x[:8], y[:8])


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs prlimit (util-linux)")
def test_cnn2_dr_batch_1024_under_a_4gb_limit_exits_2_before_compiling(tmp_path):
    # issue 27: this command died with a 62-line RESOURCE_EXHAUSTED traceback (batch 512 already)
    cmd = ["prlimit", f"--as={4 << 30}", sys.executable, "-m", "projc.cli", "train", model("cnn2_digits"),
           "--solver", "dr", "--batch", "1024", "-o", str(tmp_path / "t.onnx")]
    env = {k: v for k, v in os.environ.items() if k != "PROJC_MEMORY_LIMIT"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in proc.stderr.strip().splitlines() if "warning" not in ln.lower()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "needs about" in proc.stderr and "RLIMIT_AS 4.0 GiB" in proc.stderr and "--solver cp" in proc.stderr
    assert proc.stdout == "" and os.listdir(tmp_path) == []


def test_available_memory_reads_rlimits_in_a_subprocess():
    if shutil.which("prlimit") is None:
        pytest.skip("needs prlimit (util-linux)")
    code = "from projc.train.plan import available_memory as a; import jax; jax.devices(); print(*a(), sep='|')"
    env = {k: v for k, v in os.environ.items() if k != "PROJC_MEMORY_LIMIT"}
    proc = subprocess.run(["prlimit", f"--as={3 << 30}", sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=300, env=env)
    room, source = proc.stdout.strip().split("|")
    assert 0 < int(room) < 3 << 30 and source.startswith("RLIMIT_AS"), proc.stdout + proc.stderr


def test_available_memory_reads_the_cgroup_limit(monkeypatch):
    files = {"/proc/self/cgroup": "0::/job/step\n",
             "/sys/fs/cgroup/job/step/memory.max": "max", "/sys/fs/cgroup/job/step/memory.current": "100",
             "/sys/fs/cgroup/job/memory.max": str(3 << 30), "/sys/fs/cgroup/job/memory.current": str(1 << 30),
             "/proc/meminfo": "MemAvailable:   99999999 kB\n"}
    monkeypatch.setattr(plan, "_read", lambda path: files.get(path))
    monkeypatch.delenv("PROJC_MEMORY_LIMIT", raising=False)
    room, source = plan.available_memory()
    assert room == 2 << 30 and "/sys/fs/cgroup/job/memory.max" in source
    monkeypatch.setenv("PROJC_MEMORY_LIMIT", "512M")
    assert plan.available_memory() == (512 << 20, "PROJC_MEMORY_LIMIT")
    monkeypatch.setenv("PROJC_MEMORY_LIMIT", "lots")
    with pytest.raises(ProjcError, match="PROJC_MEMORY_LIMIT"):
        plan.available_memory()
