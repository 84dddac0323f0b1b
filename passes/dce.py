"""dce: remove ops none of whose outputs reach a graph output or a loss, and unused initializers."""
from __future__ import annotations

from projc.ir import Graph

from . import Pass, register_pass


@register_pass("dce")
class DeadCodeElimination(Pass):
    def run(self, graph: Graph) -> bool:
        live = set(graph.outputs)
        kept = []
        for op in reversed(graph.ops):
            # an op without outputs (a loss) is a root; otherwise live when an output is used
            if not op.outputs or any(v in live for v in op.outputs):
                kept.append(op)
                live.update(v for v in op.inputs if v is not None)
        kept.reverse()
        inits = [v for v in graph.initializers if v in live]
        changed = len(kept) != len(graph.ops) or len(inits) != len(graph.initializers)
        graph.ops, graph.initializers = kept, inits
        return changed
