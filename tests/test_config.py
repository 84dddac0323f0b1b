"""projc.config: one declaration per option, from which the CLI flags, the API keywords, the range
errors and the checkpoint fingerprint derive; the method table; the constraint-op declarations and
the lowering table."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from projc.config import GROUPS, Config, MethodConfig, RunConfig, field_owners, fingerprint_defaults
from projc.errors import ProjcError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_keywords_land_in_their_group_and_groups_replace_whole():
    c = Config.build(solver="cp", batch=32, lam=2.0, freeze="fc1.weight")
    assert (c.method.solver, c.dataset.batch, c.task.lam) == ("cp", 32, 2.0)
    assert c.compilation.freeze == ("fc1.weight",)  # a single name becomes a tuple
    assert c.update == Config().update
    c2 = Config.build(c, method=MethodConfig(solver="ap", steps_per_update=7))
    assert (c2.method.solver, c2.method.steps_per_update, c2.dataset.batch) == ("ap", 7, 32)


@pytest.mark.parametrize("options, needle", [
    ({"batch": 0}, "batch must be a positive integer"), ({"lam": float("nan")}, "lam must be"),
    ({"relaxation": 1.5}, "relaxation must be a number in (0, 1]"), ({"solver": "sgd"}, "unknown solver 'sgd'"),
    ({"weight_decay": 1.0}, "weight_decay"), ({"update_scale": "fast"}, "update_scale"),
    ({"seed": -1}, "seed must be an integer >= 0"), ({"steps_per_update": 2.5}, "steps_per_update"),
    ({"learning_rate": 1e-3}, "unknown option 'learning_rate'"),
    ({"omega": 1.5, "solver": "dr"}, "applies to ap and cp"), ({"inertia": 0.5, "anderson": 2}, "not both"),
    ({"epochs": 2, "updates": 3}, "not both"), ({"resume": True}, "--resume needs --checkpoint"),
    ({"method": "dr"}, "method must be a projc.config.MethodConfig"),
])
def test_every_bad_value_is_one_projc_error_naming_the_option(options, needle):
    with pytest.raises(ProjcError) as err:
        Config.build(**options)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_option_names_are_unique_and_each_has_help_and_a_valid_default():
    owners = field_owners()
    assert len(owners) == sum(len(dataclasses.fields(cls)) for cls in GROUPS.values())
    for group in GROUPS.values():
        for f in dataclasses.fields(group):
            assert f.metadata["help"], f.name
            assert f.metadata["check"].ok(f.default), f.name


def test_every_cli_flag_comes_from_the_config():
    """`projc train --help` lists one flag per option (the flag the field declares)."""
    from projc.cli.main import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train._actions} - {"help", "model"}
    declared = {f.name for cls in GROUPS.values() for f in dataclasses.fields(cls) if f.metadata["flag"] is not None}
    assert dests == declared


def test_cli_and_api_build_the_same_config():
    from projc.cli.main import build_parser
    from projc.cli.train import config_from_args

    args = build_parser().parse_args(["train", "m.onnx", "--solver", "cp", "--steps", "7", "--batch", "32",
                                      "--freeze", "a,b", "--no-repair", "--update-scale", "1.5", "-o", "t.onnx"])
    assert config_from_args(args) == Config.build(solver="cp", steps_per_update=7, batch=32, freeze=("a", "b"),
                                                  repair=False, update_scale=1.5, output="t.onnx")


def test_fingerprint_keeps_the_keys_checkpoints_were_written_with():
    """Options that shaped runs before the config existed keep their keys; later ones enter only when
    changed, so an old checkpoint still resumes (its missing keys count as defaults)."""
    fp = Config().fingerprint()
    assert set(fp) == {"data", "seed", "batch", "solver", "steps", "loss", "lam", "relaxation", "layout", "lr",
                       "repair", "freeze"}
    assert fp["steps"] == 50 and fp["repair"] is True and fp["freeze"] == []
    changed = Config.build(tol=0.1, schedule="cosine", ce_method="fixed-point").fingerprint()
    assert changed["tol"] == 0.1 and changed["schedule"] == "cosine" and changed["ce_method"] == "fixed-point"
    assert fingerprint_defaults()["schedule"] == "constant"
    assert RunConfig.DEFAULT_EPOCHS == 10


def test_old_checkpoint_fingerprints_still_resume():
    from projc.train.checkpoint import check_fingerprint

    current = dict(Config().fingerprint(), model="abc", updates=7, data_digest="f00")
    old = {k: v for k, v in current.items() if k != "data_digest"}  # written before the data digest existed
    check_fingerprint("ckpt", old, current)
    with pytest.raises(ProjcError, match="data_digest"):
        check_fingerprint("ckpt", dict(current, data_digest="other"), current)
    with pytest.raises(ProjcError, match=r"schedule \('constant' then, 'cosine' now\)"):
        check_fingerprint("ckpt", old, dict(current, schedule="cosine"))


def test_the_gradient_baseline_is_named_only_in_the_method_table():
    """No `"adam"` branch anywhere in the library: the method table is the one place."""
    hits = []
    for folder in ("projc", "backends", "passes"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    if re.search(r"""["']adam["']""", open(path, encoding="utf-8").read()):
                        hits.append(os.path.relpath(path, ROOT))
    assert hits == [os.path.join("projc", "train", "methods.py")]


def test_constraint_ops_are_declared_once_and_registered_after_import():
    code = ("import projc.ops; from projc.ops import lookup; from projc.ir.constraints import OPS, defaults; "
            "print(all(lookup(k, 17).attrs == defaults(k) for k in OPS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "True"


def test_lowering_table_is_the_trainable_ops_list(capsys):
    from projc.cli import main
    from projc.ops import supported_ops
    from projc.passes import lowering_table

    table = lowering_table()
    assert {"Gemm", "Conv", "Relu", "Tanh", "GRU", "Softmax"} <= set(table)
    registered = set(supported_ops())
    assert set(table) <= registered, set(table) - registered
    assert main(["ops", "--trainable"]) == 0
    out = capsys.readouterr().out
    assert "| Conv | lower | conv, sum | any group (grouped, depthwise) |" in out


def test_unsupported_op_message_points_at_the_trainable_table(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from projc.frontend.importer import load_model
    from projc.passes import compile_for_training

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Cos", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])], [w])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ProjcError, match=r"Cos .*projc ops --trainable"):
        compile_for_training(load_model(path))
