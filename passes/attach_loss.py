"""attach-loss: end training at the logits with a loss op and a label input.

Walks back from each graph output through post-processing (Identity, Cast, Reshape, Flatten,
Squeeze, ArgMax, ml.ArrayFeatureExtractor, ml.ZipMap and, for classification losses, a trailing
Softmax/LogSoftmax, for binary_cross_entropy a trailing Sigmoid) to the float value feeding the
classification: the logits. When that value is
a pooled [B,C,1,...] tensor (a CNN whose head is Flatten(GlobalMaxPool(x))), the logits are the
[B,C] reshape of it on the way back, which stays in the training graph. Adds a label input
(i64[B] for cross_entropy/margin, i64[B,T] for cross_entropy on per-step logits [B,T,C], the
logits' type for the elementwise losses: squared_error, binary_cross_entropy, huber, l1) and the
loss op; the graph's
outputs become [logits]. ``graph.meta["logits_output"]`` records the ONNX name of the logits (and
``meta["logits_from"]`` the ONNX output it was found from) so an exporter can keep the original
graph. Options: ``loss``, ``lam`` (the prox weight), ``method`` (cross_entropy's prox solver),
``delta`` (huber's threshold). Runs
first in the training pipeline, so dce then removes the post-processing.
"""
from __future__ import annotations

from typing import ClassVar

from projc.errors import PassError
from projc.ir import Graph, Op, Value
from projc.ir.constraints import ELEMENTWISE_LOSSES, LOSSES

from . import Pass, register_pass
from ._common import Lowering, is_loss

POSTPROCESS = {"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "ArgMax",
               "ml.ArrayFeatureExtractor", "ArrayFeatureExtractor", "ml.ZipMap", "ZipMap",
               "ml.Normalizer"}
CLASSIFIER_HEADS = {"Softmax", "LogSoftmax"}
BINARY_HEADS = {"Sigmoid"}  # a sigmoid at the output of a binary / multi-label classifier
LOSS_KINDS = LOSSES
CE_METHODS = ("newton", "fixed-point")


def _flattened_logits(chain: list[Value], producers) -> Value | None:
    """A CNN head like Flatten(GlobalMaxPool(x)) ends at [B,C,1,1]: the logits are then the first
    [B,C] value met walking back, reached from the pooled tensor by reshapes only (kept in training)."""
    head = chain[-1]
    if not head.dtype.startswith("f") or head.rank < 2 or any(d != 1 for d in head.shape[2:]):
        return None
    for v in reversed(chain[:-1]):
        if producers[v].kind not in ("Reshape", "Flatten", "Squeeze", "Identity"):
            return None
        if v.rank == 2 and v.dtype == head.dtype and tuple(v.shape[1:]) == tuple(head.shape[1:2]):
            return v
    return None


def find_logits(graph: Graph, strip: set[str], ranks_2: bool = False) -> tuple[Value, Value]:
    """(logits, the graph output they were found from); ``ranks_2``: classification wants [B,C]."""
    producers = graph.producers()
    fixed = set(graph.consts) | set(graph.params)
    candidates = []
    for out in graph.outputs:
        v = out
        chain = [v]  # the output, then each value walked back to
        while v in producers and producers[v].kind in strip:
            operands = [u for u in producers[v].inputs if u is not None and u not in fixed]
            if not operands:
                break
            v = operands[-1] if producers[v].kind.endswith("ArrayFeatureExtractor") else operands[0]
            chain.append(v)
        if v.rank != 2 and ranks_2:
            v = _flattened_logits(chain, producers) or v
        if v.dtype.startswith("f"):
            candidates.append((v, out))
    if not candidates:
        raise PassError(f"@{graph.name}: no float output to train (outputs: "
                        + ", ".join(f"{o.hint or '?'}: {o.type_str()}" for o in graph.outputs) + ")")
    return candidates[0]


def strip_set(loss: str) -> set[str]:
    """The ops walked back through from an output to the value ``loss`` takes."""
    if loss == "binary_cross_entropy":
        return POSTPROCESS | BINARY_HEADS
    return POSTPROCESS | (set() if loss in ELEMENTWISE_LOSSES else CLASSIFIER_HEADS)


def _stripped(note: str) -> Lowering:
    return Lowering(None, "-", note)


# what this pass takes off the end of a model (a rule of None: it walks back from the outputs)
LOWERINGS = {kind: _stripped("at the output of a classifier only: stripped, the loss takes the logits")
             for kind in ("Softmax", "LogSoftmax")}
LOWERINGS["Sigmoid"] = _stripped("at the output, under binary_cross_entropy: stripped, the loss takes "
                                 "the logits (elsewhere: sum_smooth)")
LOWERINGS.update({kind: _stripped("post-processing at the output only: stripped")
                  for kind in ("ArgMax", "ml.ArrayFeatureExtractor", "ml.ZipMap", "ml.Normalizer")})


@register_pass("attach-loss")
class AttachLoss(Pass):
    lowerings: ClassVar[dict[str, Lowering]] = LOWERINGS
    loss: str = "cross_entropy"
    lam: float = 5.0
    method: str = "newton"  # cross_entropy's prox solver: newton | fixed-point
    delta: float = 1.0      # huber's threshold

    def run(self, graph: Graph) -> bool:
        if self.loss not in LOSS_KINDS:
            raise PassError(f"attach-loss: unknown loss {self.loss!r}; one of {', '.join(LOSS_KINDS)}")
        if self.method not in CE_METHODS:
            raise PassError(f"attach-loss: unknown method {self.method!r}; one of {', '.join(CE_METHODS)}")
        if any(is_loss(op) for op in graph.ops):
            return False
        classify = self.loss not in ELEMENTWISE_LOSSES
        logits, origin = find_logits(graph, strip_set(self.loss), classify)
        if classify:
            # cross_entropy also takes per-step logits [B, T, C] (labels [B, T]): the loss is then
            # the mean cross-entropy over the steps, each step's logits a row of their own
            per_step = self.loss == "cross_entropy" and logits.rank == 3
            if logits.rank != 2 and not per_step:
                raise PassError(f"attach-loss: {self.loss} needs logits [B, C]"
                                f"{' or per-step [B, T, C]' if self.loss == 'cross_entropy' else ''}, "
                                f"got {logits.hint or '?'}: {logits.type_str()}")
            label = Value("i64", tuple(logits.shape[:-1]), "label", hint="y")
        else:
            label = Value(logits.dtype, logits.shape, "label", hint="y")
        params: dict[str, float | str] = {"lam": float(self.lam)}
        if self.loss == "cross_entropy":
            params["method"] = self.method
        elif self.loss == "huber":
            params["delta"] = float(self.delta)
        elif self.loss == "margin":
            params = {}
        graph.inputs.append(label)
        graph.ops.append(Op(self.loss, [logits, label], [], params, {}))
        graph.meta["logits_output"] = logits.hint
        graph.meta["logits_from"] = origin.hint
        graph.meta["loss"] = self.loss
        graph.outputs = [logits]
        return True
