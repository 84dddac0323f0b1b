"""dce: remove ops none of whose outputs reach a graph output or a loss, and unused initializers."""
from __future__ import annotations

from projc.ir import Graph, remove_dead_code

from . import Pass, register_pass


@register_pass("dce")
class DeadCodeElimination(Pass):
    def run(self, graph: Graph) -> bool:
        return remove_dead_code(graph)
