"""projc's IR passes and the pass manager.

Each pass is a small dataclass in its own file (``passes/<name>.py``), registered here by the
``register_pass`` decorator: that is the one place that adds a pass. Options are the dataclass
fields and are set from a pipeline string::

    parse_pipeline("canonicalize,fold-constants,bipartite{repair=false},attach-loss{loss=margin lam=5.0}")

``PassManager(pipeline).run(graph)`` runs the passes in order, verifies the graph after each one
(structure + the projc constraint type rules), and can print MLIR-style IR dumps and a timing table.

(The brief named ``projc/passes.py`` for this module; such a file would shadow this package, which
setuptools maps to ``projc.passes``, so the framework lives here.)
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import IO, ClassVar

import projc.ops  # noqa: F401  (the op registry: ONNX ops and projc's constraint ops)
from projc.errors import PassError, VerificationError
from projc.ir import Graph
from projc.ir.printer import format_graph
from projc.ir.verify import verify

from ._common import Lowering

# fuse-activations runs again after lower so that a lowered Conv's bias sum fuses into its ReLU (and
# the sums split creates into their neighbours); split runs after the first, which matches torch's
# decomposed GELU (its Pow) before split would take the Pow.
TRAINING_PASSES = ("attach-loss", "canonicalize", "unroll", "fold-constants", "dce", "fuse-activations", "split",
                   "lower", "channels-last", "fold-constants", "dce", "fuse-activations", "select-projections",
                   "bipartite", "schedule")
TRAINING_PIPELINE = ",".join(TRAINING_PASSES)  # the same as a pipeline string (the CLI's default)
# Registered passes that TRAINING_PIPELINE leaves out (opt-in through a pipeline string, after lower).
OPTIONAL_PASSES = ("hoist-max-offset",)

PASSES: dict[str, type[Pass]] = {}


def register_pass(name: str):
    """Class decorator: make the dataclass ``cls`` available as pass ``name`` in pipelines."""

    def decorate(cls):
        cls = dataclasses.dataclass(cls)
        cls.name = name
        if name in PASSES:
            raise ValueError(f"pass {name} registered twice")
        PASSES[name] = cls
        return cls

    return decorate


class Pass:
    """Base class: ``name``, options as dataclass fields, ``run(graph) -> modified``."""

    name: ClassVar[str] = "?"

    def run(self, graph: Graph) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def options(self) -> str:
        fields = _fields(self)
        opts = " ".join(f"{f.name}={_fmt_opt(getattr(self, f.name))}" for f in fields)
        return f"{self.name}{{{opts}}}" if opts else self.name


def _fields(p: Pass | type[Pass]) -> tuple[dataclasses.Field, ...]:
    """A pass's options (a registered pass is a dataclass: ``register_pass``)."""
    return dataclasses.fields(p) if dataclasses.is_dataclass(p) else ()


def _fmt_opt(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _convert(value: str, typ, where: str):
    typ = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if "bool" in typ:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if "float" in typ:
            return float(value)
        if "int" in typ:
            return int(value)
    except ValueError:
        raise PassError(f"{where}: cannot read {value!r} as {typ}") from None
    return value


def make_pass(name: str, options: dict[str, str] | None = None) -> Pass:
    """An instance of pass ``name`` with string ``options`` converted to the field types."""
    if name not in PASSES:
        raise PassError(f"unknown pass {name!r}; available: {', '.join(sorted(PASSES))}")
    cls = PASSES[name]
    fields = {f.name: f for f in _fields(cls)}
    kwargs = {}
    for key, value in (options or {}).items():
        if key not in fields:
            raise PassError(f"pass {name} has no option {key!r}; options: {', '.join(fields) or 'none'}")
        kwargs[key] = _convert(value, fields[key].type, f"{name}{{{key}}}")
    return cls(**kwargs)


def parse_pipeline(text: str) -> list[Pass]:
    """``"a,b{k=v k2=v2},c"`` -> pass instances (options separated by spaces or commas inside {})."""
    passes: list[Pass] = []
    i, n = 0, len(text)
    while i < n:
        j = i
        while j < n and text[j] not in ",{":
            j += 1
        name = text[i:j].strip()
        options: dict[str, str] = {}
        if j < n and text[j] == "{":
            k = text.find("}", j)
            if k < 0:
                raise PassError(f"pipeline {text!r}: missing '}}' after {name}")
            for item in text[j + 1:k].replace(",", " ").split():
                if "=" not in item:
                    raise PassError(f"pipeline {text!r}: option {item!r} of {name} is not key=value")
                key, value = item.split("=", 1)
                options[key.strip()] = value.strip()
            j = k + 1
            while j < n and text[j] == " ":
                j += 1
            if j < n and text[j] != ",":
                raise PassError(f"pipeline {text!r}: expected ',' after {name}{{...}}")
        if name:
            passes.append(make_pass(name, options))
        elif options:
            raise PassError(f"pipeline {text!r}: options without a pass name")
        i = j + 1
    return passes


def verify_training_ir(graph: Graph) -> None:
    from projc.ir.constraints import type_rules
    verify(graph, type_rules())


class PassManager:
    """Runs a pipeline; verifies after each pass; optional IR dumps and timing (MLIR style)."""

    def __init__(self, pipeline: str | list[Pass], print_after_all: bool = False,
                 print_after: tuple[str, ...] | list[str] = (), time_passes: bool = False,
                 verify_each: bool = True, out: IO[str] | None = None):
        self.passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
        unknown = [p for p in print_after if p not in PASSES]
        if unknown:
            raise PassError(f"--print-after {', '.join(unknown)}: unknown pass; available: {', '.join(sorted(PASSES))}")
        self.print_after_all = print_after_all
        self.print_after = tuple(print_after)
        self.time_passes = time_passes
        self.verify_each = verify_each
        self.out = out if out is not None else sys.stdout
        self.timings: list[tuple[str, float, bool]] = []

    def run(self, graph: Graph) -> Graph:
        self.timings = []
        for p in self.passes:
            t0 = time.perf_counter()
            modified = bool(p.run(graph))
            self.timings.append((p.name, time.perf_counter() - t0, modified))
            if self.verify_each:
                try:
                    verify_training_ir(graph)
                except VerificationError as e:
                    raise VerificationError(f"after pass {p.name}: {e}") from None
            if self.print_after_all or p.name in self.print_after:
                self.out.write(f"// -----// IR Dump After {p.options()} //----- //\n")
                self.out.write(format_graph(graph))
                self.out.write("\n")
        if self.time_passes:
            self.out.write(self.timing_report())
        return graph

    def timing_report(self) -> str:
        total = sum(t for _, t, _ in self.timings) or 1e-12
        bar = "===" + "-" * 73 + "==="
        lines = [bar, "  ... Pass execution timing report ...".center(79).rstrip(), bar,
                 f"  Total Execution Time: {total:.4f} seconds", "",
                 "  ----Wall Time----  ----Name----"]
        for name, t, modified in self.timings:
            lines.append(f"  {t:.4f} ({100 * t / total:5.1f}%)  {name}{'' if modified else '  (no change)'}")
        lines.append(f"  {total:.4f} (100.0%)  Total")
        return "\n".join(lines) + "\n"


def training_pipeline(*, loss: str = "cross_entropy", lam: float = 5.0, ce_method: str = "newton",
                      repair: bool = True, train_batchnorm: bool = False, delta: float = 1.0) -> list[Pass]:
    """The training pipeline as pass objects, the options set on the passes that take them."""
    options: dict[str, dict] = {"attach-loss": {"loss": loss, "lam": lam, "method": ce_method, "delta": delta},
                                "canonicalize": {"train_batchnorm": train_batchnorm},
                                "bipartite": {"repair": repair}}
    return [PASSES[name](**options.get(name, {})) for name in TRAINING_PASSES]


def lowering_table() -> dict[str, list[tuple[str, Lowering]]]:
    """ONNX kind -> [(pass, Lowering)]: every op the training pipeline turns into constraint
    families, from the passes' own tables (``lowerings``), in pipeline order."""
    table: dict[str, list[tuple[str, Lowering]]] = {}
    for name in dict.fromkeys(TRAINING_PASSES):
        for kind, lowering in getattr(PASSES[name], "lowerings", {}).items():
            table.setdefault(kind, []).append((name, lowering))
    return table


def compile_for_training(graph: Graph, *, pipeline: str | list[Pass] | None = None,
                         print_after_all: bool = False, print_after: tuple[str, ...] = (),
                         time_passes: bool = False, out: IO[str] | None = None, **options) -> Graph:
    """A copy of ``graph`` run through ``pipeline`` (default: ``training_pipeline(**options)``)."""
    if pipeline is None:
        pipeline = training_pipeline(**options)
    elif options:
        raise PassError(f"options {', '.join(options)} apply to the default pipeline only")
    manager = PassManager(pipeline, print_after_all=print_after_all, print_after=print_after,
                          time_passes=time_passes, out=out)
    return manager.run(graph.clone())


# Importing the pass modules registers them (order is irrelevant).
from . import (  # noqa: E402,F401
    attach_loss,
    bipartite,
    canonicalize,
    channels_last,
    dce,
    fold_constants,
    fuse_activations,
    hoist_max_offset,
    lower,
    schedule,
    select_projections,
    split,
    unroll,
)

__all__ = ["Pass", "PassManager", "PASSES", "OPTIONAL_PASSES", "TRAINING_PASSES", "TRAINING_PIPELINE",
           "compile_for_training", "lowering_table", "make_pass", "parse_pipeline", "register_pass",
           "training_pipeline", "verify_training_ir"]
