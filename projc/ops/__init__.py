"""The op registry: the one place where an op's semantics are defined.

``register(kind, since, attrs, static=...)`` decorates a jax.numpy function; ``lookup(kind,
opset)`` finds the registration in force at an opset. Importing this package registers every
ONNX op projc supports (the modules imported below, one decorated function per op and version).
projc's own constraint ops (lowercase kinds, ``projc.ops.constraint``) use the same decorator.
"""
# populate the registry: every ONNX op, and projc's own ops (the forwards of projc.ir.constraints)
from . import (  # noqa: F401,E402
    activations,
    arith,
    attention,
    constraint,
    elementwise,
    indexing,
    layout,
    ml,
    nn,
    norm,
    recurrent,
    reduce,
    resize,
    shape_like,
    spatial,
    trees,
)
from .registry import (
    DOMAIN_PREFIX,
    MAX_OPSET,
    MIN_OPSET,
    OpDef,
    kind_of,
    lookup,
    lookup_by_params,
    lookup_in,
    op_family,
    opset_for,
    register,
    render_supported_ops,
    supported_ops,
)


def format_supported_ops(trainable: set[str] | frozenset[str] = frozenset()) -> str:
    """The ONNX ops projc imports, as the Markdown table `projc ops` prints (docs/ops.md);
    ``trainable``: the kinds that train (``projc.passes.lowering_table``)."""
    onnx_ops = (render_supported_ops("onnx", trainable) + "\n\nai.onnx.ml (scikit-learn exports):\n\n"
                + render_supported_ops("ml", trainable))
    return (f"ONNX ops projc imports (default domain opsets {MIN_OPSET}..{MAX_OPSET}; an op is "
            "registered at the opset versions listed, each in force until the next):\n\n"
            + onnx_ops + "\n")


__all__ = ["DOMAIN_PREFIX", "MAX_OPSET", "MIN_OPSET", "OpDef", "format_supported_ops", "kind_of",
           "lookup", "lookup_by_params", "lookup_in", "op_family", "opset_for", "register",
           "render_supported_ops", "supported_ops"]
