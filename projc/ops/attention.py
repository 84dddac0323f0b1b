"""Transformer building blocks: Attention (opset 23+, what torch exports for
F.scaled_dot_product_attention at opset >= 23), Einsum and Trilu (causal masks at lower opsets).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from .dtypes import jax_dtype, np_dtype_of_onnx
from .layout import ints
from .nn import PRECISION
from .registry import register


def check_einsum(inputs, params) -> None:
    """Einsum: the equation names one term per input, each with as many letters as the input's
    rank (an ellipsis standing for the rest)."""
    equation = params.get("equation")
    if not isinstance(equation, str) or not equation:
        raise ValueError("attribute equation is required")
    terms = equation.replace(" ", "").split("->")[0].split(",")
    if len(terms) != len(inputs):
        raise ValueError(f"equation {equation!r} has {len(terms)} operand terms for "
                         f"{len(inputs)} inputs")
    for index, (term, value) in enumerate(zip(terms, inputs)):
        if value is None:
            continue
        letters = len(term.replace("...", ""))
        if ("..." in term and letters > value.rank) or ("..." not in term and letters != value.rank):
            raise ValueError(f"equation term {term!r} does not match input {index} "
                             f"{value.type_str()}")


@register("Einsum", since=12, attrs={"equation": None}, check=check_einsum)
def einsum(*xs, equation):
    """Einstein summation over the inputs as ``equation`` says (numpy.einsum semantics)."""
    return jnp.einsum(equation.replace(" ", ""), *xs, precision=PRECISION).astype(xs[0].dtype)


@register("Trilu", since=14, attrs={"upper": 1}, static=(1,))
def trilu(x, k=None, *, upper):
    """The upper (upper=1) or lower triangle of the last two axes, from diagonal ``k`` on
    (``k`` a compile-time scalar, default 0); the rest zero."""
    diagonal = ints(k)[0] if k is not None else 0
    return jnp.triu(x, diagonal) if upper else jnp.tril(x, diagonal)


# -- Attention --------------------------------------------------------------------------------

def check_attention(inputs, params) -> None:
    """Attention: Q, K, V all 3-D (with q_num_heads and kv_num_heads) or all 4-D (without);
    q heads a multiple of kv heads; past_key and past_value given together."""
    q, k, v = (list(inputs) + [None] * 3)[:3]
    ranks = {x.rank for x in (q, k, v) if x is not None}
    if len(ranks) != 1 or not ranks <= {3, 4}:
        raise ValueError("Q, K and V must all be 3-D or all 4-D")
    rank = ranks.pop()
    q_heads, kv_heads = params.get("q_num_heads"), params.get("kv_num_heads")
    if rank == 3 and (not q_heads or not kv_heads):
        raise ValueError("3-D Q, K, V need the attributes q_num_heads and kv_num_heads")
    if q_heads and kv_heads and q_heads % kv_heads:
        raise ValueError(f"q_num_heads={q_heads} is not a multiple of kv_num_heads={kv_heads}")
    past = [inputs[i] if i < len(inputs) else None for i in (4, 5)]
    if (past[0] is None) != (past[1] is None):
        raise ValueError("past_key and past_value must be given together")
    if len(inputs) > 6 and inputs[6] is not None and past[0] is not None:
        raise ValueError("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    if params.get("qk_matmul_output_mode", 0) not in (0, 1, 2, 3):
        raise ValueError(f"attribute qk_matmul_output_mode={params['qk_matmul_output_mode']!r}: "
                         "expected 0, 1, 2 or 3")
    for name in ("left_window_size", "right_window_size"):
        if params.get(name, -1) < -1:
            raise ValueError(f"attribute {name}={params[name]} must be -1 or >= 0")


def _heads(x, heads):
    """[B, S, heads * D] -> [B, heads, S, D]."""
    b, s, _ = x.shape
    return jnp.transpose(jnp.reshape(x, (b, s, heads, -1)), (0, 2, 1, 3))


def _band(q_len, kv_len, offset, lower, upper):
    """Allowed (query, key) pairs: lower <= (i + offset) - j <= upper (None: unbounded);
    offset a scalar or a [B] vector (then the result is [B, 1, q, kv])."""
    i = jnp.arange(q_len)[:, None]
    j = jnp.arange(kv_len)[None, :]
    offset = jnp.asarray(offset)
    if offset.ndim:
        offset = jnp.reshape(offset, (-1, 1, 1, 1))
    diff = i + offset - j
    allowed = jnp.ones(diff.shape, bool)
    if lower is not None:
        allowed &= diff >= lower
    if upper is not None:
        allowed &= diff <= upper
    return allowed


def _attention_bias(dtype, q_len, kv_len, batch, attn_mask, is_causal, offset, window,
                    nonpad_kv_seqlen):
    """The additive bias (0 / -inf, plus a float mask) of the attention scores."""
    neg_inf = jnp.asarray(-jnp.inf, dtype)
    bias = jnp.zeros((q_len, kv_len), dtype)
    if attn_mask is not None:
        pad = kv_len - attn_mask.shape[-1]
        if pad > 0:  # a mask shorter than the keys: the rest is masked out
            fill = False if attn_mask.dtype == jnp.bool_ else -jnp.inf
            attn_mask = jnp.pad(attn_mask, [(0, 0)] * (attn_mask.ndim - 1) + [(0, pad)],
                                constant_values=fill)
        if attn_mask.dtype == jnp.bool_:
            attn_mask = jnp.where(attn_mask, jnp.asarray(0, dtype), neg_inf)
        bias = bias + attn_mask.astype(dtype)
    if is_causal:
        bias = bias + jnp.where(_band(q_len, kv_len, offset, 0, None), 0, neg_inf).astype(dtype)
    left, right = window
    if left >= 0 or right >= 0:
        allowed = _band(q_len, kv_len, offset, -right if right >= 0 else None,
                        left if left >= 0 else None)
        bias = bias + jnp.where(allowed, 0, neg_inf).astype(dtype)
    if nonpad_kv_seqlen is not None:
        valid = jnp.arange(kv_len)[None, :] < jnp.reshape(nonpad_kv_seqlen, (-1, 1))
        bias = bias + jnp.where(valid, 0, neg_inf).astype(dtype).reshape(batch, 1, 1, kv_len)
    return bias


# attn_mask, past_key, past_value, nonpad_kv_seqlen: masks and caches, never trained
_MASKS_AND_CACHES = (3, 4, 5, 6)
_ATTENTION_ATTRS = {"is_causal": 0, "kv_num_heads": None, "q_num_heads": None,
                    "qk_matmul_output_mode": 0, "scale": None, "softcap": 0.0,
                    "softmax_precision": None}


@register("Attention", since=23, attrs=_ATTENTION_ATTRS, check=check_attention,
          frozen=_MASKS_AND_CACHES)
@register("Attention", since=24, attrs=_ATTENTION_ATTRS, check=check_attention,
          frozen=_MASKS_AND_CACHES)
@register("Attention", since=25, attrs={**_ATTENTION_ATTRS, "left_window_size": -1,
                                        "right_window_size": -1}, check=check_attention,
          frozen=_MASKS_AND_CACHES)
def attention(q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None, *,
              is_causal, kv_num_heads, q_num_heads, qk_matmul_output_mode, scale, softcap,
              softmax_precision, left_window_size=-1, right_window_size=-1):
    """softmax(Q K^T * scale + mask) V per head (3-D inputs split into heads; grouped KV heads
    repeated; causal masks bottom-right aligned after the past keys); outputs (Y, present_key,
    present_value, qk_matmul_output)."""
    three_d = q.ndim == 3
    if three_d:
        q, k, v = _heads(q, q_num_heads), _heads(k, kv_num_heads), _heads(v, kv_num_heads)
    if past_key is not None:
        k = jnp.concatenate([past_key, k], axis=2)
        v = jnp.concatenate([past_value, v], axis=2)
    present_key, present_value = k, v
    batch, heads, q_len, head_size = q.shape
    kv_len = k.shape[2]
    if past_key is not None:
        offset = past_key.shape[2]
    elif nonpad_kv_seqlen is not None:
        offset = jnp.reshape(nonpad_kv_seqlen, (-1,)) - q_len
    else:
        offset = 0
    bias = _attention_bias(q.dtype, q_len, kv_len, batch, attn_mask, bool(is_causal), offset,
                           (left_window_size, right_window_size), nonpad_kv_seqlen)
    if heads != k.shape[1]:  # grouped-query attention: each KV head serves heads/kv queries
        k = jnp.repeat(k, heads // k.shape[1], axis=1)
        v = jnp.repeat(v, heads // v.shape[1], axis=1)
    root = np.sqrt(scale if scale is not None else 1.0 / np.sqrt(head_size)).astype(q.dtype)
    scores = jnp.matmul(q * root, jnp.swapaxes(k * root, -1, -2), precision=PRECISION)
    if softcap and softcap > 0:
        scores = jnp.tanh(scores / softcap) * softcap
    qk_output = scores
    biased = scores + bias
    if qk_matmul_output_mode == 2:
        qk_output = biased
    if softmax_precision is not None:
        biased = biased.astype(jax_dtype(np_dtype_of_onnx(softmax_precision)))
    top = jnp.max(biased, axis=-1, keepdims=True)
    exps = jnp.exp(biased - jnp.where(jnp.isneginf(top), 0, top))
    total = jnp.sum(exps, axis=-1, keepdims=True)
    probs = exps / jnp.where(total == 0, 1, total)
    masked_rows = jnp.isneginf(jnp.max(jnp.broadcast_to(bias, biased.shape), axis=-1,
                                       keepdims=True))
    probs = jnp.where(masked_rows, 0, probs)
    if qk_matmul_output_mode == 3:
        qk_output = probs
    y = jnp.matmul(probs.astype(q.dtype), v, precision=PRECISION)
    if three_d:
        y = jnp.reshape(jnp.transpose(y, (0, 2, 1, 3)), (batch, q_len, -1))
    return y, present_key, present_value, qk_output.astype(q.dtype)
