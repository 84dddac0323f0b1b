"""The consensus layout: AP and CP without materializing the dot families' slots (DESIGN.md §4).

It reproduces the copies layout's AP/CP iterates exactly (same math, only the storage differs); it
is *not* valid for DR, AR, DM or cyclic DR, whose iterates are affine combinations of states.

What is stored (the state is a dict keyed like the copies layout's):

- a ``dot`` family (linear, bilinear, or the reference's bilinear-with-reset) keeps, per free operand,
  the **edge mean** of its slots (operand-shaped: ``[..., K]`` for the left operand, ``[K, M]`` for
  the right one), plus its last projected output ``y`` (output-shaped). Never the ``[..., M, K]``
  slots. A projection of the family reads its slots' values from these means, which is exact when
  every free slot holds a forward value (was overwritten, or set by the initial forward pass, since
  the family's last projection) — the "value form". In that case the projection is three GEMMs:

      P = a @ b;  U, V = ½(|a_r|² + |b_m|²) ± P;  t = root(U, V, y0)  (per output element)
      new a-slot[r, m] = ca·a_r + cb·b_m + cea·1,   new b-slot[r, m] = cb·a_r + ca·b_m + ceb·1
      mean over m of the a-slots = a ⊙ mean_m(ca) + (cb @ bᵀ)/M + mean_m(cea)
      mean over r of the b-slots = b ⊙ mean_r(ca) + (aᵀ @ cb)/R + mean_r(ceb)

  (ca, cb, cea, ceb) per output element are the coefficients of the exact bilinear projection
  (proj_bilinear.bilinear) in every one of its numerical branches (mid, pole, floor); the linear
  projection is the same with ca = 1, cb = -r/(1+|c|²) on the fixed operand.
- every other family (sum, sum_pwl, mul, max, identity) and the loss keeps its slots exactly as the
  copies layout does: they are output- or operand-shaped already, so there is nothing to save.

Which form each dot is in at every ``project`` call is known statically: the layout simulates the
solver's set sequence (A, B for ``ap``; the BFS layers in order for ``cp``) from the initial state
and checks, for every call, that (R1) every dot being projected is in value form, and (R2) every dot
whose output the overwrite needs (a consumer slot whose producers span several sets) is either in
value form (its output is f(means), one GEMM) or untouched since its projection (its stored ``y``).
A graph and solver for which either fails raises ``ProjcError`` at construction; ``layout="auto"``
then falls back to copies. On graphs after the ``bipartite`` pass, AP and CP always pass.

Diagnostics: ``sq_dist`` and ``violation`` are computed exactly for every non-dot family and for
dots in value form; for a dot whose slots are private (projected) they use its edge means instead
of its slots (a lower bound: by Jensen, Σ_copies |s - v|² ≥ n |mean(s) - v|²). The parameters, which
are all the trainer returns, are exact.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from projc.errors import ProjcError

from .layout_copies import LOSSES, CopiesLayout, Family
from .proj_bilinear import _default_iters, _root_parts

EXACT_SOLVERS = ("ap", "cp")


# -- the dot family in consensus form -----------------------------------------------------------

def _coeff_parts(nx, nw, p, y0, iters):
    nx, nw, p, y0 = jnp.broadcast_arrays(nx, nw, p, y0)
    dt = nx.dtype
    iters = _default_iters(dt) if iters is None else int(iters)
    half = 0.5 * (nx + nw)
    U = jnp.maximum(half + p, 0)  # = ½|a0 + b0|²
    V = jnp.maximum(half - p, 0)  # = ½|a0 - b0|²
    mirrored, ts, al, amin, Us, Vs, ys = _root_parts(U, V, y0, iters)
    sg = jnp.where(mirrored, -1.0, 1.0).astype(dt)
    return sg, ts, al, amin, Us, Vs, ys


def _coeffs_nonfloor(sg, ts, al):
    """(ca, cb) of branches (1) |t| <= ½ and (2) |t| > ½: a = (a0 + t b0)/(1 - t²), with the
    cancellation-free 1 - |t| = α."""
    inv = 1 / (al * (2 - al))
    cb = sg * jnp.where(al <= 0.5, 1 - al, ts) * inv
    return inv, cb


def _coeffs_all(sg, ts, al, amin, Us, Vs, ys, n):
    """(ca, cb, cea, ceb) in every branch, (3) α at its floor included."""
    q = 2 - al
    inv, cb_np = _coeffs_nonfloor(sg, ts, al)
    # (3) α at its floor: |P|² = E from the constraint, direction P0/|P0| (or uniform when P0 = 0)
    E = jnp.maximum(2 * (ys - 1 + al) + Vs / (q * q), 0)
    nP = jnp.sqrt(Us)
    has = nP > 0
    s = jnp.where(has, jnp.sqrt(E) / jnp.where(has, nP, 1), 0)
    c = jnp.sqrt(E / (2 * n))
    ca_floor = 0.5 * (s + 1 / q)
    cb_floor = sg * 0.5 * (s - 1 / q)
    cea_floor = jnp.where(has, 0, c)
    ceb_floor = jnp.where(has, 0, sg * c)
    floor = al <= 2 * amin
    zero = jnp.zeros_like(inv)
    ca = jnp.where(floor, ca_floor, inv)
    cb = jnp.where(floor, cb_floor, cb_np)
    cea = jnp.where(floor, cea_floor, zero)
    ceb = jnp.where(floor, ceb_floor, zero)
    return ca, cb, cea, ceb


def bilinear_coeffs(nx, nw, p, y0, n: int, iters: int | None = None):
    """Coefficients of the exact bilinear projection of (a0, b0, y0) onto {y = a·b}.

    Inputs per pair: nx = |a0|², nw = |b0|², p = a0·b0 (broadcasting), n = the vector length.
    Returns (ca, cb, cea, ceb, t): a = ca a0 + cb b0 + cea 1, b = cb a0 + ca b0 + ceb 1, and the
    projected output is y0 - t. Mirrors ``proj_bilinear.bilinear`` branch by branch.
    """
    sg, ts, al, amin, Us, Vs, ys = _coeff_parts(nx, nw, p, y0, iters)
    return _coeffs_all(sg, ts, al, amin, Us, Vs, ys, n) + (sg * ts,)


def dot_project_means(a, b, y0, free: tuple[bool, bool], mode: str, iters: int | None = None,
                      P=None):
    """Project a dot family z[r, m] = a[r, :]·b[:, m] (a ``[..., K]``, b ``[K, M]``) whose slots hold
    the operand values, onto its graph with target ``y0`` (``[..., M]``), and average the projected
    slots: returns (mean over m of the a-slots ``[..., K]``, mean over r of the b-slots ``[K, M]``,
    projected output ``[..., M]``). ``mode``: "linear" (the fixed operand is data) or "bilinear"
    (both treated as free; a fixed operand's new slots are discarded: the reference's reset).
    ``P``: a @ b when already known."""
    lead = a.shape[:-1]
    K = a.shape[-1]
    M = b.shape[-1]
    a2 = a.reshape(-1, K)
    R = a2.shape[0]
    y = y0.reshape(R, M)
    p = (a2 @ b) if P is None else P.reshape(R, M)
    if mode == "linear":
        if free[1] and not free[0]:   # c = a fixed, w = b free: w_m -= r_rm c_r / (1 + |c_r|²)
            d = 1 / (1 + jnp.sum(a2 * a2, -1, keepdims=True))
            r = (p - y) * d
            mb = b - (a2.T @ r) / R
            ma = a2
        elif free[0] and not free[1]:  # c = b fixed: a_r -= r_rm b_m / (1 + |b_m|²)
            d = 1 / (1 + jnp.sum(b * b, 0, keepdims=True))
            r = (p - y) * d
            ma = a2 - (r @ b.T) / M
            mb = b
        else:
            raise ProjcError("linear dot projection needs exactly one free operand")
        return ma.reshape(lead + (K,)), mb, (y + r).reshape(lead + (M,))
    nx = jnp.sum(a2 * a2, -1, keepdims=True)
    nw = jnp.sum(b * b, 0, keepdims=True)
    parts = _coeff_parts(nx, nw, p, y, iters)
    sg, ts, al, amin = parts[:4]

    def means(ca, cb, cea, ceb):
        ma = mb = None
        if free[0]:
            ma = a2 * jnp.mean(ca, -1, keepdims=True) + (cb @ b.T) / M
            if cea is not None:
                ma = ma + jnp.mean(cea, -1, keepdims=True)
        if free[1]:
            mb = b * jnp.mean(ca, 0, keepdims=True) + (a2.T @ cb) / R
            if ceb is not None:
                mb = mb + jnp.mean(ceb, 0, keepdims=True)
        return ma, mb

    # α at its floor (U = 0 with a large target, or a root within eps² of the pole) is rare: the
    # floor branch and its constant terms only run when some element needs them (where none does,
    # both paths give the same values: cea = ceb = 0 and ca, cb from the other branches)
    ma, mb = jax.lax.cond(jnp.any(al <= 2 * amin),
                          lambda: means(*_coeffs_all(*parts, K)),
                          lambda: means(*_coeffs_nonfloor(sg, ts, al), None, None))
    if ma is not None:
        ma = ma.reshape(lead + (K,))
    return ma, mb, (y - sg * ts).reshape(lead + (M,))


# -- the layout ---------------------------------------------------------------------------------

class ConsensusLayout(CopiesLayout):
    """AP/CP state without dot slots (see the module docstring)."""

    name = "consensus"

    def __init__(self, graph, *, solver: str | None = None, ce_method: str | None = None,
                 lam: float | None = None, bilinear_iters: int | None = None):
        if solver is not None and solver not in EXACT_SOLVERS:
            raise ProjcError(f"layout 'consensus' is exact only for ap and cp, not {solver}; "
                             f"use layout='copies' (or 'auto')")
        super().__init__(graph, factor_linear=False, ce_method=ce_method, lam=lam,
                         bilinear_iters=bilinear_iters)
        self.solver = solver
        self.dots = [f for f in self.families if f.kind == "dot"]
        self._is_dot = {f.key: True for f in self.dots}
        self._last_key = None
        self._plans: dict[Any, dict] = {}
        self._after: dict[Any, dict] = {}
        errors = {}
        for name, seq in (("ap", self.two_sets), ("cp", self.layer_sets)):
            if name == "ap" and self.conflicts:
                errors[name] = "the graph is not bipartite"  # the two-set solver reports it
                continue
            err = self._simulate(seq)
            if err:
                errors[name] = err
        self.exact_for = tuple(s for s in EXACT_SOLVERS if s not in errors)
        if solver is not None and solver in errors and not (solver == "ap" and self.conflicts):
            raise ProjcError(f"layout 'consensus' cannot reproduce {solver} on this graph exactly: "
                             f"{errors[solver]}; use layout='copies'")

    # -- static forms of the dot families along the solver's set sequence ----------------------
    def _simulate(self, seq, cycles: int = 3) -> str | None:
        """Record, per set key, how every dot must be read; return a reason when not exact."""
        ops = {f.key: {i: "init" for i in f.free_idx} for f in self.dots}

        def form(f):
            st = set(ops[f.key].values())
            if st <= {"init"}:
                return "init"
            if st == {"proj"}:
                return "proj"
            if "proj" not in st:
                return "value"
            return "mixed"

        plans: dict[Any, dict] = {k: {} for k in seq}
        after: dict[Any, dict] = {k: {} for k in seq}
        for _ in range(cycles):
            for key in seq:
                S = self.sets[key]
                for f in self.dots:
                    fm = form(f)
                    if f.op in S and fm not in ("init", "value"):
                        return (f"the dot {f.op.outputs[0].hint or f.key} is projected at set {key} "
                                f"while some of its slots are private (its operands' producers "
                                f"are not projected between two of its projections)")
                # outputs the overwrite reads: producers outside S of slots it overwrites
                for g in self.families:
                    if g.op in S:
                        continue
                    for i in g.free_idx:
                        if not (g.sources[i] & S):
                            continue
                        for src in g.sources[i] - S:
                            fam = self.fam_of.get(src)
                            if fam is None or fam.kind != "dot":
                                continue
                            fm = form(fam)
                            plan = plans[key].setdefault(fam.key, set())
                            plan.add(fm)
                for f in self.dots:
                    if f.op in S:
                        for i in f.free_idx:
                            ops[f.key][i] = "proj"
                    else:
                        for i in f.free_idx:
                            if f.sources[i] & S:
                                ops[f.key][i] = "value"
                for f in self.dots:
                    after[key].setdefault(f.key, set()).add(form(f))
        for key, plan in plans.items():
            for fk, forms in plan.items():
                real = forms - {"init"}
                if "mixed" in real or len(real) > 1:
                    return (f"the overwrite at set {key} needs the output of a dot whose slots are "
                            f"partly private")
                plan[fk] = next(iter(real)) if real else "proj"
        for key in after:
            after[key] = {fk: ("mixed" if "mixed" in fs or len(fs - {"init"}) > 1 else
                               next(iter(fs - {"init"}), "proj")) for fk, fs in after[key].items()}
        self._plans.update(plans)
        self._after.update(after)
        return None

    # -- dot helpers ----------------------------------------------------------------------------
    def _dot_operands(self, fam: Family, st, ctx):
        """(a, b) operand values of a dot in value form: the stored means, fixed ones from ctx."""
        fixed = self._fixed_operands(fam, ctx, None) if not all(fam.free) else {}
        it = iter(st[:-1])
        vals = [next(it) if f else fixed[i] for i, f in enumerate(fam.free)]
        return vals[0], vals[1]

    def _dot_output(self, fam: Family, st, ctx, how: str):
        if how == "proj":
            return st[-1]
        a, b = self._dot_operands(fam, st, ctx)
        return a @ b

    def family_output(self, fam: Family, slots, ctx):
        if fam.kind == "dot":
            return self._dot_output(fam, slots, ctx, self._out_how.get(fam.key, "value"))
        return super().family_output(fam, slots, ctx)

    _out_how: dict = {}

    def _reduce_slot(self, fam: Family, i: int, slot, v_shape, dtype):
        if fam.kind == "dot":
            return slot, jnp.ones(v_shape, dtype)
        return super()._reduce_slot(fam, i, slot, v_shape, dtype)

    def _copies_per_element(self, fam: Family, i: int, ctx) -> int:
        """How many slots of a dot edge copy one operand element (M for a, the rows for b)."""
        shapes = self._shapes_env(ctx)
        out = shapes[fam.out][0]
        if i == 0:
            return int(out[-1])
        return int(math.prod(out[:-1]))

    def _project_family(self, fam: Family, slots, y0, ctx):
        """The copies projection, except ``mul``: the copies layout passes the target as
        ``y0[..., None]`` to the library, whose targets have the lead shape (a broadcast error for
        every mul family); here the target goes in as is."""
        if fam.kind != "mul":
            return super()._project_family(fam, slots, y0, ctx)
        from . import projections as P

        full = self._full_slots(fam, slots, ctx)
        if fam.mode == "linear":
            ci, wi = (0, 1) if not fam.free[0] else (1, 0)
            _, w_new, y = P.linear(full[ci], full[wi], y0)
            return (w_new,), y
        kw = {} if self.bilinear_iters is None else {"iters": self.bilinear_iters}
        a2, b2, y = P.bilinear(full[0], full[1], y0, **kw)
        new = {0: a2, 1: b2}
        return tuple(new[i] for i in fam.free_idx), y

    # -- state ----------------------------------------------------------------------------------
    def init_state(self, ctx) -> dict:
        env = self.forward_values(ctx)
        state = {}
        for fam in self.families:
            vals = [env[u] for u in fam.op.inputs]
            if fam.kind == "dot":
                state[fam.key] = tuple(vals[i] for i in fam.free_idx) + (env[fam.out],)
            else:
                out_shape = self._out_shape(fam, vals)
                state[fam.key] = tuple(self._expand(fam, i, vals[i], out_shape) for i in fam.free_idx)
        return state

    def project(self, state, key, ctx) -> dict:
        S = self.sets[key]
        self._last_key = key
        acc = self.targets(state, ctx)
        new_state = dict(state)
        known: dict = {}
        for fam in self.families:
            if fam.op not in S:
                continue
            if fam.kind == "dot":
                st = state[fam.key]
                a, b = self._dot_operands(fam, st, ctx)
                K = a.shape[-1]
                p = (a.reshape(-1, K) @ b).reshape(a.shape[:-1] + (b.shape[-1],))
                y0 = self._target(acc, fam.out, lambda p=p: p)
                mode = "bilinear" if fam.mode in ("bilinear", "bilinear_reset") else "linear"
                ma, mb, y = dot_project_means(a, b, y0, tuple(fam.free), mode,
                                              self.bilinear_iters, P=p)
                means = {0: ma, 1: mb}
                new_state[fam.key] = tuple(means[i] for i in fam.free_idx) + (y,)
                known[fam.out] = y
                continue
            y0 = None
            if fam.out is not None:
                y0 = self._target(acc, fam.out, lambda f=fam: super(ConsensusLayout, self).family_output(
                    f, state[f.key], ctx))
            slots, y = self._project_family(fam, state[fam.key], y0, ctx)
            new_state[fam.key] = slots
            if fam.out is not None:
                known[fam.out] = y
        for p in self.params:
            known[p] = self._target(acc, p, lambda p=p: ctx["params"][p.hint])
        self._out_how = self._plans.get(key, {})
        try:
            return self._overwrite(new_state, state, ctx, known, S)
        finally:
            self._out_how = {}

    def _slot_from_forward(self, fam, i, value, out_shape):
        # a dot family keeps the mean of its slots, and every copy of a forward value is the value
        return value if fam.kind == "dot" else super()._slot_from_forward(fam, i, value, out_shape)

    # -- diagnostics ----------------------------------------------------------------------------
    def sq_dist(self, x, y, ctx):
        num, den = 0.0, 0
        for fam in self.families:
            if fam.kind == "dot":
                for j, i in enumerate(fam.free_idx):
                    n = self._copies_per_element(fam, i, ctx)
                    d = x[fam.key][j] - y[fam.key][j]
                    num = num + n * jnp.sum(d * d)
                    den += n * d.size
                continue
            for a, b in zip(x[fam.key], y[fam.key]):
                num = num + jnp.sum((a - b) ** 2)
                den += a.size
        return num, den

    def violation(self, state, ctx):
        acc = self.targets(state, ctx)
        known = {p: self._target(acc, p, lambda p=p: ctx["params"][p.hint]) for p in self.params}
        how = self._after.get(self._last_key, {})
        self._out_how = {k: ("proj" if v in ("proj", "mixed") else "value") for k, v in how.items()}
        try:
            cons = self._overwrite(dict(state), state, ctx, known, None)
        finally:
            self._out_how = {}
        cons[self.loss.key] = state[self.loss.key]
        for fam in self.dots:  # the stored output is not a slot
            cons[fam.key] = cons[fam.key][:-1] + (state[fam.key][-1],)
        num, den = self.sq_dist(state, cons, ctx)
        return num / max(den, 1)


__all__ = ["ConsensusLayout", "bilinear_coeffs", "dot_project_means", "EXACT_SOLVERS", "LOSSES"]
