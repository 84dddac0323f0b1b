"""The op registry: one decorated function per (op kind, opset) with the reference semantics.

An op function takes the op's inputs positionally (``None`` for an omitted optional input; inputs
listed in ``static`` arrive as numpy arrays known at compile time) and its attributes as keyword
arguments (registry defaults filled in), and returns one array or a tuple of arrays (one per
output, in order). Functions use ``jax.numpy`` so that the same code runs eagerly (constant
folding), under ``jax.eval_shape`` (shape inference) and under ``jax.jit`` (the forward).

Kinds are ONNX op types; ops of another domain carry a prefix (``ml.ZipMap`` for ai.onnx.ml,
``projc.dot`` for projc's own constraint ops).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Oldest default-domain opset projc imports, and the newest whose op changes were reviewed.
# Opsets above MAX_OPSET are accepted: for the registered ops they only add element types
# (bfloat16, float8, int4, ...), which the importer rejects where a model actually uses them.
MIN_OPSET = 13
MAX_OPSET = 21

# Prefix of op kinds for each non-default ONNX domain.
DOMAIN_PREFIX = {"": "", "ai.onnx": "", "ai.onnx.ml": "ml.", "projc": "projc."}


@dataclass(frozen=True)
class OpDef:
    """One registration: ``fn`` implements ``kind`` from opset ``since`` to the next one's."""

    kind: str
    since: int
    fn: Callable[..., Any]
    attrs: dict[str, Any] = field(default_factory=dict)  # attribute name -> default
    static: tuple[int, ...] = ()  # input indices that must be compile-time constants
    frozen: tuple[int, ...] = ()  # input indices never trained (statistics, clip bounds, ...)
    fold: bool = True  # False for ops that must not be evaluated at import (randomness)
    doc: str = ""
    # Attribute that receives the node's output count when the model leaves it implicit
    # (Split before opset 18 splits into as many pieces as the node has outputs).
    arity_attr: str | None = None
    # Validation of one node before import: ``check(inputs, params)`` with the input Values
    # (None for omitted ones) and the attributes (defaults filled in); raises ValueError naming
    # the attribute or input that onnxruntime would reject (see ``projc.ops.checks``).
    check: Callable[..., None] | None = None
    # Float-list attributes that hold weights (ai.onnx.ml LinearClassifier's coefficients): the
    # importer turns each into a trainable 1-D parameter appended to the op's inputs, in order.
    weight_attrs: tuple[str, ...] = ()

    def is_static(self, index: int) -> bool:
        return index in self.static


_REGISTRY: dict[str, list[OpDef]] = {}  # kind -> registrations sorted by since


def register(kind: str, since: int, attrs: dict[str, Any] | None = None, *,
             static: tuple[int, ...] = (), frozen: tuple[int, ...] = (), fold: bool = True,
             arity_attr: str | None = None, check: Callable[..., None] | None = None,
             weight_attrs: tuple[str, ...] = ()):
    """Decorator: register ``fn`` as the semantics of ``kind`` from opset ``since`` on.

    Stack several decorators on one function when the semantics are shared between versions.
    ``check`` validates a node's attributes and input shapes at import (``OpDef.check``).
    """

    def decorate(fn):
        opdef = OpDef(kind, since, fn, dict(attrs or {}), tuple(static), tuple(frozen), fold,
                      _summary(fn), arity_attr, check, tuple(weight_attrs))
        versions = _REGISTRY.setdefault(kind, [])
        if any(d.since == since for d in versions):
            raise ValueError(f"{kind} is registered twice for opset {since}")
        versions.append(opdef)
        versions.sort(key=lambda d: d.since)
        return fn

    return decorate


def _summary(fn) -> str:
    """The first paragraph of ``fn``'s docstring on one line."""
    paragraph = (fn.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def lookup(kind: str, opset: int) -> OpDef | None:
    """The registration of ``kind`` with the highest ``since`` <= ``opset``, or None."""
    best = None
    for opdef in _REGISTRY.get(kind, ()):
        if opdef.since <= opset:
            best = opdef
    return best


def opset_for(kind: str, opsets: dict[str, int]) -> int:
    """The opset version that governs ``kind`` in a model importing ``opsets`` (domain -> version).

    Kinds of an unknown domain, or of a domain the model does not import, use their newest
    registration (projc's own ops are registered once, at since=1).
    """
    prefix = kind.split(".")[0] + "." if "." in kind else ""
    for domain, version in opsets.items():
        if DOMAIN_PREFIX.get(domain, domain + ".") == prefix:
            return int(version)
    return 1 << 30


def lookup_in(kind: str, opsets: dict[str, int]) -> OpDef | None:
    """``lookup`` at the opset a graph (``graph.meta["opset"]``) imports for ``kind``'s domain."""
    return lookup(kind, opset_for(kind, opsets))


def lookup_by_params(kind: str, params) -> OpDef | None:
    """The newest registration of ``kind`` that accepts every name in ``params`` (for graphs
    that do not record their opsets, e.g. hand-written IR)."""
    for opdef in reversed(_REGISTRY.get(kind, ())):
        if all(name in opdef.attrs for name in params):
            return opdef
    return None


def supported_ops() -> dict[str, list[int]]:
    """kind -> the opset versions registered for it, sorted by kind."""
    return {kind: [d.since for d in defs] for kind, defs in sorted(_REGISTRY.items())}


def kind_of(op_type: str, domain: str) -> str:
    """The registry kind of an ONNX node (``ZipMap`` in ai.onnx.ml -> ``ml.ZipMap``)."""
    prefix = DOMAIN_PREFIX.get(domain, domain + ".")
    return prefix + op_type


def op_family(kind: str) -> str:
    """``onnx`` (default-domain ONNX op types are CamelCase), ``ml`` (ai.onnx.ml) or ``projc``
    (projc's constraint ops: lowercase or ``projc.``-prefixed)."""
    if kind.startswith("ml."):
        return "ml"
    if "." not in kind and kind[:1].isupper():
        return "onnx"
    return "projc"


def render_supported_ops(family: str | None = None, trainable: set[str] | frozenset[str] = frozenset()) -> str:
    """A Markdown table of the registered ops of one ``op_family`` (all when None); ``trainable``:
    the kinds the training pipeline lowers to constraint families (the "trains" column)."""
    lines = ["| op | opsets | trains | attributes (defaults) | compile-time inputs | semantics |",
             "|---|---|---|---|---|---|"]
    for kind, defs in sorted(_REGISTRY.items()):
        if family is not None and op_family(kind) != family:
            continue
        latest = defs[-1]
        attrs = ", ".join(k if v is None else f"{k}={v!r}" for k, v in latest.attrs.items())
        static = ", ".join(str(i) for i in latest.static) or "-"
        versions = ", ".join(str(d.since) for d in defs)
        doc = latest.doc.replace("|", "\\|")  # a literal pipe would split the table cell
        trains = "yes" if kind in trainable else "-"
        lines.append(f"| {kind} | {versions} | {trains} | {attrs or '-'} | {static} | {doc} |")
    return "\n".join(lines)
