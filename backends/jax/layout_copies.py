"""The copies layout: every slot of every constraint family is materialized (DESIGN.md §2, §4).

Exact for every solver (AP, DR, AR, DM, CP, cyclic DR): the solver state is the tuple of slots each
family holds for its free operands (a ``[B,N]x[N,M]`` dot owns ``[B,M,N]`` copies of both operands;
an elementwise family owns one output-shaped copy per operand). Parameters are not separate state:
a parameter's value is its *target*, the mean over its consumer edges of what they hold, which is
exactly what projecting the parameter's own set makes all its copies equal to.

The layout interface the solvers use (``solvers.py``) and a later consensus layout also provides:

    ctx   = layout.make_ctx(params, inputs)      # constants of one update (data, labels, init params)
    x     = layout.init_state(ctx)               # slots from a forward pass with the current params
    x'    = layout.project(x, key, ctx)          # P_S for S = "A", "B" or a layer key (cyclic solvers)
    p     = layout.readout(x, ctx)               # {param name: value}
    v     = layout.violation(x, ctx)             # mean squared slot / producer-forward mismatch
    layout.two_sets  == ("A", "B");  layout.layer_sets == (("layer", 0), ("layer", 1), ...)

Linear dot families (``proj=linear``, one operand data or const) hold their free slot in factored
form ``G[m,:] + alpha[...,m] * c[...,:]`` (G ``[M,K]``, alpha the output shape): every operation the
solvers apply (overwrite by a forward value, the linear projection, affine combinations of states)
keeps a slot in this form, so the factorization is exact, not an approximation, and a 784x128 dense
layer at batch 256 holds 0.1M numbers instead of 25.7M. ``factor_linear=False`` materializes them.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from projc.errors import PassError, ProjcError
from projc.ir import Graph, Op, Value
from projc.ops import constraint as C

from .layout_family import Family, _forward_op, _last, _P, _pwl_preset

FAMILIES = C.FAMILIES
LAYOUTS = C.LAYOUTS
LOSSES = C.LOSSES


class CopiesLayout:
    """Every slot materialized (linear dot slots exactly factored). See the module docstring."""

    name = "copies"

    def __init__(self, graph: Graph, *, factor_linear: bool = True, ce_method: str | None = None,
                 lam: float | None = None, bilinear_iters: int | None = None):
        self.graph = graph
        self.ce_method = ce_method
        self.lam = lam
        self.bilinear_iters = bilinear_iters
        self.producer: dict[Value, Op] = graph.producers()
        self.params: list[Value] = list(graph.params)
        self.param_names = [v.hint for v in self.params]
        self.layout_ops = [op for op in graph.ops if op.kind in LAYOUTS]
        unknown = [op.kind for op in graph.ops if op.kind not in C.CONSTRAINT_KINDS]
        if unknown:
            raise ProjcError(f"the solver needs the lowered constraint IR; found op(s) "
                             f"{', '.join(sorted(set(unknown)))} (run compile_for_training first)")
        self._free_memo: dict[Value, bool] = {}
        self._src_memo: dict[Value, frozenset] = {}
        fams = []
        for i, op in enumerate(graph.ops):
            if op.kind not in FAMILIES and op.kind not in LOSSES:
                continue
            free = [self.is_free(v) for v in op.inputs]
            if op.kind in LOSSES:
                free[1] = False
            fam = Family(f"f{i}", op, op.annots.get("set"), op.annots.get("layer"), free)
            fam.sources = [self.sources(v) for v in op.inputs]
            if op.kind in ("dot", "mul"):
                nfree = sum(free)
                proj = op.annots.get("proj", "linear" if nfree == 1 else "bilinear")
                if nfree == 2:
                    fam.mode = "bilinear"
                elif proj == "bilinear":
                    fam.mode = "bilinear_reset"  # the reference: treat data as free, reset it after
                else:
                    fam.mode = "linear"
                fam.factored = (factor_linear and fam.mode == "linear" and op.kind == "dot"
                                and free == [False, True])
            if any(free):
                fams.append(fam)
        self.families: list[Family] = fams
        self.fam_of: dict[Op, Family] = {f.op: f for f in fams}
        losses = [f for f in fams if f.kind in LOSSES]
        if len(losses) != 1:
            raise ProjcError(f"the training graph needs exactly one loss op, found {len(losses)}")
        self.loss = losses[0]
        self._schedule()

    # -- graph analysis ----------------------------------------------------------------------
    def is_free(self, v: Value) -> bool:
        if v in self._free_memo:
            return self._free_memo[v]
        if v.role == "param":
            r = True
        elif v.role in ("input", "label", "const"):
            r = False
        else:
            op = self.producer[v]
            if op.kind in LAYOUTS:
                r = any(self.is_free(u) for u in op.inputs if u is not None)
            else:
                r = any(self.is_free(u) for u in op.inputs if u is not None)
        self._free_memo[v] = r
        return r

    def sources(self, v: Value) -> frozenset:
        """The free nodes (family ops, param values) whose values ``v`` carries."""
        if v in self._src_memo:
            return self._src_memo[v]
        if v.role == "param":
            r = frozenset([v])
        elif v.role != "tmp":
            r = frozenset()
        else:
            op = self.producer[v]
            if op.kind in LAYOUTS:
                r = frozenset().union(*[self.sources(u) for u in op.inputs])
            else:
                r = frozenset([op]) if self.is_free(v) else frozenset()
        self._src_memo[v] = r
        return r

    def _schedule(self) -> None:
        """Sets (two-set solvers) and BFS layers (cyclic solvers), from annots or computed."""
        adj: dict[Any, set] = {}
        for fam in self.families:
            adj.setdefault(fam.op, set())
            for i in fam.free_idx:
                for s in fam.sources[i]:
                    adj[fam.op].add(s)
                    adj.setdefault(s, set()).add(fam.op)
        dist = {self.loss.op: 0}
        queue = deque([self.loss.op])
        while queue:
            n = queue.popleft()
            for m in adj.get(n, ()):
                if m not in dist:
                    dist[m] = dist[n] + 1
                    queue.append(m)
        node_set: dict[Any, str] = {}
        node_layer: dict[Any, int] = {}
        for n, d in dist.items():
            fam = self.fam_of.get(n) if isinstance(n, Op) else None
            node_set[n] = (fam.set if fam is not None and fam.set else ("A" if d % 2 == 0 else "B"))
            node_layer[n] = fam.layer if fam is not None and fam.layer is not None else d
        for p in self.params:
            if p in dist:
                cons = [node_set[c] for c in adj[p]]
                node_set[p] = "B" if cons and all(c == "A" for c in cons) else (
                    "A" if cons and all(c == "B" for c in cons) else node_set[p])
                node_layer[p] = 1 + min(node_layer[c] for c in adj[p])
        self.node_set, self.node_layer = node_set, node_layer
        self.conflicts = [(a, b) for a in adj for b in adj[a]
                          if a in node_set and b in node_set and node_set[a] == node_set[b]]
        self.sets: dict[Any, frozenset] = {
            "A": frozenset(n for n, s in node_set.items() if s == "A"),
            "B": frozenset(n for n, s in node_set.items() if s == "B")}
        layers = sorted(set(node_layer.values()))
        for layer in layers:
            self.sets[("layer", layer)] = frozenset(n for n, l in node_layer.items() if l == layer)
        self.two_sets = ("A", "B")
        self.layer_sets = tuple(("layer", layer) for layer in layers)

    def check_two_set(self) -> None:
        """Raise PassError when a two-set solver meets a graph whose sets touch each other."""
        if self.conflicts:
            a, b = self.conflicts[0]
            desc = lambda n: (f"{n.kind} op" if isinstance(n, Op) else f"param {n.hint}")
            raise PassError(f"the graph is not bipartite: {desc(a)} and {desc(b)} are adjacent and "
                            f"both in set {self.node_set[a]}; compile with repair=True or use "
                            f"solver='cp'")

    # -- contexts, forward values -----------------------------------------------------------
    def make_ctx(self, params: dict[str, Any], inputs: dict[str, Any]) -> dict:
        """Constants of one update: data inputs, labels, the incoming params (fallback values)."""
        ctx = {"params": {p.hint: jnp.asarray(params[p.hint]) for p in self.params},
               "inputs": {v.hint: jnp.asarray(inputs[v.hint]) for v in self.graph.inputs
                          if v.hint in inputs}}
        return ctx

    def _const_value(self, v: Value, ctx) -> jax.Array:
        if v.role in ("input", "label"):
            return ctx["inputs"][v.hint]
        if v.role == "const":
            return jnp.asarray(v.data)
        if v.role == "param":
            return ctx["params"][v.hint]
        raise ProjcError(f"{v!r} has no constant value")

    def forward_values(self, ctx, known: dict[Value, Any] | None = None,
                       fam_out=None, wanted=None) -> dict[Value, Any]:
        """Values of the graph. ``known`` overrides; ``fam_out(fam)`` gives a family's output
        (default: its forward from operand values); evaluation is lazy from ``wanted``."""
        env: dict[Value, Any] = dict(known or {})

        def val(v: Value):
            if v in env:
                return env[v]
            if v.role != "tmp":
                r = self._const_value(v, ctx)
            else:
                op = self.producer[v]
                fam = self.fam_of.get(op)
                if fam is not None and fam_out is not None:
                    r = fam_out(fam)
                else:
                    r = _forward_op(op, *[val(u) for u in op.inputs])
            env[v] = r
            return r

        for v in (wanted if wanted is not None else [u for op in self.graph.ops for u in op.inputs]):
            val(v)
        return env

    # -- slots -------------------------------------------------------------------------------
    def _slot_shape_fn(self, fam: Family, i: int, out_shape):
        """The map operand value -> slot (a broadcast), for operand i of fam."""
        kind = fam.kind
        if kind == "dot":

            def f(v):
                kk = v.shape[-1] if i == 0 else v.shape[0]
                if i == 0:
                    return jnp.broadcast_to(v[..., None, :], tuple(out_shape) + (kk,))
                return jnp.broadcast_to(v.T, tuple(out_shape) + (kk,))
            return f
        if kind == "mul":
            return lambda v: jnp.broadcast_to(v, tuple(out_shape))[..., None]
        if kind in ("sum", "sum_pwl", "sum_smooth"):
            return lambda v: jnp.broadcast_to(v, tuple(out_shape))
        return lambda v: v  # max, identity, losses: slot = operand

    def _out_shape(self, fam: Family, operand_vals) -> tuple:
        if fam.kind in LOSSES:
            return tuple(operand_vals[0].shape)
        return tuple(jax.eval_shape(lambda *xs: _forward_op(fam.op, *xs), *operand_vals).shape)

    def _expand(self, fam: Family, i: int, v, out_shape):
        """Slot for operand i holding the value v (factored form for factored linear dots)."""
        if fam.factored:  # fixed data c [...,K], free b [K,M]: slot[...,m,:] = G[m,:] + alpha[...,m] c
            return (v.T, jnp.zeros(out_shape, v.dtype))
        return self._slot_shape_fn(fam, i, out_shape)(v)

    def _operand_shapes(self, fam: Family, ctx):
        return self._shapes[fam.key]

    def init_state(self, ctx) -> dict:
        """Slots from a forward pass with ctx's params."""
        env = self.forward_values(ctx)
        state = {}
        for fam in self.families:
            vals = [env[u] for u in fam.op.inputs]
            out_shape = self._out_shape(fam, vals)
            state[fam.key] = tuple(self._expand(fam, i, vals[i], out_shape) for i in fam.free_idx)
        return state

    def _fixed_operands(self, fam: Family, ctx, out_shape) -> dict[int, Any]:
        """Fixed operands of fam, as values (not expanded)."""
        env = self.forward_values(ctx, wanted=[fam.op.inputs[i] for i, f in enumerate(fam.free) if not f])
        return {i: env[fam.op.inputs[i]] for i, f in enumerate(fam.free) if not f}

    def _fam_out_shape_from_slots(self, fam: Family, slots) -> tuple:
        s = slots[0]
        if fam.factored:
            return tuple(s[1].shape)
        if fam.kind in ("dot", "mul"):
            return tuple(s.shape[:-1])
        if fam.kind == "max":
            return tuple(jax.eval_shape(lambda a: _forward_op(fam.op, a), s).shape)
        return tuple(s.shape)

    def _full_slots(self, fam: Family, slots, ctx) -> dict[int, Any]:
        """operand index -> slot-shaped array (fixed operands expanded; factored dots as (G, alpha))."""
        out_shape = self._fam_out_shape_from_slots(fam, slots)
        fixed = self._fixed_operands(fam, ctx, out_shape)
        full = {}
        it = iter(slots)
        for i, f in enumerate(fam.free):
            if f:
                full[i] = next(it)
            elif fam.kind in LOSSES:
                full[i] = fixed[i]
            elif fam.factored:
                full[i] = fixed[i]  # c [...,K], unexpanded
            else:
                full[i] = self._slot_shape_fn(fam, i, out_shape)(fixed[i])
        return full

    def family_output(self, fam: Family, slots, ctx):
        """f(slots): the family's output computed from its own copies."""
        full = self._full_slots(fam, slots, ctx)
        kind = fam.kind
        if fam.factored:
            g, alpha = full[1]
            c = full[0]
            return c @ g.T + alpha * jnp.sum(c * c, -1, keepdims=True)
        if kind in ("dot", "mul"):
            return jnp.sum(full[0] * full[1], -1)
        if kind in ("sum", "sum_pwl", "sum_smooth", "max", "identity"):
            return _forward_op(fam.op, *[full[i] for i in range(len(fam.free))])
        raise AssertionError(kind)

    # -- targets: the mean over consumer edges ----------------------------------------------
    def _reduce_slot(self, fam: Family, i: int, slot, v_shape, dtype):
        """(weighted sum, weight) at the operand's shape: the mean of this edge's copies, weight 1."""
        if fam.factored:
            g, alpha = slot
            c = self._cur_fixed[fam.key]
            lead = alpha.shape[:-1]
            nb = math.prod(lead) if lead else 1
            a2 = alpha.reshape(nb, -1)
            c2 = c.reshape(nb, -1)
            mean = g + (a2.T @ c2) / nb  # [M,K]
            return mean.T, jnp.ones(v_shape, dtype)
        out_shape = self._fam_out_shape_from_slots(fam, self._cur_slots[fam.key])
        f = self._slot_shape_fn(fam, i, out_shape)
        t = jax.linear_transpose(f, jax.ShapeDtypeStruct(tuple(v_shape), dtype))
        (ws,) = t(slot)
        (cnt,) = t(jnp.ones(slot.shape, dtype))
        return ws / jnp.maximum(cnt, 1), (cnt > 0).astype(dtype)

    def _accumulate(self, state, ctx, env_shapes) -> dict[Value, tuple]:
        acc: dict[Value, tuple] = {}

        def add(v, ws, w):
            if v in acc:
                a, b = acc[v]
                acc[v] = (a + ws, b + w)
            else:
                acc[v] = (ws, w)

        self._cur_slots = state
        for fam in self.families:
            slots = state[fam.key]
            for j, i in enumerate(fam.free_idx):
                v = fam.op.inputs[i]
                shp, dt = env_shapes[v]
                add(v, *self._reduce_slot(fam, i, slots[j], shp, dt))
        for op in reversed(self.layout_ops):
            out = op.outputs[0]
            if out not in acc:
                continue
            ws, w = acc[out]
            ins = list(op.inputs)
            prim = [jax.ShapeDtypeStruct(*env_shapes[u]) for u in ins]
            t = jax.linear_transpose(lambda *xs: _forward_op(op, *xs, linear_part=True), *prim)
            cnts = t(jnp.ones(ws.shape, ws.dtype))
            wss, wws = t(ws), t(w)
            for u, c, a, b in zip(ins, cnts, wss, wws):
                if self.is_free(u):
                    d = jnp.maximum(c, 1)
                    add(u, a / d, b / d)
        return acc

    def _shapes_env(self, ctx) -> dict[Value, tuple]:
        if getattr(self, "_shape_cache_key", None) is not None and self._shape_cache_key == self._ctx_key(ctx):
            return self._shape_cache
        abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), ctx)
        shapes = jax.eval_shape(lambda c: {id(v): x for v, x in self.forward_values(c).items()},
                                abstract)
        vals = {v: (tuple(shapes[id(v)].shape), shapes[id(v)].dtype) for v in self.graph.values()
                if id(v) in shapes}
        self._shape_cache, self._shape_cache_key = vals, self._ctx_key(ctx)
        return vals

    @staticmethod
    def _ctx_key(ctx):
        return tuple((k, tuple(v.shape)) for k, v in sorted(ctx["inputs"].items()))

    def _prepare(self, state, ctx):
        shapes = self._shapes_env(ctx)
        self._cur_fixed = {}
        for fam in self.families:
            if fam.factored:
                self._cur_fixed[fam.key] = self._fixed_operands(fam, ctx, None)[0]
        return shapes

    def targets(self, state, ctx) -> dict[Value, Any]:
        """Target of every free producer value with a consumer (NaN-free: weightless → NaN mask)."""
        shapes = self._prepare(state, ctx)
        acc = self._accumulate(state, ctx, shapes)
        return acc

    def _target(self, acc, v: Value, fallback):
        if v not in acc:
            return fallback()
        ws, w = acc[v]
        safe = jnp.where(w > 0, w, 1)
        fb = fallback()
        return jnp.where(w > 0, ws / safe, fb)

    # -- projections -------------------------------------------------------------------------
    def _project_family(self, fam: Family, slots, y0, ctx):
        """(new slots of the free operands, projected output) for one family."""
        P = _P()
        full = self._full_slots(fam, slots, ctx)
        kind = fam.kind
        free = fam.free_idx
        if kind in LOSSES:
            x = full[0]
            lab = full[1]
            if kind == "cross_entropy":
                p = fam.op.params
                lam = self.lam if self.lam is not None else p.get("lam", 5.0)
                method = self.ce_method or p.get("method", "newton")
                kw = {"lam": lam, "method": method}
                if p.get("steps") is not None:
                    kw["steps"] = p["steps"]
                x = P.cross_entropy_prox(x, lab, **kw)
            elif kind == "margin":
                x = P.margin(x, lab)
            else:
                x = P.squared_error(x, lab, lam=fam.op.params.get("lam"))
            return (_last(x),), None
        if fam.factored:
            g, alpha = full[1]
            c = full[0]
            cc = jnp.sum(c * c, -1, keepdims=True)        # [...,1]
            z = c @ g.T + alpha * cc                       # [...,M] current w·c
            r = z - y0
            d = 1.0 / (1.0 + cc)
            return ((g, alpha - r * d),), y0 + r * d
        if kind in ("dot", "mul"):
            a, b = full[0], full[1]  # mul slots carry a trailing axis of length 1: a dot over it
            if fam.mode == "linear":
                ci, wi = (0, 1) if not fam.free[0] else (1, 0)
                w_new, y = P.linear(full[ci], full[wi], y0)[-2:]
                return (w_new,), y
            if self.bilinear_iters is not None:
                a2, b2, y = P.bilinear(a, b, y0, iters=self.bilinear_iters)
            else:
                a2, b2, y = P.bilinear(a, b, y0)
            new = {0: a2, 1: b2}
            return tuple(new[i] for i in free), y
        if kind == "sum":
            shift = sum((full[i] for i in range(len(fam.free)) if not fam.free[i]), 0.0)
            res = P.sum(*[full[i] for i in free], y0 - shift)
            return tuple(res[:-1]), res[-1] + shift
        if P.activation_handles(kind, fam.op.params):  # sum_smooth, staircases (proj_smooth)
            c = sum((full[i] for i in range(len(fam.free)) if not fam.free[i]), 0.0)
            res = P.sum_activation(kind, fam.op.params, *[full[i] for i in free], y0, offset=c)
            return tuple(res[:-1]), res[-1]
        if kind == "sum_pwl":
            fixed = [i for i in range(len(fam.free)) if not fam.free[i]]
            table = _pwl_preset(P, fam.op.params)
            if fixed:  # y = φ(c + Σ free): shift the piece table by the constant c, per element
                c = sum((full[i] for i in fixed), 0.0)
                ce = c[..., None]
                lo, hi, sl, ic = (jnp.asarray(f, c.dtype) for f in table)
                table = P.Pieces(lo - ce, hi - ce, jnp.broadcast_to(sl, ce.shape[:-1] + sl.shape),
                                 ic + sl * ce)
            res = P.sum_pwl(*[full[i] for i in free], y0, fn=table)
            return tuple(res[:-1]), res[-1]
        if kind == "max":
            a = full[0]
            axes = fam.op.params.get("axes")
            axes = list(range(a.ndim)) if axes is None else [ax % a.ndim for ax in axes]
            keep = [ax for ax in range(a.ndim) if ax not in axes]
            perm = keep + axes
            at = jnp.transpose(a, perm)
            kshape = at.shape[:len(keep)]
            flat = at.reshape(kshape + (-1,))
            y0r = y0.reshape(kshape)
            a2, y = P.max(flat, y0r, axis=-1)
            a2 = jnp.transpose(a2.reshape(at.shape), np.argsort(perm))
            return (a2,), y.reshape(y0.shape)
        if kind == "identity":
            a2, y = P.identity(full[0], y0)
            return (a2,), y
        raise AssertionError(kind)

    def project(self, state, key, ctx) -> dict:
        """P_S: project every family and parameter of set ``key``; overwrite the slots that copy them."""
        S = self.sets[key]
        acc = self.targets(state, ctx)
        new_state = dict(state)
        known: dict[Value, Any] = {}
        for fam in self.families:
            if fam.op not in S:
                continue
            y0 = None
            if fam.out is not None:
                y0 = self._target(acc, fam.out, lambda f=fam: self.family_output(f, state[f.key], ctx))
            slots, y = self._project_family(fam, state[fam.key], y0, ctx)
            new_state[fam.key] = slots
            if fam.out is not None:
                known[fam.out] = y
        for p in self.params:
            if p in S:
                known[p] = self._target(acc, p, lambda p=p: ctx["params"][p.hint])
        for p in self.params:
            if p not in known:
                known[p] = self._target(acc, p, lambda p=p: ctx["params"][p.hint])
        return self._overwrite(new_state, state, ctx, known, S)

    def _overwrite(self, new_state, state, ctx, known, S=None):
        """Slots of families outside S that copy a producer in S ← forward value of the producer."""
        wanted = []
        todo = []
        for fam in self.families:
            if S is not None and fam.op in S:
                continue
            idx = [i for i in fam.free_idx if S is None or (fam.sources[i] & S)]
            if idx:
                todo.append((fam, idx))
                wanted += [fam.op.inputs[i] for i in idx]
        env = self.forward_values(ctx, known=known, wanted=wanted,
                                  fam_out=lambda f: self.family_output(f, state[f.key], ctx))
        for fam, idx in todo:
            slots = list(new_state[fam.key])
            out_shape = self._fam_out_shape_from_slots(fam, state[fam.key])
            for j, i in enumerate(fam.free_idx):
                if i in idx:
                    slots[j] = self._slot_from_forward(fam, i, env[fam.op.inputs[i]], out_shape)
            new_state[fam.key] = tuple(slots)
        return new_state

    def _slot_from_forward(self, fam: Family, i: int, value, out_shape):
        """What a slot holds when it copies the forward value of its producer."""
        return self._expand(fam, i, value, out_shape)

    # -- readout, diagnostics ----------------------------------------------------------------
    def readout(self, state, ctx) -> dict[str, Any]:
        """Parameters: each the mean over its consumer edges (its own projection)."""
        acc = self.targets(state, ctx)
        return {p.hint: self._target(acc, p, lambda p=p: ctx["params"][p.hint]).astype(
            ctx["params"][p.hint].dtype) for p in self.params}

    def sq_dist(self, x, y, ctx):
        """(sum of squared differences over all materialized slots, number of slot entries)."""
        num, den = 0.0, 0
        for fam in self.families:
            for j, (a, b) in enumerate(zip(x[fam.key], y[fam.key])):
                if fam.factored:
                    (g1, al1), (g2, al2) = a, b
                    g, al = g1 - g2, al1 - al2
                    c = self._fixed_operands(fam, ctx, None)[0]
                    nb = al.size // al.shape[-1]
                    cc = jnp.sum(c * c, -1, keepdims=True)
                    num = num + nb * jnp.sum(g * g) + 2 * jnp.sum(al * (c @ g.T)) + jnp.sum(al * al * cc)
                    den += al.size * g.shape[-1]
                else:
                    num = num + jnp.sum((a - b) ** 2)
                    den += a.size
        return num, den

    def violation(self, state, ctx):
        """Mean squared difference between every slot and the forward value of what it copies
        (family outputs from their own slots, params as their targets): 0 exactly when every
        constraint holds."""
        acc = self.targets(state, ctx)
        known = {p: self._target(acc, p, lambda p=p: ctx["params"][p.hint]) for p in self.params}
        cons = self._overwrite(dict(state), state, ctx, known, None)
        cons[self.loss.key] = state[self.loss.key]  # the loss slot is the prox target
        num, den = self.sq_dist(state, cons, ctx)
        return num / max(den, 1)

    def logits_value(self) -> Value:
        return self.loss.op.inputs[0]

    def forward_logits(self, params: dict[str, Any], inputs: dict[str, Any]):
        """The compiled forward: the loss's input (logits) from params and data."""
        ctx = {"params": params, "inputs": inputs}
        v = self.logits_value()
        return self.forward_values(ctx, wanted=[v])[v]

    def state_size(self, ctx) -> int:
        st = jax.eval_shape(self.init_state, ctx)
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(st))
