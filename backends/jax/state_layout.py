"""What every state layout shares: graph analysis, the step context, consumer means, projections.

A state layout says how the solver state of a projection trainer is stored (docs/design-notes.md). The
solver state is a dict {family key: tuple of slots}; each family's storage (``slot_storage``),
chosen by the family-rule table (``families.RULES``) for the layout's ``name``, does the per-family
work. Parameters are not separate state: a parameter's value is the mean over its consumer edges of
what they hold, which is exactly what projecting the parameter's own set makes all its copies equal to.

The interface the solvers, ``emit`` and the trainer use is the ``Layout`` protocol below.

Sets and layers come from the ``schedule`` pass (op annotations ``set`` and ``layer``); a parameter
is in the set opposite its consumers' and one layer above the nearest of them.

Everything a traced function needs travels in its arguments: the state, the ``StepContext`` (data,
labels, incoming params, the families' fixed operands, the value shapes) and the set key. A layout
object holds only what its graph fixes, and never changes after ``__init__``.
"""
from __future__ import annotations

from typing import Any, Protocol, cast

import jax
import jax.numpy as jnp
import numpy as np

from projc.errors import PassError, ProjcError
from projc.ir import Graph, Op, Value
from projc.ir.constraints import FIXED

from .families import MOVES, RULES, Family, ProjOptions
from .forward import Interpreter, op_forward
from .slot_storage import family_out_shape, static_eval, static_tuple


class Layout(Protocol):
    """The interface of a state layout (what solvers.py, emit.py and trainer.py call)."""

    name: str
    graph: Graph
    param_names: list[str]
    two_sets: tuple[str, str]
    layer_sets: tuple[tuple[str, int], ...]

    def make_ctx(self, params: dict[str, Any], inputs: dict[str, Any]) -> StepContext: ...
    def init_state(self, ctx: StepContext) -> dict: ...
    def project(self, state: dict, key, ctx: StepContext) -> dict: ...
    def readout(self, state: dict, ctx: StepContext) -> dict[str, Any]: ...
    def sq_dist(self, x: dict, y: dict, ctx: StepContext) -> tuple[Any, int]: ...
    def violation(self, state: dict, ctx: StepContext, last_set=None) -> Any: ...
    def check_two_set(self) -> None: ...
    def logits_value(self) -> Value: ...
    def forward_logits(self, params: dict[str, Any], inputs: dict[str, Any]) -> Any: ...


class ValueShapes:
    """{Value: (shape, dtype)} of one batch shape; hashable, so it rides as static pytree data."""

    def __init__(self, items: tuple):
        self.items = items
        self._map = {v: (shape, dtype) for v, shape, dtype in items}

    def __getitem__(self, v: Value) -> tuple:
        return self._map[v]

    def __hash__(self) -> int:
        return hash(self.items)

    def __eq__(self, other) -> bool:
        return isinstance(other, ValueShapes) and self.items == other.items


@jax.tree_util.register_pytree_node_class
class StepContext:
    """The constants of one update: params (fallback values), data inputs and labels, each
    family's fixed operands {family key: {operand index: array}}, and the value shapes (static)."""

    def __init__(self, params: dict, inputs: dict, fixed: dict, shapes: ValueShapes):
        self.params, self.inputs, self.fixed, self.shapes = params, inputs, fixed, shapes

    def tree_flatten(self):
        return (self.params, self.inputs, self.fixed), self.shapes

    @classmethod
    def tree_unflatten(cls, shapes, children):
        params, inputs, fixed = children
        return cls(params, inputs, fixed, shapes)


def free_values(graph: Graph, producer: dict[Value, Op]) -> dict[Value, bool]:
    """Which values move during training: params, and what depends on them (except through a
    ``fixed`` op, e.g. a softmax's shift: a constant of each update)."""
    free = {v: v.role == "param" for v in graph.values()}
    for op in graph.ops:
        moving = op.kind not in FIXED and any(free.get(u, False) for u in op.inputs if u is not None)
        for out in op.outputs:
            free[out] = moving
    return free


def value_sources(graph: Graph, producer: dict[Value, Op], free: dict[Value, bool]) -> dict[Value, frozenset]:
    """The free nodes (family ops, params) whose values each value carries, seen through moves."""
    src: dict[Value, frozenset] = {v: frozenset([v]) if v.role == "param" else frozenset()
                                   for v in graph.values()}
    for op in graph.ops:
        for out in op.outputs:
            if op.kind in MOVES:
                src[out] = frozenset().union(*[src.get(u, frozenset()) for u in op.inputs if u is not None])
            else:
                src[out] = frozenset([op]) if free[out] else frozenset()
    return src


def _slot_counts(expand, value_shape) -> np.ndarray:
    """How many slots ``expand`` (value -> slots) copies each element of the value into."""
    shape, dtype = value_shape
    spec = jax.ShapeDtypeStruct(tuple(shape), dtype)
    slot = jax.eval_shape(expand, spec)
    transpose = jax.linear_transpose(expand, spec)
    return static_eval(lambda: transpose(jnp.ones(slot.shape, slot.dtype))[0])


def _move_transpose(op: Op, in_shapes):
    """The transpose of a move (a linear map of its inputs), from output-shaped to input-shaped."""
    specs = [jax.ShapeDtypeStruct(*s) for s in in_shapes]
    linear = MOVES[op.kind].linear_overrides
    return jax.linear_transpose(lambda *xs: op_forward(op, *xs, overrides=linear), *specs)


def _moved_back(op: Op, counts, in_shapes) -> tuple:
    """Static per-element numbers on a move's output (copy counts, weights) summed back onto its
    inputs: they depend on shapes only, so they are constants of the compiled step."""
    return static_tuple(lambda: _move_transpose(op, in_shapes)(jnp.asarray(counts)))


class StateLayout:
    """The shared implementation; subclasses set ``name`` (and may refine the overwrite forms)."""

    name = "?"

    def __init__(self, graph: Graph, *, factor_linear: bool = True, bilinear_iters: int | None = None,
                 tied: float = 0.0, read_scale: float = 0.0, staircase: str = "exact"):
        unknown = [op.kind for op in graph.ops if op.kind not in RULES and op.kind not in MOVES
                   and op.kind not in FIXED]
        if unknown:
            raise ProjcError(f"the solver needs the lowered constraint IR; found op(s) "
                             f"{', '.join(sorted(set(unknown)))} (run compile_for_training first)")
        self.graph = graph
        self.tied = float(tied)
        self.read_scale = float(read_scale)
        self.opts = ProjOptions(bilinear_iters, staircase)
        self.interp = Interpreter(graph, cast=False)
        self.params: list[Value] = list(graph.params)
        self.param_names = [v.hint for v in self.params]
        self.moves = [op for op in graph.ops if op.kind in MOVES]
        producer = graph.producers()
        self.free = free_values(graph, producer)
        self.sources = value_sources(graph, producer, self.free)
        self.families: list[Family] = [f for f in (self._family(i, op, factor_linear)
                                                    for i, op in enumerate(graph.ops) if op.kind in RULES)
                                       if any(f.free)]
        self.fam_of: dict[Op, Family] = {f.op: f for f in self.families}
        losses = [f for f in self.families if not f.op.outputs]
        if len(losses) != 1:
            raise ProjcError(f"the training graph needs exactly one loss op, found {len(losses)}")
        self.loss = losses[0]
        self._read_schedule()

    def _family(self, index: int, op: Op, factor_linear: bool) -> Family:
        rule = RULES[op.kind]
        operands = [op.operand(i) for i in range(len(op.inputs))]  # a family's inputs are all present
        free = [self.free[v] and i not in rule.fixed_operands for i, v in enumerate(operands)]
        if any(free) and (op.annots.get("set") is None or op.annots.get("layer") is None):
            raise ProjcError(f"{op.kind} op (src={op.annots.get('src', '?')!r}) has no set/layer "
                             f"annotation: run the schedule pass first (compile_for_training does; "
                             f"schedule{{strict=false}} for a graph that is not bipartite)")
        # present whenever an operand is free (checked above); a family with none is never projected
        fam = Family(f"f{index}", op, cast(str, op.annots.get("set")), cast(int, op.annots.get("layer")), free,
                     sources=[self.sources[v] for v in operands])
        if rule.mode is not None:
            fam.mode = rule.mode(fam)
        fam.storage = self.choose_storage(rule, fam, factor_linear)
        return fam

    def choose_storage(self, rule, fam: Family, factor_linear: bool):
        """The storage of ``fam``'s slots: the family rule's choice for this layout."""
        return rule.storage[self.name](fam, factor_linear)

    # -- the schedule, read from the annotations ---------------------------------------------------
    def _read_schedule(self) -> None:
        adj: dict[Any, set] = {}
        for fam in self.families:
            adj.setdefault(fam.op, set())
            for i in fam.free_idx:
                for s in fam.sources[i]:
                    adj[fam.op].add(s)
                    adj.setdefault(s, set()).add(fam.op)
        node_set: dict[Any, str] = {f.op: f.set for f in self.families}
        node_layer: dict[Any, int] = {f.op: f.layer for f in self.families}
        for p in self.params:
            if p not in adj:
                continue
            layer = 1 + min(node_layer[c] for c in adj[p])
            cons = {node_set[c] for c in adj[p]}
            # opposite its consumers; consumers in both sets make a conflict whatever it gets
            node_set[p] = ("B" if cons == {"A"} else "A" if cons == {"B"} else "AB"[layer % 2])
            node_layer[p] = layer
        self.node_set, self.node_layer = node_set, node_layer
        self.conflicts = [(a, b) for a in adj for b in adj[a] if node_set[a] == node_set[b]]
        self.sets: dict[Any, frozenset] = {
            "A": frozenset(n for n, s in node_set.items() if s == "A"),
            "B": frozenset(n for n, s in node_set.items() if s == "B")}
        layers = sorted(set(node_layer.values()))
        for layer in layers:
            self.sets[("layer", layer)] = frozenset(n for n, lay in node_layer.items() if lay == layer)
        self.two_sets = ("A", "B")
        self.layer_sets = tuple(("layer", layer) for layer in layers)

    def check_two_set(self) -> None:
        """Raise PassError when a two-set solver meets a graph whose sets touch each other."""
        if self.conflicts:
            a, b = self.conflicts[0]

            def desc(n):
                return f"{n.kind} op" if isinstance(n, Op) else f"param {n.hint}"
            raise PassError(f"the graph is not bipartite: {desc(a)} and {desc(b)} are adjacent and "
                            f"both in set {self.node_set[a]}; compile with repair=True or use "
                            f"solver='cp'")

    # -- the step context, forward values -----------------------------------------------------------
    def _leaf(self, params: dict, inputs: dict):
        def leaf(v: Value):
            if v.role in ("input", "label"):
                return inputs[v.hint]
            if v.role == "const":
                return jnp.asarray(v.data)
            if v.role == "param":
                return params[v.hint]
            raise ProjcError(f"{v!r} has no constant value")
        return leaf

    def values(self, ctx: StepContext, wanted, known=None, override=None) -> dict[Value, Any]:
        """Forward values of ``wanted`` from ctx's params and data (``known`` pinned, ``override(op)``
        replacing an op's output where it returns one)."""
        return self.interp.values(self._leaf(ctx.params, ctx.inputs), wanted, known=known, override=override)

    def make_ctx(self, params: dict[str, Any], inputs: dict[str, Any]) -> StepContext:
        """The constants of one update (see StepContext)."""
        params = {p.hint: jnp.asarray(params[p.hint]) for p in self.params}
        inputs = {v.hint: jnp.asarray(inputs[v.hint]) for v in self.graph.inputs if v.hint in inputs}
        everything = [u for op in self.graph.ops for u in op.inputs if u is not None]
        spec = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (params, inputs))
        abstract = jax.eval_shape(
            lambda pi: {id(v): x for v, x in self.interp.values(self._leaf(*pi), everything).items()}, spec)
        shapes = ValueShapes(tuple((v, tuple(abstract[id(v)].shape), abstract[id(v)].dtype)
                                   for v in self.graph.values() if id(v) in abstract))
        wanted = [f.op.operand(i) for f in self.families for i in f.fixed_idx]
        env = self.interp.values(self._leaf(params, inputs), wanted)
        fixed = {f.key: {i: env[f.op.operand(i)] for i in f.fixed_idx} for f in self.families}
        return StepContext(params, inputs, fixed, shapes)

    # -- state ----------------------------------------------------------------------------------------
    def init_state(self, ctx: StepContext) -> dict:
        """Every family's slots from a forward pass with ctx's params."""
        wanted = [u for f in self.families for u in f.op.inputs] + [f.out for f in self.families if f.out]
        env = self.values(ctx, wanted)
        return {f.key: f.storage.init(f, env, ctx) for f in self.families}

    def consumer_means(self, state: dict, ctx: StepContext) -> dict[Value, tuple]:
        """{free value with consumers: (weighted sum, weight)}, operand-shaped: the mean over its
        consumer edges of what their slots hold is sum / weight where weight > 0 (moves seen through)."""
        acc: dict[Value, tuple] = {}

        def add(v, ws, w):
            if v in acc:
                a, b = acc[v]
                acc[v] = (a + ws, b + w)
            else:
                acc[v] = (ws, w)

        for fam in self.families:
            slots = state[fam.key]
            for j, i in enumerate(fam.free_idx):
                add(fam.op.inputs[i], *fam.storage.edge_mean(fam, i, j, slots, ctx))
        for op in reversed(self.moves):
            out = op.outputs[0]
            if out not in acc:
                continue
            ws, w = acc[out]
            ins = [op.operand(i) for i in range(len(op.inputs))]
            shapes = [ctx.shapes[u] for u in ins]
            cnts = _moved_back(op, np.ones(ws.shape, ws.dtype), shapes)
            wws = _moved_back(op, w, shapes)
            wss = _move_transpose(op, shapes)(ws)
            for u, c, a, b in zip(ins, cnts, wss, wws):
                if self.free[u]:
                    d = np.maximum(c, 1)
                    add(u, a if np.all(d == 1) else a / d, b / d)
        return acc

    @staticmethod
    def consumer_mean(acc: dict[Value, tuple], v: Value, fallback):
        """The mean of v's consumer copies (``fallback()`` where no copy holds it)."""
        if v not in acc:
            return fallback()
        ws, w = acc[v]  # w: numpy, static (see slot_storage.edge_mean)
        if np.all(w > 0):
            return ws if np.all(w == 1) else ws / w
        safe = np.where(w > 0, w, 1)
        return jnp.where(w > 0, ws / safe, fallback())

    def _param_values(self, acc, ctx: StepContext) -> dict[Value, Any]:
        return {p: self.consumer_mean(acc, p, lambda p=p: ctx.params[p.hint]) for p in self.params}

    def _readout_values(self, acc, ctx: StepContext) -> dict[Value, Any]:
        """The parameters an update returns: each the mean over its consumer edges, its move from the
        start scaled for parameters read many times (docs/recipes.md, "Shared parameters"):

        - ``tied`` τ > 0: a parameter read by k > 1 families (every step of a recurrence reads the
          same weights) moves (mean − start) / (1 + τ (k − 1)): each use asks for the correction its
          own constraint needs, and the shared value applies it at all k of them;
        - ``read_scale`` ρ > 0: a parameter read r times per sample (a conv weight at every output
          position) moves r^ρ (mean − start). The mean over its copies weights each use 1/r, where a
          gradient sums the uses; with ρ = 1 the move is the per-sample sum of its copies'
          corrections. Under a pooled loss only a few copies are corrected, and the mean leaves a
          conv's filters nearly where they started.

        Parameters read once per sample by one family are unchanged by both."""
        values = self._param_values(acc, ctx)
        if self.tied <= 0 and self.read_scale <= 0:
            return values
        reads = self.reads_per_sample(ctx) if self.read_scale > 0 else {}
        for p in self.params:
            if p not in acc:
                continue
            factor = np.ones(acc[p][1].shape)
            if self.tied > 0:  # acc[p][1]: the number of consumer edges per element (static)
                factor = factor / (1.0 + self.tied * np.maximum(acc[p][1] - 1, 0))
            if p in reads:
                factor = factor * np.maximum(reads[p], 1.0) ** self.read_scale
            if np.any(factor != 1):
                old = ctx.params[p.hint]
                values[p] = old + (values[p] - old) * factor.astype(values[p].dtype)
        return values

    def reads_per_sample(self, ctx: StepContext) -> dict[Value, np.ndarray]:
        """{parameter: how many slots read each of its elements per sample}, summed over the families
        that read it and seen through moves (a reshape, a slice, a broadcast). Depends on shapes only:
        evaluated at trace time, a constant of the compiled step."""
        reads: dict[Value, np.ndarray] = {}

        def add(v, count):
            reads[v] = reads[v] + count if v in reads else count

        for fam in self.families:
            out_shape = family_out_shape(fam, ctx)
            for i in fam.free_idx:
                v = fam.op.operand(i)
                if any(isinstance(s, Value) for s in self.sources[v]):  # it carries a parameter
                    add(v, _slot_counts(fam.rule.slot_map(fam, i, out_shape), ctx.shapes[v]))
        for op in reversed(self.moves):
            out = op.outputs[0]
            if out in reads:
                ins = [op.operand(i) for i in range(len(op.inputs))]
                for u, c in zip(ins, _moved_back(op, reads[out], [ctx.shapes[u] for u in ins])):
                    if self.free[u]:
                        add(u, c)
        batch = ctx.shapes[self.graph.data_inputs[0]][0][0]
        return {p: reads[p] / batch for p in self.params if p in reads}

    # -- projections -----------------------------------------------------------------------------------
    def output_forms(self, key) -> dict[str, str]:
        """{family key: "value" | "proj"}: how the overwrite after projecting ``key`` reads a
        family's output (``storage.output``'s ``form``). Copies: every output from its slots."""
        return {}

    def forms_after(self, last_set) -> dict[str, str]:
        """The same for reading the state left by a projection of ``last_set`` (the diagnostics)."""
        return {}

    def project(self, state: dict, key, ctx: StepContext) -> dict:
        """P_S: project every family and parameter of set ``key``; overwrite the slots that copy them."""
        S = self.sets[key]
        acc = self.consumer_means(state, ctx)
        new_state = dict(state)
        known: dict[Value, Any] = {}
        for fam in self.families:
            if fam.op not in S:
                continue

            def target(fallback, fam=fam):
                return self.consumer_mean(acc, fam.out, fallback)
            slots, y = fam.storage.project(fam, state[fam.key], ctx, target, self.opts)
            new_state[fam.key] = slots
            if fam.out is not None:
                known[fam.out] = y
        known.update(self._param_values(acc, ctx))
        return self._overwrite(new_state, state, ctx, known, S, self.output_forms(key))

    def _overwrite(self, new_state, state, ctx, known, S, forms):
        """Slots of families outside S that copy a producer in S ← forward value of the producer."""
        wanted, todo = [], []
        for fam in self.families:
            if S is not None and fam.op in S:
                continue
            idx = [i for i in fam.free_idx if S is None or (fam.sources[i] & S)]
            if idx:
                todo.append((fam, idx))
                wanted += [fam.op.inputs[i] for i in idx]

        def family_output(op: Op):
            fam = self.fam_of.get(op)
            if fam is None:
                return None
            return fam.storage.output(fam, state[fam.key], ctx, forms.get(fam.key, "value"))

        env = self.values(ctx, wanted, known=known, override=family_output)
        for fam, idx in todo:
            slots = list(new_state[fam.key])
            for j, i in enumerate(fam.free_idx):
                if i in idx:
                    slots[j] = fam.storage.copy_forward(fam, i, env[fam.op.operand(i)], ctx)
            new_state[fam.key] = tuple(slots)
        return new_state

    # -- readout, diagnostics ---------------------------------------------------------------------------
    def readout(self, state: dict, ctx: StepContext) -> dict[str, Any]:
        """Parameters: each the mean over its consumer edges (its own projection)."""
        values = self._readout_values(self.consumer_means(state, ctx), ctx)
        return {p.hint: values[p].astype(ctx.params[p.hint].dtype) for p in self.params}

    def sq_dist(self, x: dict, y: dict, ctx: StepContext):
        """(sum of squared differences over the stored slots, number of slot entries)."""
        num, den = 0.0, 0
        for fam in self.families:
            num, n = fam.storage.sq_dist(fam, x[fam.key], y[fam.key], ctx, num)
            den += n
        return num, den

    def violation(self, state: dict, ctx: StepContext, last_set=None):
        """Mean squared difference between every slot and the forward value of what it copies
        (family outputs from their own slots, params as their consumer means): 0 exactly when every
        constraint holds. ``last_set``: the set the solver projected last (how the state was left)."""
        known = self._param_values(self.consumer_means(state, ctx), ctx)
        cons = self._overwrite(dict(state), state, ctx, known, None, self.forms_after(last_set))
        cons[self.loss.key] = state[self.loss.key]  # the loss slot is the prox target
        num, den = self.sq_dist(state, cons, ctx)
        return num / max(den, 1)

    def logits_value(self) -> Value:
        return self.loss.op.operand(0)

    def forward_logits(self, params: dict[str, Any], inputs: dict[str, Any]):
        """The compiled forward: the loss's input (logits) from params and data."""
        v = self.logits_value()
        return self.interp.values(self._leaf(params, inputs), [v])[v]
