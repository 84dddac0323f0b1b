"""The IR layer: values, ops and graphs (``core``), the printer, the parser and the verifier.

``from projc.ir import Graph, Op, Value`` is the IR itself; the text form lives in
``projc.ir.printer`` / ``projc.ir.parser`` and the structural checks in ``projc.ir.verify``.
Nothing here imports JAX or the rest of projc.
"""
from .core import DTYPES, ROLES, Dim, Graph, Op, Value, dtype_name, remove_dead_code

__all__ = ["DTYPES", "ROLES", "Dim", "Graph", "Op", "Value", "dtype_name", "remove_dead_code"]
