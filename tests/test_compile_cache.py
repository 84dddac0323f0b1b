"""The persistent compilation cache (projc.train.cache) and the exported updates stored beside it
(projc.train.exported_update): where they live, that a repeated process loads its update (the
exported module, then XLA's executable) instead of tracing and compiling it, that a changed model,
option or source does not load another's update, that a corrupt entry is rewritten, and that
every path computes bit-identical parameters."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import projc
from projc.config import Config
from projc.train import exported_update
from projc.train.cache import ENV, cache_dir
from projc.train.exported_update import SUBDIR, pack, source_files, unpack

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
ex = tr.exported_update
print(json.dumps({"sha": digest, "hits": len(hits), "dir": tr.cache_dir,
                  "loaded": ex and ex.loaded, "exported": ex and ex.exported}))
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
    assert (first["loaded"], first["exported"]) == (0, 1) and len(list((tmp_path / SUBDIR).iterdir())) == 1
    second = _run(str(tmp_path))
    assert second["hits"] > first["hits"]            # ... and loaded by the repeated process
    assert (second["loaded"], second["exported"]) == (1, 0)  # the exported update: no tracing
    assert len(list(tmp_path.iterdir())) == len(stored) and len(list((tmp_path / SUBDIR).iterdir())) == 1
    off = _run("off")
    no_option = _run(str(tmp_path / "unused"), use=False)
    assert off["dir"] is None and no_option["dir"] is None and not (tmp_path / "unused").exists()
    assert off["loaded"] is None and no_option["loaded"] is None  # no exported update either
    assert first["sha"] == second["sha"] == off["sha"] == no_option["sha"]


# -- exported updates in this process: the store at tmp_path, JAX's own cache left as it is ----------

X = np.random.default_rng(0).random((16, 64)).astype(np.float32)
Y = np.random.default_rng(1).integers(0, 10, 16)


def _store_at(monkeypatch, path: Path) -> None:
    """Trainers built from here on keep their exported updates under ``path`` (and do not point
    this process's JAX cache anywhere)."""
    monkeypatch.setattr("projc.train.cache.enable", lambda: str(path))


def _trained(model=None, **options):
    """(trainer, params after two updates) of mlp_digits (or ``model``), DR, 2 steps per update."""
    options = {"solver": "dr", "steps_per_update": 2, **options}
    tr = projc.compile(model or str(ROOT / "models" / "mlp_digits.onnx"), **options)
    p = tr.init_params()
    p, s, _ = tr.update(p, tr.init_state(p), X, Y)
    p, s, _ = tr.update(p, s, X, Y)
    return tr, {k: np.asarray(v) for k, v in p.items()}


def _entries(path: Path) -> list[Path]:
    return sorted((path / SUBDIR).iterdir())


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _counts(tr) -> tuple[int, int]:
    return tr.exported_update.loaded, tr.exported_update.exported


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["dr", "adam"])  # adam: a state (optax's named tuples) to carry
def test_an_exported_update_is_loaded_and_computes_the_uncached_bits(monkeypatch, tmp_path, solver):
    _store_at(monkeypatch, tmp_path)
    first, p_first = _trained(solver=solver)
    second, p_second = _trained(solver=solver)
    plain, p_plain = _trained(solver=solver, cache=False)
    assert _counts(first) == (0, 1) and _counts(second) == (1, 0) and plain.exported_update is None
    assert len(_entries(tmp_path)) == 1 and not first.exported_update.fallbacks
    assert _same(p_first, p_second) and _same(p_first, p_plain)


@pytest.mark.slow
def test_a_changed_option_model_or_source_does_not_load_another_update(monkeypatch, tmp_path):
    import onnx

    _store_at(monkeypatch, tmp_path)
    _trained()
    relaxed, _ = _trained(relaxation=0.7)
    assert _counts(relaxed) == (0, 1)
    # the same graph with one initializer changed: the bytes differ, so does the key
    proto = onnx.load(str(ROOT / "models" / "mlp_digits.onnx"))
    proto.graph.initializer[0].float_data[:] = []
    weights = onnx.numpy_helper.to_array(proto.graph.initializer[0]).copy()
    weights.flat[0] += 1.0
    proto.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(weights, proto.graph.initializer[0].name))
    changed, _ = _trained(proto)
    assert _counts(changed) == (0, 1)
    monkeypatch.setattr(exported_update, "source_digest", lambda: "an edited checkout")
    edited, _ = _trained()
    assert _counts(edited) == (0, 1) and len(_entries(tmp_path)) == 4


def test_the_source_digest_covers_projc_its_backends_and_passes():
    names = [name for name, _ in source_files()]
    assert "projc:train/trainer.py" in names and "projc.passes:lower.py" in names
    assert any(n.startswith("projc.backends:jax/") for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "flipped", "intact but not a module"])
def test_a_corrupt_entry_is_ignored_and_rewritten(monkeypatch, tmp_path, damage):
    _store_at(monkeypatch, tmp_path)
    _, p_first = _trained()
    [entry] = _entries(tmp_path)
    good = entry.read_bytes()
    bad = {"truncated": good[:len(good) // 2], "flipped": good[:-10] + bytes(10),
           "intact but not a module": pack(b"not an exported module")}[damage]
    entry.write_bytes(bad)
    again, p_again = _trained()
    assert _counts(again) == (0, 1) and _same(p_first, p_again)
    assert _entries(tmp_path) == [entry] and unpack(entry.read_bytes()) is not None
    assert unpack(bad) is None or damage == "intact but not a module"


@pytest.mark.slow
def test_an_unwritable_store_leaves_the_run_as_it_was(monkeypatch, tmp_path):
    (tmp_path / SUBDIR).write_text("a file where the folder should be")
    _store_at(monkeypatch, tmp_path)
    tr, p = _trained()
    _, p_plain = _trained(cache=False)
    assert _counts(tr) == (0, 1) and _same(p, p_plain)
