"""The elementwise losses of issue 23 as proximal operators, oracle-tested like cross-entropy:
binary cross-entropy on sigmoid logits (0/1, soft and multi-hot targets), Huber, L1 and squared
error on outputs of any shape. Each prox argmin_x ‖x - x0‖²/(2λ) + loss(x) is checked in float64
against scipy (minimize_scalar, per element) and by its optimality condition; float32 stays finite
and near-stationary; the differentiable values (the gradient baseline's) match numpy."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize

from projc.backends.jax import projections as P
from projc.backends.jax.proj_losses import LOSS_VALUES

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def softplus(x):
    return np.logaddexp(0.0, x)


def sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))


def huber(r, delta):
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


LOSSES = {  # elementwise loss(x, t)
    "binary_cross_entropy": lambda x, t, delta: softplus(x) - t * x,
    "huber": lambda x, t, delta: huber(x - t, delta),
    "l1": lambda x, t, delta: np.abs(x - t),
    "squared_error": lambda x, t, delta: 0.5 * (x - t) ** 2,
}


def prox(kind, x0, t, lam, delta=1.0):
    if kind == "huber":
        return P.REGISTRY[kind](x0, t, lam=lam, delta=delta)
    return P.REGISTRY[kind](x0, t, lam=lam)


@st.composite
def points(draw, kind):
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    shape = draw(st.sampled_from([(6,), (3, 4), (2, 1, 3, 3)]))  # one logit, multi-label, images
    scale = 10.0 ** draw(st.floats(-3, 3))
    x0 = rng.normal(size=shape) * scale
    if kind == "binary_cross_entropy":
        t = draw(st.sampled_from(["hard", "soft"]))
        t = rng.integers(0, 2, size=shape).astype(float) if t == "hard" else rng.uniform(size=shape)
    else:
        t = x0 + rng.normal(size=shape) * 10.0 ** draw(st.floats(-3, 3))
    lam = draw(st.sampled_from([0.1, 1.0, 5.0, 20.0, 100.0]))
    delta = draw(st.sampled_from([0.1, 1.0, 3.0]))
    return x0, t, lam, delta


def objective(kind, x, x0, t, lam, delta):
    return (x - x0) ** 2 / (2 * lam) + LOSSES[kind](x, t, delta)


def check_optimal(kind, x0, t, lam, delta):
    with jax.enable_x64(True):
        x = np.asarray(jax.jit(prox, static_argnums=0)(kind, x0, t, lam, delta))
    assert x.shape == x0.shape and np.all(np.isfinite(x))
    ours = objective(kind, x, x0, t, lam, delta)
    scale = 1 + np.abs(x0) + np.abs(t)
    for i in np.ndindex(x0.shape):  # scipy in float64, bounded by a bracket holding the minimizer
        span = lam * (1 + delta) + abs(x0[i] - t[i]) + 1
        r = optimize.minimize_scalar(lambda z, i=i: objective(kind, z, x0[i], t[i], lam, delta),
                                     bounds=(min(x0[i], t[i]) - span, max(x0[i], t[i]) + span),
                                     method="bounded", options=dict(xatol=1e-13 * scale[i]))
        assert ours[i] <= r.fun + 1e-12 * (1 + abs(r.fun)), (kind, i, x[i], r.x)
    # optimality: 0 in (x - x0)/λ + ∂loss(x)
    g = (x - x0) / lam
    if kind == "binary_cross_entropy":
        assert np.all(np.abs(g + sigmoid(x) - t) <= 1e-10 * scale / min(lam, 1))
    elif kind == "huber":
        r = x - t
        d = np.clip(r, -delta, delta)
        assert np.all(np.abs(g + d) <= 1e-10 * scale)
    elif kind == "l1":
        r = x - t
        sub = np.where(np.abs(r) > 1e-12 * scale, np.sign(r), np.clip(-g, -1, 1))
        assert np.all(np.abs(g + sub) <= 1e-10 * scale)
    else:
        assert np.allclose(g + (x - t), 0, atol=1e-10 * scale.max())


@settings(max_examples=20, **SETTINGS)
@given(points("binary_cross_entropy"))
def test_binary_cross_entropy_prox_optimal(c):
    check_optimal("binary_cross_entropy", *c)


@pytest.mark.parametrize("kind", ["huber", "l1", "squared_error"])
@settings(max_examples=15, **SETTINGS)
@given(data=st.data())
def test_closed_form_proxes_optimal(kind, data):
    check_optimal(kind, *data.draw(points(kind)))


def test_binary_cross_entropy_float32_large_batch():
    """float32, 20,000 logits over six decades: finite, stationary to float32 rounding."""
    rng = np.random.default_rng(0)
    n = 20000
    x0 = rng.normal(size=n) * 10.0 ** rng.uniform(-3, 3, n)
    t = rng.integers(0, 2, n).astype(np.float64)
    for lam in (0.5, 5.0, 100.0):
        x = np.asarray(P.binary_cross_entropy_prox(jnp.asarray(x0, jnp.float32), jnp.asarray(t, jnp.float32),
                                                   lam=lam), np.float64)
        assert np.all(np.isfinite(x))
        res = np.abs((x - x0) / lam + sigmoid(x) - t)
        assert np.all(res <= 1e-6 * (np.abs(x0) + np.abs(x)) / lam + 1e-5)


def test_prox_limits():
    """λ → 0 leaves the point; L1 inside the threshold lands on the target; Huber's two pieces."""
    x0 = np.array([-3.0, -0.2, 0.0, 0.5, 4.0])
    t = np.zeros(5)
    with jax.enable_x64(True):
        np.testing.assert_allclose(P.binary_cross_entropy_prox(x0, t, lam=1e-9), x0, atol=1e-8)
        np.testing.assert_array_equal(P.l1_prox(x0, t, lam=1.0), [-2.0, 0, 0, 0, 3.0])
        # |r0| <= δ(1+λ) = 2: r0/2; beyond: r0 - λδ sign(r0)
        np.testing.assert_allclose(P.huber_prox(x0, t, lam=1.0, delta=1.0), [-2.0, -0.1, 0, 0.25, 3.0])


@pytest.mark.parametrize("kind", ["binary_cross_entropy", "huber", "l1", "squared_error"])
def test_loss_values_match_numpy(kind):
    """The gradient baseline's values: the mean over samples of the loss summed over the output."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 2, 3)) * 2
    t = rng.integers(0, 2, size=x.shape).astype(float) if kind == "binary_cross_entropy" else rng.normal(size=x.shape)
    with jax.enable_x64(True):
        got = float(LOSS_VALUES[kind](jnp.asarray(x), jnp.asarray(t)))
    want = np.mean(np.sum(LOSSES[kind](x, t, 1.0).reshape(5, -1), -1))
    assert got == pytest.approx(want, rel=1e-10)
