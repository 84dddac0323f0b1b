"""IR printer, parser and verifier: round trips, determinism, diagnostics."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projc.errors import IRParseError, VerificationError
from projc.ir import Graph, Op, Value
from projc.ir.parser import parse_graph
from projc.ir.printer import assign_names, format_graph, format_literal
from projc.ir.verify import verify

MLP = """\
graph @mlp_digits {
  input %x: f32[B,64]
  label %y: i64[B]
  param %fc1.w: f32[64,32]
  param %fc1.b: f32[32]
  param %fc2.w: f32[32,10]
  const %shape: i64[2] = [-1, 32]
  const %scale: f32[] = 0.5
  %z1: f32[B,32] = dot %x, %fc1.w  {proj="linear", set="B", src="/fc1/Gemm"}
  %h1: f32[B,32] = sum_pwl[alpha=0.01, fn="leaky_relu"] %z1, %fc1.b  {proj="closed", set="A"}
  %0: f32[B,32] = reshape[shape=[-1, 32]] %h1
  %1: f32[B,10] = dot %0, %fc2.w  {proj="bilinear", set="B"}
  %2: f32[B,10], %3: f32[B] = Split[axis=1, lo=-inf, name="a \\"q\\""] %1, _, %scale
  cross_entropy[lam=5.0] %2, %y  {set="A"}
  return %2, %3
}
"""


def test_round_trip_is_exact():
    assert format_graph(parse_graph(MLP)) == MLP


def test_print_is_deterministic_across_clones():
    g = parse_graph(MLP)
    assert format_graph(g) == format_graph(g.clone()) == format_graph(parse_graph(format_graph(g)))


def test_names_fall_back_to_numbers_on_clashes_and_bad_hints():
    x = Value("f32", ("B", 4), "input", hint="x")
    a = Value("f32", ("B", 4), hint="x")        # clash with the input
    b = Value("f32", ("B", 4), hint="/fc1/Gemm_output_0")
    c = Value("f32", ("B", 4), hint="123")      # starts with a digit
    g = Graph("g", inputs=[x], ops=[Op("Relu", [x], [a]), Op("Relu", [a], [b]), Op("Relu", [b], [c])],
              outputs=[c])
    names = assign_names(g)
    assert [names[v] for v in (x, a, b, c)] == ["x", "0", "fc1_Gemm_output_0", "1"]
    assert format_graph(parse_graph(format_graph(g))) == format_graph(g)


@given(st.recursive(st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, width=64),
                              st.text(max_size=8)),
                    lambda inner: st.lists(inner, max_size=4), max_leaves=12))
@settings(max_examples=200, deadline=None)
def test_every_param_literal_round_trips(literal):
    x = Value("f32", (2,), "input", hint="x")
    y = Value("f32", (2,), hint="y")
    g = Graph("g", inputs=[x], ops=[Op("anyop", [x], [y], params={"p": literal})], outputs=[y])
    text = format_graph(g)
    parsed = parse_graph(text)
    assert format_graph(parsed) == text
    assert format_literal(parsed.ops[0].params["p"]) == format_literal(literal)


def test_small_consts_carry_data_large_ones_do_not():
    small = Value("f32", (2, 2), "const", hint="s", data=np.arange(4, dtype=np.float32).reshape(2, 2))
    big = Value("f32", (5, 5), "const", hint="b", data=np.zeros((5, 5), np.float32))
    g = parse_graph(format_graph(Graph("g", initializers=[small, big], outputs=[small])))
    np.testing.assert_array_equal(g.initializers[0].data, small.data)
    assert g.initializers[1].data is None


@pytest.mark.parametrize("text, message", [
    ("", "empty IR text"),
    ("graph mlp {\n}\n", "expected 'graph @name {'"),
    ("graph @g {\n  input %x: q32[2]\n}\n", "unknown dtype"),
    ("graph @g {\n  %a: f32[2] = Relu %x\n}\n", "%x is used before it is defined"),
    ("graph @g {\n  input %x: f32[2]\n  input %x: f32[2]\n}\n", "%x is defined twice"),
    ("graph @g {\n  input %x: f32[2]\n", "missing the closing"),
    ("graph @g {\n  input %x: f32[2]\n  %a: f32[2] = Relu[k=] %x\n}\n", "expected a literal"),
])
def test_parse_errors_name_the_line(text, message):
    with pytest.raises(IRParseError, match=message):
        parse_graph(text)


def test_verifier_accepts_sound_graph_and_reports_offending_line():
    g = parse_graph(MLP)
    verify(g)
    rules = {"reshape": lambda op: "bad shape" if op.params["shape"][0] != 0 else None}
    with pytest.raises(VerificationError) as err:
        verify(g, rules=rules)
    text = str(err.value)
    assert "reshape: bad shape" in text
    assert '>   11 |   %0: f32[B,32] = reshape[shape=[-1, 32]] %h1' in text


def test_verifier_catches_use_before_definition_and_double_assignment():
    g = parse_graph(MLP)
    g.ops[0], g.ops[1] = g.ops[1], g.ops[0]
    with pytest.raises(VerificationError, match="used before it is defined"):
        verify(g)
    g = parse_graph(MLP)
    g.ops[1].outputs = g.ops[0].outputs
    with pytest.raises(VerificationError, match="single assignment"):
        verify(g)
    g = parse_graph(MLP)
    g.outputs.append(Value("f32", (1,), hint="ghost"))
    with pytest.raises(VerificationError, match="never defined"):
        verify(g)
