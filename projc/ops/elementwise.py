"""Elementwise ONNX ops (numpy broadcasting): arithmetic, activations, comparisons, Cast."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .dtypes import jax_dtype, np_dtype_of_onnx
from .registry import register


def _is_int(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.integer)


# -- arithmetic -----------------------------------------------------------------------------

@register("Add", since=13)
@register("Add", since=14)  # 14 adds 8/16-bit integer types
def add(a, b):
    """a + b."""
    return jnp.add(a, b)


@register("Sub", since=13)
@register("Sub", since=14)
def sub(a, b):
    """a - b."""
    return jnp.subtract(a, b)


@register("Mul", since=13)
@register("Mul", since=14)
def mul(a, b):
    """a * b."""
    return jnp.multiply(a, b)


@register("Div", since=13)
@register("Div", since=14)
def div(a, b):
    """a / b; integer division truncates toward zero (C semantics, as onnxruntime)."""
    if _is_int(a):
        a, b = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b, dtype=jnp.result_type(a)))
        return lax.div(a, b)
    return jnp.divide(a, b)


@register("Pow", since=13)
@register("Pow", since=15)  # 15 adds bfloat16 exponents
def pow_(x, y):
    """x ** y; the result has x's type."""
    x = jnp.asarray(x)
    if _is_int(y) and not _is_int(x):
        return jnp.power(x, jnp.asarray(y).astype(x.dtype))
    return jnp.power(x, y).astype(x.dtype)


@register("Neg", since=13)
def neg(x):
    """-x."""
    return jnp.negative(x)


@register("Abs", since=13)
def abs_(x):
    """|x|."""
    return jnp.abs(x)


@register("Sign", since=13)
def sign(x):
    """-1, 0 or 1."""
    return jnp.sign(x)


@register("Reciprocal", since=13)
def reciprocal(x):
    """1 / x."""
    return 1.0 / x


@register("Sqrt", since=13)
def sqrt(x):
    """Square root."""
    return jnp.sqrt(x)


@register("Exp", since=13)
def exp(x):
    """e ** x."""
    return jnp.exp(x)


@register("Log", since=13)
def log(x):
    """Natural logarithm."""
    return jnp.log(x)


@register("Floor", since=13)
def floor(x):
    """Round down."""
    return jnp.floor(x)


@register("Ceil", since=13)
def ceil(x):
    """Round up."""
    return jnp.ceil(x)


@register("Erf", since=13)
def erf(x):
    """The error function."""
    return jax.scipy.special.erf(x)


def _variadic(pairwise, doc: str):
    def fn(*xs):
        return functools.reduce(pairwise, [x for x in xs if x is not None])
    fn.__doc__ = doc
    return fn


sum_ = register("Sum", since=13)(_variadic(jnp.add, "Elementwise sum of the inputs (broadcast)."))
max_ = register("Max", since=13)(_variadic(jnp.maximum, "Elementwise max of the inputs."))
min_ = register("Min", since=13)(_variadic(jnp.minimum, "Elementwise min of the inputs."))


@register("Mean", since=13)
def mean(*xs):
    """Elementwise mean of the inputs."""
    return functools.reduce(jnp.add, xs) / len(xs)


# -- activations ----------------------------------------------------------------------------

@register("Relu", since=13)
@register("Relu", since=14)  # 14 adds signed integer types
def relu(x):
    """max(x, 0)."""
    return jnp.maximum(x, jnp.zeros((), jnp.result_type(x)))


@register("LeakyRelu", since=6, attrs={"alpha": 0.01})
@register("LeakyRelu", since=16, attrs={"alpha": 0.01})  # 16 adds bfloat16
def leaky_relu(x, *, alpha):
    """x if x >= 0 else alpha * x."""
    return jnp.where(x >= 0, x, alpha * x)


@register("PRelu", since=9)
@register("PRelu", since=16)
def prelu(x, slope):
    """x if x >= 0 else slope * x (slope broadcasts to x)."""
    return jnp.where(x >= 0, x, slope * x)


@register("Clip", since=13, frozen=(1, 2))
def clip(x, lo=None, hi=None):
    """min(max(x, lo), hi); omitted bounds are unbounded."""
    if lo is not None:
        x = jnp.maximum(x, lo)
    if hi is not None:
        x = jnp.minimum(x, hi)
    return x


@register("Sigmoid", since=13)
def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return jax.nn.sigmoid(x)


@register("Tanh", since=13)
def tanh(x):
    """Hyperbolic tangent."""
    return jnp.tanh(x)


@register("HardSigmoid", since=6, attrs={"alpha": 0.2, "beta": 0.5})
def hard_sigmoid(x, *, alpha, beta):
    """max(0, min(1, alpha * x + beta))."""
    return jnp.clip(alpha * x + beta, 0.0, 1.0).astype(jnp.result_type(x))


@register("Elu", since=6, attrs={"alpha": 1.0})
def elu(x, *, alpha):
    """x if x >= 0 else alpha * (exp(x) - 1)."""
    return jnp.where(x >= 0, x, alpha * jnp.expm1(x))


@register("Selu", since=6, attrs={"alpha": 1.67326319217681884765625,
                                  "gamma": 1.05070102214813232421875})
def selu(x, *, alpha, gamma):
    """gamma * (x if x > 0 else alpha * (exp(x) - 1))."""
    return gamma * jnp.where(x > 0, x, alpha * jnp.expm1(x))


@register("Softplus", since=1)
def softplus(x):
    """log(1 + exp(x))."""
    return jax.nn.softplus(x)


# -- comparisons and selection --------------------------------------------------------------

@register("Equal", since=13)
@register("Equal", since=19)  # 19 adds strings (not representable in JAX)
def equal(a, b):
    """a == b."""
    return jnp.equal(a, b)


@register("Less", since=13)
def less(a, b):
    """a < b."""
    return jnp.less(a, b)


@register("Greater", since=13)
def greater(a, b):
    """a > b."""
    return jnp.greater(a, b)


@register("Not", since=1)
def not_(x):
    """Logical not."""
    return jnp.logical_not(x)


@register("Where", since=9)
@register("Where", since=16)
def where(cond, a, b):
    """a where cond else b."""
    return jnp.where(cond, a, b)


# -- identity-like --------------------------------------------------------------------------

@register("Identity", since=13)
@register("Identity", since=14)
@register("Identity", since=16)
@register("Identity", since=19)
@register("Identity", since=21)
def identity(x):
    """x."""
    return x


@register("Dropout", since=13, attrs={"seed": None}, static=(1, 2))
@register("Dropout", since=22, attrs={"seed": None}, static=(1, 2))
def dropout(x, ratio=None, training_mode=None, *, seed):
    """Inference dropout: (x, all-true mask). Training mode (random) is unsupported."""
    if training_mode is not None and bool(np.asarray(training_mode)) and (
            ratio is None or float(np.asarray(ratio)) != 0.0):
        raise NotImplementedError("Dropout with training_mode=True (random) is not supported")
    return x, jnp.ones(jnp.shape(x), dtype=bool)


@register("Cast", since=13, attrs={"to": None})
@register("Cast", since=19, attrs={"to": None, "saturate": 1})  # saturate: float8 only
@register("Cast", since=21, attrs={"to": None, "saturate": 1})
def cast(x, *, to, saturate=1):
    """x converted to the element type ``to`` (ONNX TensorProto enum)."""
    target = jax_dtype(np_dtype_of_onnx(to))
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.issubdtype(target, jnp.integer):
        x = jnp.trunc(x)  # C conversion semantics; avoids platform-dependent rounding
    return x.astype(target)
