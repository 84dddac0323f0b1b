"""`projc train` as a new user meets it: option checks, output files, every bundled kind of model,
guards against bad numbers, frozen tensors, warnings, `--version`, and docs/ops.md in sync."""
import os
import stat
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from projc.cli import main, ops_markdown

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = os.path.join(ROOT, "models", "mlp_digits.onnx")
SKLEARN = os.path.join(ROOT, "models", "sklearn_mlp.onnx")
TINY = ["--updates", "2", "--batch", "32", "--steps", "2"]


def run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def initializers(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


# -- options refused before anything happens ------------------------------------------------------
@pytest.mark.parametrize("option, value, needle", [
    ("--batch", "0", "--batch"), ("--batch", "-5", "--batch"), ("--updates", "-3", "--updates"),
    ("--updates", "0", "--updates"), ("--steps", "0", "--steps"), ("--epochs", "0", "--epochs"),
    ("--epochs", "-1", "--epochs"), ("--lam", "0", "--lam"), ("--lam", "-2", "--lam"),
    ("--lam", "nan", "--lam"), ("--seed", "-1", "--seed"), ("--relaxation", "1.5", "--relaxation"),
    ("--relaxation", "0", "--relaxation"), ("--lr", "0", "--lr"), ("--lr", "inf", "--lr"),
    ("--batch", "two", "--batch"), ("--checkpoint-every", "0", "--checkpoint-every"),
])
def test_bad_option_exits_2_one_line_nothing_written(capsys, tmp_path, monkeypatch, option, value, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", MLP, option, value, "-o", "t.onnx")
    assert_one_line_error(code, err, needle)
    assert out == "" and os.listdir(tmp_path) == []


@pytest.mark.parametrize("extra, needle", [
    (["-o", ""], "-o is empty"),
    (["--resume"], "--resume needs --checkpoint"),
    (["--checkpoint-every", "2"], "needs --checkpoint"),
    (["--log", ""], "--log"),
])
def test_bad_option_combinations_exit_2(capsys, tmp_path, monkeypatch, extra, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", MLP, *TINY, *extra)
    assert_one_line_error(code, err, needle)
    assert "epoch" not in out and os.listdir(tmp_path) == []


def test_output_naming_a_folder_is_refused_before_training(capsys, tmp_path):
    code, out, err = run(capsys, "train", MLP, *TINY, "-o", tmp_path)
    assert_one_line_error(code, err, "is a folder")
    assert "epoch" not in out and os.listdir(tmp_path) == []


def test_read_only_destination_is_refused_before_training(capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write read-only folders")
        code, out, err = run(capsys, "train", MLP, *TINY, "-o", ro / "new" / "t.onnx")
        assert_one_line_error(code, err, "cannot write")
        assert "epoch" not in out and os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    import projc
    assert code == 0 and out.strip() == f"projc {projc.__version__}"


def test_docs_ops_md_is_generated_from_the_registry():
    """`make docs` writes docs/ops.md from the registry; it must not go stale."""
    with open(os.path.join(ROOT, "docs", "ops.md"), encoding="utf-8") as f:
        assert f.read() == ops_markdown(), "docs/ops.md is stale: run `make docs`"


def test_readme_trainable_ops_list_is_generated_from_the_passes():
    """`make docs` writes the README's list of ops that train from projc.passes.lowering_table()."""
    from projc.cli.docs import with_trainable_ops
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert with_trainable_ops(readme) == readme, "README.md's trainable-ops list is stale: run `make docs`"


def test_readme_links_point_to_existing_pages_and_it_stays_short():
    import re
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert links and all(os.path.exists(os.path.join(ROOT, link)) for link in links), links
    assert "make demo" in readme and "make test" in readme


def test_unsupported_op_message_points_to_existing_docs():
    from projc.frontend.importer import SUPPORTED_LIST_HINT
    assert "docs/ops.md" in SUPPORTED_LIST_HINT and os.path.isfile(os.path.join(ROOT, "docs", "ops.md"))


def test_ops_markdown_flag(capsys):
    code, out, _ = run(capsys, "ops", "--markdown")
    assert code == 0 and out.startswith("# Supported ONNX ops") and "| Gemm |" in out


# -- data guards ---------------------------------------------------------------------------------
def npz(tmp_path, x, y, name="d.npz"):
    path = tmp_path / name
    np.savez(path, X=x, y=y)
    return path


def test_nan_data_refused_naming_file_and_count(capsys, tmp_path):
    x = np.zeros((40, 64), np.float32)
    x[3, 5] = np.nan
    x[7, :3] = np.inf
    path = npz(tmp_path, x, np.zeros(40, np.int64))
    code, out, err = run(capsys, "train", MLP, *TINY, "--data", f"npz:{path}", "-o", tmp_path / "t.onnx")
    assert_one_line_error(code, err, str(path), "4 NaN or inf")
    assert not (tmp_path / "t.onnx").exists()


def test_empty_dataset_refused_not_hung(capsys, tmp_path):
    path = npz(tmp_path, np.zeros((0, 64), np.float32), np.zeros(0, np.int64))
    code, _, err = run(capsys, "train", MLP, *TINY, "--data", f"npz:{path}", "-o", tmp_path / "t.onnx")
    assert_one_line_error(code, err, "0 samples")


# -- training runs (each compiles a trainer: seconds on a loaded machine) ------------------------
@pytest.mark.slow
def test_trained_file_respects_umask_and_existing_mode(capsys, tmp_path):
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "new" / "folder" / "t.onnx"  # a missing folder is created
        code, out, _ = run(capsys, "train", MLP, *TINY, "-o", fresh)
        assert code == 0 and stat.S_IMODE(os.stat(fresh).st_mode) == 0o644
        kept = tmp_path / "kept.onnx"
        kept.write_bytes(b"old")
        kept.chmod(0o664)
        # fine-tuning: a file projc wrote is a model to train further, starting from its weights
        code, out, _ = run(capsys, "train", fresh, *TINY, "-o", kept)
        assert code == 0 and stat.S_IMODE(os.stat(kept).st_mode) == 0o664
        start, tuned = initializers(fresh), initializers(kept)
        assert start.keys() == tuned.keys() and any(not np.array_equal(start[k], tuned[k]) for k in start)
    finally:
        os.umask(old)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".projc-")]


@pytest.mark.slow
def test_adam_trains_and_the_banner_has_no_projection_steps(capsys, tmp_path):
    code, out, err = run(capsys, "train", MLP, *TINY, "--solver", "adam", "-o", tmp_path / "a.onnx")
    assert code == 0, err
    assert "steps/update" not in out and "lr 0.001" in out and "(onnxruntime)" in out


@pytest.mark.slow
def test_sklearn_classifier_is_rescored_through_its_outputs(capsys, tmp_path):
    out_path = tmp_path / "sk.onnx"
    code, out, err = run(capsys, "train", SKLEARN, *TINY, "-o", out_path)
    assert code == 0, err
    assert "(onnxruntime)" in out
    # the file keeps the classifier's own outputs only (the logits were added in memory)
    src, new = onnx.load(SKLEARN), onnx.load(str(out_path))
    assert [o.name for o in new.graph.output] == [o.name for o in src.graph.output]


@pytest.mark.slow
def test_squared_error_trains_on_one_hot_targets(capsys, tmp_path):
    code, out, err = run(capsys, "train", MLP, *TINY, "--loss", "squared_error", "-o", tmp_path / "s.onnx")
    assert code == 0, err
    assert (tmp_path / "s.onnx").exists()
    before, after = initializers(MLP), initializers(tmp_path / "s.onnx")
    assert any(not np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_freeze_keeps_initializers_exactly_and_inspect_lists_it(capsys, tmp_path):
    code, out, _ = run(capsys, "inspect", MLP, "--freeze", "fc1.weight,fc1.bias")
    assert code == 0 and "frozen    fc1.weight" in out and "trainable fc2.weight" in out
    assert "trainable fc1.weight" not in out
    code, out, err = run(capsys, "train", MLP, *TINY, "--freeze", "fc1.weight,fc1.bias", "-o", tmp_path / "f.onnx")
    assert code == 0, err
    assert "frozen fc1.weight, fc1.bias" in out.splitlines()[0]  # the run's header says what it kept fixed
    before, after = initializers(MLP), initializers(tmp_path / "f.onnx")
    assert np.array_equal(before["fc1.weight"], after["fc1.weight"])
    assert np.array_equal(before["fc1.bias"], after["fc1.bias"])
    assert not np.array_equal(before["fc2.weight"], after["fc2.weight"])


def test_freeze_unknown_name_lists_valid_ones(capsys, tmp_path):
    code, _, err = run(capsys, "train", MLP, *TINY, "--freeze", "fc9.weight", "-o", tmp_path / "f.onnx")
    assert_one_line_error(code, err, "fc9.weight", "trainable: fc1.weight")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_tiny_lam_warns_that_training_does_nothing(capsys, tmp_path):
    code, _, err = run(capsys, "train", MLP, *TINY, "--lam", "1e-6", "-o", tmp_path / "t.onnx")
    assert code == 0
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "barely move" in warnings[0] and "--lam" in warnings[0]


@pytest.mark.slow
def test_inputs_scaled_by_1e6_warn_before_training(capsys, tmp_path):
    from sklearn.datasets import load_digits
    digits = load_digits()
    path = npz(tmp_path, digits.data * 1e6, digits.target)
    code, out, err = run(capsys, "train", MLP, "--updates", "1", "--batch", "64", "--steps", "2",
                         "--data", f"npz:{path}", "-o", tmp_path / "t.onnx")
    assert code == 0
    warning = [line for line in err.splitlines() if "warning" in line][0]
    assert "|x| = 1.6e+07" in warning and "rescale" in warning


def test_large_inputs_warn_about_scaling():
    from projc.train.watch import input_scale_warning
    assert "rescale" in input_scale_warning(np.full((4, 3), 1e6))
    assert input_scale_warning(np.ones((4, 3))) is None


def test_exploding_loss_warns_once():
    from projc.train.watch import TrainingWatch
    watch = TrainingWatch(initial_loss=2.3)
    assert watch.check_loss(2.0) is None
    assert "rose from 2.3" in watch.check_loss(50.0)
    assert watch.check_loss(80.0) is None


@pytest.mark.slow
def test_non_finite_update_stops_naming_the_update(capsys, tmp_path, monkeypatch):
    import jax.numpy as jnp

    import projc.train.methods as methods
    from projc.backends.jax.methods import moved
    real = methods.build_method

    def poisoned(*args, **kw):  # the second update (progress 1/3) makes every parameter NaN
        return moved(real(*args, **kw), lambda p, q, t: jnp.where(t > 0.3, q * jnp.nan, q))

    monkeypatch.setattr(methods, "build_method", poisoned)
    code, _, err = run(capsys, "train", MLP, "--updates", "3", "--batch", "32", "--steps", "2",
                       "-o", tmp_path / "t.onnx")
    assert_one_line_error(code, err, "stopped at update 2", "fc2.bias")
    assert os.listdir(tmp_path) == []


def test_api_rejects_bad_param_dtypes_and_shapes_naming_the_param():
    import projc
    from projc.errors import ParamError
    tr = projc.compile(MLP, steps_per_update=2)
    good = tr.init_params()
    x, y = np.zeros((4, 64), np.float32), np.zeros(4, np.int64)
    for bad in (good["fc1.bias"].astype(np.int64), np.array(["a"] * 32), np.array([object()] * 32),
                np.zeros(7, np.float32)):
        with pytest.raises(ParamError, match="fc1.bias"):
            tr.update(dict(good, **{"fc1.bias": bad}), (), x, y)
        with pytest.raises(ParamError, match="fc1.bias"):
            tr.export(dict(good, **{"fc1.bias": bad}), "unused.onnx")


def test_interrupted_export_leaves_no_temporary_file(tmp_path, monkeypatch):
    import projc.frontend.export as export
    params = {t: v for t, v in initializers(MLP).items()}

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(export.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_onnx(MLP, params, tmp_path / "t.onnx")
    assert os.listdir(tmp_path) == []


def test_no_traceback_from_a_subprocess_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "projc.cli", "train", MLP, "--batch", "-5"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_ops_into_a_closed_pipe_has_no_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "projc.cli", "ops"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as `projc ops | head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err


@pytest.mark.parametrize("shape, needle", [([4, 64], "static shape [4,64]"), ([2, "B", 64], "batch axis is 1")])
def test_exports_without_a_leading_dynamic_batch_are_refused_before_training(capsys, tmp_path, shape, needle):
    """A static-batch export trained, wrote its file, then failed in onnxruntime; a sequence-first one
    crashed in the data loader. Both are one line before anything runs."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((64, 10), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    if len(shape) == 3:
        nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=0),
                 helper.make_node("MatMul", ["m", "w"], ["y"])]
    out_shape = ["B" if len(shape) == 3 else shape[0], 10]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    code, out, err = run(capsys, "train", path, *TINY, "-o", tmp_path / "t.onnx")
    assert_one_line_error(code, err, needle, "re-export")
    assert not (tmp_path / "t.onnx").exists()
