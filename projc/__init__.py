"""projc: compile ONNX models into gradient-free, projection-based trainers (JAX).

The public API is exported lazily so that ``import projc.ir`` (from a pass) stays light::

    trainer = projc.compile("model.onnx", loss="cross_entropy", solver="dr", steps_per_update=50)
    data = projc.load_data("digits", input_shape=trainer.input_shape)
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "compile": ("projc.train.trainer", "compile"),
    "Trainer": ("projc.train.trainer", "Trainer"),
    "load_data": ("projc.train.data", "load_data"),
    "Dataset": ("projc.train.data", "Dataset"),
    "export_onnx": ("projc.frontend.export", "export_onnx"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'projc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
