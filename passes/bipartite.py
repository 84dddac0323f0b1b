"""bipartite: check that the constraint graph is 2-colourable; repair it with identity constraints.

The constraint graph has one node per constraint family (dot, mul, sum, sum_pwl, max, identity)
and per loss; data and consts are not nodes, and moves are transparent (a family is adjacent to the
families that consume its value through any chain of moves). Parameters are nodes too when asked
(``with_params``): a parameter shared by several families (an unrolled recurrent weight) must be
opposite all of them, so a weight feeding families of both colours is a conflict like any other.

Repair (heuristic; a minimum odd-cycle edge transversal is NP-hard): BFS 2-colouring from every
node as the root, keep the colouring with the fewest same-colour edges (ties: rooted at the loss),
insert one ``identity`` (annot repair=1) on each such edge, and repeat until bipartite. The
identity goes right after the producer's value on the path to the consumer: a chain of moves that
also carries other families' values (a concat of both colours) is cloned with only the producer's
part passed through the identity, so the identity touches the producer and the consumer only.
"""
from __future__ import annotations

from collections import deque

import networkx as nx

from projc.errors import PassError
from projc.ir import Graph, Op, Value
from projc.ir.constraints import FIXED
from projc.ir.printer import assign_names

from . import Pass, register_pass
from ._common import is_family, is_loss, src_of

MAX_ROOTS = 256  # roots tried by the repair heuristic


def family_graph(graph: Graph, with_params: bool = False) -> nx.Graph:
    """Families and losses (and params, ``with_params``) as nodes; edge (producer, consumer) with
    attributes ``consumer`` and ``uses`` = the consumer's operand indices."""
    producers = graph.producers()
    memo: dict[Value, set] = {}

    def sources(v: Value | None) -> set:
        if v is None:
            return set()
        if v not in memo:
            p = producers.get(v)
            if p is None:
                memo[v] = {v} if with_params and v.role == "param" else set()
            elif is_family(p):
                memo[v] = {p}
            elif p.kind in FIXED:  # a constant of each update: no edge
                memo[v] = set()
            else:  # moves (and ops on data only) are transparent
                memo[v] = set().union(*(sources(u) for u in p.inputs)) if p.inputs else set()
        return memo[v]

    g = nx.Graph()
    for op in graph.ops:
        if is_family(op) or is_loss(op):
            g.add_node(op)
    for op in graph.ops:
        if op not in g:
            continue
        for i, v in enumerate(op.inputs):
            for src in sources(v):
                if src is op:
                    continue
                if not g.has_edge(src, op):
                    g.add_edge(src, op, consumer=op, uses=[])
                g.edges[src, op]["uses"].append(i)
    return g


def bfs_colouring(g: nx.Graph, order: list[Op]) -> tuple[dict[Op, int], dict[Op, Op | None]]:
    """Colour by BFS depth parity, components started from ``order`` in turn."""
    colour: dict[Op, int] = {}
    parent: dict[Op, Op | None] = {}
    for root in order:
        if root in colour:
            continue
        colour[root], parent[root] = 0, None
        queue = deque([root])
        while queue:
            u = queue.popleft()
            for w in g.neighbors(u):
                if w not in colour:
                    colour[w], parent[w] = 1 - colour[u], u
                    queue.append(w)
    return colour, parent


def conflicts(g: nx.Graph, colour: dict[Op, int]) -> list[tuple[Op, Op]]:
    return [(u, v) for u, v in g.edges if colour[u] == colour[v]]


def root_order(graph: Graph, g: nx.Graph) -> list[Op]:
    losses = [op for op in graph.ops if is_loss(op) and op in g]
    outputs = set(graph.outputs)
    out_producers = [op for op in graph.ops if op in g and any(v in outputs for v in op.outputs)]
    rest = [op for op in reversed(graph.ops) if op in g]
    seen, order = set(), []
    for op in losses + out_producers + rest:
        if op not in seen:
            seen.add(op)
            order.append(op)
    return order


def odd_cycle(colour, parent, u: Op, v: Op) -> list[Op]:
    """The cycle closed by same-colour edge (u, v) in the BFS forest."""
    path_u, path_v = [u], [v]
    anc_u = {u}
    while parent[path_u[-1]] is not None:
        path_u.append(parent[path_u[-1]])
        anc_u.add(path_u[-1])
    while path_v[-1] not in anc_u:
        path_v.append(parent[path_v[-1]])
    lca = path_v[-1]
    return path_u[:path_u.index(lca) + 1] + list(reversed(path_v[:-1]))


def describe(op: Op | Value, names: dict[Value, str]) -> str:
    if isinstance(op, Value):
        return f"param %{names.get(op, op.hint)}"
    who = f"%{names[op.outputs[0]]} = {op.kind}" if op.outputs else f"{op.kind} loss"
    return f"{who} (src={src_of(op)!r})"


def insert_identity(graph: Graph, g: nx.Graph, u: Op | Value, v: Op | Value) -> None:
    """Break the edge u - v: the consumer reads the producer's value through a new identity.

    The identity copies the producer's value (a family's output, or the param itself); moves between
    it and the consumer that carry it are cloned (new ops just before the consumer) so that values of
    other producers mixed in by the moves (a concat) stay outside the identity."""
    consumer = g.edges[u, v]["consumer"]
    producer = u if consumer is v else v
    producers = graph.producers()
    made: dict[Value, Value] = {}
    carried: dict[Value, bool] = {}

    def carries(val: Value | None) -> bool:
        if val is None:
            return False
        if val not in carried:
            p = producers.get(val)
            carried[val] = (val is producer or p is producer or (
                p is not None and not is_family(p) and any(carries(w) for w in p.inputs)))
        return carried[val]

    def emit(op: Op) -> None:
        graph.ops.insert(graph.ops.index(consumer), op)

    def rebuild(val: Value) -> Value:
        if val in made:
            return made[val]
        if val is producer or producers.get(val) is producer:
            out = Value(val.dtype, val.shape, "tmp")
            emit(Op("identity", [val], [out], {}, {"proj": "closed", "repair": 1, "src": src_of(consumer)}))
        else:  # a move (or op) carrying the producer's value: clone it over the rebuilt inputs
            move = producers[val]
            inputs = [rebuild(w) if w is not None and carries(w) else w for w in move.inputs]
            outs = [Value(o.dtype, o.shape, "tmp") for o in move.outputs]
            emit(Op(move.kind, inputs, outs, dict(move.params), dict(move.annots)))
            out = outs[move.outputs.index(val)]
        made[val] = out
        return out

    for i in sorted(set(g.edges[u, v]["uses"])):
        operand = consumer.inputs[i]
        assert operand is not None  # an edge's operand carries the producer's value
        consumer.inputs[i] = rebuild(operand)


@register_pass("bipartite")
class Bipartite(Pass):
    repair: bool = True

    def run(self, graph: Graph) -> bool:
        changed = False
        for _ in range(len(graph.ops) + 1):
            g = family_graph(graph, with_params=True)
            order = root_order(graph, g)
            colour, parent = bfs_colouring(g, order)
            bad = conflicts(g, colour)
            if not bad:
                return changed
            if not self.repair:
                u, v = bad[0]
                names = assign_names(graph)
                cycle = odd_cycle(colour, parent, u, v)
                raise PassError(
                    f"@{graph.name}: the constraint graph is not bipartite (cannot split it into two sets); "
                    f"odd cycle of {len(cycle)} families:\n    "
                    + "\n -> ".join(describe(op, names) for op in cycle)
                    + f"\n -> back to {describe(cycle[0], names)}\n"
                    "Turn repair on (bipartite{repair=true}, the default) to insert identity constraints.")
            best = bad
            for root in order[:MAX_ROOTS]:
                cand = conflicts(g, bfs_colouring(g, [root] + order)[0])
                if len(cand) < len(best):
                    best = cand
            for u, v in best:
                insert_identity(graph, g, u, v)
            changed = True
        raise PassError(f"@{graph.name}: bipartite repair did not converge")
