"""How a state layout stores one family's slots: materialized, factored (copies), edge means (consensus).

A storage is a stateless object; every method gets the family, its entry of the state (a tuple, one
item per free operand, plus what the storage adds) and the step context (``StepContext``: the
fixed operands and the value shapes). The family-rule table (``families.RULES``) says which storage a
family gets in each state layout; the layouts only call these methods:

- ``init(fam, env, ctx)``: the state entry from forward values ``env``;
- ``copy_forward(fam, i, value, ctx)``: what free operand i's slot holds when it copies ``value``;
- ``output(fam, slots, ctx, form)``: the family's output read from its slots;
- ``edge_mean(fam, i, j, slots, ctx)``: (weighted sum, weight) of operand i's copies, operand-shaped;
  the weight (which entries have copies) depends on shapes only: a numpy array, a constant of the
  compiled step, never recomputed in it;
- ``project(fam, slots, ctx, target, opts)``: (new entry, projected output); ``target(fallback)``
  gives the consumers' mean of the output (``fallback()`` where there is none);
- ``sq_dist(fam, a, b, ctx, num)``: (``num`` + the squared slot differences, number of slot entries).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from .proj_dot_means import dot_project_means

if TYPE_CHECKING:  # families.py chooses these storages: it imports this module, not the reverse
    from .families import Family, ProjOptions


def static_eval(fn):
    """``fn()`` evaluated now, as numpy, even inside a trace: for arrays that depend on shapes only
    (copy counts), which then enter the compiled step as constants instead of being recomputed."""
    with jax.ensure_compile_time_eval():
        return np.asarray(fn())


def static_tuple(fn) -> tuple:
    """``static_eval`` of a function returning a tuple of arrays."""
    with jax.ensure_compile_time_eval():
        return tuple(np.asarray(x) for x in fn())


def family_out_shape(fam: Family, ctx) -> tuple:
    """The shape the family's slots broadcast to: its output's (a loss: its logits')."""
    return ctx.shapes[fam.out if fam.out is not None else fam.op.inputs[0]][0]


class Materialized:
    """Every copy stored: operand i's slot is ``rule.slot_map`` of its value."""

    factored = False

    def init(self, fam: Family, env, ctx):
        return tuple(self.copy_forward(fam, i, env[fam.op.inputs[i]], ctx) for i in fam.free_idx)

    def copy_forward(self, fam: Family, i: int, value, ctx):
        return fam.rule.slot_map(fam, i, family_out_shape(fam, ctx))(value)

    def full(self, fam: Family, slots, ctx) -> dict:
        """operand index -> slot-shaped array (fixed operands expanded; a loss's labels as they are)."""
        fixed = ctx.fixed[fam.key]
        it = iter(slots)
        out_shape = family_out_shape(fam, ctx)
        full = {}
        for i, free in enumerate(fam.free):
            if free:
                full[i] = next(it)
            elif i in fam.rule.fixed_operands:
                full[i] = fixed[i]
            else:
                full[i] = fam.rule.slot_map(fam, i, out_shape)(fixed[i])
        return full

    def output(self, fam: Family, slots, ctx, form: str = "value"):
        return fam.rule.output(fam, self.full(fam, slots, ctx))

    def edge_mean(self, fam: Family, i: int, j: int, slots, ctx):
        v_shape, dtype = ctx.shapes[fam.op.inputs[i]]
        expand = fam.rule.slot_map(fam, i, family_out_shape(fam, ctx))
        transpose = jax.linear_transpose(expand, jax.ShapeDtypeStruct(tuple(v_shape), dtype))
        slot = slots[j]
        (ws,) = transpose(slot)
        cnt = static_eval(lambda: transpose(jnp.ones(slot.shape, dtype))[0])
        return ws / np.maximum(cnt, 1), (cnt > 0).astype(dtype)

    def project(self, fam: Family, slots, ctx, target, opts: ProjOptions):
        full = self.full(fam, slots, ctx)
        y0 = None if fam.out is None else target(lambda: fam.rule.output(fam, full))
        return fam.rule.project(fam, full, y0, opts)

    def sq_dist(self, fam: Family, a, b, ctx, num):
        den = 0
        for x, y in zip(a, b):
            num = num + jnp.sum((x - y) ** 2)
            den += x.size
        return num, den


class Factored(Materialized):
    """A linear dot with data c ``[..., K]`` on the left and the free b ``[K, M]``: the slot of b is
    ``slot[..., m, :] = G[m, :] + alpha[..., m] c[..., :]``, stored as (G ``[M, K]``, alpha). Every
    operation the solvers apply (overwrite by a forward value, the linear projection, affine
    combinations of states) keeps this form, so it is exact, not an approximation."""

    factored = True

    def copy_forward(self, fam: Family, i: int, value, ctx):
        return (value.T, jnp.zeros(family_out_shape(fam, ctx), value.dtype))

    def _parts(self, fam: Family, slots, ctx):
        g, alpha = slots[0]
        return ctx.fixed[fam.key][0], g, alpha

    def output(self, fam: Family, slots, ctx, form: str = "value"):
        c, g, alpha = self._parts(fam, slots, ctx)
        return c @ g.T + alpha * jnp.sum(c * c, -1, keepdims=True)

    def edge_mean(self, fam: Family, i: int, j: int, slots, ctx):
        c, g, alpha = self._parts(fam, slots, ctx)
        v_shape, dtype = ctx.shapes[fam.op.inputs[i]]
        lead = alpha.shape[:-1]
        nb = math.prod(lead) if lead else 1
        mean = g + (alpha.reshape(nb, -1).T @ c.reshape(nb, -1)) / nb  # [M,K]
        return mean.T, np.ones(v_shape, dtype)

    def project(self, fam: Family, slots, ctx, target, opts: ProjOptions):
        c, g, alpha = self._parts(fam, slots, ctx)
        cc = jnp.sum(c * c, -1, keepdims=True)        # [...,1]
        z = c @ g.T + alpha * cc                       # [...,M] current w·c
        y0 = target(lambda: z)
        r = z - y0
        d = 1.0 / (1.0 + cc)
        return ((g, alpha - r * d),), y0 + r * d

    def sq_dist(self, fam: Family, a, b, ctx, num):
        (g1, al1), (g2, al2) = a[0], b[0]
        g, al = g1 - g2, al1 - al2
        c = ctx.fixed[fam.key][0]
        nb = al.size // al.shape[-1]
        cc = jnp.sum(c * c, -1, keepdims=True)
        num = num + nb * jnp.sum(g * g) + 2 * jnp.sum(al * (c @ g.T)) + jnp.sum(al * al * cc)
        return num, al.size * g.shape[-1]


class EdgeMeans:
    """A dot in the consensus layout: per free operand the mean of its slots (operand-shaped), plus
    the last projected output ``y``. Exact for AP/CP where the layout's plan says the slots hold
    forward values ("value" form) whenever the family is projected (layout_consensus.py)."""

    factored = False

    def init(self, fam: Family, env, ctx):
        return tuple(env[fam.op.inputs[i]] for i in fam.free_idx) + (env[fam.out],)

    def copy_forward(self, fam: Family, i: int, value, ctx):
        return value  # every copy of a forward value is the value: so is their mean

    def operands(self, fam: Family, slots, ctx):
        """(a, b): the stored means of the free operands, the fixed ones from the context."""
        fixed = ctx.fixed[fam.key]
        it = iter(slots[:-1])
        vals = [next(it) if f else fixed[i] for i, f in enumerate(fam.free)]
        return vals[0], vals[1]

    def output(self, fam: Family, slots, ctx, form: str = "value"):
        if form == "proj":
            return slots[-1]
        a, b = self.operands(fam, slots, ctx)
        return a @ b

    def edge_mean(self, fam: Family, i: int, j: int, slots, ctx):
        return slots[j], np.ones(*ctx.shapes[fam.op.inputs[i]])

    def project(self, fam: Family, slots, ctx, target, opts: ProjOptions):
        a, b = self.operands(fam, slots, ctx)
        K = a.shape[-1]
        p = (a.reshape(-1, K) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
        y0 = target(lambda: p)
        mode = "bilinear" if fam.mode in ("bilinear", "bilinear_reset") else "linear"
        free_a, free_b = fam.free  # two operands
        ma, mb, y = dot_project_means(a, b, y0, (free_a, free_b), mode, opts.bilinear_iters, P=p)
        means = {0: ma, 1: mb}
        return tuple(means[i] for i in fam.free_idx) + (y,), y

    def copies_per_element(self, fam: Family, i: int, ctx) -> int:
        """How many slots of the edge copy one operand element (M for a, the rows for b)."""
        out = ctx.shapes[fam.out][0]
        return int(out[-1]) if i == 0 else int(math.prod(out[:-1]))

    def sq_dist(self, fam: Family, a, b, ctx, num):
        """Over the edge means, each weighted by its number of copies: exact in value form, a lower
        bound for private slots (by Jensen, Σ_copies |s - v|² ≥ n |mean(s) - v|²)."""
        den = 0
        for j, i in enumerate(fam.free_idx):
            n = self.copies_per_element(fam, i, ctx)
            d = a[j] - b[j]
            num = num + n * jnp.sum(d * d)
            den += n * d.size
        return num, den


MATERIALIZED = Materialized()
FACTORED = Factored()
EDGE_MEANS = EdgeMeans()
