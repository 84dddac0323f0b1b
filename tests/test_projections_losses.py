"""Output constraints: cross-entropy proximal operator (Newton and fixed-point), margin, squared error."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import optimize
from scipy.special import logsumexp, softmax

from projc.backends.jax import projections as P

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORST: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if WORST:
        print("\nlosses: worst values seen (float64):")
        for k in sorted(WORST):
            print(f"  {k:36s} {WORST[k]: .3e}")


def note(k, v):
    WORST[k] = max(WORST.get(k, -np.inf), float(v))


def objective(x, x0, y, lam):
    return 0.5 * np.sum((x - x0) ** 2) / lam + logsumexp(x) - x[y]


@st.composite
def logits(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    C = draw(st.sampled_from([2, 3, 10]))
    scale = 10.0 ** draw(st.floats(-3, 3))
    mode = draw(st.sampled_from(["normal", "ties", "wrong_argmax", "zeros"]))
    B = 4
    x = rng.normal(size=(B, C)) * scale
    lab = rng.integers(0, C, size=B)
    if mode == "ties":
        x = rng.integers(-1, 2, size=(B, C)) * scale
    elif mode == "zeros":
        x = np.zeros((B, C))
    elif mode == "wrong_argmax":
        x[np.arange(B), lab] = x.min(-1) - scale
    lam = draw(st.sampled_from([0.1, 1.0, 5.0, 20.0, 100.0]))
    return x, lab, lam


@settings(max_examples=30, **SETTINGS)
@given(logits())
def test_cross_entropy_newton_optimal(c):
    x0, lab, lam = c
    with jax.enable_x64(True):
        x = np.asarray(P.cross_entropy_prox(x0, lab, lam=lam))
    oh = np.eye(x0.shape[-1])[lab]
    res = np.abs((x - x0) / lam + softmax(x, axis=-1) - oh).max()
    note("cross_entropy newton residual |F|inf", res)
    assert res <= 1e-10
    for i in range(2):
        f = lambda z, i=i: objective(z, x0[i], lab[i], lam)  # noqa: E731
        g = lambda z, i=i: (z - x0[i]) / lam + softmax(z) - oh[i]  # noqa: E731
        r = optimize.minimize(f, x0[i], jac=g, method="BFGS", options=dict(gtol=1e-12))
        ours = f(x[i])
        gap = (ours - r.fun) / (abs(r.fun) + 1e-12)
        note("cross_entropy gap vs scipy BFGS", gap)
        assert gap <= 1e-9


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=15, **SETTINGS)
@given(logits())
def test_cross_entropy_finite_dtypes(dtype, c):
    x0, lab, lam = c
    with jax.enable_x64(dtype == "float64"):
        x = P.cross_entropy_prox(jnp.asarray(x0, dtype), jnp.asarray(lab), lam=lam)  # jitted
        assert x.dtype == jnp.dtype(dtype)
        x = np.asarray(x, np.float64)
    assert np.all(np.isfinite(x))
    oh = np.eye(x0.shape[-1])[lab]
    res = np.abs((x - x0) / lam + softmax(x, axis=-1) - oh).max()
    note(f"cross_entropy residual {dtype}", res)
    # float32: the residual is limited by rounding of x0 ± |x|
    tol = 1e-10 if dtype == "float64" else 1e-6 * (1 + np.abs(x0).max()) / lam + 1e-5
    assert res <= tol


@pytest.mark.parametrize("lam", [5.0, 100.0])
def test_cross_entropy_large_batch_float32(lam):
    """Regression: a line-searched primal Newton stalled on ~0.4% of rows of a float32 batch (its
    Armijo tests drown in rounding); the dual 1-D Newton has no objective comparisons."""
    rng = np.random.default_rng(0)
    N, C = 20000, 10
    x0 = rng.normal(size=(N, C)) * 10.0 ** rng.uniform(-3, 3, (N, 1))
    lab = rng.integers(0, C, N)
    x = np.asarray(P.cross_entropy_prox(jnp.asarray(x0, jnp.float32), jnp.asarray(lab), lam=lam), np.float64)
    res = np.abs((x - x0) / lam + softmax(x, axis=-1) - np.eye(C)[lab]).max(-1)
    # float32 rounding: of x - x0 (divided by λ) and of the logit differences inside softmax
    bound = 1e-6 * (np.abs(x0).max(-1) + np.abs(x).max(-1)) / lam + 5e-7 * np.abs(x).max(-1) + 1e-5
    note(f"cross_entropy residual/bound f32 batch lam={lam:g}", (res / bound).max())
    assert np.all(res <= bound)


def test_cross_entropy_fixed_point_matches_formula():
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(3, 5))
    lab = np.array([0, 3, 4])
    with jax.enable_x64(True):
        got = np.asarray(P.cross_entropy_prox(x0, lab, lam=5.0, method="fixed-point", steps=3))
        newton = np.asarray(P.cross_entropy_prox(x0, lab, lam=0.5))
        fp_small = np.asarray(P.cross_entropy_prox(x0, lab, lam=0.5, method="fixed-point", steps=200))
    oh = np.eye(5)[lab]
    x = x0.copy()
    for _ in range(3):
        x = x0 + 5.0 * (oh - softmax(x, axis=-1))
    assert np.allclose(got, x, rtol=1e-12, atol=1e-12)
    assert np.allclose(fp_small, newton, atol=1e-10)  # contraction for small λ: same fixed point
    with pytest.raises(ValueError):
        P.cross_entropy_prox(x0, lab, method="bogus")


@settings(max_examples=30, **SETTINGS)
@given(logits())
def test_margin_and_squared_error(c):
    x0, lab, lam = c
    with jax.enable_x64(True):
        margin = jax.jit(P.margin)
        x = np.asarray(margin(x0, lab))
        again = np.asarray(margin(x, lab))
        t = np.random.default_rng(1).normal(size=x0.shape)
        se = np.asarray(P.squared_error(x0, t, lam=lam))
        se_exact = np.asarray(P.squared_error(x0, t))
    oh = np.eye(x0.shape[-1])[lab] > 0
    assert np.array_equal(x, np.where(oh, np.maximum(x0, 1), np.minimum(x0, 0)))
    assert np.array_equal(again, x)
    assert np.allclose(se, (x0 + lam * t) / (1 + lam), rtol=1e-13, atol=1e-300)
    # proximal optimality: (se - x0) + lam (se - t) = 0
    assert np.allclose(se - x0 + lam * (se - t), 0, atol=1e-12 * (1 + np.abs(x0).max()))
    assert np.array_equal(se_exact, t)
