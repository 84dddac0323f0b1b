"""Write the original ONNX graph with trained initializer values (same names, shapes, dtypes).

The file is written atomically: to a temporary file in the destination folder, then
``os.replace``d over the destination, so a failure (an interrupt included) never leaves a partial,
clobbered or stray temporary file. A new file gets the usual 0666-less-umask mode; a replaced file
keeps its own mode.
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


def _final_mode(path: str) -> int:
    """The mode the written file should have: an existing file's own, else 0666 less the umask
    (mkstemp creates 0600 files, and that mode would otherwise survive the rename)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0o022)  # reading the umask means setting it; restore at once
        os.umask(umask)
        return 0o666 & ~umask


def export_onnx(model, params: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Write ``model`` with trained ``params`` to ``path`` atomically; returns the path.

    Raises ProjcError naming the path when the destination cannot be written (nothing is written).
    """
    import onnx

    path = os.fspath(path)
    if not path:
        raise ProjcError("export: the output path is empty; give a file name for the trained model")
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
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
    except OSError as e:
        raise ProjcError(f"{path}: cannot write the trained model there ({e.strerror or e})") from None
    finally:  # any failure, KeyboardInterrupt included, removes the temporary file
        if os.path.exists(tmp):
            os.unlink(tmp)
    del onnx
    return path
