"""JAX forward evaluation of an IR graph (onnx-level or constraint ops alike): the one interpreter.

``Interpreter(graph).values(leaf, wanted, known=..., override=...)`` evaluates the values ``wanted``
(and what they need, nothing else) in graph order: ``leaf(v)`` gives inputs, params and consts,
``known`` pins values, ``override(op)`` may replace an op's output (the state layouts use it to read a
family's output from its slots). Everything else in projc that runs a graph goes through it:
``make_forward`` and ``run_forward`` (``compare``, the tests), the state layouts' forward passes
(training) and ``forward_logits`` (evaluation, the Adam baseline).

``make_forward(graph)`` returns a pure function ``fn(params, inputs) -> [outputs]``: params keyed
by the initializer's ONNX name (``Value.hint``) for every ``param``, inputs keyed by the graph
input's ONNX name. Constants are closed over as numpy arrays; an operand the registry marks
``static`` is handed to the op function as numpy, so shapes stay compile-time and the function
jits (``jax.jit(fn)``) for any batch size.

JAX holds int64/float64 as int32/float32 (x64 off): every op output is cast to the JAX dtype of
its declared IR dtype, and ``run_forward`` casts the outputs back to the declared dtypes with
numpy. A graph that holds float64 anywhere is evaluated by ``run_forward`` under
``jax.enable_x64(True)`` (a context, for that call only), so it computes in float64 as ONNX asks;
graphs without float64 run exactly as before, bit for bit.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from projc.errors import DataError, UnsupportedModelError
from projc.ir import Graph, Op, Value
from projc.ops import lookup_by_params, lookup_in
from projc.ops.dtypes import as_jax_array, jax_dtype, np_dtype

Forward = Callable[[dict[str, Any], dict[str, Any]], list[jax.Array]]


@dataclass(frozen=True)
class _Step:
    """One op, ready to run: its function, keyword arguments and static operands."""

    op: Op
    fn: Callable[..., Any]
    kwargs: dict[str, Any]
    static: dict[int, np.ndarray]  # operand index -> compile-time value


class Interpreter:
    """Lazy evaluation of a graph's values (see the module docstring). Immutable after __init__."""

    def __init__(self, graph: Graph, *, cast: bool = True):
        """``cast``: cast every op output to its declared IR dtype (the ONNX semantics); the state
        layouts pass False and compute in their params' dtype (float64 under ``enable_x64``)."""
        self.graph = graph
        self.cast = cast
        self.steps = {op: _plan_step(graph, op) for op in graph.ops if op.outputs}
        self.producer = graph.producers()
        self.order = {op: i for i, op in enumerate(graph.ops)}

    def values(self, leaf: Callable[[Value], Any], wanted, *, known: dict[Value, Any] | None = None,
               override: Callable[[Op], Any] | None = None) -> dict[Value, Any]:
        """{value: array} for ``wanted`` and everything evaluated on the way."""
        env: dict[Value, Any] = dict(known or {})
        replaced: dict[Op, Any] = {}
        needed: set[Op] = set()
        stack = [v for v in wanted if v is not None]
        while stack:  # which ops must run (and which leaves are read), walking back from `wanted`
            v = stack.pop()
            if v in env:
                continue
            op = self.producer.get(v)
            if op is None:
                env[v] = leaf(v)
                continue
            if op in needed or op in replaced:
                continue
            out = override(op) if override is not None else None
            if out is not None:
                replaced[op] = out
                env[v] = out
                continue
            needed.add(op)
            stack.extend(u for u in op.inputs if u is not None)
        for op in sorted(needed, key=self.order.__getitem__):
            _run_step(self.steps[op], env, self.cast)
        return env


def op_forward(op: Op, *xs, overrides: Mapping[str, Any] | None = None):
    """The registered JAX forward of one op, with some attributes replaced (``overrides``)."""
    opdef = lookup_by_params(op.kind, op.params)
    if opdef is None:
        raise UnsupportedModelError(f"op {op.kind} ({op.annots.get('src', '?')}) has no "
                                    "registered forward semantics")
    return opdef.fn(*xs, **{**opdef.attrs, **op.params, **(overrides or {})})


def make_forward(graph: Graph) -> Forward:
    """The graph's forward function (pure, jit-able, batch size free)."""
    interp = Interpreter(graph)
    consts = {v: as_jax_array(v.data) for v in graph.consts}
    _check_no_strings(graph)

    def forward(params: dict[str, Any], inputs: dict[str, Any]) -> list[jax.Array]:
        def leaf(v: Value):
            if v in consts:
                return consts[v]
            if v.role == "param":
                return _runtime_array(params, v, "param")
            return _runtime_array(inputs, v, "input")

        env = interp.values(leaf, graph.outputs)
        return [env[v] for v in graph.outputs]

    return forward


class GraphForward:
    """A graph with its loss attached and nothing lowered, as a gradient method sees it (the
    Trainer's ``layout`` for ``adam``): ``forward_logits(params, inputs)`` is the loss's input,
    computed by the ONNX ops' own forwards."""

    name = "forward"

    def __init__(self, graph: Graph):
        self.graph = graph
        self.param_names = [v.hint for v in graph.params]
        self._forward = make_forward(graph)

    def logits_value(self) -> Value:
        return self.graph.outputs[0]

    def forward_logits(self, params: dict[str, Any], inputs: dict[str, Any]):
        return self._forward(params, inputs)[0]

    def value_shapes(self, params: dict[str, Any], inputs: dict[str, Any]) -> list[tuple]:
        """[(value, shape, dtype)] of every op output of the forward on these (abstract) params and
        inputs, traced for shapes only (``jax.eval_shape``): the memory plan's activations."""
        interp = Interpreter(self.graph)
        consts = {v: v.data for v in self.graph.consts}
        wanted = [v for op in self.graph.ops for v in op.outputs if v is not None]

        def run(p, i):
            def leaf(v: Value):
                if v in consts:
                    return as_jax_array(consts[v])
                return _runtime_array(p if v.role == "param" else i, v, v.role)
            env = interp.values(leaf, wanted)
            return {str(k): env[v] for k, v in enumerate(wanted) if v in env}

        abstract = jax.eval_shape(run, params, inputs)
        return [(v, tuple(abstract[str(k)].shape), abstract[str(k)].dtype)
                for k, v in enumerate(wanted) if str(k) in abstract]


def run_forward(graph: Graph, params: dict[str, Any] | None, inputs: dict[str, Any], *,
                jit: bool = True) -> list[np.ndarray]:
    """Evaluate the graph once (jitted unless ``jit=False``); outputs as numpy arrays of their
    declared dtypes. ``params=None`` uses the graph's own initial parameters."""
    with jax.enable_x64(True) if needs_x64(graph) else contextlib.nullcontext():
        fn = make_forward(graph)
        fn = jax.jit(fn) if jit else fn
        params = graph_param_values(graph) if params is None else params
        outputs = fn(params, inputs)
        return [np.asarray(out).astype(np_dtype(v.dtype))
                for out, v in zip(outputs, graph.outputs)]


def needs_x64(graph: Graph) -> bool:
    """True when a value of the graph is float64 (JAX must then hold 64-bit types)."""
    values = [*graph.inputs, *graph.initializers, *(v for op in graph.ops for v in op.outputs)]
    return any(v is not None and v.dtype == "f64" for v in values)


def graph_param_values(graph: Graph) -> dict[str, np.ndarray | None]:
    """The trainable parameters' initial values, keyed by ONNX initializer name (None where IR
    text elided a parameter's data)."""
    return {v.hint: v.data for v in graph.params}


# -- internals --------------------------------------------------------------------------------

def _plan_step(graph: Graph, op: Op) -> _Step:
    opsets = graph.meta.get("opset")
    opdef = lookup_in(op.kind, opsets) if opsets else lookup_by_params(op.kind, op.params)
    if opdef is None:
        raise UnsupportedModelError(f"op {op.kind} ({op.annots.get('src', '?')}) has no "
                                    "registered forward semantics")
    static = {}
    for index in opdef.static:
        value = op.inputs[index] if index < len(op.inputs) else None
        if value is None:
            continue
        if value.role != "const" or value.data is None:
            raise UnsupportedModelError(
                f"op {op.kind} ({op.annots.get('src', '?')}): operand {index} must be a constant")
        static[index] = np.asarray(value.data)
    return _Step(op, opdef.fn, {**opdef.attrs, **op.params}, static)


def _run_step(step: _Step, env: dict[Value, Any], cast: bool = True) -> None:
    args = [step.static[i] if i in step.static else (None if v is None else env[v])
            for i, v in enumerate(step.op.inputs)]
    result = step.fn(*args, **step.kwargs)
    results = result if isinstance(result, tuple) else (result,)
    for value, out in zip(step.op.outputs, results):
        if value is None:
            continue
        if not cast:
            env[value] = out
            continue
        want = jax_dtype(np_dtype(value.dtype))
        out = jnp.asarray(out)
        env[value] = out if out.dtype == want else out.astype(want)


def _runtime_array(supplied: dict[str, Any], value: Value, what: str):
    if value.hint not in supplied:
        raise DataError(f"missing {what} \"{value.hint}\" (expected {value.type_str()}; given: "
                        f"{', '.join(sorted(supplied)) or 'none'})")
    array = supplied[value.hint]
    if not hasattr(array, "dtype"):  # lists, Python scalars
        array = np.asarray(array)
    want = jax_dtype(np_dtype(value.dtype))
    return array if array.dtype == want else array.astype(want)


def _check_no_strings(graph: Graph) -> None:
    for op in graph.ops:
        for v in list(op.inputs) + list(op.outputs):
            if v is not None and v.dtype == "str":
                raise UnsupportedModelError(
                    f"op {op.kind} ({op.annots.get('src', '?')}) computes on string tensors, "
                    "which the JAX forward cannot hold (e.g. string class labels)")
