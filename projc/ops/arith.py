"""More elementwise ONNX ops: Mod, trigonometric and hyperbolic functions, Mish, Softsign, and
Hardmax (numpy broadcasting where binary)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .layout import normalize_axis
from .registry import register


def check_mod_28(inputs, params) -> None:
    """Mod-28: fmod is 0 or 1."""
    fmod = params.get("fmod", 0)
    if fmod not in (0, 1):
        raise ValueError(f"attribute fmod={fmod!r}: expected 0 or 1")


def check_mod(inputs, params) -> None:
    """Mod before opset 28: fmod is 0 or 1, and floating-point operands need fmod=1
    (onnxruntime refuses fmod=0 on floats there)."""
    check_mod_28(inputs, params)
    a = inputs[0]
    if a is not None and a.dtype.startswith("f") and params.get("fmod", 0) != 1:
        raise ValueError(f"fmod=0 on floating-point input {a.type_str()} before opset 28: "
                         "set fmod=1")


@register("Mod", since=10, attrs={"fmod": 0}, check=check_mod)
@register("Mod", since=13, attrs={"fmod": 0}, check=check_mod)
@register("Mod", since=28, attrs={"fmod": 0}, check=check_mod_28)  # + float fmod=0
def mod(a, b, *, fmod):
    """Remainder of a / b: with the sign of the divisor (Python %, fmod=0) or of the dividend
    (C fmod, fmod=1)."""
    a, b = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b, dtype=jnp.result_type(a)))
    if fmod:
        return lax.rem(a, b)  # truncated division: C's fmod and C's % on integers
    return jnp.remainder(a, b)


def _unary(kind: str, fn, doc: str, versions: tuple[int, ...]):
    def op(x):
        return fn(x)
    op.__doc__ = doc
    op.__name__ = kind.lower()
    for since in versions:
        register(kind, since=since)(op)
    return op


# opset 22 adds bfloat16 to each of these
_TRIG = {
    "Sin": (jnp.sin, "Sine.", 7), "Cos": (jnp.cos, "Cosine.", 7),
    "Tan": (jnp.tan, "Tangent.", 7), "Asin": (jnp.arcsin, "Arcsine.", 7),
    "Acos": (jnp.arccos, "Arccosine.", 7), "Atan": (jnp.arctan, "Arctangent.", 7),
    "Sinh": (jnp.sinh, "Hyperbolic sine.", 9), "Cosh": (jnp.cosh, "Hyperbolic cosine.", 9),
    "Asinh": (jnp.arcsinh, "Inverse hyperbolic sine.", 9),
    "Acosh": (jnp.arccosh, "Inverse hyperbolic cosine.", 9),
    "Atanh": (jnp.arctanh, "Inverse hyperbolic tangent.", 9),
}
for _kind, (_fn, _doc, _since) in _TRIG.items():
    _unary(_kind, _fn, _doc, (_since, 22))


@register("Mish", since=18)
@register("Mish", since=22)
def mish(x):
    """x * tanh(softplus(x))."""
    return x * jnp.tanh(jax.nn.softplus(x))


@register("Softsign", since=1)
@register("Softsign", since=22)
def softsign(x):
    """x / (1 + |x|)."""
    return x / (1 + jnp.abs(x))


@register("Hardmax", since=13, attrs={"axis": -1})
def hardmax(x, *, axis):
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    axis = normalize_axis(axis, x.ndim)
    first = jnp.argmax(x, axis=axis, keepdims=True)
    positions = lax.broadcasted_iota(first.dtype, x.shape, axis)
    return (positions == first).astype(x.dtype)
