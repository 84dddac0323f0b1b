"""The persistent compilation cache (projc.train.cache): where it lives, that a repeated process
loads its update from it, and that a cached executable computes bit-identical parameters."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from projc.config import Config
from projc.train.cache import ENV, cache_dir

ROOT = Path(__file__).resolve().parents[1]

DRIVER = r"""
import hashlib, json, sys
import jax
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if "cache_hits" in name else None)
import numpy as np
import projc
tr = projc.compile(sys.argv[1], solver="dr", steps_per_update=2, cache=sys.argv[2] == "1")
rng = np.random.default_rng(0)
x, y = rng.random((16, 64)).astype(np.float32), rng.integers(0, 10, 16)
p = tr.init_params()
q, _, _ = tr.update(p, tr.init_state(p), x, y)
digest = hashlib.sha256(b"".join(np.asarray(q[k]).tobytes() for k in sorted(q))).hexdigest()
print(json.dumps({"sha": digest, "hits": len(hits), "dir": tr.cache_dir}))
"""


def test_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == str(tmp_path / "projc" / "jax")
    monkeypatch.setenv(ENV, str(tmp_path / "elsewhere"))
    assert cache_dir() == str(tmp_path / "elsewhere")
    for off in ("off", "OFF", ""):
        monkeypatch.setenv(ENV, off)
        assert cache_dir() is None


def test_cache_is_an_option_outside_the_fingerprint():
    assert Config().compilation.cache is True
    assert "cache" not in Config.build(cache=False).fingerprint()


def _run(cache: str, use: bool = True) -> dict:
    env = dict(os.environ, **{ENV: cache})
    out = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT / "models" / "mlp_digits.onnx"), str(int(use))],
                         env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_second_process_loads_the_update_and_computes_the_same_bits(tmp_path):
    first = _run(str(tmp_path))
    stored = list(tmp_path.iterdir())
    assert first["dir"] == str(tmp_path) and stored  # the compiled executables were written
    second = _run(str(tmp_path))
    assert second["hits"] > first["hits"]            # ... and loaded by the repeated process
    assert len(list(tmp_path.iterdir())) == len(stored)
    off = _run("off")
    no_option = _run(str(tmp_path / "unused"), use=False)
    assert off["dir"] is None and no_option["dir"] is None and not (tmp_path / "unused").exists()
    assert first["sha"] == second["sha"] == off["sha"] == no_option["sha"]
