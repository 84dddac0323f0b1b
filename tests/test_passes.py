"""Golden (FileCheck-style) tests of each pass on IR text, plus the pass manager and idempotence."""
from __future__ import annotations

import io

import numpy as np
import pytest

from pass_util import evaluate, fill_data, run_ir
from projc.errors import PassError
from projc.ir.parser import parse_graph
from projc.ir.printer import format_graph
from projc.passes import OPTIONAL_PASSES, PASSES, TRAINING_PIPELINE, PassManager, make_pass, parse_pipeline

MLP = """graph @mlp {
  input %x: f32[B,64]
  param %fc1.weight: f32[32,64]
  param %fc1.bias: f32[32]
  param %fc2.weight: f32[10,32]
  param %fc2.bias: f32[10]
  %h: f32[B,32] = Gemm[alpha=1.0, beta=1.0, transA=0, transB=1] %x, %fc1.weight, %fc1.bias  {src="/fc1/Gemm"}
  %r: f32[B,32] = Relu %h  {src="/Relu"}
  %logits: f32[B,10] = Gemm[alpha=1.0, beta=1.0, transA=0, transB=1] %r, %fc2.weight, %fc2.bias  {src="/fc2/Gemm"}
  %p: f32[B,10] = Softmax[axis=1] %logits  {src="/Softmax"}
  return %p
}
"""


# -- pass manager ---------------------------------------------------------------------------

def test_parse_pipeline_options():
    ps = parse_pipeline("canonicalize,fold-constants,bipartite{repair=false},attach-loss{loss=cross_entropy lam=5.0}")
    assert [p.name for p in ps] == ["canonicalize", "fold-constants", "bipartite", "attach-loss"]
    assert ps[2].repair is False and ps[3].lam == 5.0 and ps[3].loss == "cross_entropy"
    assert parse_pipeline("attach-loss{loss=margin, lam=2}")[0].lam == 2.0


@pytest.mark.parametrize("bad, msg", [("nope", "unknown pass"), ("dce{x=1}", "no option"),
                                      ("bipartite{repair=maybe}", "cannot read"),
                                      ("bipartite{repair=true", "missing")])
def test_parse_pipeline_errors(bad, msg):
    with pytest.raises(PassError, match=msg):
        parse_pipeline(bad)


def test_training_pipeline_names_registered_passes():
    assert {p.name for p in parse_pipeline(TRAINING_PIPELINE)} == set(PASSES) - set(OPTIONAL_PASSES)


def test_print_after_and_timing():
    out = io.StringIO()
    PassManager("attach-loss,canonicalize,dce", print_after=("canonicalize",), time_passes=True,
                out=out).run(parse_graph(MLP))
    text = out.getvalue()
    assert text.count("// -----// IR Dump After") == 1
    assert "// -----// IR Dump After canonicalize{train_batchnorm=false} //----- //" in text
    assert "Pass execution timing report" in text and "Total" in text
    out = io.StringIO()
    PassManager("attach-loss,canonicalize", print_after_all=True, out=out).run(parse_graph(MLP))
    assert "IR Dump After attach-loss{loss=cross_entropy lam=5.0 method=newton delta=1.0}" in out.getvalue()


def test_full_pipeline_golden_mlp():
    run_ir(MLP + """
# CHECK: label %y: i64[B]
# CHECK: %0: f32[64,32] = transpose[perm=[1, 0]] %fc1.weight
# CHECK: %1: f32[B,32] = dot %x, %0  {layer=4, proj="linear", set="A", src="/fc1/Gemm"}
# CHECK: %r: f32[B,32] = sum_pwl[fn="relu"] %1, %fc1.bias  {layer=3, proj="closed", set="B", src="/Relu"}
# CHECK: %2: f32[32,10] = transpose[perm=[1, 0]] %fc2.weight
# CHECK: %3: f32[B,10] = dot %r, %2  {layer=2, proj="bilinear", set="A"
# CHECK: %logits: f32[B,10] = sum %3, %fc2.bias  {layer=1, proj="closed", set="B"
# CHECK: cross_entropy[lam=5.0, method="newton"] %logits, %y  {layer=0, set="A"}
# CHECK-NOT: Softmax
# CHECK: return %logits
""", TRAINING_PIPELINE)


# -- canonicalize ---------------------------------------------------------------------------

def test_canonicalize_gemm_alpha_beta_trans():
    g, _ = run_ir("""graph @g {
  input %a: f32[4,3]
  param %b: f32[5,4]
  param %c: f32[5]
  %y: f32[3,5] = Gemm[alpha=2.0, beta=0.5, transA=1, transB=1] %a, %b, %c
  return %y
}
# CHECK: const %alpha: f32[] = 2.0
# CHECK: const %beta: f32[] = 0.5
# CHECK: %0: f32[3,4] = transpose[perm=[1, 0]] %a
# CHECK: %1: f32[4,5] = transpose[perm=[1, 0]] %b
# CHECK: %2: f32[3,5] = dot %0, %1
# CHECK: %3: f32[3,5] = mul %2, %alpha
# CHECK: %4: f32[5] = mul %c, %beta
# CHECK: %y: f32[3,5] = sum %3, %4
""", "canonicalize")


def test_canonicalize_numerics_match_onnx_semantics():
    text = """graph @g {
  input %x: f32[2,4]
  param %w: f32[4,3]
  param %b: f32[3]
  const %k: f32[3] = [2.0, 4.0, 8.0]
  param %bn.s: f32[3]
  param %bn.b: f32[3]
  param %bn.m: f32[3]
  param %bn.v: f32[3]
  %g1: f32[3,2] = Gemm[alpha=0.5, beta=2.0, transA=1, transB=0] %x, %w, %b
  %t: f32[2,3] = Transpose[perm=[1, 0]] %g1
  %m: f32[2,3] = MatMul %x, %w
  %s: f32[2,3] = Sub %t, %k
  %s2: f32[2,3] = Sub %s, %m
  %d: f32[2,3] = Div %s2, %k
  %n: f32[2,3] = Neg %d
  %l: f32[2,3] = LeakyRelu[alpha=0.1] %n
  %c: f32[2,3] = Clip %l, %lo, %hi
  %ab: f32[2,3] = Abs %c
  %sg: f32[2,3] = Sign %m
  %e: f32[2,3] = Add %ab, %sg
  %bn: f32[2,3] = BatchNormalization[epsilon=1e-05, momentum=0.9, training_mode=0] %e, %bn.s, %bn.b, %bn.m, %bn.v
  %i: f32[2,3] = Identity %bn
  %f: f32[2,3] = Flatten[axis=1] %i
  return %f
}
""".replace("  %g1", "  const %lo: f32[] = -0.5\n  const %hi: f32[] = 0.75\n  %g1")
    # Gemm with transA: x is [2,4]; use A^T so the op is x^T (4x2)? keep shapes consistent:
    text = text.replace("transA=1, transB=0] %x, %w, %b", "transA=0, transB=0] %x, %w, %b").replace(
        "%g1: f32[3,2]", "%g1: f32[2,3]").replace("Transpose[perm=[1, 0]] %g1", "Identity %g1")
    ref = parse_graph(text)
    fill_data(ref)
    var = next(v for v in ref.initializers if v.hint == "bn.v")
    var.data = np.abs(var.data) + 0.5  # bn variance > 0
    g = ref.clone()
    PassManager("canonicalize,fold-constants,dce").run(g)
    kinds = {op.kind for op in g.ops}
    assert kinds <= {"dot", "mul", "sum", "sum_pwl", "transpose", "reshape"}, kinds
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    want = evaluate(ref, {"x": x})[0]
    assert np.isfinite(want).all() and np.ptp(want) > 0
    np.testing.assert_allclose(evaluate(g, {"x": x})[0], want, rtol=1e-5, atol=1e-5)


def test_canonicalize_activations_and_removals():
    run_ir("""graph @g {
  input %x: f32[B,6]
  const %lo: f32[] = 0.0
  const %hi: f32[] = 6.0
  %a: f32[B,6] = Cast[to=1] %x
  %b: f32[B,6] = Identity %a
  %c: f32[B,6] = Relu %b
  %d: f32[B,6] = Clip %c, %lo, %hi
  %e: f32[B,6] = Dropout[seed=0] %d
  %f: f32[B,2,3] = Reshape %e, %shape
  return %f
}
# CHECK: %c: f32[B,6] = sum_pwl[fn="relu"] %x
# CHECK: %d: f32[B,6] = sum_pwl[fn="clip", hi=6.0, lo=0.0] %c
# CHECK: %f: f32[B,2,3] = reshape[shape=[-1, 2, 3]] %d
# CHECK: return %f
""".replace("  %a:", "  const %shape: i64[3] = [-1, 2, 3]\n  %a:"), "canonicalize,dce")


def test_canonicalize_batch_matmul_is_a_batched_dot():
    # matmul semantics over the leading dims (attention's q·kᵀ and p·v): one dot family
    g, _ = run_ir("""graph @g {
  input %x: f32[2,3,4]
  param %w: f32[2,4,5]
  %y: f32[2,3,5] = MatMul %x, %w  {src="/bmm"}
  # CHECK: %y: f32[2,3,5] = dot %x, %w
  return %y
}
""", "canonicalize")
    fill_data(g)
    x = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    (y,) = evaluate(g, {"x": x})
    np.testing.assert_allclose(y, x @ g.params[0].data, rtol=1e-5, atol=1e-5)


# -- fold-constants, dce --------------------------------------------------------------------

def test_fold_constants_and_dce():
    g, out = run_ir("""graph @g {
  input %x: f32[B,2]
  const %a: f32[2] = [1.0, 2.0]
  const %b: f32[2] = [3.0, 5.0]
  const %unused: f32[1] = [0.0]
  %c: f32[2] = mul %a, %b
  %t: f32[2,1] = reshape[shape=[2, 1]] %c
  %s: i64[2] = Shape %t
  %y: f32[B,2] = sum %x, %c
  %dead: f32[B,2] = sum %x, %x
  return %y
}
# CHECK: const %c: f32[2] = [3.0, 10.0]
# CHECK-NOT: mul
# CHECK-NOT: %dead
# CHECK-NOT: %unused
# CHECK: %y: f32[B,2] = sum %x, %c
""", "fold-constants,dce")
    assert len(g.ops) == 1 and [v.hint for v in g.initializers] == ["c"]


# -- fuse-activations -----------------------------------------------------------------------

def test_fuse_sum_chain_into_pwl_and_nary_sum():
    run_ir("""graph @g {
  input %x: f32[B,4]
  param %w: f32[4,4]
  param %b1: f32[4]
  param %b2: f32[4]
  %d: f32[B,4] = dot %x, %w
  %s1: f32[B,4] = sum %d, %b1
  %s2: f32[B,4] = sum %s1, %b2
  %r: f32[B,4] = sum_pwl[fn="relu"] %s2
  %t1: f32[B,4] = sum %r, %b1
  %t2: f32[B,4] = sum %t1, %x
  return %t2
}
# CHECK: %d: f32[B,4] = dot %x, %w
# CHECK-NOT: %s1
# CHECK: %r: f32[B,4] = sum_pwl[fn="relu"] %d, %b1, %b2
# CHECK: %t2: f32[B,4] = sum %r, %b1, %x
""", "fuse-activations")


def test_fuse_keeps_shared_intermediates():
    run_ir("""graph @g {
  input %x: f32[B,4]
  param %b: f32[4]
  %s: f32[B,4] = sum %x, %b
  %r: f32[B,4] = sum_pwl[fn="relu"] %s
  %o: f32[B,4] = sum %r, %s
  return %o
}
# CHECK: %s: f32[B,4] = sum %x, %b
# CHECK: %r: f32[B,4] = sum_pwl[fn="relu"] %s
# CHECK: %o: f32[B,4] = sum %r, %s
""", "fuse-activations")


# -- lower ----------------------------------------------------------------------------------

CNN = """graph @cnn {
  input %x: f32[B,2,5,5]
  param %w: f32[3,2,3,3]
  param %b: f32[3]
  param %fw: f32[4,3]
  %c: f32[B,3,5,5] = Conv[dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]] %x, %w, %b  {src="/conv"}
  %r: f32[B,3,5,5] = Relu %c
  %p: f32[B,3,3,3] = MaxPool[ceil_mode=0, kernel_shape=[2, 2], pads=[0, 0, 1, 1], strides=[2, 2]] %r
  %m: f32[B,3,1,1] = ReduceMax[axes=[2, 3], keepdims=1] %p
  %g: f32[B,3,1,1] = GlobalMaxPool %r
  %s: f32[B,3,1,1] = Add %m, %g
  %f: f32[B,3] = Flatten[axis=1] %s
  %o: f32[B,4] = Gemm[alpha=1.0, beta=1.0, transA=0, transB=1] %f, %fw
  return %o
}
"""  # noqa: E501 (IR text: one op per line)


def test_lower_conv_pool_golden():
    run_ir(CNN + """
# CHECK: %0: f32[B,5,5,18] = patches[dilations=[1, 1], kernel=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]] %x
# CHECK: %1: f32[3,18] = reshape[shape=[3, 18]] %w
# CHECK: %2: f32[18,3] = transpose[perm=[1, 0]] %1
# CHECK: %3: f32[B,5,5,3] = dot %0, %2
# CHECK: %4: f32[B,3,5,5] = transpose[perm=[0, 3, 1, 2]] %3
# CHECK: %5: f32[3,1,1] = reshape[shape=[3, 1, 1]] %b
# CHECK: %c: f32[B,3,5,5] = sum %4, %5
# CHECK: pad[pads=[0, 0, 0, 0, 0, 0, 1, 1], value=-inf] %r
# CHECK: patches[dilations=[1, 1], kernel=[2, 2], pads=[0, 0, 0, 0], strides=[2, 2]]
# CHECK: f32[B,3,3,3,4] = reshape[shape=[-1, 3, 3, 3, 4]]
# CHECK: f32[B,3,3,3] = max[axes=[4], keepdims=0]
# CHECK: %p: f32[B,3,3,3] = transpose[perm=[0, 3, 1, 2]]
# CHECK: %m: f32[B,3,1,1] = max[axes=[2, 3], keepdims=1] %p
# CHECK: %g: f32[B,3,1,1] = max[axes=[2, 3], keepdims=1] %r
""", "canonicalize,lower{conv=patches}")


def test_lower_numerics_match_onnx_ops():
    ref = parse_graph(CNN)
    fill_data(ref)
    g = ref.clone()
    PassManager(TRAINING_PIPELINE).run(g)
    x = np.random.default_rng(2).standard_normal((3, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(evaluate(g, {"x": x})[0], evaluate(ref, {"x": x})[0], rtol=1e-5, atol=1e-5)


GLOBAL_MAX = """graph @gmax {
  input %x: f32[B,2,4,4]
  param %w: f32[3,2,3,3]
  param %b: f32[3]
  %c: f32[B,3,4,4] = Conv[dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1]] %x, %w, %b
  %p: f32[B,3,1,1] = MaxPool[ceil_mode=0, kernel_shape=[4, 4], strides=[4, 4]] %c
  %f: f32[B,3] = Flatten[axis=1] %p
  return %f
}
"""


def test_lower_maxpool_over_the_whole_input_is_a_global_max():
    """A MaxPool whose one window covers the input (torch's AdaptiveMaxPool2d(1) export) needs no
    patches: max over the spatial axes, as GlobalMaxPool."""
    run_ir(GLOBAL_MAX + """
# CHECK: %c: f32[B,3,4,4] = sum
# CHECK-NOT: patches
# CHECK: %p: f32[B,3,1,1] = max[axes=[2, 3], keepdims=1] %c
""", "canonicalize,lower")
    padded = GLOBAL_MAX.replace("strides=[4, 4]]", "pads=[0, 0, 1, 1], strides=[4, 4]]").replace(
        "f32[B,3,1,1] = MaxPool", "f32[B,3,1,1] = MaxPool")
    g, _ = run_ir(padded + "\n# CHECK: patches[dilations=[1, 1], kernel=[4, 4]\n", "canonicalize,lower{conv=patches}")
    assert sum(op.kind == "patches" for op in g.ops) == 2  # the conv's and the padded pool's


@pytest.mark.parametrize("keepdims", [1, 0])
def test_hoist_max_offset_moves_the_conv_bias_after_the_max(keepdims):
    text = GLOBAL_MAX.replace("MaxPool[ceil_mode=0, kernel_shape=[4, 4], strides=[4, 4]]",
                              f"ReduceMax[axes=[2, 3], keepdims={keepdims}]")
    if not keepdims:
        text = text.replace("%p: f32[B,3,1,1]", "%p: f32[B,3]").replace("Flatten[axis=1] %p", "Identity %p")
    out = "f32[B,3,1,1]" if keepdims else "f32[B,3]"
    bias = "%5" if keepdims else "%7"  # keepdims=0: the bias [3,1,1] is reshaped to [3]
    g, _ = run_ir(text + f"""
# CHECK: %4: f32[B,3,4,4] = transpose[perm=[0, 3, 1, 2]] %3
# CHECK: %5: f32[3,1,1] = reshape[shape=[3, 1, 1]] %b
# CHECK-NOT: sum
# CHECK: %6: {out} = max[axes=[2, 3], keepdims={keepdims}] %4
# CHECK: = sum %6, {bias}
""", "canonicalize,lower{conv=patches},hoist-max-offset,dce")
    assert [op.kind for op in g.ops].count("sum") == 1
    ref = parse_graph(text)
    fill_data(ref)
    plain, hoisted = ref.clone(), ref.clone()
    PassManager("canonicalize,lower{conv=patches}").run(plain)
    PassManager("canonicalize,lower{conv=patches},hoist-max-offset,dce").run(hoisted)
    x = np.random.default_rng(3).standard_normal((4, 2, 4, 4)).astype(np.float32)
    want = evaluate(ref, {"x": x})[0]
    np.testing.assert_allclose(evaluate(hoisted, {"x": x})[0], want, rtol=1e-5, atol=1e-5)
    # rounding is monotone, so max(z + b) and max(z) + b agree to the bit
    np.testing.assert_array_equal(evaluate(hoisted, {"x": x})[0], evaluate(plain, {"x": x})[0])


@pytest.mark.parametrize("case", ["two_uses", "offset_varies", "relu"])
def test_hoist_max_offset_leaves_what_it_cannot_move(case):
    """A sum with another use, an addend that varies along the reduced axes, an activation between
    the sum and the max: the max keeps its input."""
    body = {
        "two_uses": "%s: f32[B,3,4] = sum %x, %b\n  %m: f32[B,1,4] = max[axes=[1], keepdims=1] %s\n"
                    "  %o: f32[B,3,4] = sum %m, %s",
        "offset_varies": "%s: f32[B,3,4] = sum %x, %v\n  %o: f32[B,1,4] = max[axes=[1], keepdims=1] %s",
        "relu": "%s: f32[B,3,4] = sum_pwl[fn=\"relu\"] %x, %b\n  %o: f32[B,1,4] = max[axes=[1], keepdims=1] %s",
    }[case]
    text = f"""graph @g {{
  input %x: f32[B,3,4]
  param %b: f32[4]
  param %v: f32[3,1]
  {body}
  return %o
}}
"""
    g = parse_graph(text)
    fill_data(g)
    before = format_graph(g)
    assert make_pass("hoist-max-offset").run(g) is False
    assert format_graph(g) == before


def test_lower_reports_every_unsupported_op():
    g = parse_graph("""graph @g {
  input %x: f32[B,4]
  param %w: f32[4,4]
  %a: f32[B,4] = MatMul %x, %w
  %s: f32[B,4] = Softmax[axis=1] %a  {src="/mid/Softmax"}
  %t: f32[B,4] = Tanh %s  {src="/tanh"}
  %o: f32[B,4] = MatMul %t, %w
  return %o
}
""")
    with pytest.raises(PassError) as e:
        PassManager("canonicalize,lower").run(g)
    msg = str(e.value)
    assert "2 op(s)" in msg and "/mid/Softmax" in msg and "/tanh" in msg and "Tanh" in msg


def test_lower_grouped_conv_needs_the_conv_family():
    g = parse_graph(CNN.replace("group=1", "group=2").replace("f32[3,2,3,3]", "f32[3,1,3,3]"))
    with pytest.raises(PassError, match="group=2.*needs the conv family"):
        PassManager("canonicalize,lower{conv=patches}", verify_each=False).run(g)


# -- select-projections ---------------------------------------------------------------------

def test_select_projections():
    run_ir("""graph @g {
  input %x: f32[B,4]
  param %w: f32[4,4]
  const %k: f32[] = 2.0
  %t: f32[4,4] = transpose[perm=[1, 0]] %w
  %px: f32[B,4] = reshape[shape=[-1, 4]] %x
  %a: f32[B,4] = dot %px, %t
  %b: f32[B,4] = dot %a, %t
  %c: f32[B,4] = mul %b, %k
  %d: f32[B,4] = mul %c, %b
  %e: f32[B,4] = sum_pwl[fn="abs"] %d
  %f: f32[B,1] = max[axes=[1], keepdims=1] %e
  return %f
}
# CHECK: %t: f32[4,4] = transpose
# CHECK: %a: f32[B,4] = dot %px, %t  {proj="linear"}
# CHECK: %b: f32[B,4] = dot %a, %t  {proj="bilinear"}
# CHECK: %c: f32[B,4] = mul %b, %k  {proj="linear"}
# CHECK: %d: f32[B,4] = mul %c, %b  {proj="bilinear"}
# CHECK: {proj="closed"}
# CHECK: {proj="closed"}
""", "select-projections")


# -- bipartite, schedule --------------------------------------------------------------------

ODD = """graph @odd {
  input %x: f32[B,4]
  param %w1: f32[4,4]
  param %w2: f32[4,4]
  param %b: f32[4]
  label %y: i64[B]
  %a: f32[B,4] = dot %x, %w1  {src="/a"}
  %h: f32[B,4] = sum_pwl[fn="relu"] %a  {src="/h"}
  %z: f32[B,4] = dot %h, %w2  {src="/z"}
  %u: f32[B,4] = sum %z, %b  {src="/u"}
  %r: f32[B,4] = sum_pwl[fn="relu"] %u  {src="/r"}
  %s: f32[B,4] = sum %r, %h  {src="/skip"}
  cross_entropy[lam=5.0] %s, %y
  return %s
}
"""


def test_bipartite_repair_inserts_identity():
    g, out = run_ir(ODD + """
# CHECK: %0: f32[B,4] = identity %z  {layer=4, proj="closed", repair=1, set="A", src="/u"}
# CHECK: %u: f32[B,4] = sum %0, %b
""", "bipartite,schedule")
    assert [op.kind for op in g.ops].count("identity") == 1
    assert g.ops[-1].annots == {"set": "A", "layer": 0}
    sets = {op.outputs[0].hint: op.annots["set"] for op in g.ops if op.outputs}
    assert sets["s"] == "B"


def test_bipartite_without_repair_names_a_cycle():
    g = parse_graph(ODD)
    with pytest.raises(PassError) as e:
        PassManager("bipartite{repair=false}").run(g)
    msg = str(e.value)
    assert "not bipartite" in msg and "odd cycle of 5 families" in msg and "repair=true" in msg
    for src in ("/h", "/z", "/u", "/r", "/skip"):
        assert f"src='{src}'" in msg


def _sets_around_params(g) -> dict[str, set[str]]:
    """param name -> the sets of the families that read it (through any moves)."""
    from projc.passes.bipartite import family_graph
    fg = family_graph(g, with_params=True)
    return {p.hint: {op.annots["set"] for op in fg.neighbors(p)} for p in g.params if p in fg}


TIED = """graph @tied {
  input %x: f32[B,4]
  param %w: f32[4,4]
  label %y: i64[B]
  %a: f32[B,4] = dot %x, %w  {src="/a"}
  %h: f32[B,4] = sum_pwl[fn="relu"] %a  {src="/h"}
  %u: f32[B,4] = sum_pwl[fn="relu"] %h  {src="/u"}
  %z: f32[B,4] = dot %u, %w  {src="/z"}
  cross_entropy[lam=5.0] %z, %y
  return %z
}
"""


def test_bipartite_repair_breaks_the_cycle_through_a_shared_param():
    # w feeds %a and %z, an odd distance apart: the families alone form a path, but w cannot be
    # opposite both (an unrolled recurrent weight read by gates of both parities)
    g, out = run_ir(TIED, "bipartite,schedule")
    assert [op.kind for op in g.ops].count("identity") == 1
    assert all(len(sets) == 1 for sets in _sets_around_params(g).values())
    with pytest.raises(PassError, match="param %w"):
        PassManager("bipartite{repair=false}").run(parse_graph(TIED))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    repaired, original = parse_graph(out), parse_graph(TIED)
    fill_data(repaired)
    fill_data(original)
    np.testing.assert_allclose(evaluate(repaired, {"x": x})[0], evaluate(original, {"x": x})[0])


def test_bipartite_repair_passes_only_the_producer_through_a_concat():
    # %s reads concat(%h, %z) with %h - %z adjacent: a triangle, cut (rooted at the loss) on the
    # edge %h - %s. An identity after the concat would touch both colours again (no convergence);
    # the repair copies %h alone and clones the concat.
    g, out = run_ir("""graph @mix {
  input %x: f32[B,4]
  param %w: f32[4,4]
  label %y: i64[B]
  %h: f32[B,4] = sum_pwl[fn="relu"] %x  {src="/h"}
  %z: f32[B,4] = dot %h, %w  {src="/z"}
  %c: f32[B,8] = concat[axis=1] %h, %z
  %s: f32[B,8] = sum %c  {src="/s"}
  cross_entropy[lam=5.0] %z, %y
  return %s
}
# CHECK: %z: f32[B,4] = dot %h, %w
# CHECK: %c: f32[B,8] = concat[axis=1] %h, %z
# CHECK: %0: f32[B,4] = identity %h  {
# CHECK: = concat[axis=1] %0, %z
# CHECK: sum
""", "bipartite,schedule")
    kinds = [op.kind for op in g.ops]
    assert kinds.count("identity") == 1 and kinds.count("concat") == 2
    graph0 = parse_graph(out)
    fill_data(graph0)
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    w = graph0.params[0].data
    h = np.maximum(x, 0)
    np.testing.assert_allclose(evaluate(graph0, {"x": x})[0], np.concatenate([h, h @ w], 1),
                               rtol=1e-5, atol=1e-5)


def test_bipartite_layout_ops_are_transparent():
    # the skip goes through a reshape pair: still the same 4-cycle parity (even) -> no repair
    g, _ = run_ir("""graph @g {
  input %x: f32[B,4]
  param %w: f32[4,4]
  %h: f32[B,4] = sum_pwl[fn="relu"] %x, %x
  %z: f32[B,4] = dot %h, %w
  %r: f32[B,4] = sum_pwl[fn="relu"] %z
  %hr: f32[B,2,2] = reshape[shape=[-1, 2, 2]] %h
  %hb: f32[B,4] = reshape[shape=[-1, 4]] %hr
  %s: f32[B,4] = sum %r, %hb
  return %s
}
# CHECK-NOT: identity
# CHECK: %h: f32[B,4] = sum_pwl[fn="relu"] %x, %x  {layer=1, set="B"}
# CHECK: %z: f32[B,4] = dot %h, %w  {layer=2, set="A"}
# CHECK: %s: f32[B,4] = sum %r, %hb  {layer=0, set="A"}
""", "bipartite,schedule")


# -- attach-loss ----------------------------------------------------------------------------

SKL = """graph @skl {
  input %x: f32[N,4]
  param %coefficient: f32[4,3]
  param %intercepts: f32[1,3]
  const %classes: i64[3] = [0, 1, 2]
  const %shape_tensor: i64[1] = [-1]
  %cast_input: f32[N,4] = Cast[to=1] %x
  %mul_result: f32[N,3] = MatMul %cast_input, %coefficient
  %add_result: f32[N,3] = Add %mul_result, %intercepts
  %out: f32[N,3] = Softmax[axis=1] %add_result
  %probabilities: f32[N,3] = Identity %out
  %argmax_output: i64[N,1] = ArgMax[axis=1, keepdims=1, select_last_index=0] %probabilities
  %afe: i64[N,1] = ml.ArrayFeatureExtractor %classes, %argmax_output
  %reshaped_result: i64[N] = Reshape[allowzero=0] %afe, %shape_tensor
  %label: i64[N] = Cast[to=7] %reshaped_result
  return %label, %probabilities
}
"""


def test_attach_loss_sklearn_postprocessing():
    g, out = run_ir(SKL + """
# CHECK: label %y: i64[N]
# CHECK-NOT: %classes
# CHECK: %mul_result: f32[N,3] = dot %x, %coefficient
# CHECK: %add_result: f32[N,3] = sum %mul_result, %intercepts
# CHECK-NOT: Softmax
# CHECK: cross_entropy[lam=5.0, method="newton"] %add_result, %y
# CHECK: return %add_result
""", "attach-loss,canonicalize,dce")
    assert g.meta["logits_output"] == "add_result" and g.meta["logits_from"] == "label"


def test_attach_loss_squared_error_keeps_float_targets():
    g, _ = run_ir(MLP + """
# CHECK: label %y: f32[B,10]
# CHECK: squared_error[lam=1.0] %p, %y
""", "attach-loss{loss=squared_error lam=1.0}")


# -- idempotence ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PASSES))
@pytest.mark.parametrize("text", [MLP, CNN, SKL, ODD], ids=["mlp", "cnn", "skl", "odd"])
def test_every_pass_is_idempotent(name, text):
    g = parse_graph(text)
    fill_data(g)
    pipeline = TRAINING_PIPELINE.split(",")
    if name in OPTIONAL_PASSES:  # opt-in passes run right after lower
        pipeline.insert(pipeline.index("lower") + 1, name)
    PassManager(",".join(pipeline[:pipeline.index(name) + 1])).run(g)  # everything up to the pass, once
    before = format_graph(g)
    assert make_pass(name).run(g) is False, name
    assert format_graph(g) == before
