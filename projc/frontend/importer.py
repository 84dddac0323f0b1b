"""ONNX importer: an ONNX model becomes an IR graph of onnx-level ops.

Steps: load and check the file (``ModelLoadError``), check opsets, upgrade a model older than
opset 13 in memory with ``onnx.version_converter`` (one note on stderr), check that every node's
(op, opset) is registered (one ``UnsupportedModelError`` listing all offenders), run ONNX shape
inference, then build the graph node by node: each node is first validated as onnxruntime would
(input types against the op's ONNX schema, attributes and shapes by the registry's ``check``
hook; ``ModelLoadError`` naming node and attribute), constants fold on the spot, shape subgraphs
are evaluated symbolically (``projc.frontend.symbolic``), every op output gets a dtype (ONNX's
inferred type, else the traced one) and a shape (traced with ``jax.eval_shape`` by
``projc.frontend.evaluate``, which also rejects op variants the registry's functions do not support, at
import time), and dead ops/initializers are dropped.

Roles: graph inputs are ``input``; float initializers that feed a computation (not only shapes,
indices, statistics) are trainable ``param``; so are the weight attributes an op registers
(``OpDef.weight_attrs``: LinearClassifier's coefficients, named ``NODE.coefficients``); every
other initializer or folded value is ``const``. Hints are ONNX names.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np
import onnx
import onnx.version_converter
from onnx import numpy_helper

from projc.errors import ModelLoadError, ProjcError, UnsupportedModelError
from projc.frontend import symbolic
from projc.frontend.evaluate import BATCH, SymbolSizes, fold, trace
from projc.frontend.limits import check_recurrent_input, check_shape
from projc.ir import Dim, Graph, Op, Value, dtype_name, remove_dead_code
from projc.ops import MAX_OPSET, MIN_OPSET, OpDef, kind_of, lookup
from projc.ops.checks import check_input_types
from projc.ops.dtypes import ir_dtype_of_onnx, np_dtype, onnx_type_name
from projc.ops.resize import pin_legacy_resize

FLOAT_DTYPES = ("f16", "f32", "f64")
SUPPORTED_LIST_HINT = "supported ops: run `projc ops` or see docs/ops.md"


class ModelSource(NamedTuple):
    """A model read once: the parsed proto (external data loaded), the name messages use, the file
    it came from (None in memory) and the sha256 of the bytes read."""

    proto: onnx.ModelProto
    label: str
    path: str | None
    digest: str


def read_model(model, *, base_dir: str | os.PathLike | None = None) -> ModelSource:
    """Read ``model``: a path, the bytes of an ONNX file, or an ``onnx.ModelProto`` (copied).

    A file's external data loads from the file's folder; an in-memory model's only from
    ``base_dir`` when it is given (never from the working directory), and no external file may
    lie outside that folder.
    """
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        return _parse(_read_bytes(path), path, path, model_folder(path))
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        return _parse(data, "model bytes", None, base_dir)
    if isinstance(model, onnx.ModelProto):
        data = model.SerializeToString()
        return _parse(data, model.graph.name or "model", None, base_dir)
    raise ProjcError(f"model must be a path, the bytes of an ONNX file or an onnx.ModelProto, got "
                     f"{type(model).__name__}")


def model_folder(path: str) -> str:
    """The folder a model file's external data is read from: the file's own folder, or, for a
    symbolic link whose folder lacks the data, the folder of the file it points to."""
    folder = os.path.dirname(os.path.abspath(path))
    real = os.path.dirname(os.path.realpath(path))
    if real == folder or not os.path.isfile(path):
        return folder
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 - _parse reports an unreadable file
        return folder
    locations = external_locations(proto)
    if any(not os.path.isfile(os.path.join(folder, loc)) for loc in locations) and \
            all(os.path.isfile(os.path.join(real, loc)) for loc in locations):
        return real
    return folder


def external_locations(proto: onnx.ModelProto) -> list[str]:
    """The external files the model's tensors name (none when every tensor is inline)."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    return sorted({ExternalDataInfo(t).location for t in _get_all_tensors(proto)
                   if uses_external_data(t)})


def _read_bytes(path: str) -> bytes:
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ModelLoadError(f"{path}: cannot read the model ({err.strerror or err})") from None
    if not data:
        raise ModelLoadError(f"{path}: the file is empty (0 bytes), expected an ONNX model")
    return data


def _parse(data: bytes, label: str, path: str | None, base_dir) -> ModelSource:
    import hashlib

    try:
        proto = onnx.load_from_string(data)
    except Exception as err:  # protobuf raises DecodeError, RuntimeError, ... on bad bytes
        raise ModelLoadError(f"{label}: not a readable ONNX model, the file is truncated or not "
                             f"an ONNX protobuf ({_first_line(err)})") from None
    load_external_data(proto, label, base_dir)
    return ModelSource(proto, label, path, hashlib.sha256(data).hexdigest())


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def load_external_data(proto: onnx.ModelProto, label: str, base_dir) -> None:
    """Inline the tensors ``proto`` keeps in external files, read from ``base_dir`` only."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    external = [t for t in _get_all_tensors(proto) if uses_external_data(t)]
    if not external:
        return
    if base_dir is None:
        raise ModelLoadError(f"{label}: the model keeps {len(external)} tensor(s) in external files "
                             f"(first \"{ExternalDataInfo(external[0]).location}\"); pass base_dir= "
                             f"the folder that holds them")
    root = os.path.realpath(base_dir)
    for tensor in external:
        location = ExternalDataInfo(tensor).location
        full = os.path.realpath(os.path.join(root, location))
        if os.path.commonpath([root, full]) != root:
            raise ModelLoadError(f"{label}: tensor \"{tensor.name}\" names external data "
                                 f"\"{location}\" outside the model's folder {root}")
        if not os.path.isfile(full):
            raise ModelLoadError(f"{label}: tensor \"{tensor.name}\" keeps its data in \"{location}\", "
                                 f"which is missing from {root}")
    try:
        onnx.load_external_data_for_model(proto, root)
    except Exception as err:  # noqa: BLE001 - a short or unreadable external file
        raise ModelLoadError(f"{label}: cannot read its external data ({_first_line(err)})") from None


def load_model(model, *, bind: dict[str, np.ndarray] | None = None) -> Graph:
    """Read, check and import ``model`` (a path, bytes or ModelProto; see ``read_model``).

    ``bind`` turns the named graph inputs into constants with the given values (for inputs that
    projc needs at compile time, e.g. a Reshape shape fed as an input).
    """
    source = read_model(model)
    return from_onnx(source.proto, path=source.path or source.label, bind=bind)


def from_onnx(model: onnx.ModelProto, path: str | None = None, *,
              bind: dict[str, np.ndarray] | None = None, base_dir: str | os.PathLike | None = None) -> Graph:
    """Import an in-memory ONNX model (``path`` only names it in messages and ``meta``).

    A model older than opset ``MIN_OPSET`` is upgraded in memory (``upgrade_opset``, one note on
    stderr); the caller's ModelProto is never modified. Tensors kept in external files load from
    ``base_dir`` only (``load_external_data``).
    """
    label = path or model.graph.name or "model"
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        model = _copy(model)
        load_external_data(model, label, base_dir)
    try:
        model = list_initializers_as_inputs(model)
        check_input_ranks(model, label)  # before the checker, which only says "shape missing"
        check_model(model, label)
        if not model.graph.output:  # onnx.checker lets it pass, onnxruntime refuses it
            raise ModelLoadError(f"{label}: the graph has no outputs, so nothing to compute")
        check_opset(model_opsets(model), label)
        model = upgrade_opset(model, label)
        opsets = model_opsets(model)
        check_supported(model.graph, opsets, label)
        inferred = _infer_shapes(model)
        return _GraphBuilder(model, inferred, opsets, label, path, dict(bind or {})).build()
    except ProjcError:
        raise
    except Exception as err:  # a malformed model reaching code that trusts the checker
        raise ModelLoadError(
            f"{label}: cannot import the model ({type(err).__name__}: {_first_line(err)}); if "
            "onnxruntime runs it, this is a projc bug: rerun with --debug and report it") from err


# -- checks -----------------------------------------------------------------------------------

def check_model(model: onnx.ModelProto, label: str) -> None:
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{label}: onnx.checker rejects the model: "
                             f"{_first_line(err)}") from None


def check_input_ranks(model: onnx.ModelProto, label: str) -> None:
    initializers = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        tensor = vi.type.tensor_type
        if vi.name not in initializers and vi.type.HasField("tensor_type") \
                and not tensor.HasField("shape"):
            raise UnsupportedModelError(
                f"{label}: input \"{vi.name}\" has unknown rank; projc needs the rank of every "
                "input (export with a fixed-rank example input; mark only sizes dynamic, e.g. "
                "torch.onnx.export(..., dynamic_axes={name: {0: 'batch'}}))")


def model_opsets(model: onnx.ModelProto) -> dict[str, int]:
    """domain -> opset version ("" for the default domain, also when imported as "ai.onnx")."""
    opsets = {}
    for entry in model.opset_import:
        domain = "" if entry.domain in ("", "ai.onnx") else entry.domain
        opsets[domain] = int(entry.version)
    return opsets


@functools.cache
def _newest_opsets() -> dict[str, int]:
    """The newest opset of each standard domain the installed onnx defines."""
    return {"": onnx.defs.onnx_opset_version(), "ai.onnx.ml": max(
        s.since_version for s in onnx.defs.get_all_schemas_with_history()
        if s.domain == "ai.onnx.ml")}


def check_opset(opsets: dict[str, int], label: str) -> None:
    """Refuse opsets no released onnx defines (onnxruntime refuses them too)."""
    newest = _newest_opsets()
    for domain, version in opsets.items():
        if domain in newest and not 1 <= version <= newest[domain]:
            raise UnsupportedModelError(
                f"{label}: opset {version} of domain {domain or 'ai.onnx'} does not exist (the "
                f"installed onnx knows 1..{newest[domain]}); re-export the model with a released "
                "opset")


def upgrade_opset(model: onnx.ModelProto, label: str, *, note: bool = True) -> onnx.ModelProto:
    """``model`` converted to opset ``MIN_OPSET`` with onnx.version_converter when older (a copy;
    one note on stderr unless ``note`` is false), else ``model`` itself."""
    version = model_opsets(model).get("")
    if version is None or version >= MIN_OPSET:
        return model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = onnx.version_converter.convert_version(model, MIN_OPSET)
        converted = list_initializers_as_inputs(converted)
        pin_legacy_resize(model, converted)  # the converter drops Upsample's coordinates
        onnx.checker.check_model(converted)
    except Exception as err:  # the converter raises RuntimeError/ValidationError/... on gaps
        raise UnsupportedModelError(
            f"{label}: opset {version} is older than projc supports ({MIN_OPSET}..{MAX_OPSET}) "
            f"and onnx.version_converter cannot upgrade it ({_first_line(err)}); re-export the "
            f"model with opset_version>={MIN_OPSET}") from None
    if note:
        print(f"projc: note: {label}: opset {version} upgraded to {MIN_OPSET} in memory with "
              "onnx.version_converter", file=sys.stderr)
    return converted


def list_initializers_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Before IR version 4 every initializer had to be a graph input; files (and the version
    converter) that leave some out are accepted by onnxruntime. A copy listing them, or
    ``model`` itself when nothing is missing."""
    listed = {vi.name for vi in model.graph.input}
    missing = [t for t in model.graph.initializer if t.name not in listed]
    if model.ir_version >= 4 or not missing:
        return model
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for tensor in missing:
        fixed.graph.input.append(onnx.helper.make_tensor_value_info(
            tensor.name, tensor.data_type, list(tensor.dims)))
    return fixed


def check_supported(graph: onnx.GraphProto, opsets: dict[str, int], label: str) -> None:
    """Raise one UnsupportedModelError naming every node whose op, opset or attribute projc
    lacks."""
    problems = unsupported_nodes(graph, opsets)
    if problems:
        raise UnsupportedModelError(unsupported_message(problems, label))


class UnsupportedNode(NamedTuple):
    """A node projc cannot import: its index, name, op and opset, and why (one line)."""

    node_index: int  # not ``index``, which would shadow tuple.index
    name: str
    op_type: str
    domain: str
    opset: int
    problem: str


def unsupported_nodes(graph: onnx.GraphProto, opsets: dict[str, int]) -> list[UnsupportedNode]:
    """Every node whose op (at the model's opset) or attribute projc's registry lacks."""
    problems = []
    for index, node in enumerate(graph.node):
        opset = node_opset(node, opsets)
        opdef = lookup(kind_of(node.op_type, node.domain), opset)
        name = node_label(node, index)
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        if opdef is None:
            text = f"{domain + ' ' if domain else ''}{node.op_type} (opset {opset}) at node \"{name}\""
            problems.append(UnsupportedNode(index, name, node.op_type, domain, opset, text))
            continue
        unknown = [a.name for a in node.attribute
                   if a.name not in opdef.attrs and a.name not in opdef.weight_attrs]
        if unknown:
            text = (f"{node.op_type} (opset {opset}) at node \"{name}\": attribute(s) "
                    f"{', '.join(unknown)} not supported")
            problems.append(UnsupportedNode(index, name, node.op_type, domain, opset, text))
    return problems


def unsupported_message(problems: list[UnsupportedNode], label: str) -> str:
    return (f"{label}: {len(problems)} node(s) use ops projc does not support:\n"
            + "\n".join(f"  {p.problem}" for p in problems) + f"\n{SUPPORTED_LIST_HINT}")


def load_supported_part(model) -> tuple[Graph, list[UnsupportedNode]]:
    """``model`` imported as far as projc supports it, for ``projc inspect``: the nodes projc
    lacks and every node computed from them are left out, and the values those nodes read
    become the graph's outputs (``meta["unsupported_frontier"]`` names them, and
    ``meta["unsupported_outputs"]`` the model outputs left out). Returns the graph and the
    unsupported nodes (none: the whole model, as ``load_model``)."""
    source = read_model(model)
    label = source.path or source.label
    proto = list_initializers_as_inputs(source.proto)
    check_input_ranks(proto, label)
    check_model(proto, label)
    check_opset(model_opsets(proto), label)
    try:
        proto = upgrade_opset(proto, label)
    except UnsupportedModelError:
        pass  # perhaps for the very nodes left out below: from_onnx upgrades the rest
    problems = unsupported_nodes(proto.graph, _import_opsets(model_opsets(proto)))
    if not problems:
        return from_onnx(proto, path=label), []
    pruned, frontier = _without_nodes(proto, {p.node_index for p in problems})
    if not pruned.graph.output:
        raise UnsupportedModelError(unsupported_message(problems, label))
    graph = from_onnx(pruned, path=label)
    kept = {vi.name for vi in pruned.graph.output}
    graph.meta["unsupported_frontier"] = frontier
    graph.meta["unsupported_outputs"] = [vi.name for vi in proto.graph.output if vi.name not in kept]
    return graph, problems


def _import_opsets(opsets: dict[str, int]) -> dict[str, int]:
    """The opsets the importer checks nodes at: an older default opset is upgraded to 13."""
    opsets = dict(opsets)
    if "" in opsets:
        opsets[""] = max(opsets[""], MIN_OPSET)
    return opsets


def _without_nodes(model: onnx.ModelProto, drop: set[int]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` without the nodes ``drop`` and all that is computed from them; the
    values the dropped nodes read (whose type shape inference knows) become extra outputs."""
    inferred = _infer_shapes(model)
    types = {vi.name: vi for vi in _typed_values(inferred.graph)}
    initializers = {t.name for t in model.graph.initializer}
    tainted: set[str] = set()
    kept, frontier = [], []
    for index, node in enumerate(model.graph.node):
        if index in drop or any(name in tainted for name in node.input if name):
            tainted.update(name for name in node.output if name)
            if index in drop:
                frontier += [name for name in node.input if name and name not in tainted
                             and name not in initializers and name not in frontier]
            continue
        kept.append(node)
    out = _copy(model)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    outputs = [vi for vi in model.graph.output if vi.name not in tainted]
    listed = {vi.name for vi in outputs}
    extra = [name for name in frontier if name not in listed and name in types
             and types[name].type.tensor_type.elem_type]
    del out.graph.output[:]
    out.graph.output.extend(outputs + [types[name] for name in extra])
    return out, extra


def compile_time_inputs(model: onnx.ModelProto) -> set[str]:
    """Graph inputs that a compile-time operand (Reshape's shape, Pad's pads, Slice's bounds, ...)
    is computed from, following producers back (not through Shape/Size, which read only shapes):
    the inputs ``from_onnx(bind=...)`` must turn into constants when their values are known."""
    opsets = _import_opsets(model_opsets(model))
    graph_inputs = {i.name for i in model.graph.input}
    producers = {out: node for node in model.graph.node for out in node.output}
    pending = []
    for node in model.graph.node:
        opdef = lookup(kind_of(node.op_type, node.domain), node_opset(node, opsets))
        if opdef is not None:
            pending += [node.input[i] for i in opdef.static if i < len(node.input)]
    names, seen = set(), set()
    while pending:
        name = pending.pop()
        if not name or name in seen:
            continue
        seen.add(name)
        if name in graph_inputs:
            names.add(name)
        node = producers.get(name)
        if node is not None and node.op_type not in ("Shape", "Size"):
            pending += list(node.input)
    return names


def node_opset(node: onnx.NodeProto, opsets: dict[str, int]) -> int:
    """The opset version the model imports for the node's domain (0 when it imports none)."""
    return opsets.get("" if node.domain == "ai.onnx" else node.domain, 0)


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or ``OpType_index`` for an unnamed node."""
    return node.name or f"{node.op_type}_{index}"


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference is an aid: projc infers every shape itself anyway
        return model


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# -- attributes and types ---------------------------------------------------------------------

def attribute_value(attr: onnx.AttributeProto) -> Any:
    """An ONNX attribute as a plain Python value (tensors as numpy arrays)."""
    value = onnx.helper.get_attribute_value(attr)
    if attr.type == onnx.AttributeProto.FLOAT:
        return _short_float(value)
    if attr.type == onnx.AttributeProto.FLOATS:
        return [_short_float(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, onnx.TensorProto):
        return tensor_to_array(value)
    if isinstance(value, (list, tuple)):
        return [v.decode("utf-8") if isinstance(v, bytes) else v for v in value]
    if isinstance(value, (onnx.GraphProto, onnx.SparseTensorProto)):
        raise UnsupportedModelError(f"attribute {attr.name!r} holds a graph or sparse tensor")
    return value


def _short_float(value: float) -> float:
    """A float32 attribute as the shortest decimal that rounds to it (0.2, not 0.2000000029...):
    same float32 value, readable IR."""
    return float(str(np.float32(value)))


def tensor_to_array(tensor: onnx.TensorProto) -> np.ndarray:
    """A TensorProto as numpy; string tensors become unicode arrays (ONNX stores bytes)."""
    data = numpy_helper.to_array(tensor)
    if tensor.data_type == onnx.TensorProto.STRING:
        data = np.array([b.decode("utf-8") if isinstance(b, bytes) else str(b)
                         for b in data.reshape(-1)], dtype=np.str_).reshape(data.shape)
    return data


def _sanitize(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return clean if clean[:1].isalpha() else "s" + clean


class _GraphBuilder:
    """Walks the ONNX nodes in order and builds the IR graph."""

    def __init__(self, model, inferred, opsets, label, path, bind):
        self.model, self.opsets, self.label, self.bind = model, opsets, label, bind
        self.types = {vi.name: vi.type for vi in _typed_values(inferred.graph)}
        self.values: dict[str, Value] = {}
        self.shape_tensors: dict[Value, np.ndarray] = {}  # symbolic values of shape subgraphs
        self.sizes = SymbolSizes()
        self.dim_symbols: dict[str, str] = {}
        meta = {"path": path, "opset": dict(opsets), "ir_version": int(model.ir_version),
                "producer": f"{model.producer_name} {model.producer_version}".strip()}
        if bind:
            meta["bound_inputs"] = sorted(bind)
        # the file's stem names the graph: exporters use generic names ("main_graph", "torch_jit")
        stem = os.path.splitext(os.path.basename(path))[0] if path else ""
        self.graph = Graph(name=stem or model.graph.name or "model", meta=meta)

    def build(self) -> Graph:
        self._add_initializers()
        self._add_inputs()
        for index, node in enumerate(self.model.graph.node):
            self._add_node(index, node)
        self.graph.outputs = [self.values[o.name] for o in self.model.graph.output]
        remove_dead_code(self.graph)
        # ONNX dim_param -> projc symbol ("B" for every symbolic axis 0): what `compare --batch`
        # and `--dim NAME=N` look up
        self.graph.meta["dim_names"] = {
            dim.dim_param: self.dim_symbols[dim.dim_param] for vi in self.model.graph.input
            for dim in _dims_of(vi) if dim.dim_param and dim.dim_param in self.dim_symbols}
        return self.graph

    # -- graph inputs and initializers ------------------------------------------------------

    def _add_inputs(self):
        initializers = {t.name for t in self.model.graph.initializer}
        inputs = [i for i in self.model.graph.input if i.name not in initializers]
        for vi in inputs:  # batch symbols first, so that "batch" in a later dim still means B
            dims = _dims_of(vi)
            if dims and dims[0].dim_param:
                self.dim_symbols.setdefault(dims[0].dim_param, BATCH)
        for vi in inputs:
            if vi.name in self.bind:
                self._add_const(vi.name, np.asarray(self.bind[vi.name]),
                                dtype=self._tensor_dtype(vi.name, vi.type, "input"))
                continue
            shape = self._input_shape(vi)
            check_shape(shape, self.label, "the graph", f"input \"{vi.name}\"")
            value = Value(self._tensor_dtype(vi.name, vi.type, "input"), shape, "input", hint=vi.name)
            self.graph.inputs.append(value)
            self.values[vi.name] = value

    def _input_shape(self, vi) -> tuple[Dim, ...]:
        tensor = vi.type.tensor_type
        shape: list[Dim] = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            elif axis == 0:
                shape.append(BATCH)
            else:
                shape.append(self._symbol(dim.dim_param or f"{vi.name}_{axis}"))
        return tuple(shape)

    def _symbol(self, dim_param: str) -> str:
        if dim_param not in self.dim_symbols:
            symbol = _sanitize(dim_param)
            while symbol in self.dim_symbols.values():
                symbol += "_"
            self.dim_symbols[dim_param] = symbol
        self.sizes.declare(self.dim_symbols[dim_param])
        return self.dim_symbols[dim_param]

    def _tensor_dtype(self, name: str, type_proto, what: str) -> str:
        if not type_proto.HasField("tensor_type"):
            raise UnsupportedModelError(f"{self.label}: {what} \"{name}\" is not a tensor "
                                        f"({type_proto.WhichOneof('value')})")
        elem = type_proto.tensor_type.elem_type
        dtype = ir_dtype_of_onnx(elem)
        if dtype is None:
            raise UnsupportedModelError(f"{self.label}: {what} \"{name}\" has element type "
                                        f"{onnx_type_name(elem)}, which projc does not support")
        return dtype

    def _add_initializers(self):
        trainable = trainable_initializers(self.model.graph, self.opsets)
        for tensor in self.model.graph.initializer:
            dtype = ir_dtype_of_onnx(tensor.data_type)
            if dtype is None:
                raise UnsupportedModelError(
                    f"{self.label}: initializer \"{tensor.name}\" has element type "
                    f"{onnx_type_name(tensor.data_type)}, which projc does not support")
            data = self._initializer_data(tensor)
            if tensor.name in trainable and dtype in FLOAT_DTYPES:
                value = Value(dtype, data.shape, "param", hint=tensor.name, data=data)
                self.graph.initializers.append(value)
                self.values[tensor.name] = value
            else:
                self._add_const(tensor.name, data)

    def _initializer_data(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The initializer's values; data that does not fill its dims is the file's error."""
        try:
            return tensor_to_array(tensor)
        except Exception as err:  # numpy's reshape error, a missing external file, ...
            raise ModelLoadError(
                f"{self.label}: initializer \"{tensor.name}\" (dims {list(tensor.dims)}) holds "
                f"data that does not match its dims or type ({_first_line(err)})") from None

    def _add_const(self, name: str, data: np.ndarray, *, dtype: str | None = None,
                   register: bool = True) -> Value:
        """A new const initializer; ``register`` makes it the value of ONNX name ``name``."""
        data = np.asarray(data)
        dtype = dtype or dtype_name(data.dtype)
        data = data.astype(np_dtype(dtype), copy=False) if dtype != "str" else data
        value = Value(dtype, data.shape, "const", hint=name, data=data)
        self.graph.initializers.append(value)
        if name and register:
            self.values[name] = value
        return value

    # -- nodes ------------------------------------------------------------------------------

    def _add_node(self, index: int, node: onnx.NodeProto) -> None:
        label = node_label(node, index)
        kind = kind_of(node.op_type, node.domain)
        opdef = lookup(kind, node_opset(node, self.opsets))
        assert opdef is not None  # check_supported refused the nodes the registry lacks
        inputs = [self.values[name] if name else None for name in node.input]
        params = self._params(node, opdef)
        self._validate(label, node, opdef, inputs, params)
        inputs, params = self._hoist_weights(label, opdef, inputs, params)
        if opdef.fold and all(v is None or v.role == "const" for v in inputs):
            with self._context(label, node.op_type):
                results = fold(opdef, inputs, params)
            for name, data in zip(node.output, results):
                if name:
                    self._add_const(name, data, dtype=self._declared_dtype(name))
            return
        with self._context(label, node.op_type):
            entries = self._shape_tensor(kind, inputs, params)
        if entries is not None and not symbolic.has_symbols(entries):
            self._add_const(node.output[0], symbolic.to_int64(entries))
            return
        # a ConstantOfShape/Expand/Range sized by the batch: a stand-in reads it from an input
        stand_in = symbolic.rewrite_dynamic(kind, inputs, params, self.shape_tensors,
                                            self.graph.inputs)
        if stand_in is not None:
            kind, inputs, params = stand_in
            opdef = lookup(kind, 1)
            assert opdef is not None  # a stand-in is one of projc's own ops
        inputs = self._static_inputs(label, kind, opdef, inputs, params)
        if inputs and inputs[0] is not None:
            check_recurrent_input(node.op_type, inputs[0].shape, int(params.get("layout") or 0),
                                  self.label, label)
        with self._context(label, node.op_type):
            traced = trace(opdef, inputs, params, self.sizes)
        for name, (_, shape) in zip(node.output, traced):  # before anything allocates or compiles it
            check_shape(shape, self.label, f"node \"{label}\" ({node.op_type})", f"output \"{name}\"")
        outputs = self._outputs(label, node, inputs, traced)
        if entries is not None:
            self.shape_tensors[outputs[0]] = entries
        self.graph.ops.append(Op(kind, inputs, outputs, params, {"src": label}))

    def _validate(self, label, node, opdef, inputs, params) -> None:
        """Refuse what onnxruntime refuses: input types outside the op's schema, attributes
        and shapes the registry's checker rejects."""
        try:
            check_input_types(node, inputs, node_opset(node, self.opsets))
            if opdef.check is not None:
                opdef.check(inputs, {**opdef.attrs, **params})
        except (ValueError, TypeError, IndexError) as err:
            raise ModelLoadError(f"{self.label}: node \"{label}\" ({node.op_type}) is invalid: "
                                 f"{_first_line(err)}") from None

    def _hoist_weights(self, label, opdef, inputs, params):
        """The op's weight attributes (``OpDef.weight_attrs``) become trainable parameters
        appended to its inputs, named ``weight_attribute_name(label, attribute)``."""
        if not opdef.weight_attrs:
            return inputs, params
        inputs, params = list(inputs), dict(params)
        for name in opdef.weight_attrs:
            values = params.pop(name, None)
            if values is None:
                inputs.append(None)
                continue
            data = np.asarray(values, np.float32)
            value = Value("f32", data.shape, "param", hint=weight_attribute_name(label, name),
                          data=data)
            self.graph.initializers.append(value)
            inputs.append(value)
        return inputs, params

    @contextlib.contextmanager
    def _context(self, label: str, op_type: str):
        """Errors of an op's function (an unsupported variant) name the file and the node."""
        try:
            yield
        except Exception as err:
            raise UnsupportedModelError(f"{self.label}: node \"{label}\" ({op_type}) cannot be "
                                        f"imported: {_first_line(err)}") from err

    def _params(self, node: onnx.NodeProto, opdef: OpDef) -> dict[str, Any]:
        params = {k: v for k, v in opdef.attrs.items() if v is not None}
        params.update({a.name: attribute_value(a) for a in node.attribute})
        if opdef.arity_attr and params.get(opdef.arity_attr) is None:
            params[opdef.arity_attr] = len(node.output)
        return params

    def _shape_tensor(self, kind, inputs, params) -> np.ndarray | None:
        """The symbolic value of a shape-subgraph op, or None."""
        if kind not in symbolic.SYMBOLIC_KINDS or inputs[0] is None:
            return None
        if kind == "Shape":
            return symbolic.evaluate(kind, [], params, inputs[0].shape)
        args = []
        for v in inputs:
            if v is not None and v.role != "const" and v not in self.shape_tensors:
                return None
            args.append(None if v is None else self.shape_tensors.get(v, v.data))
        if kind != "Concat" and kind not in symbolic.ARITHMETIC:
            # non-data operands of Gather/Slice/... must be plain constants
            if any(isinstance(a, np.ndarray) and a.dtype == object for a in args[1:]):
                return None
            args[0] = symbolic.as_entries(args[0])
        return symbolic.evaluate(kind, args, params)

    def _static_inputs(self, label, kind, opdef, inputs, params) -> list[Value | None]:
        """Inputs with every compile-time operand turned into a constant (or an error)."""
        inputs = list(inputs)
        for index in opdef.static:
            value = inputs[index] if index < len(inputs) else None
            if value is None or value.role == "const":
                continue
            entries = self.shape_tensors.get(value)
            data_shape = inputs[0].shape if inputs[0] is not None else ()
            resolved = None if entries is None else symbolic.resolve_static(
                kind, index, entries, data_shape, params)
            if resolved is None:
                raise UnsupportedModelError(
                    f"{self.label}: node \"{label}\" ({kind}): input {index} (\"{value.hint}\") "
                    "must be known at compile time, but it depends on runtime values; projc "
                    "needs static shapes, axes and pads")
            # only this operand becomes constant: other consumers keep the runtime value
            inputs[index] = self._add_const(value.hint, resolved, register=False)
        return inputs

    def _outputs(self, label, node, inputs, traced) -> list[Value]:
        """One Value per node output: ONNX's declared dtype if any, the traced shape."""
        strings = any(v is not None and v.dtype == "str" for v in inputs)
        outputs = []
        for index, name in enumerate(node.output):
            if index >= len(traced):
                if not name:
                    continue
                raise UnsupportedModelError(f"{self.label}: node \"{label}\" ({node.op_type}): "
                                            f"output {index} (\"{name}\") is not supported")
            traced_dtype, shape = traced[index]
            dtype = self._declared_dtype(name)
            if dtype is None and strings:  # traced with int placeholders for the strings
                raise UnsupportedModelError(f"{self.label}: cannot infer the type of \"{name}\"")
            value = Value(dtype or dtype_name(traced_dtype), shape, "tmp", hint=name)
            outputs.append(value)
            if name:
                self.values[name] = value
        return outputs

    def _declared_dtype(self, name: str) -> str | None:
        type_proto = self.types.get(name)
        if type_proto is None or not type_proto.HasField("tensor_type"):
            return None
        return ir_dtype_of_onnx(type_proto.tensor_type.elem_type) if \
            type_proto.tensor_type.elem_type else None


def weight_attribute_name(label: str, attribute: str) -> str:
    """The parameter name of weight attribute ``attribute`` of the node labelled ``label``."""
    return f"{label}.{attribute}"


def set_weight_attribute(model: onnx.ModelProto, name: str, values: np.ndarray) -> bool:
    """Write ``values`` into the weight attribute that parameter ``name`` came from (export of
    a trained ai.onnx.ml LinearClassifier); False when no node attribute has that name."""
    for index, node in enumerate(model.graph.node):
        for attr in node.attribute:
            if weight_attribute_name(node_label(node, index), attr.name) != name:
                continue
            if attr.type != onnx.AttributeProto.FLOATS or len(attr.floats) != values.size:
                raise UnsupportedModelError(f"export: attribute {name!r} holds "
                                            f"{len(attr.floats)} values, the trained {values.size}")
            del attr.floats[:]
            attr.floats.extend(float(v) for v in np.asarray(values, np.float32).reshape(-1))
            return True
    return False


def _typed_values(graph: onnx.GraphProto):
    yield from graph.input
    yield from graph.value_info
    yield from graph.output


def _dims_of(vi) -> list:
    tensor = vi.type.tensor_type
    return list(tensor.shape.dim) if tensor.HasField("shape") else []


def trainable_initializers(graph: onnx.GraphProto, opsets: dict[str, int]) -> set[str]:
    """Names of initializers that some node uses as a computed-on operand (not static, frozen)."""
    names = {t.name for t in graph.initializer}
    used = set()
    for node in graph.node:
        opdef = lookup(kind_of(node.op_type, node.domain), node_opset(node, opsets))
        assert opdef is not None  # called on supported graphs (check_supported, load_supported_part)
        for index, name in enumerate(node.input):
            if name in names and index not in opdef.static and index not in opdef.frozen:
                used.add(name)
    return used
