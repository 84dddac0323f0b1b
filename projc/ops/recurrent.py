"""Recurrent ONNX ops: RNN, GRU and LSTM (every direction, activation, layout and sequence length).

Each op runs one ``lax.scan`` per direction over the time axis of ``X [T, B, I]`` (``layout=1``:
``[B, T, I]``). The input products ``X W^T`` of all steps are one matmul before the scan; inside
it, a step adds the recurrent product and applies the cell. ``sequence_lens`` masks the steps
past a sequence's end: the state stays put there (so a reverse direction starts at the sequence's
own last element) and the output ``Y`` is zero, as onnxruntime computes it.

Activations are named as in the ONNX spec; ``activation_alpha`` / ``activation_beta`` are consumed
in the order of the activations, each taking as many as it uses (its ONNX op's defaults when the
lists run out).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from projc.errors import UnsupportedModelError

from .registry import register

PRECISION = lax.Precision.HIGHEST  # the forward is checked against onnxruntime at 1e-5

# name -> (fn(x, alpha, beta), default alpha or None when unused, default beta or None)
_ACTIVATIONS = {
    "Tanh": (lambda x, a, b: jnp.tanh(x), None, None),
    "Relu": (lambda x, a, b: jax.nn.relu(x), None, None),
    "Sigmoid": (lambda x, a, b: jax.nn.sigmoid(x), None, None),
    "Affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "LeakyRelu": (lambda x, a, b: jnp.where(x >= 0, x, a * x), 0.01, None),
    "ThresholdedRelu": (lambda x, a, b: jnp.where(x > a, x, 0.0), 1.0, None),
    "ScaledTanh": (lambda x, a, b: a * jnp.tanh(b * x), 1.0, 1.0),
    "HardSigmoid": (lambda x, a, b: jnp.clip(a * x + b, 0.0, 1.0), 0.2, 0.5),
    "Elu": (lambda x, a, b: jnp.where(x >= 0, x, a * jnp.expm1(x)), 1.0, None),
    "Softsign": (lambda x, a, b: x / (1 + jnp.abs(x)), None, None),
    "Softplus": (lambda x, a, b: jax.nn.softplus(x), None, None),
}
_DIRECTIONS = {"forward": (False,), "reverse": (True,), "bidirectional": (False, True)}


def activation_functions(op_type: str, names, alphas, betas, per_direction: int,
                         defaults: tuple[str, ...], directions: int) -> list:
    """One list of ``per_direction`` unary functions per direction, from the ONNX attributes."""
    names = list(names) if names else list(defaults) * directions
    if len(names) != per_direction * directions:
        raise UnsupportedModelError(f"{op_type}: {len(names)} activations given, expected "
                                    f"{per_direction} per direction ({directions} direction(s))")
    alphas, betas = list(alphas or []), list(betas or [])
    fns = []
    for name in names:
        key = _canonical_activation(op_type, name)
        fn, alpha, beta = _ACTIVATIONS[key]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        fns.append(lambda x, fn=fn, a=alpha, b=beta: fn(x, a, b))
    return [fns[d * per_direction:(d + 1) * per_direction] for d in range(directions)]


def _canonical_activation(op_type: str, name: str) -> str:
    by_lower = {k.lower(): k for k in _ACTIVATIONS}
    key = by_lower.get(str(name).lower())
    if key is None:
        raise UnsupportedModelError(f"{op_type}: activation {name!r} is not supported "
                                    f"(supported: {', '.join(_ACTIVATIONS)})")
    return key


def scan_direction(cell, x_proj, state0, seq_lens, reverse: bool):
    """Run ``cell(state, x_proj_t) -> (state, h_t)`` over time; returns (Y [T,B,H], final state).

    With ``seq_lens`` [B], steps t >= seq_lens[b] keep batch row b's state and output zeros.
    """
    steps = x_proj.shape[0]

    def step(state, inputs):
        t, xp = inputs
        new_state, h = cell(state, xp)
        if seq_lens is None:
            return new_state, h
        live = (t < seq_lens)[:, None]
        kept = tuple(jnp.where(live, n, o) for n, o in zip(new_state, state))
        return kept, jnp.where(live, h, jnp.zeros_like(h))

    final, ys = lax.scan(step, tuple(state0), (jnp.arange(steps), x_proj), reverse=reverse)
    return ys, final


def _maybe_clip(x, clip):
    return x if clip is None else jnp.clip(x, -clip, clip)


def _matmul_t(a, w):
    """a @ w.T at full float32 accuracy."""
    return jnp.matmul(a, w.T, precision=PRECISION)


def _prepare(x, initial_states, layout):
    """Inputs in the [T, B, ...] / [D, B, H] layout whatever ``layout`` says."""
    if not layout:
        return x, initial_states
    return (jnp.swapaxes(x, 0, 1),
            [None if s is None else jnp.swapaxes(s, 0, 1) for s in initial_states])


def _finish(ys, finals, layout):
    """Stack directions: Y [T, D, B, H] and each final state [D, B, H] (layout 1: batch first)."""
    y = jnp.stack(ys, axis=1)
    states = [jnp.stack(list(s), axis=0) for s in zip(*finals)]
    if layout:
        y = jnp.transpose(y, (2, 0, 1, 3))
        states = [jnp.swapaxes(s, 0, 1) for s in states]
    return (y, *states)


def _initial(state, d, batch, hidden, dtype):
    return jnp.zeros((batch, hidden), dtype) if state is None else state[d]


def _lens(sequence_lens):
    return None if sequence_lens is None else jnp.asarray(sequence_lens).astype(jnp.int32)


# -- RNN ------------------------------------------------------------------------------------

_RNN_ATTRS = {"activation_alpha": None, "activation_beta": None, "activations": None,
              "clip": None, "direction": "forward", "hidden_size": None}


@register("RNN", since=7, attrs=_RNN_ATTRS)
@register("RNN", since=14, attrs={**_RNN_ATTRS, "layout": 0})
@register("RNN", since=22, attrs={**_RNN_ATTRS, "layout": 0})
def rnn(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha,
        activation_beta, activations, clip, direction, hidden_size, layout=0):
    """Elman RNN h_t = f(W x_t + R h_{t-1} + Wb + Rb); outputs Y [T, D, B, H] and Y_h [D, B, H]."""
    x, (initial_h,) = _prepare(x, [initial_h], layout)
    hidden = w.shape[1]
    fns = activation_functions("RNN", activations, activation_alpha, activation_beta, 1,
                               ("Tanh",), len(_DIRECTIONS[direction]))
    ys, finals = [], []
    for d, reverse in enumerate(_DIRECTIONS[direction]):
        bias = 0.0 if b is None else b[d, :hidden] + b[d, hidden:]
        (f,), rd = fns[d], r[d]

        def cell(state, xp, f=f, rd=rd):
            h = f(_maybe_clip(xp + _matmul_t(state[0], rd), clip))
            return (h,), h

        h0 = _initial(initial_h, d, x.shape[1], hidden, x.dtype)
        y, final = scan_direction(cell, _matmul_t(x, w[d]) + bias, (h0,), _lens(sequence_lens),
                                  reverse)
        ys.append(y)
        finals.append(final)
    return _finish(ys, finals, layout)


# -- GRU ------------------------------------------------------------------------------------

_GRU_ATTRS = {**_RNN_ATTRS, "linear_before_reset": 0}


@register("GRU", since=7, attrs=_GRU_ATTRS)
@register("GRU", since=14, attrs={**_GRU_ATTRS, "layout": 0})
@register("GRU", since=22, attrs={**_GRU_ATTRS, "layout": 0})
def gru(x, w, r, b=None, sequence_lens=None, initial_h=None, *, activation_alpha,
        activation_beta, activations, clip, direction, hidden_size, linear_before_reset,
        layout=0):
    """GRU (gates z, r, h): h_t = (1 - z) * h~ + z * h_{t-1}; outputs Y and Y_h."""
    x, (initial_h,) = _prepare(x, [initial_h], layout)
    hidden = w.shape[1] // 3
    fns = activation_functions("GRU", activations, activation_alpha, activation_beta, 2,
                               ("Sigmoid", "Tanh"), len(_DIRECTIONS[direction]))
    ys, finals = [], []
    for d, reverse in enumerate(_DIRECTIONS[direction]):
        wb = jnp.zeros(3 * hidden, x.dtype) if b is None else b[d, :3 * hidden]
        rb = jnp.zeros(3 * hidden, x.dtype) if b is None else b[d, 3 * hidden:]
        cell = _gru_cell(fns[d], r[d], rb, hidden, clip, linear_before_reset)
        h0 = _initial(initial_h, d, x.shape[1], hidden, x.dtype)
        y, final = scan_direction(cell, _matmul_t(x, w[d]) + wb, (h0,), _lens(sequence_lens),
                                  reverse)
        ys.append(y)
        finals.append(final)
    return _finish(ys, finals, layout)


def _gru_cell(fns, rd, rb, hidden, clip, linear_before_reset):
    f, g = fns
    r_zr, r_h = rd[:2 * hidden], rd[2 * hidden:]
    rb_zr, rb_h = rb[:2 * hidden], rb[2 * hidden:]

    def cell(state, xp):
        (h,) = state
        zr = f(_maybe_clip(xp[:, :2 * hidden] + _matmul_t(h, r_zr) + rb_zr, clip))
        z, reset = zr[:, :hidden], zr[:, hidden:]
        if linear_before_reset:
            rec = reset * (_matmul_t(h, r_h) + rb_h)
        else:
            rec = _matmul_t(reset * h, r_h) + rb_h
        candidate = g(_maybe_clip(xp[:, 2 * hidden:] + rec, clip))
        h = (1 - z) * candidate + z * h
        return (h,), h

    return cell


# -- LSTM -----------------------------------------------------------------------------------

_LSTM_ATTRS = {**_RNN_ATTRS, "input_forget": 0}


@register("LSTM", since=7, attrs=_LSTM_ATTRS)
@register("LSTM", since=14, attrs={**_LSTM_ATTRS, "layout": 0})
@register("LSTM", since=22, attrs={**_LSTM_ATTRS, "layout": 0})
def lstm(x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None, *,
         activation_alpha, activation_beta, activations, clip, direction, hidden_size,
         input_forget, layout=0):
    """LSTM (gates i, o, f, c; optional peepholes P); outputs Y, Y_h and Y_c."""
    x, (initial_h, initial_c) = _prepare(x, [initial_h, initial_c], layout)
    hidden = w.shape[1] // 4
    fns = activation_functions("LSTM", activations, activation_alpha, activation_beta, 3,
                               ("Sigmoid", "Tanh", "Tanh"), len(_DIRECTIONS[direction]))
    ys, finals = [], []
    for d, reverse in enumerate(_DIRECTIONS[direction]):
        bias = 0.0 if b is None else b[d, :4 * hidden] + b[d, 4 * hidden:]
        peep = None if p is None else p[d]
        cell = _lstm_cell(fns[d], r[d], peep, hidden, clip, input_forget)
        state0 = (_initial(initial_h, d, x.shape[1], hidden, x.dtype),
                  _initial(initial_c, d, x.shape[1], hidden, x.dtype))
        y, final = scan_direction(cell, _matmul_t(x, w[d]) + bias, state0,
                                  _lens(sequence_lens), reverse)
        ys.append(y)
        finals.append(final)
    return _finish(ys, finals, layout)


def _lstm_cell(fns, rd, peep, hidden, clip, input_forget):
    f, g, h_act = fns
    p_i, p_o, p_f = (None, None, None) if peep is None else (
        peep[:hidden], peep[hidden:2 * hidden], peep[2 * hidden:])

    def gate(pre, k):
        return pre[:, k * hidden:(k + 1) * hidden]

    def cell(state, xp):
        h, c = state
        pre = xp + _matmul_t(h, rd)
        pre_i, pre_f = gate(pre, 0), gate(pre, 2)
        if peep is not None:
            pre_i, pre_f = pre_i + p_i * c, pre_f + p_f * c
        i = f(_maybe_clip(pre_i, clip))
        forget = 1 - i if input_forget else f(_maybe_clip(pre_f, clip))
        c = forget * c + i * g(_maybe_clip(gate(pre, 3), clip))
        pre_o = gate(pre, 1) if peep is None else gate(pre, 1) + p_o * c
        h = f(_maybe_clip(pre_o, clip)) * h_act(c)
        return (h, c), h

    return cell
