"""select-projections: annotate each constraint family with its closed-form projection (`proj`).

    dot/mul with a const or data operand (or one computed only from them) -> linear
    dot/mul with both operands free                                        -> bilinear
    sum, sum_pwl, sum_smooth, max, mean, embed, identity                   -> closed
"""
from __future__ import annotations

from projc.ir import Graph

from . import Pass, register_pass
from ._common import data_values


@register_pass("select-projections")
class SelectProjections(Pass):
    def run(self, graph: Graph) -> bool:
        fixed = data_values(graph)
        changed = False
        for op in graph.ops:
            if op.kind in ("dot", "mul"):
                proj = "linear" if any(v in fixed for v in op.inputs) else "bilinear"
            elif op.kind in ("sum", "sum_pwl", "sum_smooth", "max", "mean", "embed", "identity"):
                proj = "closed"
            else:
                continue
            if op.annots.get("proj") != proj:
                op.annots["proj"] = proj
                changed = True
        return changed
