"""Write the original ONNX graph with trained initializer values (same names, shapes, dtypes).

The file is written atomically: to a temporary file in the destination folder, then
``os.replace``d over the destination, so a failure never leaves a partial or clobbered file.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping

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
    from projc.onnx_import import set_weight_attribute

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

    Raises ProjcError naming the path when the destination cannot be written (nothing is written).
    """
    import onnx

    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ProjcError(f"{path}: is a folder; give a file name for the trained model")
    if not os.path.isdir(folder):
        raise ProjcError(f"{path}: cannot write the trained model: folder {folder} does not exist")
    proto = with_trained_initializers(model, params)
    data = proto.SerializeToString()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".projc-", suffix=".onnx.tmp", dir=folder)
    except OSError as e:
        raise ProjcError(f"{path}: cannot write the trained model there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ProjcError(f"{path}: cannot write the trained model there ({e.strerror or e})") from None
    del onnx
    return path
