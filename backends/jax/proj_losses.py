"""Output constraints on logits x[..., C] (labels: integer class ids of shape x.shape[:-1]).

Each returns the projected (or proximal) logits as a single array of x's shape.
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .proj_common import as_floats

_BACKTRACK = 6  # step sizes 1, 1/2, ..., 1/32 tried in parallel


def _prep(x, labels):
    (x,) = as_floats(x)
    dt = x.dtype
    oh = jax.nn.one_hot(jnp.asarray(labels), x.shape[-1], dtype=dt)
    return x, oh


def _default_steps(method: str, dtype) -> int:
    if method == "fixed-point":
        return 10
    return 12 if jnp.finfo(dtype).bits > 32 else 8


def _ce_objective(x, x0, oh, lam):
    d = x - x0
    return 0.5 * jnp.sum(d * d, axis=-1) / lam + jax.nn.logsumexp(x, axis=-1) - jnp.sum(oh * x, -1)


@partial(jax.jit, static_argnames=("method", "steps"))
def cross_entropy_prox(x, labels, lam: float = 5.0, method: str = "newton", steps: int | None = None):
    """Proximal point argmin_x ‖x - x0‖²/(2λ) + CE(x, label) of the cross-entropy loss.

    "newton": damped Newton on F(x) = (x - x0)/λ + softmax(x) - onehot, Hessian I/λ + diag(s) - ssᵀ
    inverted in O(C) by Sherman–Morrison, Armijo backtracking; "fixed-point": x ← x0 + λ(onehot - s).
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
    eps = jnp.finfo(dt).eps
    etas = jnp.asarray([0.5 ** i for i in range(_BACKTRACK)], dt)

    def newton(_, x):
        s = jax.nn.softmax(x, axis=-1)
        g = (x - x0) / lam + s - oh
        dinv = lam / (1 + lam * s)  # (1/λ + s)⁻¹
        Dg = dinv * g
        Ds = dinv * s
        denom = jnp.sum(s / (1 + lam * s), axis=-1, keepdims=True)  # = 1 - sᵀD⁻¹s > 0
        d = Dg + Ds * (jnp.sum(s * Dg, axis=-1, keepdims=True) / denom)
        f = _ce_objective(x, x0, oh, lam)
        slope = jnp.sum(g * d, axis=-1)  # predicted decrease per unit step, ≥ 0
        trial = x[None] - etas.reshape((-1,) + (1,) * x.ndim) * d[None]
        ft = _ce_objective(trial, x0[None], oh[None], lam)
        armijo = ft <= f[None] - 1e-4 * etas.reshape((-1,) + (1,) * f.ndim) * slope[None]
        # below rounding of f the test is meaningless; we are in Newton's quadratic region then
        scale = jnp.abs(f) + jnp.sum(jnp.abs(x - x0) ** 2, -1) / lam + jnp.max(jnp.abs(x), -1) + 1
        tiny = slope <= 64 * eps * scale
        armijo = armijo.at[0].set(armijo[0] | tiny)
        k = jnp.where(jnp.any(armijo, axis=0), jnp.argmax(armijo, axis=0), _BACKTRACK - 1)
        return x - etas[k][..., None] * d

    return jax.lax.fori_loop(0, steps, newton, x0)


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
