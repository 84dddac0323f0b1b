"""Fuzz the CLI with mutated bundled models: every outcome is exit 0, 1 or 2, one message, no
traceback, no hang.

Mutations (seeded): bit flips and truncation of the file's bytes, deleted nodes, inputs renamed
to undefined names, attributes set to zero/negative/huge/mis-sized values, odd opsets, changed
element types of inputs and initializers, dims that the data does not fill, an empty graph.
Each mutant runs ``projc inspect`` and ``projc compare`` in-process (``projc.cli.main``) under an
alarm. The run is bounded by ``FUZZ_SECONDS`` (the mutants are drawn up front from the seed; the
budget only cuts the list short); ``PROJC_FUZZ_MUTANTS=N PROJC_FUZZ_SECONDS=S`` runs more,
``PROJC_FUZZ_SEED`` others.

An abort (XLA's or onnxruntime's C++ ``abort()``, a segfault) would end pytest itself, so
``test_mutants_in_a_child_process_never_abort`` runs the mutants in a child process and reports a
child that dies on a mutant as that mutant's failure, then goes on in a fresh child. CI runs
``CHILD_MUTANTS`` (30) of them; the 300 of issue 27 are
``PROJC_FUZZ_CHILD_MUTANTS=300 PROJC_FUZZ_CHILD_SECONDS=7200 pytest tests/test_fuzz.py -k child``
(or ``python tests/test_fuzz.py --report 300``).
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import queue
import signal
import subprocess
import sys
import threading
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
CHILD_MUTANTS = int(os.environ.get("PROJC_FUZZ_CHILD_MUTANTS", "30"))
CHILD_SECONDS = float(os.environ.get("PROJC_FUZZ_CHILD_SECONDS", "90"))


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


def huge_extent(rng, data):
    """A pads/kernel/strides/dilations entry, or an input dim, of 2^31 or more: XLA aborted on such
    extents ("overflow in static extent product")."""
    model = _proto(data)
    big = [2**31, 2**31 + 7, 2**40][int(rng.integers(0, 3))]
    candidates = [(n, a) for n in model.graph.node for a in n.attribute
                  if a.type == onnx.AttributeProto.INTS and a.name in ("pads", "kernel_shape", "strides",
                                                                        "dilations")]
    if candidates and rng.random() < 0.7:
        node, attr = candidates[int(rng.integers(0, len(candidates)))]
        values = list(attr.ints)
        if rng.random() < 0.5:
            values = [big] * len(values)
        else:
            values[int(rng.integers(0, len(values)))] = big
        del attr.ints[:]
        attr.ints.extend(values)
        return f"{node.op_type}.{attr.name} -> {values}", model.SerializeToString()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) < 2:
        return "no-op (rank < 2)", data
    dims[int(rng.integers(1, len(dims)))].dim_value = big
    return f"input dim -> {big}", model.SerializeToString()


def empty_batch(rng, data):
    """A static 0 as the input's batch dim: onnxruntime aborted on a GRU of batch 0."""
    model = _proto(data)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if not dims:
        return "no-op (rank 0)", data
    dims[0].dim_value = 0
    return "input batch dim -> 0", model.SerializeToString()


def change_input_dim(rng, data):
    model = _proto(data)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if len(dims) < 2:
        return "no-op (rank < 2)", data
    dim = dims[int(rng.integers(1, len(dims)))]
    dim.dim_value = [0, 1, 1_000_000_000, 3][int(rng.integers(0, 4))]
    return f"input dim -> {dim.dim_value}", model.SerializeToString()


MUTATIONS = [flip_bits, truncate, delete_node, empty_graph, undefined_input, bad_attribute,
             bad_attribute, odd_opset, change_dtype, change_dims, change_input_dim, huge_extent, empty_batch]


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


# -- mutants in a child process: an abort is a failure of its mutant, not the end of pytest -------------

def _child(start: int, count: int, seed: int, folder: str) -> None:
    """Run mutants ``start..count-1``; print "START i" before each and one JSON result after it."""
    for index, (name, description, data) in enumerate(mutants(count, seed)):
        if index < start:
            continue
        print(f"START {index}", flush=True)
        path = os.path.join(folder, f"{index:04d}_{name}")
        with open(path, "wb") as f:
            f.write(data)
        problems = check_mutant(path, f"{name} {description}")
        os.unlink(path)
        print(json.dumps({"index": index, "problems": problems}), flush=True)


def _pump(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)
    sink.put(None)


def run_in_children(count: int, seconds: float, folder: str, seed: int = SEED) -> tuple[int, list[str]]:
    """(mutants run, problems): mutants ``0..count-1`` in child processes, a fresh child after one dies."""
    descriptions = [f"{name} {description}" for name, description, _ in mutants(count, seed)]
    start, ran, problems = 0, 0, []
    deadline = time.monotonic() + seconds
    while start < count and time.monotonic() < deadline:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", str(start), str(count),
                                 str(seed), folder], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines: queue.Queue = queue.Queue()
        errors: queue.Queue = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        threading.Thread(target=_pump, args=(proc.stderr, errors), daemon=True).start()
        current, hung = None, False
        while True:
            try:
                line = lines.get(timeout=3 * PER_COMMAND_SECONDS)
            except queue.Empty:
                proc.kill()
                hung = True
                break
            if line is None:
                break
            if line.startswith("START "):
                current = int(line.split()[1])
                if time.monotonic() > deadline:
                    proc.kill()
                    current = None
                    break
            elif line.startswith("{"):
                problems += json.loads(line)["problems"]
                ran, current = ran + 1, None
        code = proc.wait()
        if current is None:  # finished (or out of time)
            if code not in (0, -signal.SIGKILL):
                problems.append(f"child exited {code} between mutants")
            break
        stderr = []
        while not errors.empty():
            item = errors.get()
            if item is not None:
                stderr.append(item)
        tail = ("".join(stderr).strip().splitlines() or [""])[-1][:200]
        what = f"hang (no answer in {3 * PER_COMMAND_SECONDS} s)" if hung else f"child died (exit {code})"
        problems.append(f"{what} on mutant {current}: {descriptions[current]}: {tail}")
        ran, start = ran + 1, current + 1
    return ran, problems


@pytest.mark.slow
def test_mutants_in_a_child_process_never_abort(tmp_path):
    ran, problems = run_in_children(CHILD_MUTANTS, CHILD_SECONDS, str(tmp_path))
    print(f"{ran} mutants in child processes, {len(problems)} problems")
    assert ran >= min(CHILD_MUTANTS, 10), f"only {ran} mutants ran within {CHILD_SECONDS} s"
    assert problems == [], "\n".join(problems)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    elif sys.argv[1:2] == ["--report"]:
        import tempfile
        count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory() as folder:
            ran, problems = run_in_children(count, float("inf"), folder)
        print(f"{ran} mutants (seed {SEED}) in {time.monotonic() - t0:.0f} s: {len(problems)} problems")
        print("\n".join(problems))
        sys.exit(1 if problems else 0)
