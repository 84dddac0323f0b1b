"""Shared helpers of the projection library: dtype promotion."""
from __future__ import annotations

import jax.numpy as jnp


def float_dtype(*xs):
    """The floating dtype the inputs promote to; integers (and only-integer inputs) promote to the
    default float (float32, or float64 under jax.enable_x64)."""
    dt = jnp.result_type(*xs)
    return dt if jnp.issubdtype(dt, jnp.inexact) else jnp.result_type(float)


def as_floats(*xs):
    """The inputs as arrays of their common floating dtype."""
    dt = float_dtype(*xs)
    return [jnp.asarray(x, dt) for x in xs]
