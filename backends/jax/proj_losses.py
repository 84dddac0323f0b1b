"""Output constraints on logits x[..., C] (labels: integer class ids of shape x.shape[:-1]).

Each returns the projected (or proximal) logits as a single array of x's shape.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .proj_common import as_floats

_INNER = 2  # Lambert-W Newton steps per outer step (warm-started); 3 more at the end


def _prep(x, labels):
    (x,) = as_floats(x)
    dt = x.dtype
    oh = jax.nn.one_hot(jnp.asarray(labels), x.shape[-1], dtype=dt)
    return x, oh


def _default_steps(method: str, dtype) -> int:
    if method == "fixed-point":
        return 10
    return 10 if jnp.finfo(dtype).bits > 32 else 8


def _log_w(w, ell, iters):
    """Solve ω + e^ω = ℓ (ω = log W(e^ℓ), Lambert W) by Newton from the right of the root.

    f(ω) = ω + e^ω - ℓ is convex increasing, so Newton from any ω ≥ root decreases monotonically
    to it; ub = ℓ (ℓ ≤ 1) or log ℓ (ℓ > 1) is such a point, and clipping at ub keeps every iterate
    there (a warm start left of the root overshoots once and is clipped back).
    """
    ub = jnp.where(ell <= 1, ell, jnp.log(jnp.maximum(ell, 1)))
    w = jnp.minimum(w, ub)
    for _ in range(iters):
        e = jnp.exp(w)
        w = jnp.minimum(w - (w + e - ell) / (1 + e), ub)
    return w


@partial(jax.jit, static_argnames=("method", "steps"))
def cross_entropy_prox(x, labels, lam: float = 5.0, method: str = "newton", steps: int | None = None):
    """Proximal point argmin_x ‖x - x0‖²/(2λ) + CE(x, label): the root of (x - x0)/λ + softmax(x) - onehot.

    "newton" (exact): x = x0 + λ(onehot - s) with s_i = W(λ e^(c_i - L))/λ, c = x0 + λ onehot, and L
    the root of Σ s_i(L) = 1 (convex decreasing, bracketed in [lse(c) - λ, lse(c)]), found by Newton
    from the left (stops when |Σs - 1| is at rounding level, at most `steps`); its derivative
    -Σ s/(1 + λs) is the Sherman–Morrison denominator of the full Newton system in x.
    "fixed-point": `steps` iterations x ← x0 + λ(onehot - softmax(x)) (default 10).
    """
    x0, oh = _prep(x, labels)
    dt = x0.dtype
    lam = jnp.asarray(lam, dt)
    steps = _default_steps(method, dt) if steps is None else int(steps)
    if method == "fixed-point":
        def fp(_, x):
            return x0 + lam * (oh - jax.nn.softmax(x, axis=-1))

        return jax.lax.fori_loop(0, steps, fp, x0)
    if method != "newton":
        raise ValueError(f"unknown cross_entropy_prox method {method!r} (newton | fixed-point)")
    # Stationarity: log s_i = x_i - L with x = c - λ s, i.e. ω_i + e^ω_i = ℓ_i := log λ + c_i - L
    # for ω_i = log(λ s_i); s_i ≤ e^(c_i - L) and s_i ≤ 1 bracket L.
    c = x0 + lam * oh
    hi = jax.nn.logsumexp(c, axis=-1, keepdims=True)
    lo = hi - lam
    loglam = jnp.log(lam)

    tol = 8 * c.shape[-1] * jnp.finfo(dt).eps  # |Σs - 1| at rounding level

    def outer(state):
        L, w, _, it = state
        w = _log_w(w, loglam + c - L, _INNER)
        s = jnp.exp(w) / lam
        phi = jnp.sum(s, axis=-1, keepdims=True) - 1
        dphi = jnp.sum(s / (1 + lam * s), axis=-1, keepdims=True)  # = -φ'(L) > 0
        L = jnp.clip(L + phi / jnp.maximum(dphi, jnp.finfo(dt).tiny), lo, hi)
        return L, w, jnp.all(jnp.abs(phi) <= tol), it + 1

    def more(state):
        return (~state[2]) & (state[3] < steps)

    w0 = jnp.full_like(c, jnp.inf)  # clipped to the upper bound on first use
    L, w, _, _ = jax.lax.while_loop(more, outer, (lo, w0, jnp.asarray(False), 0))
    s = jnp.exp(_log_w(w, loglam + c - L, 3)) / lam
    s = s / jnp.sum(s, axis=-1, keepdims=True)
    return x0 + lam * (oh - s)


def margin(x, labels):
    """Project onto {x: x_label ≥ 1, x_j ≤ 0 for j ≠ label} (a clip per coordinate)."""
    x, oh = _prep(x, labels)
    return jnp.where(oh > 0, jnp.maximum(x, 1), jnp.minimum(x, 0))


def squared_error(x, target, lam: float | None = None):
    """Squared-error output constraint: x = target exactly (lam None), else the proximal point
    argmin ‖x - x0‖² + λ‖x - t‖², i.e. x = (x0 + λ t)/(1 + λ)."""
    x, t = as_floats(x, target)
    t = jnp.broadcast_to(t, jnp.broadcast_shapes(x.shape, t.shape))
    if lam is None:
        return t
    lam = jnp.asarray(lam, x.dtype)
    return (x + lam * t) / (1 + lam)


# -- the same losses as differentiable values (the gradient baseline optimizes these) ----------------

def cross_entropy_value(x, labels):
    """Mean softmax cross-entropy over every sample (and step)."""
    import optax
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(x, labels))


def margin_value(x, labels):
    """Half the mean squared distance to the margin set {x_y >= 1, x_c <= 0 (c != y)}."""
    x, oh = _prep(x, labels)
    gap = jnp.where(oh > 0, jax.nn.relu(1 - x), jax.nn.relu(x))
    return 0.5 * jnp.mean(jnp.sum(gap * gap, -1))


def squared_error_value(x, targets):
    """Half the mean squared distance to the targets (per sample: summed over the output)."""
    d = x - targets
    return 0.5 * jnp.mean(jnp.sum(d.reshape(d.shape[0], -1) ** 2, -1))


LOSS_VALUES = {"cross_entropy": cross_entropy_value, "margin": margin_value,
               "squared_error": squared_error_value}
