"""Write the original ONNX graph with trained initializer values (same names, shapes, dtypes).

The file is written atomically (``projc.train.files.atomic_write``): to a temporary file in the
destination folder, then ``os.replace``d over the destination, so a failure (a full disk, an
interrupt) never leaves a partial, clobbered or stray temporary file. A new file gets the usual
0666-less-umask mode; a replaced file keeps its own mode.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from projc.errors import ProjcError


def _load(model):
    import onnx

    if isinstance(model, (str, os.PathLike)):
        try:
            return onnx.load(os.fspath(model))
        except Exception as e:  # noqa: BLE001 - any load failure is the user's file
            raise ProjcError(f"{model}: cannot read the original model to export ({e})") from None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def with_trained_initializers(model, params: Mapping[str, Any]):
    """A copy of ``model`` (a path or ModelProto) whose initializers named in ``params`` hold the
    trained values, cast to each initializer's dtype. Unknown names or shape changes are errors."""
    from onnx import numpy_helper

    model = _load(model)
    inits = {init.name: i for i, init in enumerate(model.graph.initializer)}
    from projc.frontend.importer import set_weight_attribute

    for name, value in params.items():
        if name not in inits:
            if not np.all(np.isfinite(np.asarray(value))):
                raise ProjcError(f"export: parameter {name!r} holds non-finite values; not writing")
            if set_weight_attribute(model, name, np.asarray(value)):
                continue  # a weight held in a node attribute (ai.onnx.ml LinearClassifier)
            raise ProjcError(f"export: the model has no initializer named {name!r}")
        old = model.graph.initializer[inits[name]]
        ref = numpy_helper.to_array(old)
        arr = np.asarray(value)
        if arr.shape != ref.shape:
            raise ProjcError(f"export: initializer {name!r} has shape {list(ref.shape)}, "
                             f"the trained value {list(arr.shape)}")
        if not np.all(np.isfinite(arr)):
            raise ProjcError(f"export: initializer {name!r} holds non-finite values; not writing")
        new = numpy_helper.from_array(arr.astype(ref.dtype), name)
        old.CopyFrom(new)
    return model


def export_onnx(model, params: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Write ``model`` with trained ``params`` to ``path`` atomically; returns the path.

    Raises ProjcError naming the path when the destination cannot be written (nothing is written,
    an existing file is unchanged); a destination that is a symbolic link is refused
    (``projc.train.files``).
    """
    from projc.train.files import atomic_write, refuse_link

    path = os.fspath(path)
    if not path:
        raise ProjcError("export: the output path is empty; give a file name for the trained model")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ProjcError(f"{path}: is a folder; give a file name for the trained model")
    refuse_link(path, "the trained model")
    if not os.path.isdir(folder):
        raise ProjcError(f"{path}: cannot write the trained model: folder {folder} does not exist")
    data = with_trained_initializers(model, params).SerializeToString()
    return atomic_write(path, lambda f: f.write(data), what="the trained model", make_folder=False,
                        keep="nothing was written (an existing file there is unchanged)")
