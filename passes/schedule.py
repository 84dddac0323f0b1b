"""schedule: annotate each family and loss with `set` (A/B, the loss's colour is A) and `layer`
(BFS distance from the loss, or from the output producers when there is no loss).

The set is the parity of the BFS distance in the graph whose nodes include the params (a weight
shared by families of several steps ties their sets even where no chain of families does); the
layer is the distance between families only, as the cyclic solvers sweep them.

This is the one schedule: the state layouts read these annotations (the two-set solvers the sets,
the cyclic solvers the layers). ``strict=false`` annotates a graph that is not bipartite too (sets
by layer parity, which then touch): the cyclic solvers take any DAG, the two-set solvers refuse it.
"""
from __future__ import annotations

from collections import deque

from projc.errors import PassError
from projc.ir import Graph

from . import Pass, register_pass
from ._common import is_loss
from .bipartite import family_graph, root_order


def bfs_layers(g, order: list) -> dict:
    """BFS distance from the losses (all at 0), then from each unreached node of ``order`` in turn."""
    losses = [op for op in order if is_loss(op)]
    layer: dict = {}
    for start in ([losses] if losses else []) + [[op] for op in order]:
        start = [op for op in start if op not in layer]
        if not start:
            continue
        queue = deque(start)
        for op in start:
            layer[op] = 0
        while queue:
            u = queue.popleft()
            for w in g.neighbors(u):
                if w not in layer:
                    layer[w] = layer[u] + 1
                    queue.append(w)
    return layer


@register_pass("schedule")
class Schedule(Pass):
    strict: bool = True

    def run(self, graph: Graph) -> bool:
        g = family_graph(graph)
        order = root_order(graph, g)
        layer = bfs_layers(g, order)
        with_params = family_graph(graph, with_params=True)
        parity = {n: d % 2 for n, d in bfs_layers(with_params, order).items()}
        for u, v in with_params.edges:
            if self.strict and parity[u] == parity[v]:
                raise PassError(f"@{graph.name}: schedule needs a bipartite constraint graph; run bipartite "
                                f"first (or schedule{{strict=false}} for the cyclic solvers only)")
        if not self.strict:  # sets by layer parity, as the cyclic solvers see the graph
            parity = {op: d % 2 for op, d in layer.items()}
        changed = False
        for op in g.nodes:
            annots = {"set": "A" if parity[op] == 0 else "B", "layer": layer[op]}
            if any(op.annots.get(k) != a for k, a in annots.items()):
                op.annots.update(annots)
                changed = True
        return changed
