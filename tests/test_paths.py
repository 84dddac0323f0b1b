"""Paths that would lose data are refused before anything runs (issue 27, findings 1, 4, 8 and 9).

`projc train` reads the model once and exports the graph it read; two of the model, -o, --log and
the checkpoint naming one file, over-long paths and symbolic links are refused with one line and
exit 2, nothing written; projc.compile takes a path, bytes or a ModelProto and nothing else, and an
in-memory model's external data loads only from an explicit base_dir."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from projc.cli import main
from projc.errors import ModelLoadError, ProjcError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp_digits.onnx")
SIGMOID = os.path.join(ROOT, "models", "sigmoid_mlp.onnx")
TINY = ["--updates", "2", "--batch", "32", "--steps", "2"]


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code, err, *needles):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(open(MLP, "rb").read())
    return path


@pytest.fixture
def no_compile(monkeypatch):
    """Fail the test if projc compiles anything: refusals must come first."""
    from projc.train.trainer import Trainer

    def refuse(*a, **kw):
        raise AssertionError("compiled a trainer before refusing")
    monkeypatch.setattr(Trainer, "__init__", refuse)


# -- finding 1: collisions --------------------------------------------------------------------------
@pytest.mark.parametrize("extra, needle", [
    (["--log", "{model}", "-o", "{tmp}/b.onnx"], "the model and --log"),
    (["-o", "{model}"], "the model and -o"),
    (["--log", "{tmp}/x", "-o", "{tmp}/x"], "-o and --log"),
    (["--checkpoint", "{tmp}/ck", "-o", "{tmp}/ck/checkpoint.npz"], "-o and --checkpoint"),
    (["--checkpoint", "{tmp}/ck", "--log", "{tmp}/ck/checkpoint.npz"], "--log and --checkpoint"),
    (["--log", "{tmp}/link.onnx"], "the model and --log"),   # a link to the model is the model
])
def test_two_roles_naming_one_file_are_refused_and_nothing_changes(capsys, tmp_path, model, no_compile,
                                                                  extra, needle):
    (tmp_path / "x").write_bytes(b"an old log")
    os.symlink(model, tmp_path / "link.onnx")
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    argv = [a.format(model=model, tmp=tmp_path) for a in extra]
    code, out, err = run(capsys, "train", model, *TINY, *argv)
    one_line(code, err, needle, "nothing was written")
    assert out == ""
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert sorted(os.listdir(tmp_path)) == sorted(["m.onnx", "x", "link.onnx"])


def graph_signature(path):
    m = onnx.load(str(path))
    return [(n.op_type, list(n.input), list(n.output)) for n in m.graph.node], \
        [(t.name, list(t.dims)) for t in m.graph.initializer]


@pytest.mark.slow
def test_replacing_the_model_mid_run_exports_the_graph_that_was_read(capsys, tmp_path, model, monkeypatch):
    # before the redesign the export re-read the path and wrote the new file's graph, exit 0
    from projc.train.trainer import Trainer
    real, calls = Trainer.update, []

    def update(self, *a, **kw):
        if not calls:
            model.write_bytes(open(SIGMOID, "rb").read())  # same parameter names, other activations
        calls.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(Trainer, "update", update)
    original = graph_signature(MLP)
    assert graph_signature(SIGMOID)[0] != original[0]
    code, out, err = run(capsys, "train", model, *TINY, "-o", tmp_path / "t.onnx")
    assert code == 0, err
    assert graph_signature(tmp_path / "t.onnx") == original
    trained = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "t.onnx")).graph.initializer}
    start = {t.name: numpy_helper.to_array(t) for t in onnx.load(MLP).graph.initializer}
    assert any(not np.array_equal(trained[k], start[k]) for k in start)


# -- finding 8: refusals before compiling ----------------------------------------------------------
def test_over_long_output_is_refused_before_compiling_even_with_resume(capsys, tmp_path, model, no_compile):
    long = tmp_path / ("x" * 300 + ".onnx")
    code, out, err = run(capsys, "train", model, *TINY, "-o", long, "--checkpoint", tmp_path / "ck",
                         "--resume")
    one_line(code, err, "-o", "longer than this file system allows")
    assert out == "" and sorted(os.listdir(tmp_path)) == ["m.onnx"]


@pytest.mark.parametrize("option", ["--log", "--checkpoint"])
def test_over_long_log_and_checkpoint_paths_are_refused(capsys, tmp_path, model, no_compile, option):
    long = str(tmp_path / ("y" * 300))
    code, _, err = run(capsys, "train", model, *TINY, option, long, "-o", tmp_path / "t.onnx")
    one_line(code, err, option, "longer than this file system allows")


# -- finding 4: symbolic links are refused, their targets untouched ------------------------------------
@pytest.mark.parametrize("role", ["-o", "--log", "checkpoint"])
def test_train_refuses_a_destination_that_is_a_link(capsys, tmp_path, model, no_compile, role):
    target = tmp_path / "precious.txt"
    target.write_bytes(b"keep me")
    if role == "checkpoint":
        (tmp_path / "ck").mkdir()
        os.symlink(target, tmp_path / "ck" / "checkpoint.npz")
        argv = ["--checkpoint", tmp_path / "ck", "-o", tmp_path / "t.onnx"]
    else:
        os.symlink(target, tmp_path / "link")
        argv = [role, tmp_path / "link"] + (["-o", tmp_path / "t.onnx"] if role != "-o" else [])
    code, out, err = run(capsys, "train", model, *TINY, *argv)
    one_line(code, err, "symbolic link", "precious.txt")
    assert target.read_bytes() == b"keep me" and os.path.islink(argv[1] if role != "checkpoint"
                                                                 else tmp_path / "ck" / "checkpoint.npz")
    assert not (tmp_path / "t.onnx").exists()


def test_plot_refuses_an_image_path_that_is_a_link(capsys, tmp_path):
    from projc.train.history import HistoryLog
    log = HistoryLog(str(tmp_path / "h.jsonl"))
    log.write(update=0, epoch=0, train_accuracy=0.1, test_accuracy=0.1, loss=2.3, seconds=0.0)
    log.close()
    target = tmp_path / "precious.png"
    target.write_bytes(b"keep me")
    os.symlink(target, tmp_path / "c.png")
    code, _, err = run(capsys, "plot", tmp_path / "h.jsonl", "-o", tmp_path / "c.png")
    one_line(code, err, "symbolic link")
    assert target.read_bytes() == b"keep me" and os.path.islink(tmp_path / "c.png")


def test_history_log_never_writes_through_a_link(tmp_path):
    from projc.train.history import HistoryLog
    target = tmp_path / "precious.txt"
    target.write_bytes(b"keep me")
    os.symlink(target, tmp_path / "h.jsonl")
    with pytest.raises(ProjcError, match="symbolic link"):
        HistoryLog(str(tmp_path / "h.jsonl"))
    assert target.read_bytes() == b"keep me"


def test_export_refuses_a_link_and_atomic_write_replaces_one_that_appears_later(tmp_path):
    from projc.frontend.export import export_onnx
    from projc.train.files import atomic_write
    params = {t.name: numpy_helper.to_array(t) for t in onnx.load(MLP).graph.initializer}
    target = tmp_path / "precious.onnx"
    target.write_bytes(b"keep me")
    os.symlink(target, tmp_path / "t.onnx")
    with pytest.raises(ProjcError, match="symbolic link"):
        export_onnx(MLP, params, tmp_path / "t.onnx")
    assert target.read_bytes() == b"keep me"
    # a link created between the check and the rename is replaced, its target left alone
    import projc.train.files as files
    real = files.refuse_link
    files.refuse_link = lambda *a: None
    try:
        atomic_write(tmp_path / "t.onnx", lambda f: f.write(b"new"), what="x")
    finally:
        files.refuse_link = real
    assert target.read_bytes() == b"keep me" and not os.path.islink(tmp_path / "t.onnx")
    assert (tmp_path / "t.onnx").read_bytes() == b"new"


# -- finding 9: the API's model argument -------------------------------------------------------------
def test_compile_takes_a_path_bytes_or_a_model_proto_and_nothing_else(tmp_path):
    import projc
    data = open(MLP, "rb").read()
    proto = onnx.load(MLP)
    by_path = projc.compile(MLP, steps_per_update=2)
    for source in (data, proto, bytearray(data)):
        tr = projc.compile(source, steps_per_update=2)
        assert tr.param_names == by_path.param_names and tr.source.digest == by_path.source.digest
    assert proto == onnx.load(MLP)  # the caller's proto is not modified
    tr.export(tr.init_params(), tmp_path / "t.onnx")
    assert graph_signature(tmp_path / "t.onnx") == graph_signature(MLP)
    for bad in (None, 123, 1.5, ["m.onnx"]):
        with pytest.raises(ProjcError, match="path, the bytes of an ONNX file or an onnx.ModelProto"):
            projc.compile(bad)
    with pytest.raises(ProjcError, match="unknown option 'stepz'"):
        projc.compile(MLP, stepz=3)
    with pytest.raises(ProjcError, match="seed must be an integer >= 0"):
        projc.compile(MLP, init="he", seed=-1)
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        projc.compile(b"not an onnx model")


def test_float16_params_are_cast_to_the_models_dtype():
    import projc
    tr = projc.compile(MLP, steps_per_update=2)
    params = {k: v.astype(np.float16) for k, v in tr.init_params().items()}
    x, y = np.random.default_rng(0).normal(size=(8, 64)).astype(np.float32), np.arange(8) % 10
    new, _, _ = tr.update(params, tr.init_state(params), x, y)
    assert all(np.asarray(v).dtype == np.float32 for v in new.values())


def _external_model(tmp_path):
    """mlp_digits with its weights in an external file beside it; returns (proto, data folder)."""
    folder = tmp_path / "data"
    folder.mkdir()
    m = onnx.load(MLP)
    onnx.save(m, str(folder / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    return onnx.load(str(folder / "m.onnx"), load_external_data=False), folder


def test_in_memory_external_data_loads_only_from_an_explicit_base_dir(tmp_path, monkeypatch):
    from projc.frontend.importer import from_onnx, read_model
    proto, folder = _external_model(tmp_path)
    monkeypatch.chdir(folder)  # the working directory holds weights.bin: it must not be used
    with pytest.raises(ModelLoadError, match="base_dir"):
        read_model(proto)
    with pytest.raises(ModelLoadError, match="base_dir"):
        from_onnx(proto)
    graph = from_onnx(proto, base_dir=str(folder))
    assert {v.hint for v in graph.params} == {t.name for t in onnx.load(MLP).graph.initializer}
    assert read_model(proto, base_dir=folder).proto.graph.initializer[0].HasField("raw_data")


def test_external_data_through_a_folder_link_out_of_base_dir_is_refused(tmp_path):
    from projc.frontend.importer import from_onnx
    proto, folder = _external_model(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.rename(folder / "weights.bin", outside / "weights.bin")
    os.symlink(outside, folder / "sub")
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "sub/weights.bin"
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        from_onnx(proto, base_dir=str(folder))
