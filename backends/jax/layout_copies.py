"""The copies state layout: every slot of every constraint family is stored.

Exact for every solver (AP, DR, AR, DM, CP, cyclic DR): the solver state is the tuple of slots each
family holds for its free operands (a ``[B,N]x[N,M]`` dot owns ``[B,M,N]`` copies of both operands;
an elementwise family owns one output-shaped copy per operand); see ``state_layout`` for what all
state layouts share and ``families.RULES`` for each kind's slots.

Linear dot families (``proj=linear``, one operand data or const) hold their free slot in factored
form ``G[m,:] + alpha[...,m] * c[...,:]`` (G ``[M,K]``, alpha the output shape; ``slot_storage.Factored``):
every operation the solvers apply keeps a slot in this form, so the factorization is exact, not an
approximation, and a 784x128 dense layer at batch 256 holds 0.1M numbers instead of 25.7M.
``factor_linear=False`` materializes them.
"""
from __future__ import annotations

from .state_layout import StateLayout


class CopiesLayout(StateLayout):
    """Every slot stored (linear dot slots exactly factored). See the module docstring."""

    name = "copies"


__all__ = ["CopiesLayout"]
