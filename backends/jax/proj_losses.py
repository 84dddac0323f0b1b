"""Output constraints: on logits x[..., C] with integer class ids of shape x.shape[:-1]
(cross-entropy, margin), and elementwise on outputs of any shape with targets of the same shape
(squared error, binary cross-entropy on sigmoid logits, Huber, L1).

Each returns the projected (or proximal) outputs as a single array of x's shape. A proximal
operator with weight λ is argmin_x ‖x - x0‖²/(2λ) + loss(x); every elementwise one is exact:
closed forms (squared error, Huber, L1) or a safeguarded 1-D Newton to rounding level (binary
cross-entropy). docs/tasks.md derives each.
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
    lam_a = jnp.asarray(lam, dt)
    steps = _default_steps(method, dt) if steps is None else int(steps)
    if method == "fixed-point":
        def fp(_, x):
            return x0 + lam_a * (oh - jax.nn.softmax(x, axis=-1))

        return jax.lax.fori_loop(0, steps, fp, x0)
    if method != "newton":
        raise ValueError(f"unknown cross_entropy_prox method {method!r} (newton | fixed-point)")
    # Stationarity: log s_i = x_i - L with x = c - λ s, i.e. ω_i + e^ω_i = ℓ_i := log λ + c_i - L
    # for ω_i = log(λ s_i); s_i ≤ e^(c_i - L) and s_i ≤ 1 bracket L.
    c = x0 + lam_a * oh
    hi = jax.nn.logsumexp(c, axis=-1, keepdims=True)
    lo = hi - lam_a
    loglam = jnp.log(lam_a)

    tol = 8 * c.shape[-1] * jnp.finfo(dt).eps  # |Σs - 1| at rounding level

    def outer(state):
        L, w, _, it = state
        w = _log_w(w, loglam + c - L, _INNER)
        s = jnp.exp(w) / lam_a
        phi = jnp.sum(s, axis=-1, keepdims=True) - 1
        dphi = jnp.sum(s / (1 + lam_a * s), axis=-1, keepdims=True)  # = -φ'(L) > 0
        L = jnp.clip(L + phi / jnp.maximum(dphi, jnp.finfo(dt).tiny), lo, hi)
        return L, w, jnp.all(jnp.abs(phi) <= tol), it + 1

    def more(state):
        return (~state[2]) & (state[3] < steps)

    w0 = jnp.full_like(c, jnp.inf)  # clipped to the upper bound on first use
    L, w, _, _ = jax.lax.while_loop(more, outer, (lo, w0, jnp.asarray(False), 0))
    s = jnp.exp(_log_w(w, loglam + c - L, 3)) / lam_a
    s = s / jnp.sum(s, axis=-1, keepdims=True)
    return x0 + lam_a * (oh - s)


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
    lam_a = jnp.asarray(lam, x.dtype)
    return (x + lam_a * t) / (1 + lam_a)


def binary_cross_entropy_prox(x, target, lam: float = 5.0, steps: int | None = None):
    """Proximal point of the binary cross-entropy on sigmoid logits, per element:
    argmin_x (x - x0)²/(2λ) + softplus(x) - t·x, t in [0, 1] (0/1 labels or multi-hot rows).

    The objective is strictly convex; its derivative g(x) = (x - x0)/λ + σ(x) - t is increasing
    with g' = 1/λ + σ(1 - σ) in [1/λ, 1/λ + 1/4], and since σ lies in (0, 1) the root lies in
    [x0 + λ(t - 1), x0 + λt]. Newton from x0 (clipped into that bracket), safeguarded as rtsafe
    does: a step that would leave the bracket, or that is not at most half the step before the
    last (plain Newton can cycle on the sigmoid's inflection for large λ), bisects instead; a fixed
    number of steps for jit (the bracket at least halves every other step).
    """
    x0, t = as_floats(x, target)
    t = jnp.broadcast_to(t, x0.shape)
    dt = x0.dtype
    lam_a = jnp.asarray(lam, dt)
    steps = (60 if jnp.finfo(dt).bits > 32 else 40) if steps is None else int(steps)
    lo, hi = x0 + lam_a * (t - 1), x0 + lam_a * t

    def body(_, state):
        x, lo, hi, dx_old, dx = state
        s = jax.nn.sigmoid(x)
        g = (x - x0) / lam_a + s - t
        dg = 1 / lam_a + s * (1 - s)
        lo = jnp.where(g < 0, x, lo)
        hi = jnp.where(g > 0, x, hi)
        step = g / dg
        newton = x - step
        bisect = (newton <= lo) | (newton >= hi) | (jnp.abs(2 * step) > jnp.abs(dx_old))
        mid = 0.5 * (lo + hi)
        xn = jnp.where(g == 0, x, jnp.where(bisect, mid, newton))
        return xn, lo, hi, dx, jnp.abs(xn - x)

    width = hi - lo
    x, _, _, _, _ = jax.lax.fori_loop(0, steps, body, (jnp.clip(x0, lo, hi), lo, hi, width, width))
    return x


def huber_prox(x, target, lam: float = 5.0, delta: float = 1.0):
    """Proximal point of the Huber loss h_δ(x - t) (½r² for |r| ≤ δ, δ(|r| - δ/2) beyond), per
    element, closed form: with r0 = x0 - t, r = r0/(1 + λ) when |r0| ≤ δ(1 + λ), else
    r = r0 - λδ sign(r0) (the quadratic and the linear piece of the stationarity condition)."""
    x0, t = as_floats(x, target)
    lam_a = jnp.asarray(lam, x0.dtype)
    r0 = x0 - t
    r = jnp.where(jnp.abs(r0) <= delta * (1 + lam_a), r0 / (1 + lam_a), r0 - lam_a * delta * jnp.sign(r0))
    return t + r


def l1_prox(x, target, lam: float = 5.0):
    """Proximal point of |x - t| per element: soft thresholding, r = sign(r0) max(|r0| - λ, 0)."""
    x0, t = as_floats(x, target)
    lam_a = jnp.asarray(lam, x0.dtype)
    r0 = x0 - t
    return t + jnp.sign(r0) * jnp.maximum(jnp.abs(r0) - lam_a, 0)


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


def _per_sample_mean(v):
    return jnp.mean(jnp.sum(v.reshape(v.shape[0], -1), -1))


def binary_cross_entropy_value(x, targets):
    """Mean over samples of the binary cross-entropy of the sigmoid logits, summed over the output."""
    import optax
    return _per_sample_mean(optax.sigmoid_binary_cross_entropy(x, targets))


def huber_value(x, targets, delta: float = 1.0):
    """Mean over samples of the Huber loss h_δ(x - t), summed over the output."""
    a = jnp.abs(x - targets)
    return _per_sample_mean(jnp.where(a <= delta, 0.5 * a * a, delta * (a - 0.5 * delta)))


def l1_value(x, targets):
    """Mean over samples of |x - t|, summed over the output."""
    return _per_sample_mean(jnp.abs(x - targets))


LOSS_VALUES = {"cross_entropy": cross_entropy_value, "margin": margin_value,
               "squared_error": squared_error_value, "binary_cross_entropy": binary_cross_entropy_value,
               "huber": huber_value, "l1": l1_value}
