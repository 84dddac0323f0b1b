"""The consensus state layout: AP and CP without storing the dot families' slots.

It reproduces the copies layout's AP/CP iterates exactly (same math, only the storage differs); it
is *not* valid for DR, AR, DM or cyclic DR, whose iterates are affine combinations of states.

What is stored: a ``dot`` family keeps, per free operand, the **edge mean** of its slots plus its
last projected output (``slot_storage.EdgeMeans``; the projection on means is
``proj_dot_means.dot_project_means``); every other family and the loss keeps its slots as the copies
layout does (they are output- or operand-shaped already). The family-rule table says which.

Reading a dot's slots from their means is exact when every free slot holds a forward value (was
overwritten, or set by the initial forward pass, since the family's last projection): the "value
form". Which form each dot is in at every ``project`` call is known statically: the layout simulates
the solver's set sequence (A, B for ``ap``; the layers in order for ``cp``) from the initial state
and checks, for every call, that (R1) every dot being projected is in value form, and (R2) every dot
whose output the overwrite needs (a consumer slot whose producers span several sets) is either in
value form (its output is f(means), one GEMM) or untouched since its projection (its stored ``y``).
A graph and solver for which either fails raises ``ProjcError`` at construction; ``layout="auto"``
then falls back to copies. On graphs after the ``bipartite`` pass, AP and CP always pass.

Diagnostics: ``sq_dist`` and ``violation`` are computed exactly for every non-dot family and for
dots in value form; for a dot whose slots are private (projected) they use its edge means instead
of its slots (a lower bound). The parameters, which are all the trainer returns, are exact.
"""
from __future__ import annotations

from typing import Any

from projc.errors import ProjcError
from projc.ir import Graph

from .slot_storage import EdgeMeans
from .state_layout import StateLayout

EXACT_SOLVERS = ("ap", "cp")


class ConsensusLayout(StateLayout):
    """AP/CP state without dot slots (see the module docstring)."""

    name = "consensus"

    def __init__(self, graph: Graph, *, solver: str | None = None, **options):
        """``options``: StateLayout's (bilinear_iters, tied, read_scale, staircase); no dot slots, so
        no factor_linear."""
        if solver is not None and solver not in EXACT_SOLVERS:
            raise ProjcError(f"layout 'consensus' is exact only for ap and cp, not {solver}; "
                             f"use layout='copies' (or 'auto')")
        super().__init__(graph, factor_linear=False, **options)
        self.solver = solver
        self.dots = [f for f in self.families if isinstance(f.storage, EdgeMeans)]
        plans: dict[Any, dict] = {}    # set key -> {dot key: form the overwrite reads it in}
        after: dict[Any, dict] = {}    # set key -> {dot key: form the dot is left in}
        errors = {}
        for name, seq in (("ap", self.two_sets), ("cp", self.layer_sets)):
            if name == "ap" and self.conflicts:
                errors[name] = "the graph is not bipartite"  # the two-set solver reports it
                continue
            err, seq_plans, seq_after = self._simulate(seq)
            if err:
                errors[name] = err
            else:
                plans.update(seq_plans)
                after.update(seq_after)
        self._plans, self._after = plans, after
        self.exact_for = tuple(s for s in EXACT_SOLVERS if s not in errors)
        if solver is not None and solver in errors and not (solver == "ap" and self.conflicts):
            raise ProjcError(f"layout 'consensus' cannot reproduce {solver} on this graph exactly: "
                             f"{errors[solver]}; use layout='copies'")

    def output_forms(self, key) -> dict[str, str]:
        return self._plans.get(key, {})

    def forms_after(self, last_set) -> dict[str, str]:
        how = self._after.get(last_set, {})
        return {k: ("proj" if v in ("proj", "mixed") else "value") for k, v in how.items()}

    # -- static forms of the dot families along the solver's set sequence ----------------------
    def _simulate(self, seq, cycles: int = 3) -> tuple[str | None, dict, dict]:
        """(reason it is not exact or None, per set key how the overwrite reads every dot, per set
        key the form every dot is left in), along the set sequence ``seq`` repeated."""
        slots = {f.key: {i: "init" for i in f.free_idx} for f in self.dots}  # what each slot holds
        plans: dict[Any, dict] = {k: {} for k in seq}
        after: dict[Any, dict] = {k: {} for k in seq}
        for _ in range(cycles):
            for key in seq:
                S = self.sets[key]
                for f in self.dots:
                    if f.op in S and _form(slots[f.key]) not in ("init", "value"):
                        return (f"the dot {f.op.outputs[0].hint or f.key} is projected at set {key} "
                                f"while some of its slots are private (its operands' producers "
                                f"are not projected between two of its projections)"), {}, {}
                for dot in self._dots_read_by_overwrite(S):
                    plans[key].setdefault(dot.key, set()).add(_form(slots[dot.key]))
                for f in self.dots:
                    for i in f.free_idx:
                        if f.op in S:
                            slots[f.key][i] = "proj"
                        elif f.sources[i] & S:
                            slots[f.key][i] = "value"
                for f in self.dots:
                    after[key].setdefault(f.key, set()).add(_form(slots[f.key]))
        for key, plan in plans.items():
            for fk, forms in plan.items():
                real = forms - {"init"}
                if "mixed" in real or len(real) > 1:
                    return (f"the overwrite at set {key} needs the output of a dot whose slots are "
                            f"partly private"), {}, {}
                plan[fk] = next(iter(real)) if real else "proj"
        left = {key: {fk: _merged(fs) for fk, fs in forms.items()} for key, forms in after.items()}
        return None, plans, left

    def _dots_read_by_overwrite(self, S):
        """The dots outside S whose outputs the overwrite after projecting S reads (producers of slots
        it overwrites: slots whose producers span S and other sets)."""
        for g in self.families:
            if g.op in S:
                continue
            for i in g.free_idx:
                if g.sources[i] & S:
                    for src in g.sources[i] - S:
                        fam = self.fam_of.get(src)
                        if fam is not None and isinstance(fam.storage, EdgeMeans):
                            yield fam


def _form(slot_states: dict) -> str:
    """A dot's form from what its free slots hold: init, value (forward values), proj, mixed."""
    st = set(slot_states.values())
    if st <= {"init"}:
        return "init"
    if st == {"proj"}:
        return "proj"
    return "value" if "proj" not in st else "mixed"


def _merged(forms: set) -> str:
    """One form for a dot left in ``forms`` over the cycles (mixed when they disagree)."""
    real = forms - {"init"}
    return "mixed" if "mixed" in forms or len(real) > 1 else next(iter(real), "proj")


__all__ = ["ConsensusLayout", "EXACT_SOLVERS"]
