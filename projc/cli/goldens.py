"""Expected outputs ("goldens") for `projc compare --expected` and `--save-expected`.

Two formats:

- ONNX test data, as the ONNX backend test cases ship: a folder ``test_data_set_N`` holding
  ``input_0.pb``, ``input_1.pb``, ... and ``output_0.pb``, ... (serialized TensorProtos, matched
  to the model's inputs and outputs by their name, else by position; graph inputs that are
  initializers do not count). A folder holding ``test_data_set_*`` folders gives one data set
  each, compared in turn.
- An ``.npz`` keyed by output name. It may also hold the inputs, under ``inputs/NAME`` (what
  ``--save-expected F.npz`` writes); without them, ``--load-inputs`` gives the inputs.

Goldens *beside a model* ``DIR/NAME.onnx`` (used without ``--expected``, unless
``--ignore-expected``): ``DIR/NAME.expected.npz``, and ``DIR/test_data_set_*`` when the model is
the only ``.onnx`` file in DIR (the backend-case layout ``DIR/model.onnx``).

Writing is atomic: an npz goes to a temporary file renamed over the target; a data-set folder
is written as a temporary folder, then swapped in (an existing data-set folder is replaced only
when it holds nothing but ``input_*.pb``/``output_*.pb`` files).
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from projc.errors import DataError, ProjcError

INPUT_PREFIX = "inputs/"
NPZ_SUFFIX = ".expected.npz"
_DATA_SET = re.compile(r"^test_data_set_\d+$")
_TENSOR_FILE = re.compile(r"^(input|output)_(\d+)\.pb$")


@dataclass
class DataSet:
    """One set of inputs (None: not stored) and expected outputs, and where it came from."""

    label: str
    inputs: dict[str, np.ndarray] | None
    outputs: dict[str, np.ndarray]


def _runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    initializers = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def beside(model_path: str) -> list[str]:
    """The goldens stored beside a model file (see the module docstring); [] when none."""
    folder = os.path.dirname(model_path)
    stem = os.path.splitext(os.path.basename(model_path))[0]
    found = []
    npz = os.path.join(folder, stem + NPZ_SUFFIX)
    if os.path.isfile(npz):
        found.append(npz)
    if len(glob.glob(os.path.join(glob.escape(folder or "."), "*.onnx"))) == 1:
        found += data_set_folders(folder or ".")
    return found


def data_set_folders(folder: str) -> list[str]:
    """``folder``'s ``test_data_set_N`` subfolders, in numeric order."""
    names = [n for n in os.listdir(folder) if _DATA_SET.match(n)
             and os.path.isdir(os.path.join(folder, n))]
    names.sort(key=lambda n: int(n.rsplit("_", 1)[1]))
    return [n if folder == "." else os.path.join(folder, n) for n in names]


def read_expected(path: str, model: onnx.ModelProto) -> list[DataSet]:
    """The data sets stored at ``path`` (an .npz, a ``test_data_set_N`` folder or a folder of
    them), their tensors matched to ``model``'s inputs and outputs."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder; --expected takes a test_data_set_N "
                        "folder (input_*.pb, output_*.pb), a folder of them, or an .npz of "
                        "outputs")
    if os.path.isfile(path):
        return [read_npz(path, model)]
    if _tensor_files(path):
        return [read_data_set(path, model)]
    sets = data_set_folders(path)
    if not sets:
        raise DataError(f"{path}: holds no test data; expected input_N.pb/output_N.pb files or "
                        "test_data_set_N folders (write them with --save-expected)")
    return [read_data_set(folder, model) for folder in sets]


def _tensor_files(folder: str) -> dict[str, list[str]]:
    found: dict[str, list[tuple[int, str]]] = {}
    for name in os.listdir(folder):
        match = _TENSOR_FILE.match(name)
        if match:
            found.setdefault(match.group(1), []).append((int(match.group(2)), name))
    return {kind: [os.path.join(folder, n) for _, n in sorted(files)]
            for kind, files in found.items()}


def read_data_set(folder: str, model: onnx.ModelProto) -> DataSet:
    """A ``test_data_set_N`` folder: its input_*.pb and output_*.pb, by name or position."""
    files = _tensor_files(folder)
    if not files.get("output"):
        raise DataError(f"{folder}: holds no output_N.pb file, so nothing to compare against")
    inputs = _match(files.get("input", []), _runtime_inputs(model), "input", folder)
    outputs = _match(files["output"], list(model.graph.output), "output", folder)
    return DataSet(folder, inputs, outputs)


def _match(paths: list[str], infos: list[onnx.ValueInfoProto], kind: str,
           folder: str) -> dict[str, np.ndarray]:
    names = [vi.name for vi in infos]
    if len(paths) > len(names):
        raise DataError(f"{folder}: holds {len(paths)} {kind} files, but the model has "
                        f"{len(names)} {kind}(s) ({', '.join(names) or 'none'})")
    arrays = {}
    for position, path in enumerate(paths):
        tensor = _read_tensor(path, infos, position)
        name = tensor.name if tensor.name in names else names[position]
        if name in arrays:
            raise DataError(f"{path}: a second value for {kind} \"{name}\"")
        arrays[name] = _to_array(tensor, path)
    return arrays


def _read_tensor(path: str, infos, position: int) -> onnx.TensorProto:
    info = infos[position]
    kind = info.type.WhichOneof("value")
    if kind != "tensor_type":
        raise DataError(f"{path}: \"{info.name}\" is a {kind.replace('_type', '') if kind else 'value'}"
                        f", not a tensor; projc compares tensors only")
    tensor = onnx.TensorProto()
    try:
        with open(path, "rb") as f:
            tensor.ParseFromString(f.read())
    except OSError as err:
        raise DataError(f"{path}: cannot read it ({err.strerror or err})") from None
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError
        raise DataError(f"{path}: not a serialized ONNX TensorProto ({err})") from None
    return tensor


def _to_array(tensor: onnx.TensorProto, path: str) -> np.ndarray:
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as err:  # noqa: BLE001 - data that does not fill its dims, an odd type
        raise DataError(f"{path}: cannot read the tensor ({str(err).strip().splitlines()[0]})") \
            from None
    if array.dtype == object:  # string tensors
        array = np.array([b.decode("utf-8") if isinstance(b, bytes) else str(b)
                          for b in array.reshape(-1)], dtype=np.str_).reshape(array.shape)
    return array


def read_npz(path: str, model: onnx.ModelProto) -> DataSet:
    """An .npz of expected outputs (keyed by output name), with the inputs under ``inputs/``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: cannot read it as an .npz ({err}); --expected takes an .npz "
                        "keyed by output names, or a test_data_set_N folder") from None
    outputs = {vi.name for vi in model.graph.output}
    inputs = {k[len(INPUT_PREFIX):]: v for k, v in arrays.items()
              if k not in outputs and k.startswith(INPUT_PREFIX)}
    expected = {k: v for k, v in arrays.items() if not (k not in outputs and k.startswith(INPUT_PREFIX))}
    return DataSet(path, inputs or None, expected)


# -- writing ------------------------------------------------------------------------------------

def write_expected(target: str, model: onnx.ModelProto, inputs: dict[str, np.ndarray],
                   outputs: dict[str, np.ndarray]) -> str:
    """Store ``inputs`` and ``outputs`` (by name) as goldens at ``target``: an .npz, or an ONNX
    data-set folder (``target`` itself when named test_data_set_N, else
    ``target/test_data_set_0``). Returns what was written."""
    if target.endswith(".npz"):
        save_npz_atomic(target, {**{INPUT_PREFIX + k: v for k, v in inputs.items()}, **outputs})
        return target
    folder = target if _DATA_SET.match(os.path.basename(os.path.normpath(target))) else \
        os.path.join(target, "test_data_set_0")
    folder = os.path.normpath(folder)
    tensors = []
    order = [vi.name for vi in _runtime_inputs(model)]
    for position, name in enumerate(n for n in order if n in inputs):
        tensors.append((f"input_{position}.pb", _tensor(inputs[name], name)))
    order = [vi.name for vi in model.graph.output]
    for position, name in enumerate(n for n in order if n in outputs):
        tensors.append((f"output_{position}.pb", _tensor(outputs[name], name)))
    _write_folder_atomic(folder, tensors)
    return folder


def _tensor(array: np.ndarray, name: str) -> onnx.TensorProto:
    array = np.asarray(array)
    if array.dtype.kind == "U":
        return onnx.helper.make_tensor(name, onnx.TensorProto.STRING, array.shape,
                                       [s.encode("utf-8") for s in array.reshape(-1)])
    return numpy_helper.from_array(array, name)


def check_target(target: str, option: str = "--save-expected") -> None:
    """Refuse, before anything runs, a target that cannot be written (a data-set folder that
    holds other files, a file in the way, no permission)."""
    if target.endswith(".npz"):
        check_writable_file(target, option)
        return
    folder = target if _DATA_SET.match(os.path.basename(os.path.normpath(target))) else \
        os.path.join(target, "test_data_set_0")
    if os.path.isfile(target):
        raise ProjcError(f"{option} {target}: is a file; give a folder (a test_data_set_N folder "
                         "is written in it) or an .npz path")
    if os.path.isdir(folder):
        others = [n for n in os.listdir(folder) if not _TENSOR_FILE.match(n)]
        if others:
            raise ProjcError(f"{option} {target}: {folder} holds other files ({others[0]}, ...); "
                             "it is replaced only when it holds input_*.pb/output_*.pb alone")
    _check_creatable(folder, option)


def check_writable_file(path: str, option: str) -> None:
    if not path or path.endswith(os.sep) or os.path.isdir(path):
        raise ProjcError(f"{option} {path}: is a folder; give a file path")
    _check_creatable(path, option)


def _check_creatable(path: str, option: str) -> None:
    """The nearest existing folder above ``path`` is a writable folder."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ProjcError(f"{option} {path}: cannot write here ({parent} is a file)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ProjcError(f"{option} {path}: cannot write here ({parent} is not writable)")


def save_npz_atomic(path: str, arrays: dict) -> None:
    """An .npz written to a temporary file beside ``path``, then renamed over it."""
    write_atomic(path, lambda f: np.savez(f, **arrays), suffix=".npz")


def write_atomic(path: str, write, *, suffix: str = "") -> None:
    """``write(binary file)`` into a temporary file beside ``path`` (its folder created when
    missing), then renamed over ``path``; nothing is left behind on failure."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix=".projc-", dir=folder)
    except OSError as err:
        raise ProjcError(f"{path}: cannot write here ({err.strerror or err})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as err:
        raise ProjcError(f"{path}: cannot write it ({err.strerror or err})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_folder_atomic(folder: str, tensors: list[tuple[str, onnx.TensorProto]]) -> None:
    parent = os.path.dirname(folder)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".projc-", dir=parent)
    except OSError as err:
        raise ProjcError(f"{folder}: cannot write here ({err.strerror or err})") from None
    old = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        for name, tensor in tensors:
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(tensor.SerializeToString())
        if os.path.exists(folder):
            old = tempfile.mkdtemp(prefix=".projc-old-", dir=parent)
            os.rename(folder, os.path.join(old, "set"))
        os.rename(tmp, folder)
    except OSError as err:
        if old is not None and not os.path.exists(folder):
            os.rename(os.path.join(old, "set"), folder)  # put the old data set back
        raise ProjcError(f"{folder}: cannot write it ({err.strerror or err})") from None
    finally:
        for leftover in (tmp, old):
            if leftover is not None and os.path.exists(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
