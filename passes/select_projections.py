"""select-projections: annotate each constraint family with its closed-form projection (`proj`).

The choice is the family's declaration (``projc.ir.constraints``, ``ConstraintOp.projection``):

    dot/mul with a const or data operand (or one computed only from them) -> linear
    dot/mul with both operands free                                        -> bilinear
    every other family (sum, sum_pwl, sum_smooth, max, mean, embed, ...)   -> closed
"""
from __future__ import annotations

from projc.ir import Graph
from projc.ir.constraints import OPS

from . import Pass, register_pass
from ._common import data_values


@register_pass("select-projections")
class SelectProjections(Pass):
    def run(self, graph: Graph) -> bool:
        fixed = data_values(graph)
        changed = False
        for op in graph.ops:
            decl = OPS.get(op.kind)
            if decl is None or decl.projection is None:
                continue
            proj = decl.projection(op, fixed)
            if op.annots.get("proj") != proj:
                op.annots["proj"] = proj
                changed = True
        return changed
