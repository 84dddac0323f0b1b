"""Defaults are a product (issue 25): the config knows what the user set, the recipe fills the rest
from the model's structure and says so, a flag always wins; data-calibrated init; tied parameters;
progress lines and the slow-update warning."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

import projc
from projc.config import Config, MethodConfig
from projc.errors import ProjcError

MODELS = Path(__file__).resolve().parents[1] / "models"


def _graph(name):
    from projc.frontend.importer import from_onnx, read_model
    src = read_model(str(MODELS / f"{name}.onnx"))
    return from_onnx(src.proto, path=src.label)


# -- what the user set -------------------------------------------------------------------------------

def test_config_records_the_options_the_user_set_even_at_their_defaults():
    c = Config.build(solver="dr", batch=32)
    assert c.explicit == {"solver", "batch"} and c.user_set() == {"solver", "batch"}
    # a given Config's non-default fields count as set; its explicit set carries over
    c2 = Config.build(Config(method=MethodConfig(steps_per_update=7)), lam=5.0)
    assert c2.user_set() == {"steps_per_update", "lam"}
    assert Config.build(c, steps_per_update=3).user_set() == {"solver", "batch", "steps_per_update"}
    # the recipe's values land only where nothing was set, and are not recorded as the user's
    filled = c.with_defaults({"solver": "cp", "batch": 64, "lam": 2.0})
    assert (filled.method.solver, filled.dataset.batch, filled.task.lam) == ("dr", 32, 2.0)
    assert filled.explicit == c.explicit
    with pytest.raises(ProjcError, match="explicit names unknown options"):
        Config(explicit=frozenset({"nope"}))


def test_cli_flags_given_are_the_explicit_options():
    from projc.cli.main import build_parser
    from projc.cli.train import config_from_args

    args = build_parser().parse_args(["train", "m.onnx", "--steps", "50", "--no-repair"])
    c = config_from_args(args)
    assert c.explicit == {"steps_per_update", "repair"} and c.method.steps_per_update == 50
    assert config_from_args(build_parser().parse_args(["train", "m.onnx"])) == Config()


# -- the rule table --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, rule", [("mlp_digits", "dense"), ("gru_digits", "gated-recurrent"),
                                        ("lstm_digits", "gated-recurrent"), ("rnn_digits", "recurrent"),
                                        ("staircase_mlp", "staircase"), ("quant_mlp", "staircase"),
                                        ("cnn_digits", "conv-data"), ("cnn2_digits", "conv-pairs-max"),
                                        ("lenet_digits", "conv-pairs-small"),
                                        ("fcn_maxlogits_digits", "conv-pairs-max"),
                                        ("gap_digits", "conv-pairs"), ("mbv2_digits", "conv-pairs"),
                                        # a Softmax read by a MatMul makes attention; a Conv of the
                                        # data before it (vit_digits' patch embedding) wins; a
                                        # LayerNorm alone, or a classifier's output Softmax, stays dense
                                        ("tfm_digits", "attention"), ("vit_digits", "conv-attention"),
                                        ("gpt_text", "attention"), ("ln_mlp", "dense"),
                                        ("relu_attn_digits", "dense"), ("sklearn_mlp", "dense")])
def test_each_bundled_structure_gets_its_rule(name, rule):
    from projc.train.recipe import Structure, rule_for
    assert rule_for(Structure.of(_graph(name))).name == rule


def test_a_decoder_on_next_token_targets_gets_the_gentle_prox():
    """gpt_text's structure alone is attention; per-step targets (a sequence task) pick next-token."""
    from projc.train.recipe import Structure, rule_for
    r = rule_for(Structure.of(_graph("gpt_text"), "sequence"))
    assert r.name == "next-token" and r.values["lam"] == 0.1
    r = rule_for(Structure.of(_graph("tfm_digits"), "classification"))
    assert r.name == "attention" and r.values["lam"] == 1.0
    assert rule_for(Structure.of(_graph("vit_digits"), "sequence")).name == "conv-attention"


def test_a_regression_gets_its_rule_from_the_task_and_a_classifier_keeps_its_own():
    """The task comes from the output and the targets: float targets on a dense model pick
    alternating projections with weight decay; the same file on class ids would not."""
    import numpy as np
    tr = projc.compile(str(MODELS / "reg_diabetes.onnx"), y=np.linspace(-1, 1, 8, dtype=np.float32))
    assert tr.task.kind == "regression" and tr.recipe.rule.name == "regression"
    assert tr.config.method.solver == "ap" and tr.config.update.weight_decay == 0.05
    tr = projc.compile(str(MODELS / "bce_cancer.onnx"), y=np.array([0, 1, 1, 0]))
    assert tr.task.kind == "binary" and tr.recipe.rule.name == "dense"
    tr = projc.compile(str(MODELS / "ae_digits.onnx"), target="input")
    assert tr.task.kind == "reconstruction" and tr.recipe.rule.name == "reconstruction"
    assert tr.update_scale == 1.0
    tr = projc.compile(str(MODELS / "reg_diabetes.onnx"), solver="dr", y=np.linspace(-1, 1, 8, dtype=np.float32))
    assert tr.config.update.weight_decay == 0.0 and "weight_decay" in tr.recipe.dropped  # tuned for ap


def test_every_rule_names_its_benchmark_and_sets_only_recipe_options():
    from projc.config import field_owners
    from projc.train.recipe import RECIPE_OPTIONS, RULES
    assert RULES[-1].when(None) is True  # the last rule catches everything
    for rule in RULES:
        assert rule.benchmark.startswith("benchmarks/recipes.py --models ") and rule.reason and rule.condition
        assert set(rule.values) <= RECIPE_OPTIONS <= set(field_owners())
        Config.build(**rule.values)  # every value passes its option's check


def test_a_flag_wins_and_another_solver_drops_the_rules_tuned_options():
    from projc.train.recipe import choose
    g = _graph("rnn_digits")
    r = choose(Config.build(batch=16), g)
    assert r.rule.name == "recurrent" and r.config.dataset.batch == 16 and "batch" in r.kept
    assert r.config.method.solver == "dr" and r.applied["solver"] == "dr"
    r = choose(Config.build(solver="adam"), g)
    assert r.config.method.solver == "adam" and r.config.dataset.batch == 64  # not tuned for a solver
    assert "update_scale" in r.dropped and "not applied under solver adam" in r.line()
    r = choose(Config.build(recipe="none"), g)
    assert r.rule is None and r.config == Config.build(recipe="none")


def test_trainer_uses_the_resolved_config_and_the_checkpoint_records_it():
    from projc.train.data import load_data
    from projc.train.loop import TrainingRun
    tr = projc.compile(str(MODELS / "rnn_digits.onnx"), steps_per_update=2)
    assert tr.config.dataset.batch == 64 and tr.config.method.steps_per_update == 2
    assert tr.recipe.rule.name == "recurrent" and tr.config.explicit == {"steps_per_update"}
    data = load_data("digits", input_shape=tr.input_shape)
    run = TrainingRun(Config.build(steps_per_update=2, updates=1), tr, data, verbose=False)
    fp = run.fingerprint()
    assert fp["batch"] == 64 and fp["steps"] == 2 and fp["solver"] == "dr" and "init" not in fp
    assert run.config.dataset.batch == 64


def test_inspect_recipe_shows_the_choice_without_training(capsys):
    from projc.cli.main import main
    assert main(["inspect", str(MODELS / "staircase_mlp.onnx"), "--recipe"]) == 0
    out = capsys.readouterr().out
    assert "recipe staircase:" in out and "init              data         recipe" in out
    assert "backed by  benchmarks/recipes.py" in out and " * staircase" in out and "s per update" in out



def test_data_init_trains_and_resumes_through_the_cli(capsys, tmp_path):
    # init 'data' needs a batch for the values; the memory plan and the resume check read only shapes
    from projc.cli.main import main
    args = ["train", str(MODELS / "staircase_mlp.onnx"), "--updates", "2", "--steps", "2",
            "--checkpoint", str(tmp_path / "ck"), "-o", str(tmp_path / "a.onnx")]
    assert main(args) == 0
    assert "recipe staircase:" in capsys.readouterr().out
    assert main([*args, "--resume"]) == 0  # the finished run's checkpoint: restored, nothing left
    assert "update 2 of 2" in capsys.readouterr().out

# -- data-calibrated init ----------------------------------------------------------------------------------

def test_data_init_spreads_a_staircase_over_its_levels_and_relu_layers_to_unit_variance():
    from projc.backends.jax.forward import run_forward
    from projc.train.data import load_data
    tr = projc.compile(str(MODELS / "staircase_mlp.onnx"), steps_per_update=1)
    assert tr.init == "data"
    with pytest.raises(ProjcError, match="init 'data' scales each layer on one batch"):
        tr.init_params()
    x = load_data("digits", input_shape=tr.input_shape).x_train[:256]
    p = tr.init_params(x)
    h = x @ p["net.0.weight"].T + p["net.0.bias"]
    levels = np.round(np.clip(h, 0, 2) * 2) / 2
    # the file's init puts almost every unit at level 0; the calibrated one uses every level
    h0 = x @ tr._init["net.0.weight"].T + tr._init["net.0.bias"]
    assert np.mean(np.round(np.clip(h0, 0, 2) * 2) == 0) > 0.85
    assert np.mean(levels == 0) < 0.5 and len(np.unique(levels)) == 5
    mlp = projc.compile(str(MODELS / "mlp_digits.onnx"), init="data", steps_per_update=1)
    q = mlp.init_params(x)
    (logits,) = run_forward(mlp.source_graph, q, {mlp.input_name: x})
    assert abs(float(np.std(logits)) - 1.0) < 1e-3


# -- tied parameters -------------------------------------------------------------------------------------

def test_tied_step_damps_only_parameters_read_by_several_families():
    import jax.numpy as jnp
    tr = projc.compile(str(MODELS / "rnn_digits.onnx"), steps_per_update=1, tied=1.0, read_scale=0.0)
    lay = tr.layout
    p = {k: jnp.asarray(v) for k, v in tr.init_params().items()}

    class Ctx:
        params = p
    acc = {}
    for v in lay.params:
        old = np.asarray(p[v.hint])
        k = 1 if v.hint.startswith("fc") else 4       # the classifier: one family; the cell: tied
        acc[v] = (jnp.asarray((old + 1.0) * k), np.full(old.shape, float(k)))   # every edge asks +1
    plain, out = lay._param_values(acc, Ctx()), lay._readout_values(acc, Ctx())
    for v in lay.params:
        move = np.asarray(out[v]) - np.asarray(p[v.hint])
        assert np.allclose(np.asarray(plain[v]) - np.asarray(p[v.hint]), 1.0, atol=1e-5)
        assert np.allclose(move, 1.0 if v.hint.startswith("fc") else 1.0 / (1 + 1.0 * 3), atol=1e-5), v.hint


def _ctx_for(layout, params, x):
    return layout.make_ctx(params, {"x": x, "y": np.zeros(len(x), np.int32)})


@pytest.mark.parametrize("model,solver,x_shape,expected", [
    # a 3x3 conv with pads 1 on 8x8: each weight and bias element is read at all 8·8 output positions
    ("cnn_digits", "dr", (1, 8, 8), {"conv.weight": 64, "conv.bias": 64, "fc.weight": 1, "fc.bias": 1}),
    ("cnn_digits", "cp", (1, 8, 8), {"conv.weight": 64, "conv.bias": 64, "fc.weight": 1, "fc.bias": 1}),
    # an RNN over 8 steps: the input weights and biases at every step, the recurrent weights at 7
    # (the first step reads the zero initial state, folded away)
    ("rnn_digits", "dr", (8, 8), {"onnx::RNN_40": 8, "onnx::RNN_41": 7, "onnx::RNN_42": 8, "fc.weight": 1}),
])
def test_reads_per_sample_count_each_parameters_uses_through_moves(model, solver, x_shape, expected):
    import jax.numpy as jnp
    tr = projc.compile(str(MODELS / f"{model}.onnx"), solver=solver, steps_per_update=1)
    lay = tr.layout
    p = {k: jnp.asarray(v) for k, v in tr.init_params().items()}
    for batch in (1, 5):     # per sample: the same at any batch
        reads = {v.hint: c for v, c in lay.reads_per_sample(_ctx_for(lay, p, np.zeros((batch,) + x_shape,
                                                                                     np.float32))).items()}
        for name, count in expected.items():
            assert reads[name].shape == p[name].shape
            assert np.all(reads[name] == count), (name, np.unique(reads[name]))


def _moves_when_every_copy_asks_plus_one(read_scale: float) -> dict[str, np.ndarray]:
    import jax.numpy as jnp
    tr = projc.compile(str(MODELS / "cnn_digits.onnx"), steps_per_update=1, read_scale=read_scale)
    lay = tr.layout
    p = {k: jnp.asarray(v) for k, v in tr.init_params().items()}
    ctx = _ctx_for(lay, p, np.zeros((4, 1, 8, 8), np.float32))
    acc = {v: (jnp.asarray(np.asarray(p[v.hint]) + 1.0), np.ones(p[v.hint].shape)) for v in lay.params}
    out = lay._readout_values(acc, ctx)
    return {v.hint: np.asarray(out[v]) - np.asarray(p[v.hint]) for v in lay.params}


def test_read_scale_multiplies_a_parameters_move_by_its_reads_per_sample():
    rho = 0.5
    for name, move in _moves_when_every_copy_asks_plus_one(rho).items():
        assert np.allclose(move, 64 ** rho if name.startswith("conv") else 1.0, rtol=1e-5), name
    for name, move in _moves_when_every_copy_asks_plus_one(0.0).items():   # off: the plain mean
        assert np.allclose(move, 1.0, rtol=1e-6), name


def test_the_conv_data_rule_sets_read_scale_and_a_keyword_wins():
    cnn, mlp = str(MODELS / "cnn_digits.onnx"), str(MODELS / "mlp_digits.onnx")
    tr = projc.compile(cnn, steps_per_update=1)
    assert tr.recipe.rule.name == "conv-data" and tr.layout.read_scale == 1.0 and tr.update_scale == 1.0
    assert projc.compile(cnn, steps_per_update=1, read_scale=0.0).layout.read_scale == 0.0
    assert projc.compile(mlp, steps_per_update=1).layout.read_scale == 0.0
    tr = projc.compile(str(MODELS / "cnn2_digits.onnx"), steps_per_update=1)
    assert tr.recipe.rule.name == "conv-pairs-max" and tr.layout.read_scale == 1.0 and tr.update_scale == 1.0
    tr = projc.compile(str(MODELS / "gap_digits.onnx"), steps_per_update=1)  # an average pool: none
    assert tr.recipe.rule.name == "conv-pairs" and tr.layout.read_scale == 0.0 and tr.update_scale == 1.5


def test_the_staircase_rule_projects_onto_ramps_and_a_keyword_wins():
    stair, mlp = str(MODELS / "staircase_mlp.onnx"), str(MODELS / "mlp_digits.onnx")
    tr = projc.compile(stair, steps_per_update=1)
    assert tr.recipe.rule.name == "staircase" and tr.layout.opts.staircase == "ramp"
    assert ("staircase", "ramp", "recipe") in tr.recipe.table()
    assert projc.compile(stair, steps_per_update=1, staircase="exact").layout.opts.staircase == "exact"
    assert projc.compile(mlp, steps_per_update=1).layout.opts.staircase == "exact"
    with pytest.raises(ProjcError, match="staircase"):
        projc.compile(stair, staircase="smooth")


# -- progress and the slow-update warning -------------------------------------------------------------------

def test_progress_prints_a_plain_line_every_30_seconds_without_the_compile_in_the_rate():
    from projc.train.progress import Progress
    now = [0.0]
    out = io.StringIO()
    pr = Progress(100, 10, 10, tty=False, stream=out, clock=lambda: now[0])
    now[0] = 40.0
    pr.update(1, 0, {"acc": "0.500"})            # the first update: compilation included
    assert "update 1/100 (epoch 1/10), the first update (compilation included) took 40s" in out.getvalue()
    for done in range(2, 12):
        now[0] += 5.0
        pr.update(done, (done - 1) // 10, {"acc": "0.700"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "update 7/100 (epoch 1/10), 5 s/update, 7m45s left, batch acc 0.700" in lines[1]
    quiet = io.StringIO()
    Progress(100, 10, 10, tty=False, stream=quiet, enabled=False, clock=lambda: now[0]).update(1, 0, {})
    assert quiet.getvalue() == ""


def test_slow_update_warning_names_the_faster_choice():
    from projc.train.progress import slow_update_warning
    from projc.train.recipe import update_estimate
    # lenet's second conv reads a moving input: copies of every product, consensus keeps means
    tr = projc.compile(str(MODELS / "lenet_digits.onnx"), solver="dr", steps_per_update=50)
    fast, _ = update_estimate(tr, 64)
    assert fast < 30 and slow_update_warning(fast, None) is None
    seconds, faster = update_estimate(tr, 1 << 12)
    assert seconds > 30 and faster.startswith("--solver cp keeps consensus means")
    assert slow_update_warning(seconds, faster).startswith("one update is estimated to take about ")
