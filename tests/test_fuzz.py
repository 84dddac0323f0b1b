"""Fuzz the CLI with mutated bundled models: every outcome is exit 0, 1 or 2, one message, no
traceback, no hang.

Mutations (seeded): bit flips and truncation of the file's bytes, deleted nodes, inputs renamed
to undefined names, attributes set to zero/negative/huge/mis-sized values, odd opsets, changed
element types of inputs and initializers, dims that the data does not fill, an empty graph.
Each mutant runs ``projc inspect`` and ``projc compare`` in-process (``projc.cli.main``) under an
alarm. The run is bounded by ``FUZZ_SECONDS`` (the mutants are drawn up front from the seed; the
budget only cuts the list short); ``PROJC_FUZZ_MUTANTS=N PROJC_FUZZ_SECONDS=S`` runs more,
``PROJC_FUZZ_SEED`` others.
"""
from __future__ import annotations

import contextlib
import glob
import io
import os
import signal
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")))
SEED = int(os.environ.get("PROJC_FUZZ_SEED", "20261130"))
MUTANTS = int(os.environ.get("PROJC_FUZZ_MUTANTS", "200"))
FUZZ_SECONDS = float(os.environ.get("PROJC_FUZZ_SECONDS", "50"))
PER_COMMAND_SECONDS = 60  # a single command past this is a hang


# -- mutations: each takes (rng, model bytes) and returns (description, mutated bytes) ----------

def _proto(data: bytes) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.ParseFromString(data)
    return model


def flip_bits(rng, data):
    buf = bytearray(data)
    positions = rng.integers(0, len(buf), int(rng.integers(1, 9)))
    for pos in positions:
        buf[pos] ^= 1 << int(rng.integers(0, 8))
    return f"flip bits at {sorted(int(p) for p in positions)}", bytes(buf)


def truncate(rng, data):
    cut = int(rng.integers(0, len(data)))
    return f"truncate to {cut} bytes", data[:cut]


def delete_node(rng, data):
    model = _proto(data)
    index = int(rng.integers(0, len(model.graph.node)))
    op_type = model.graph.node[index].op_type
    del model.graph.node[index]
    return f"delete node {index} ({op_type})", model.SerializeToString()


def empty_graph(rng, data):
    model = _proto(data)
    del model.graph.node[:]
    return "delete every node", model.SerializeToString()


def undefined_input(rng, data):
    model = _proto(data)
    node = model.graph.node[int(rng.integers(0, len(model.graph.node)))]
    if not node.input:
        return "no-op (node without inputs)", data
    slot = int(rng.integers(0, len(node.input)))
    node.input[slot] = "nowhere_defined"
    return f"{node.op_type} input {slot} undefined", model.SerializeToString()


BAD_INTS = [0, -1, -7, 1 << 40]


def bad_attribute(rng, data):
    model = _proto(data)
    candidates = [(n, a) for n in model.graph.node for a in n.attribute
                  if a.type in (onnx.AttributeProto.INT, onnx.AttributeProto.INTS,
                                onnx.AttributeProto.FLOAT, onnx.AttributeProto.STRING)]
    if not candidates:
        return "no-op (no attributes)", data
    node, attr = candidates[int(rng.integers(0, len(candidates)))]
    bad = BAD_INTS[int(rng.integers(0, len(BAD_INTS)))]
    if attr.type == onnx.AttributeProto.INT:
        attr.i = bad
    elif attr.type == onnx.AttributeProto.INTS:
        values = list(attr.ints)
        if values and rng.random() < 0.5:
            values[int(rng.integers(0, len(values)))] = bad
        else:
            values = values + [1] if rng.random() < 0.5 else values[:-1]
        del attr.ints[:]
        attr.ints.extend(values)
    elif attr.type == onnx.AttributeProto.FLOAT:
        attr.f = float(["nan", "inf", "-1e30"][int(rng.integers(0, 3))])
    else:
        attr.s = b"NOT_A_MODE"
    return f"{node.op_type}.{attr.name} -> {onnx.helper.get_attribute_value(attr)}", \
        model.SerializeToString()


def odd_opset(rng, data):
    model = _proto(data)
    version = [0, 1, 6, 9, 12, 22, 99, -3][int(rng.integers(0, 8))]
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = version
    return f"default opset -> {version}", model.SerializeToString()


ODD_TYPES = [TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.INT64, TensorProto.STRING,
             TensorProto.BFLOAT16, TensorProto.BOOL, 0, 999]


def change_dtype(rng, data):
    model = _proto(data)
    elem = ODD_TYPES[int(rng.integers(0, len(ODD_TYPES)))]
    if model.graph.initializer and rng.random() < 0.6:
        tensor = model.graph.initializer[int(rng.integers(0, len(model.graph.initializer)))]
        tensor.data_type = elem  # the raw bytes stay: sizes no longer match for most types
        return f"initializer {tensor.name} type -> {elem}", model.SerializeToString()
    value = model.graph.input[0]
    value.type.tensor_type.elem_type = elem
    return f"input {value.name} type -> {elem}", model.SerializeToString()


def change_dims(rng, data):
    model = _proto(data)
    if not model.graph.initializer:
        return "no-op (no initializers)", data
    tensor = model.graph.initializer[int(rng.integers(0, len(model.graph.initializer)))]
    dims = list(tensor.dims)
    choice = int(rng.integers(0, 3))
    if choice == 0 and dims:
        dims[int(rng.integers(0, len(dims)))] += int(rng.integers(1, 4))
    elif choice == 1:
        dims = dims[::-1] + [1]
    else:
        dims = [int(np.prod(dims))] if dims else [2]
    del tensor.dims[:]
    tensor.dims.extend(dims)
    return f"initializer {tensor.name} dims -> {dims}", model.SerializeToString()


def change_input_dim(rng, data):
    model = _proto(data)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) < 2:
        return "no-op (rank < 2)", data
    dim = dims[int(rng.integers(1, len(dims)))]
    dim.dim_value = [0, 1, 1_000_000_000, 3][int(rng.integers(0, 4))]
    return f"input dim -> {dim.dim_value}", model.SerializeToString()


MUTATIONS = [flip_bits, truncate, delete_node, empty_graph, undefined_input, bad_attribute,
             bad_attribute, odd_opset, change_dtype, change_dims, change_input_dim]


def mutants(count: int, seed: int = SEED):
    """``count`` (model name, description, bytes), drawn reproducibly from ``seed``."""
    rng = np.random.default_rng(seed)
    originals = {os.path.basename(p): open(p, "rb").read() for p in MODELS}
    names = sorted(originals)
    for _ in range(count):
        name = names[int(rng.integers(0, len(names)))]
        mutate = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
        description, data = mutate(rng, originals[name])
        yield name, f"{mutate.__name__}: {description}", data


# -- running the CLI in-process under an alarm ----------------------------------------------------

class Hang(Exception):
    pass


@contextlib.contextmanager
def alarm(seconds: int):
    def ring(signum, frame):
        raise Hang(f"no answer after {seconds} s")
    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(*argv: str) -> tuple[int, str]:
    """(exit code, stderr) of ``projc argv``; an escaping exception is re-raised as a failure."""
    from projc.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            alarm(PER_COMMAND_SECONDS):
        code = main(list(argv))
    return code, err.getvalue()


def check_mutant(path: str, description: str) -> list[str]:
    """Problems of ``projc inspect`` and ``projc compare`` on the mutant (empty when fine)."""
    problems = []
    for command in (["inspect", path], ["compare", path, "--batch", "2"]):
        try:
            code, err = run_cli(*command)
        except Hang as hang:
            problems.append(f"{command[0]} hangs on {description}: {hang}")
            continue
        except BaseException as crash:  # noqa: BLE001 - any escaping exception is the bug
            problems.append(f"{command[0]} crashes on {description}: "
                            f"{type(crash).__name__}: {str(crash)[:300]}")
            continue
        if code not in (0, 1, 2) or "Traceback" in err:
            problems.append(f"{command[0]} exits {code} on {description}: {err[:300]}")
        elif code == 2 and len([ln for ln in err.splitlines()
                                if ln.strip() and not ln.startswith("projc: note:")]) != 1:
            problems.append(f"{command[0]} exit 2 without one line on {description}: {err[:300]}")
    return problems


@pytest.mark.slow
def test_mutated_models_exit_0_1_2_without_traceback(tmp_path):
    start, ran, problems = time.monotonic(), 0, []
    for index, (name, description, data) in enumerate(mutants(MUTANTS)):
        if time.monotonic() - start > FUZZ_SECONDS:
            break
        path = str(tmp_path / f"{index:04d}_{name}")
        with open(path, "wb") as f:
            f.write(data)
        problems += check_mutant(path, f"{name} {description}")
        ran += 1
    assert ran >= min(MUTANTS, 10), f"only {ran} mutants ran within {FUZZ_SECONDS} s"
    assert problems == [], "\n".join(problems)
