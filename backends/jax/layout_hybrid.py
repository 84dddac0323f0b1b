"""The hybrid state layout: every family's slots stored as in the copies layout, except the
convolutions', which are kept as their consensus edge means (as in the consensus layout).

Douglas-Rachford (and AR, DM, cyclic DR) needs the copies layout: its iterates are affine
combinations of states whose private slots differ from their means. A conv family's slots are
``B·H·W·OC·C·K`` numbers per operand (2.3 GB for the second conv of cnn2_digits at batch 256), which
makes a DR step on a CNN tens of times an Adam step. Here a conv family stores only the mean of its
x-copies (input-shaped), of its w-copies (weight-shaped) and its last projected output, as the
consensus layout does, and is projected from them as if every copy held its edge mean
(``conv.ConvMeans``); every other family (dense dots, activations, pools, the loss) keeps its slots,
so DR runs on them exactly as in the copies layout.

So the solver's operator is DR with one change: before each projection of a conv family its private
copies are replaced by their means. That is a projection onto the set where a conv's copies agree
(the consensus of its edges), applied to the conv families only, so the iteration is a heuristic
(not DR on the product space); what it is worth is measured (docs/speed.md: accuracy and step time
against DR on the copies layout and CP on the consensus layout). For AP and CP it is exact (the
consensus layout's value-form argument holds family by family); use ``consensus`` there, which
also keeps the dense dots as means.
"""
from __future__ import annotations

from .state_layout import StateLayout

MEANS_KINDS = ("conv",)  # the families kept as edge means


class HybridLayout(StateLayout):
    """Copies for every family but the convolutions (edge means). See the module docstring."""

    name = "hybrid"

    def choose_storage(self, rule, fam, factor_linear: bool):
        layout = "consensus" if fam.kind in MEANS_KINDS else "copies"
        return rule.storage[layout](fam, factor_linear)


__all__ = ["HybridLayout", "MEANS_KINDS"]
