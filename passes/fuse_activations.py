"""fuse-activations: sum chains feeding a sum_pwl -> one sum_pwl; sum chains -> one n-ary sum.

    sum_pwl[f](sum(a, b), c)  -> sum_pwl[f](a, b, c)     # phi(a+b+c); sums are associative
    sum(sum(a, b), c)         -> sum(a, b, c)             # broadcast is associative too

An intermediate sum is absorbed only when its value has exactly one use (not a graph output);
a dot stays its own family.
"""
from __future__ import annotations

from projc.ir import Graph

from . import Pass, register_pass

FUSES_INTO = {"sum_pwl": ("sum",), "sum": ("sum",)}  # consumer kind -> absorbable producer kinds


@register_pass("fuse-activations")
class FuseActivations(Pass):
    def run(self, graph: Graph) -> bool:
        changed = False
        while True:
            producers, users = graph.producers(), graph.users()
            outputs = set(graph.outputs)
            dead = set()
            for op in reversed(graph.ops):  # consumers last-to-first: a whole chain folds into its end
                if op.kind not in FUSES_INTO or op in dead:
                    continue
                operands = []
                for v in op.inputs:
                    p = producers.get(v)
                    if (p is not None and p not in dead and p.kind in FUSES_INTO[op.kind]
                            and len(users.get(v, ())) == 1 and v not in outputs):
                        operands.extend(p.inputs)
                        dead.add(p)
                    else:
                        operands.append(v)
                op.inputs = operands
            if not dead:
                return changed
            changed = True
            graph.ops = [op for op in graph.ops if op not in dead]
