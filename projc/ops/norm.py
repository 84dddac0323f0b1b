"""Normalization ONNX ops beyond BatchNormalization: LayerNormalization, RMSNormalization,
GroupNormalization, InstanceNormalization (what torch exports for nn.LayerNorm, nn.RMSNorm,
nn.GroupNorm and transformer blocks).

Statistics are computed in float32 for float16 inputs (``stash_type=1``, the default) and in the
input's own type otherwise; the variance is the mean of squared deviations (the ONNX reference).
"""
from __future__ import annotations

from typing import TypeGuard

import jax.numpy as jnp
from jax import lax

from .checks import flag, rank_at_least
from .layout import normalize_axis
from .registry import register


def _known(dim) -> TypeGuard[int]:
    return isinstance(dim, int)


def _stash(x, stash_type):
    """x in the type its statistics are computed in (float32 for half types when stash_type=1)."""
    if stash_type == 1 and jnp.dtype(x.dtype).itemsize < 4:
        return x.astype(jnp.float32)
    return x


def _moments(x, axes):
    mean = jnp.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    return mean, centered, jnp.mean(centered * centered, axis=axes, keepdims=True)


# -- checks -----------------------------------------------------------------------------------

def _check_axis(x, params) -> None:
    axis = params.get("axis", -1)
    if x is not None and not -x.rank <= axis < max(x.rank, 1):
        raise ValueError(f"attribute axis={axis} is out of range for input {x.type_str()}")


def _check_broadcastable(value, target: tuple, what: str) -> None:
    """``value`` broadcasts to the normalized shape ``target`` (unidirectionally)."""
    if value is None:
        return
    if value.rank > len(target):
        raise ValueError(f"{what} {value.type_str()} has a higher rank than the normalized "
                         f"shape {list(target)}")
    for dim, want in zip(reversed(value.shape), reversed(target)):
        if _known(dim) and _known(want) and dim not in (1, want):
            raise ValueError(f"{what} {value.type_str()} does not broadcast to the normalized "
                             f"shape {list(target)}")


def check_layer_norm(inputs, params) -> None:
    """LayerNormalization/RMSNormalization: axis in range, scale (and bias) broadcast to the
    normalized trailing shape, stash_type 1 or 0 (onnxruntime supports float32 stashing)."""
    x = inputs[0]
    rank_at_least(x, 1, "input 0 (X)")
    _check_axis(x, params)
    flag(params, "stash_type", (1, 0))
    if x is None:
        return
    target = tuple(x.shape[normalize_axis(params.get("axis", -1), x.rank):])
    for index, name in ((1, "input 1 (Scale)"), (2, "input 2 (B)")):
        _check_broadcastable(inputs[index] if index < len(inputs) else None, target, name)
    if len(inputs) < 2 or inputs[1] is None:
        raise ValueError("input 1 (Scale) is missing")


def _check_groups(inputs, params, per_group: bool) -> None:
    x = inputs[0]
    rank_at_least(x, 3 if per_group else 2, "input 0 (X)")
    groups = params.get("num_groups")
    if not isinstance(groups, int) or groups < 1:
        raise ValueError(f"attribute num_groups={groups!r} must be an integer >= 1")
    flag(params, "stash_type", (1, 0))
    channels = x.shape[1] if x is not None else None
    if _known(channels) and channels % groups:
        raise ValueError(f"the input's {channels} channels are not divisible by "
                         f"num_groups={groups}")
    want = groups if per_group else channels
    for index, name in ((1, "scale"), (2, "bias")):
        value = inputs[index] if index < len(inputs) else None
        if value is None:
            raise ValueError(f"input {index} ({name}) is missing")
        if value.rank != 1 or (_known(want) and _known(value.shape[0]) and value.shape[0] != want):
            raise ValueError(f"input {index} ({name}) {value.type_str()} must be 1-D of "
                             f"{want} {'groups' if per_group else 'channels'}")


def check_group_norm_18(inputs, params) -> None:
    """GroupNormalization-18: num_groups >= 1 divides the channels; scale, bias per group."""
    _check_groups(inputs, params, per_group=True)


def check_group_norm(inputs, params) -> None:
    """GroupNormalization-21: num_groups >= 1 divides the channels; scale, bias per channel."""
    _check_groups(inputs, params, per_group=False)


def check_instance_norm(inputs, params) -> None:
    """InstanceNormalization: rank >= 3; scale and B are 1-D of the channels."""
    x = inputs[0]
    rank_at_least(x, 3, "input 0 (input)")
    channels = x.shape[1] if x is not None and x.rank >= 2 else None
    for index, name in ((1, "scale"), (2, "B")):
        value = inputs[index] if index < len(inputs) else None
        if value is None:
            raise ValueError(f"input {index} ({name}) is missing")
        if value.rank != 1 or (_known(channels) and _known(value.shape[0])
                               and value.shape[0] != channels):
            raise ValueError(f"input {index} ({name}) {value.type_str()} must be 1-D of the "
                             f"input's {channels} channels")


# -- ops --------------------------------------------------------------------------------------

@register("LayerNormalization", since=17, attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
          check=check_layer_norm)
def layer_norm(x, scale, bias=None, *, axis, epsilon, stash_type):
    """(x - mean) / sqrt(var + epsilon) * Scale + B over the axes from ``axis`` on; outputs
    (Y, Mean, InvStdDev), the statistics keeping the normalized axes as size 1."""
    axes = tuple(range(normalize_axis(axis, x.ndim), x.ndim))
    mean, centered, var = _moments(_stash(x, stash_type), axes)
    inv = lax.rsqrt(var + jnp.asarray(epsilon, var.dtype))
    y = (centered * inv).astype(x.dtype) * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv


@register("RMSNormalization", since=23, attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
          check=check_layer_norm)
def rms_norm(x, scale, *, axis, epsilon, stash_type):
    """x / sqrt(mean(x^2) + epsilon) * scale, the mean over the axes from ``axis`` on."""
    axes = tuple(range(normalize_axis(axis, x.ndim), x.ndim))
    xs = _stash(x, stash_type)
    mean_square = jnp.mean(xs * xs, axis=axes, keepdims=True)
    return (xs * lax.rsqrt(mean_square + jnp.asarray(epsilon, xs.dtype))).astype(x.dtype) * scale


def _group_normalized(x, num_groups, epsilon, stash_type):
    """x normalized per (instance, group of channels), in x's shape and type."""
    xs = _stash(x, stash_type)
    grouped = jnp.reshape(xs, (x.shape[0], num_groups, -1))
    _, centered, var = _moments(grouped, (2,))
    normed = centered * lax.rsqrt(var + jnp.asarray(epsilon, var.dtype))
    return jnp.reshape(normed, x.shape).astype(x.dtype)


def _per_channel(v, x):
    return jnp.reshape(v, (1, -1) + (1,) * (x.ndim - 2))


@register("GroupNormalization", since=18, attrs={"epsilon": 1e-5, "num_groups": None},
          check=check_group_norm_18)
def group_norm_18(x, scale, bias, *, epsilon, num_groups):
    """Normalization per instance and group of channels; scale and bias hold one value per
    group (opset 18)."""
    y = _group_normalized(x, num_groups, epsilon, 1)
    per_channel = x.shape[1] // num_groups
    return (y * _per_channel(jnp.repeat(scale, per_channel), x)
            + _per_channel(jnp.repeat(bias, per_channel), x))


@register("GroupNormalization", since=21,
          attrs={"epsilon": 1e-5, "num_groups": None, "stash_type": 1}, check=check_group_norm)
def group_norm(x, scale, bias, *, epsilon, num_groups, stash_type):
    """Normalization per instance and group of channels, then scale and bias per channel."""
    y = _group_normalized(x, num_groups, epsilon, stash_type)
    return y * _per_channel(scale, x) + _per_channel(bias, x)


@register("InstanceNormalization", since=6, attrs={"epsilon": 1e-5}, check=check_instance_norm)
@register("InstanceNormalization", since=22, attrs={"epsilon": 1e-5}, check=check_instance_norm)
def instance_norm(x, scale, bias, *, epsilon):
    """Normalization of each (instance, channel) over the spatial axes, then scale and B per
    channel."""
    axes = tuple(range(2, x.ndim))
    _, centered, var = _moments(_stash(x, 1), axes)
    y = (centered * lax.rsqrt(var + jnp.asarray(epsilon, var.dtype))).astype(x.dtype)
    return y * _per_channel(scale, x) + _per_channel(bias, x)
