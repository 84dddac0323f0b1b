"""Recurrent models: RNN, GRU and LSTM forward against onnxruntime, and training by unrolling."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from projc.backends.jax.forward import run_forward
from projc.cli.compare import compare_model
from projc.errors import PassError
from projc.frontend.importer import from_onnx, load_model
from projc.ir import Value
from projc.ir.constraints import FAMILIES
from projc.passes import PassManager, compile_for_training
from projc.passes.bipartite import family_graph
from projc.passes.unroll import SMOOTH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _export_module():
    spec = importlib.util.spec_from_file_location("export_rnn", os.path.join(ROOT, "models",
                                                                             "export_rnn.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- torch exports --------------------------------------------------------------------------

TORCH_VARIANTS = {
    "rnn_relu": dict(cell="rnn", nonlinearity="relu"),
    "rnn_tanh_seq_first": dict(cell="rnn", batch_first=False),
    "rnn_relu_2layers_bi": dict(cell="rnn", nonlinearity="relu", layers=2, bidirectional=True),
    "gru": dict(cell="gru"),
    "gru_bi_seq_first": dict(cell="gru", bidirectional=True, batch_first=False),
    "lstm": dict(cell="lstm"),
    "lstm_2layers_bi": dict(cell="lstm", layers=2, bidirectional=True),
    "lstm_2layers_seq_first": dict(cell="lstm", layers=2, batch_first=False),
}


@pytest.fixture(scope="module")
def torch_exports(tmp_path_factory):
    pytest.importorskip("torch")
    module = _export_module()
    folder = tmp_path_factory.mktemp("rnn_exports")
    paths = {}
    for index, (name, kwargs) in enumerate(TORCH_VARIANTS.items()):
        paths[name] = str(folder / f"{name}.onnx")
        module.export(module.build(index, inputs=5, hidden=6, classes=3, **kwargs), paths[name],
                      steps=4)
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCH_VARIANTS))
def test_torch_export_matches_onnxruntime(torch_exports, name):
    """Every variant imports (dynamic batch: ConstantOfShape of the batch) and matches."""
    for batch in (1, 4, 9):
        report = compare_model(torch_exports[name], batch=batch, seed=batch)
        assert report.ok, report.format()


@pytest.mark.parametrize("name", ["rnn_digits", "gru_digits", "lstm_digits"])
def test_bundled_model_matches_onnxruntime(name):
    path = os.path.join(ROOT, "models", f"{name}.onnx")
    for batch in (1, 6):
        report = compare_model(path, batch=batch, seed=batch)
        assert report.ok, report.format()


def test_initial_state_of_the_batch_becomes_fill_like():
    """torch's zeros(layers, x.size(0), hidden) imports as a fill sized by the input's batch."""
    graph = load_model(os.path.join(ROOT, "models", "rnn_digits.onnx"))
    fills = [op for op in graph.ops if op.kind == "projc.fill_like"]
    assert len(fills) == 1
    assert fills[0].inputs[0] is graph.inputs[0] and fills[0].outputs[0].shape == (1, "B", 32)


# -- single nodes with every attribute, against onnxruntime ----------------------------------

def _node_model(op_type, hidden, directions, gates, attrs, *, steps=5, batch=3, inputs=4,
                peepholes=False, seq_lens=True, initial=True, seed=0):
    """A one-node model with random weights as initializers; X and sequence_lens are inputs."""
    rng = np.random.default_rng(seed)
    weights = {"W": (directions, gates * hidden, inputs), "R": (directions, gates * hidden, hidden),
               "B": (directions, 2 * gates * hidden)}
    state_shape = (directions, batch, hidden)
    names = ["X", "W", "R", "B", "sequence_lens" if seq_lens else ""]
    inits = [numpy_helper.from_array(rng.uniform(-0.6, 0.6, s).astype(np.float32), n)
             for n, s in weights.items()]
    states = ["initial_h"] + (["initial_c"] if op_type == "LSTM" else [])
    for state in states:
        names.append(state if initial else "")
        if initial:
            inits.append(numpy_helper.from_array(
                rng.standard_normal(state_shape).astype(np.float32), state))
    if peepholes:
        names.append("P")
        inits.append(numpy_helper.from_array(
            rng.uniform(-0.5, 0.5, (directions, 3 * hidden)).astype(np.float32), "P"))
    x_shape = [steps, batch, inputs]
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)]
    if seq_lens:
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32,
                                                          [batch]))
    outputs = ["Y", "Y_h"] + (["Y_c"] if op_type == "LSTM" else [])
    node = helper.make_node(op_type, names, outputs, hidden_size=hidden, **attrs)
    y_shape = [steps, directions, batch, hidden]
    shapes = [y_shape] + [list(state_shape)] * (len(outputs) - 1)
    graph = helper.make_graph([node], "g", graph_inputs,
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, s)
                               for o, s in zip(outputs, shapes)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    feed = {"X": rng.standard_normal(x_shape).astype(np.float32)}
    if seq_lens:
        feed["sequence_lens"] = rng.integers(1, steps + 1, batch).astype(np.int32)
        feed["sequence_lens"][0] = steps
    return model, feed


NODE_CASES = {
    "rnn_bi_relu_tanh_clip": ("RNN", 1, dict(direction="bidirectional", clip=0.7,
                                             activations=["Relu", "Tanh"]), {}),
    "rnn_reverse_affine_alpha": ("RNN", 1, dict(direction="reverse", activations=["Affine"],
                                                activation_alpha=[0.5], activation_beta=[0.1]),
                                 {}),
    "rnn_layout1": ("RNN", 1, dict(direction="bidirectional"), dict(layout=1)),
    "gru_linear_before_reset_reverse": ("GRU", 3, dict(direction="reverse",
                                                       linear_before_reset=1), {}),
    "gru_bi_custom_activations": ("GRU", 3, dict(
        direction="bidirectional", activations=["HardSigmoid", "LeakyRelu", "Sigmoid", "Tanh"],
        activation_alpha=[0.3, 0.2], activation_beta=[0.4]), {}),
    "gru_layout1_no_initial": ("GRU", 3, {}, dict(layout=1, initial=False)),
    "lstm_bi_peepholes_clip": ("LSTM", 4, dict(direction="bidirectional", clip=1.5),
                               dict(peepholes=True)),
    "lstm_reverse_layout1": ("LSTM", 4, dict(direction="reverse"), dict(layout=1)),
    "lstm_input_forget": ("LSTM", 4, dict(input_forget=1), dict(seq_lens=False)),
}


def _batch_first(model: onnx.ModelProto, feed: dict) -> tuple[onnx.ModelProto, dict]:
    """The same computation with layout=1: X and the initial states batch-first."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    node = model.graph.node[0]
    node.attribute.append(helper.make_attribute("layout", 1))
    for init in model.graph.initializer:
        if init.name.startswith("initial_"):
            init.CopyFrom(numpy_helper.from_array(
                np.swapaxes(numpy_helper.to_array(init), 0, 1).copy(), init.name))
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        order = {"X": (1, 0, 2), "Y": (2, 0, 1, 3), "sequence_lens": (0,)}.get(value.name, (1, 0, 2))
        sizes = [d.dim_value for d in dims]
        for d, axis in zip(dims, order):
            d.dim_value = sizes[axis]
    return model, {**feed, "X": np.swapaxes(feed["X"], 0, 1).copy()}


@pytest.mark.parametrize("case", sorted(NODE_CASES))
def test_node_matches_onnxruntime(case):
    """onnxruntime runs only layout=0: a layout=1 case is checked against its layout-0 twin."""
    op_type, gates, attrs, options = NODE_CASES[case]
    options = dict(options)
    batch_first = options.pop("layout", 0) if "layout" in options else 0
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    model, feed = _node_model(op_type, 4, directions, gates, attrs, **options)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feed)
    if batch_first:
        model, feed = _batch_first(model, feed)
        onnx.checker.check_model(model)
        want = [np.transpose(want[0], (2, 0, 1, 3))] + [np.swapaxes(w, 0, 1) for w in want[1:]]
    got = run_forward(from_onnx(model), None, feed, jit=False)
    assert len(got) == len(want)
    for name, a, b in zip(["Y", "Y_h", "Y_c"], got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{case}: {name}")


# -- training: the unroll pass ----------------------------------------------------------------

def _unrolled_forward(model: onnx.ModelProto, feed: dict, pipeline: str) -> list[np.ndarray]:
    graph = PassManager(pipeline).run(from_onnx(model))
    assert not any(op.kind in ("RNN", "GRU", "LSTM") for op in graph.ops)
    return run_forward(graph, None, feed, jit=False)


# Relu activations (both valid ONNX and trainable on every build): the unrolled gates, products
# and state updates must compute exactly what onnxruntime computes for the whole op.
UNROLL_CASES = {
    "rnn_bi_initial": ("RNN", 1, dict(direction="bidirectional", activations=["Relu", "Relu"]),
                       {}),
    "rnn_reverse_clip": ("RNN", 1, dict(direction="reverse", activations=["Relu"], clip=0.8),
                         dict(initial=False)),
    "gru_before_reset": ("GRU", 3, dict(activations=["Relu", "Relu"], linear_before_reset=1), {}),
    "gru_after_reset_bi": ("GRU", 3, dict(direction="bidirectional", linear_before_reset=0,
                                          activations=["Relu", "LeakyRelu", "Relu", "Relu"]),
                           dict(initial=False)),
    "lstm_bi": ("LSTM", 4, dict(direction="bidirectional", activations=["Relu"] * 6), {}),
    "lstm_zero_state_layout1": ("LSTM", 4, dict(activations=["Relu", "LeakyRelu", "Relu"]),
                                dict(initial=False, layout=1)),
    # the default sigmoid/tanh gates: a GRU's 1 - z is its own one_minus_sigmoid family, an
    # LSTM's o and zero-state c_0 pass through identities (the cells are bipartite as emitted)
    "gru_sigmoid_before_reset_bi": ("GRU", 3, dict(direction="bidirectional", linear_before_reset=1),
                                    {}),
    "gru_sigmoid_zero_state": ("GRU", 3, dict(linear_before_reset=1), dict(initial=False)),
    "gru_sigmoid_after_reset": ("GRU", 3, dict(linear_before_reset=0), {}),
    "lstm_sigmoid_bi": ("LSTM", 4, dict(direction="bidirectional"), {}),
    "lstm_sigmoid_zero_state": ("LSTM", 4, {}, dict(initial=False)),
}


@pytest.mark.parametrize("case", sorted(UNROLL_CASES))
def test_unrolled_forward_matches_onnxruntime(case):
    op_type, gates, attrs, options = UNROLL_CASES[case]
    options = dict(options)
    batch_first = options.pop("layout", 0)
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    model, feed = _node_model(op_type, 3, directions, gates, attrs, seq_lens=False, **options)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, feed)
    if batch_first:
        model, feed = _batch_first(model, feed)
        want = [np.transpose(want[0], (2, 0, 1, 3))] + [np.swapaxes(w, 0, 1) for w in want[1:]]
    got = _unrolled_forward(model, feed, "canonicalize,unroll,dce")
    for name, a, b in zip(["Y", "Y_h", "Y_c"], got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=f"{case}: {name}")


def test_training_ir_of_rnn_digits_is_unrolled_with_shared_weights():
    """8 steps: 8 relu families, 7 recurrent dots (h0 = 0), one input-product dot, and o[:, -1]
    (a Gather of trained values) lowered to a move; the same R^T feeds every step."""
    graph = compile_for_training(load_model(os.path.join(ROOT, "models", "rnn_digits.onnx")))
    kinds = [op.kind for op in graph.ops]
    relus = [op for op in graph.ops if op.kind == "sum_pwl"]
    assert len(relus) == 8 and kinds.count("dot") == 1 + 7 + 1
    recurrent = [op for op in graph.ops if op.kind == "dot" and op.inputs[0] in
                 {r.outputs[0] for r in relus}]
    assert len(recurrent) == 8 - 1  # the fc dot reads o[:, -1] through the Gather's moves
    assert len({op.inputs[1] for op in recurrent}) == 1
    assert "Gather" not in kinds and all(k[0].islower() for k in kinds)


def test_rnn_training_forward_matches_onnxruntime():
    path = os.path.join(ROOT, "models", "rnn_digits.onnx")
    graph = compile_for_training(load_model(path))
    x = np.random.default_rng(0).random((5, 8, 8), dtype=np.float32)
    got = run_forward(graph, None, {"x": x, "y": np.zeros(5, np.int64)}, jit=False)[0]
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["gru_digits", "rnn_tanh_digits", "lstm_digits"])
def test_smooth_gates_lower_to_sum_smooth(name):
    """tanh/sigmoid gates become sum_smooth families (the activations' exact projections), and the
    repaired graph splits into two sets: every weight shared across steps and gates is read by
    families of one set only (else the two-set solvers refuse it), no edge joins one set."""
    assert SMOOTH in FAMILIES
    graph = compile_for_training(load_model(os.path.join(ROOT, "models", f"{name}.onnx")))
    assert any(op.kind == SMOOTH for op in graph.ops)
    fg = family_graph(graph, with_params=True)
    for p in graph.params:
        assert len({op.annots["set"] for op in fg.neighbors(p)}) == 1, p.hint
    ops = [n for n in fg.nodes if not isinstance(n, Value)]
    assert all(u.annots["set"] != v.annots["set"] for u, v in fg.subgraph(ops).edges)


@pytest.mark.parametrize("name, most", [("gru_digits", 1), ("lstm_digits", 1)])
def test_gated_cells_need_almost_no_repair(name, most):
    """The GRU and LSTM cells are emitted bipartite: the repair adds at most one identity (a bias
    read by step 0 at the other parity), where it used to add 18 (GRU) and 12 (LSTM), one of them
    between the last h and the classifier, halving every pull of the loss on the recurrent part.
    The last step's h (what o[:, -1] reads) is the cell's own family, not an identity."""
    graph = compile_for_training(load_model(os.path.join(ROOT, "models", f"{name}.onnx")))
    repairs = [op for op in graph.ops if op.kind == "identity" and op.annots.get("repair")]
    assert len(repairs) <= most, [op.inputs[0].hint for op in repairs]
    producers = graph.producers()
    (y,) = [op for op in graph.ops if op.kind == "concat" and len(op.inputs) == 8]  # Y: every step's h
    last_h = producers[y.inputs[-1]].inputs[0]  # through its reshape to [1, 1, B, H]
    assert producers[last_h].kind == ("mul" if name == "lstm_digits" else "sum")


def test_untrainable_variants_are_refused_by_name():
    model, _ = _node_model("RNN", 3, 1, 1, dict(activations=["Relu"]), seq_lens=True)
    with pytest.raises(PassError, match="sequence_lens is not supported for training"):
        PassManager("canonicalize,unroll").run(from_onnx(model))
    model, _ = _node_model("LSTM", 3, 1, 4, dict(activations=["Relu"] * 3), seq_lens=False,
                           peepholes=True)
    with pytest.raises(PassError, match="peephole"):
        PassManager("canonicalize,unroll").run(from_onnx(model))


# -- shapes that depend on the symbolic batch -----------------------------------------------

def _batch_shape_model(tmp_path) -> str:
    """y = x + Expand(c, [B, 4]) + Cast(Range(0, B, 1))[:, None] + ConstantOfShape([B, 4], 2)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_axis"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "four"], ["b4"], axis=0),
        helper.make_node("Expand", ["c", "b4"], ["expanded"]),
        helper.make_node("Range", ["zero", "batch", "one"], ["rows"]),
        helper.make_node("Cast", ["rows"], ["rows_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["rows_f", "one_axis"], ["column"]),
        helper.make_node("ConstantOfShape", ["b4"], ["twos"],
                         value=numpy_helper.from_array(np.array([2.0], np.float32))),
        helper.make_node("Sum", ["x", "expanded", "column", "twos"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(v, dtype), n) for n, v, dtype in [
        ("zero", 0, np.int64), ("one", 1, np.int64), ("zero_axis", [0], np.int64),
        ("one_axis", [1], np.int64), ("four", [4], np.int64),
        ("c", [[0.5, -1.0, 2.0, 3.0]], np.float32)]]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                          ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              inits)
    path = str(tmp_path / "batch_shapes.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_constant_of_shape_expand_and_range_over_the_batch(tmp_path):
    path = _batch_shape_model(tmp_path)
    kinds = {op.kind for op in load_model(path).ops}
    assert {"projc.fill_like", "projc.expand_like", "projc.range_like"} <= kinds
    for batch in (1, 3, 8):
        report = compare_model(path, batch=batch, seed=batch)
        assert report.ok, report.format()


# -- the character-level text task -----------------------------------------------------------

def test_text_task_is_next_character_prediction():
    from projc.train.data import TEXT_VOCAB, char_windows, load_data

    X, y = char_windows(samples=50, steps=6)
    assert X.shape == (50, 6, len(TEXT_VOCAB)) and y.shape == (50,)
    np.testing.assert_array_equal(X.sum(-1), 1.0)  # one-hot characters
    text = "".join(TEXT_VOCAB[i] for i in np.concatenate([X[:2].argmax(-1), y[:2, None]], 1)
                   .reshape(-1))
    assert len(text) == 14 and set(text) <= set(TEXT_VOCAB)
    data = load_data("text", input_shape=(None, 16, len(TEXT_VOCAB)))
    assert data.x_train.shape[1:] == (16, len(TEXT_VOCAB)) and data.num_classes == len(TEXT_VOCAB)
    again = load_data("text", input_shape=(None, 16, len(TEXT_VOCAB)))
    np.testing.assert_array_equal(data.y_test, again.y_test)


def test_char_model_matches_onnxruntime():
    report = compare_model(os.path.join(ROOT, "models", "char_rnn.onnx"), batch=3, seed=0)
    assert report.ok, report.format()


@pytest.mark.slow
def test_relu_rnn_trains_on_digits_sequences_in_both_layouts():
    """AP on digits read as 8 steps of 8 pixels: the first update is the same in the copies and
    the consensus layouts (the tied weights' targets, means over 8 steps' edges through slices
    and transposes, agree with the consensus closed forms), and 20 updates beat chance clearly."""
    from projc import compile as compile_model
    from projc.train.data import load_data, minibatches

    path = os.path.join(ROOT, "models", "rnn_digits.onnx")
    data = load_data("digits", input_shape=(None, 8, 8))
    batches = list(zip(range(20), minibatches(data.x_train, data.y_train, 128, epochs=2)))
    trainers = {layout: compile_model(path, solver="ap", steps_per_update=20, layout=layout)
                for layout in ("copies", "consensus")}
    start = trainers["copies"].init_params()
    x, y = batches[0][1]
    first = {layout: t.update(start, (), x, y)[0] for layout, t in trainers.items()}
    for name, value in first["copies"].items():
        assert not np.allclose(value, start[name], atol=1e-6), f"{name} did not move"
        np.testing.assert_allclose(first["consensus"][name], value, rtol=1e-4, atol=1e-6,
                                   err_msg=name)
    trainer, params = trainers["consensus"], first["consensus"]
    before = trainer.evaluate(start, data.x_test, data.y_test)["accuracy"]
    state = trainer.init_state(params)
    for _, (x, y) in batches[1:]:
        params, state, _ = trainer.update(params, state, x, y)
    after = trainer.evaluate(params, data.x_test, data.y_test)["accuracy"]
    assert after > max(0.35, before + 0.25), (before, after)  # measured: 0.109 -> 0.465
