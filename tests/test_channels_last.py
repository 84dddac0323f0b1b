"""The conv family's lowering and the channels-last pass: golden IR, and the forward unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from pass_util import evaluate, fill_data, op_counts, run_ir
from projc.ir.parser import parse_graph
from projc.passes import PassManager

TWO_CONVS = """graph @cnn {
  input %x: f32[B,2,6,6]
  param %w1: f32[4,2,3,3]
  param %b1: f32[4]
  param %w2: f32[4,1,3,3]
  param %fw: f32[3,16]
  %c: f32[B,4,6,6] = Conv[group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1]] %x, %w1, %b1
  %r: f32[B,4,6,6] = Relu %c
  %d: f32[B,4,6,6] = Conv[group=4, kernel_shape=[3, 3], pads=[1, 1, 1, 1]] %r, %w2
  %s: f32[B,4,6,6] = Add %d, %r
  %m: f32[B,4,6] = ReduceMax[axes=[3], keepdims=0] %s
  %p: f32[B,4,2,2] = AveragePool[kernel_shape=[3, 3], strides=[3, 3]] %s
  %g: f32[B,4,1,1] = GlobalAveragePool %s
  %f: f32[B,16] = Flatten[axis=1] %p
  %o: f32[B,3] = Gemm[alpha=1.0, beta=1.0, transA=0, transB=1] %f, %fw
  return %o, %m, %g
}
"""


def test_conv_lowers_to_a_channels_last_family_between_transposes():
    run_ir(TWO_CONVS + """
# CHECK: %0: f32[B,6,6,2] = transpose[perm=[0, 2, 3, 1]] %x
# CHECK: %1: f32[B,6,6,4] = conv[dilations=[1, 1], group=1, pads=[1, 1, 1, 1], strides=[1, 1]] %0, %w1
# CHECK: %2: f32[B,4,6,6] = transpose[perm=[0, 3, 1, 2]] %1
# CHECK: conv[dilations=[1, 1], group=4, pads=[1, 1, 1, 1], strides=[1, 1]]
""", "canonicalize,lower")


def test_channels_last_cancels_the_transposes_between_convs():
    g, out = run_ir(TWO_CONVS + """
# CHECK: %0: f32[B,6,6,2] = transpose[perm=[0, 2, 3, 1]] %x
# CHECK: %1: f32[B,6,6,4] = conv
# CHECK-NOT: transpose
# CHECK: conv[dilations=[1, 1], group=4
# CHECK-NOT: transpose
# CHECK: = max[axes=[2], keepdims=0]
# CHECK: = transpose[perm=[0, 2, 1]]
# CHECK: = reshape[shape=[-1, 2, 3, 2, 3, 4]]
# CHECK-NOT: patches
# CHECK: = mean[axes=[2, 4], keepdims=0, metric="sum"]
# CHECK: = mean[axes=[1, 2], keepdims=1, metric="sum"]
# CHECK: %g: f32[B,4,1,1] = transpose[perm=[0, 3, 1, 2]]
""", "canonicalize,lower,channels-last,fold-constants,dce")
    # left: the input's, the max's (keepdims=0 reorders the kept axes), the pools' (before Flatten
    # and the graph output), the Gemm weight's
    assert op_counts(g)["transpose"] == 5


@pytest.mark.parametrize("pipeline", ["canonicalize,lower,channels-last,fold-constants,dce",
                                      "canonicalize,lower{conv=patches},channels-last,fold-constants,dce"])
def test_channels_last_keeps_the_forward(pipeline):
    ref = parse_graph(TWO_CONVS.replace("group=4", "group=1").replace("f32[4,1,3,3]", "f32[4,4,3,3]")
                      if "patches" in pipeline else TWO_CONVS)
    fill_data(ref)
    g = ref.clone()
    PassManager(pipeline).run(g)
    x = np.random.default_rng(4).standard_normal((3, 2, 6, 6)).astype(np.float32)
    for got, want in zip(evaluate(g, {"x": x}), evaluate(ref, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


POOLS = """graph @pools {
  input %x: f32[B,3,6,7]
  %a: f32[B,3,3,3] = AveragePool[kernel_shape=[2, 2], strides=[2, 2]] %x
  %m: f32[B,3,3,3] = MaxPool[kernel_shape=[2, 2], strides=[2, 2]] %x
  %s: f32[B,3,5,6] = AveragePool[kernel_shape=[2, 2], strides=[1, 1]] %x
  return %a, %m, %s
}
"""


def test_tiling_pools_reduce_a_reshape_and_others_keep_their_patches():
    """Windows that tile the input (stride = kernel) become a reduction over split axes of a
    reshape (of a channels-first input here: no transpose left); a ragged edge (width 7 by 2) or
    overlapping windows keep the patches move; the forward is unchanged."""
    even = POOLS.replace("f32[B,3,6,7]", "f32[B,3,6,8]").replace("3,3,3]", "3,3,4]").replace("3,5,6]", "3,5,7]")
    g, _ = run_ir(even + """
# CHECK: = reshape[shape=[-1, 3, 3, 2, 4, 2]] %x
# CHECK-NOT: transpose
# CHECK: %a: f32[B,3,3,4] = mean[axes=[3, 5], keepdims=0, metric="sum"]
# CHECK: %m: f32[B,3,3,4] = max[axes=[3, 5], keepdims=0]
# CHECK: = patches[dilations=[1, 1], kernel=[2, 2], pads=[0, 0, 0, 0], strides=[1, 1]] %x
""", "canonicalize,lower,channels-last,fold-constants,dce")
    assert op_counts(g)["patches"] == 1
    for text, patches in ((POOLS, 3), (even, 1)):   # the ragged width keeps every window's patches
        ref = parse_graph(text)
        g = ref.clone()
        PassManager("canonicalize,lower,channels-last,fold-constants,dce").run(g)
        assert op_counts(g)["patches"] == patches
        x = np.random.default_rng(5).standard_normal((2,) + tuple(ref.inputs[0].shape[1:])).astype(np.float32)
        for got, want in zip(evaluate(g, {"x": x}), evaluate(ref, {"x": x})):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_full_shaped_operand_in_the_graph_layout_stops_the_sink():
    """An Add of a conv output and another NCHW value: the transpose stays before the Add."""
    text = TWO_CONVS.replace("%s: f32[B,4,6,6] = Add %d, %r", "%s: f32[B,4,6,6] = Add %d, %x2").replace(
        "input %x: f32[B,2,6,6]", "input %x: f32[B,2,6,6]\n  input %x2: f32[B,4,6,6]")
    g, _ = run_ir(text + """
# CHECK: %d: f32[B,4,6,6] = transpose[perm=[0, 3, 1, 2]]
# CHECK: %s: f32[B,4,6,6] = sum %d, %x2
""", "canonicalize,lower,channels-last,fold-constants,dce")
