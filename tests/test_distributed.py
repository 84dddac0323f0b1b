"""Data parallelism (projc.train.distributed): 1, 2 and 4 devices and two processes give one device's weights.

Forced host devices need XLA_FLAGS before JAX starts, so every multi-device check runs this file as a
child process (``python tests/test_distributed.py CHECK ...``) that prints one JSON line.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp_digits.onnx")
RTOL = 1e-5  # relative to the largest entry of each parameter, float32


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _child(*args, devices: int = 4, timeout: int = 420) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], cwd=ROOT,
                         env=_env(devices), capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rel_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))
                   / max(float(np.max(np.abs(np.asarray(b[k])))), 1e-30)) for k in a)


def _train(solver, layout, devices, steps, updates, batch, **kw):
    import projc
    from projc.train.data import load_data

    data = load_data("digits")
    tr = projc.compile(MLP, solver=solver, layout=layout, steps_per_update=steps, devices=devices, **kw)
    p = tr.init_params()
    state = tr.init_state(p)
    for i in range(updates):
        sl = slice(i * batch, (i + 1) * batch)
        p, state, _ = tr.update(p, state, data.x_train[sl], data.y_train[sl])
    return tr, p


# -- children (run under forced host devices) -----------------------------------------------------
def child_equivalence(solver: str, layout: str) -> dict:
    """None (plain single device) vs 2 and 4 devices; the update's all-reduces from the HLO."""
    from projc.train.data import load_data
    from projc.train.distributed import all_reduce_stats, update_hlo

    steps, updates, batch = 5, 3, 64
    _, base = _train(solver, layout, None, steps, updates, batch)
    out = {"layout": None, "diff": {}, "sharding": {}, "plain_jit": {}}
    for n in (2, 4):
        tr, p = _train(solver, layout, n, steps, updates, batch)
        out["diff"][n] = _rel_diff(p, base)
        out["plain_jit"][n] = tr.exported_update is None  # data parallel: no exported update
        out["sharding"][n] = sorted({f"replicated={v.sharding.is_fully_replicated}/"
                                     f"{len(v.sharding.device_set)}" for v in p.values()})
        out["layout"] = type(tr.layout).__name__
    if solver == "ap":
        data = load_data("digits")
        out["hlo"] = all_reduce_stats(update_hlo(tr, data.x_train[:batch], data.y_train[:batch]))
        out["param_bytes"] = sum(4 * np.asarray(v).size for v in base.values())
        out["steps"] = steps
    return out


def child_solvers() -> dict:
    """The other solvers and the adam baseline: one short update on 2 devices vs one device."""
    out = {}
    for solver in ("ar", "dm", "cdr", "adam"):
        _, base = _train(solver, "auto", None, 2, 2, 32)
        _, p = _train(solver, "auto", 2, 2, 2, 32)
        out[solver] = _rel_diff(p, base)
    return out


def child_errors() -> dict:
    import projc
    from projc.errors import ProjcError

    msgs = {}
    tr = projc.compile(MLP, solver="ap", steps_per_update=2, devices=4)
    x, y = np.zeros((30, 64), np.float32), np.zeros(30, np.int64)
    for key, call in (("batch", lambda: tr.update(tr.init_params(), (), x, y)),
                      ("too_many", lambda: projc.compile(MLP, solver="ap", devices=8)),
                      ("bad_spec", lambda: projc.compile(MLP, solver="ap", devices="two"))):
        try:
            call()
            msgs[key] = None
        except ProjcError as err:
            msgs[key] = str(err)
    return msgs


CHILDREN = {"equivalence": child_equivalence, "solvers": child_solvers, "errors": child_errors}


# -- tests ----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("solver,layout,expect", [("ap", "consensus", "ConsensusLayout"),
                                                  ("cp", "consensus", "ConsensusLayout"),
                                                  ("dr", "copies", "CopiesLayout")])
def test_devices_give_one_device_weights(solver, layout, expect):
    res = _child("equivalence", solver, layout)
    assert res["layout"] == expect
    for n in ("2", "4"):
        assert res["diff"][n] <= RTOL, (n, res["diff"])
        assert res["sharding"][n] == [f"replicated=True/{n}"]
        assert res["plain_jit"][n]
    if solver == "ap":
        hlo = res["hlo"]
        assert hlo["ops"] > 0 and hlo["other_collectives"] == 0
        # every step averages every parameter's target over the whole (sharded) batch
        assert hlo["bytes"] >= res["steps"] * res["param_bytes"], hlo


@pytest.mark.slow
def test_other_solvers_and_adam_on_two_devices():
    res = _child("solvers", devices=2)
    assert set(res) == {"ar", "dm", "cdr", "adam"}
    for solver, diff in res.items():
        assert diff <= RTOL, (solver, diff)


@pytest.mark.slow
def test_errors_name_the_fix():
    msgs = _child("errors", timeout=240)
    assert "batch of 30 does not divide over 4 devices" in msgs["batch"]
    assert "multiple of 4" in msgs["batch"]
    assert "JAX sees 4" in msgs["too_many"] and "xla_force_host_platform_device_count" in msgs["too_many"]
    assert "positive integer, 'all' or a jax Mesh" in msgs["bad_spec"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _initializers(path: str) -> dict:
    import onnx
    from onnx import numpy_helper
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer
            if numpy_helper.to_array(i).dtype.kind == "f"}


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    train = [sys.executable, "-m", "projc.cli", "train", MLP, "--solver", "ap", "--steps", "5",
             "--updates", "3", "--batch", "64"]
    one = subprocess.run(train + ["-o", str(tmp_path / "one.onnx")], cwd=ROOT, env=_env(1),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    port = _free_port()
    procs = [subprocess.Popen(train + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                       "--process-id", str(i), "-o", str(tmp_path / "two.onnx")],
                              cwd=ROOT, env=_env(1), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "wrote" in outs[0][0] and outs[1][0] == ""  # process 0 logs and writes, 1 is silent
    assert sorted(os.listdir(tmp_path)) == ["one.onnx", "two.onnx"]
    a, b = _initializers(str(tmp_path / "two.onnx")), _initializers(str(tmp_path / "one.onnx"))
    assert _rel_diff(a, b) <= RTOL
    assert _rel_diff(a, _initializers(MLP)) > 1e-3  # training moved the weights


@pytest.mark.slow
def test_cli_rejects_a_batch_that_does_not_divide(tmp_path):
    out = subprocess.run([sys.executable, "-m", "projc.cli", "train", MLP, "--devices", "3",
                          "--batch", "64", "--updates", "1", "--steps", "2",
                          "-o", str(tmp_path / "m.onnx")], cwd=ROOT, env=_env(4),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "batch of 64 does not divide over 3 devices" in out.stderr
    assert not os.listdir(tmp_path)


def test_all_reduce_stats_counts_loop_trips():
    from projc.train.distributed import all_reduce_stats

    hlo = """%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %ar = f32[8]{0} all-reduce(f32[8]{0} %x), to_apply=%add
}
%cond (p: (s32[], f32[8])) -> pred[] {
  %c = pred[] compare(%a, %b)
}
ENTRY %main (a: f32[8]) -> f32[8] {
  %w = (s32[], f32[8]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"10"}}
  %ar2 = (f32[2,3]{1,0}, pred[]) all-reduce(%u, %v), to_apply=%add
}
"""
    assert all_reduce_stats(hlo) == {"ops": 2, "bytes": 10 * 32 + 24 + 1, "unknown_loops": 0,
                                     "other_collectives": 0}


if __name__ == "__main__":
    print(json.dumps(CHILDREN[sys.argv[1]](*sys.argv[2:])))
