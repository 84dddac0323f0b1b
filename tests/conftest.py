"""Shared test fixtures: small constraint-IR graphs, the digits data, and the training loop.

Import the constants and helpers with ``from conftest import ...`` (pytest puts tests/ on the path).
"""
from __future__ import annotations

import pytest

# A two-layer MLP in constraint IR, scheduled by hand (sets and layers as the schedule pass gives).
MLP_IR = """graph @mlp {
  input %x: f32[B,12]
  label %y: i64[B]
  param %w1: f32[12,7]
  param %b1: f32[7]
  param %w2: f32[7,4]
  param %b2: f32[4]
  %z1: f32[B,7] = dot %x, %w1  {layer=4, proj="linear", set="A"}
  %h1: f32[B,7] = sum_pwl[fn="relu"] %z1, %b1  {layer=3, proj="closed", set="B"}
  %z2: f32[B,4] = dot %h1, %w2  {layer=2, proj="bilinear", set="A"}
  %lg: f32[B,4] = sum %z2, %b2  {layer=1, proj="closed", set="B"}
  cross_entropy[lam=5.0] %lg, %y  {layer=0, set="A"}
  return %lg
}
"""

# A residual block: %SKIP is the operand the sum adds to %h (``%z``: a skip over the ReLU, which
# makes the constraint graph non-bipartite).
RES_IR = """graph @res {
  input %x: f32[B,4]
  label %y: i64[B]
  param %w: f32[4,4]
  param %b: f32[4]
  param %v: f32[4,3]
  %z: f32[B,4] = dot %x, %w  {proj="linear"}
  %h: f32[B,4] = sum_pwl[fn="relu"] %z, %b
  %s: f32[B,4] = sum %h, %SKIP
  %o: f32[B,3] = dot %s, %v  {proj="bilinear"}
  cross_entropy[lam=5.0] %o, %y
  return %o
}
"""


def scheduled(ir: str):
    """Parse constraint IR and run the schedule pass, which the state layouts read (non-strict, so
    a graph that is not bipartite gets layers for the cyclic solvers too)."""
    from projc.ir.parser import parse_graph
    from projc.passes import PassManager

    return PassManager("schedule{strict=false}").run(parse_graph(ir))


def fit(trainer, data, batch: int, updates: int, params=None):
    """``updates`` minibatch updates over the training split, epoch after epoch; (params, stats)."""
    from projc.train.data import minibatches

    p = trainer.init_params() if params is None else params
    n, epoch, stats = 0, 0, {}
    state = trainer.init_state(p)
    while n < updates:
        for xb, yb in minibatches(data.x_train, data.y_train, batch, seed=epoch):
            p, state, stats = trainer.update(p, state, xb, yb)
            n += 1
            if n == updates:
                break
        epoch += 1
    return p, stats


@pytest.fixture(scope="session")
def digits():
    from projc.train.data import load_data

    return load_data("digits")
