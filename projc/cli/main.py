"""The ``projc`` command line: inspect, compare, train, plot, ops.

Every user error (bad file, unsupported op, bad data) prints one message and exits 2; ``--debug``
shows the traceback instead. ``compare`` exits 1 when outputs differ.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

from projc.cli.types import name_list
from projc.errors import ProjcError

EPILOG = """examples:
  projc inspect models/mlp_digits.onnx                  summary and IR dump
  projc inspect models/resmlp.onnx --print-after-all    IR after every training pass
  projc compare models/cnn_digits.onnx --batch 8        projc's forward vs onnxruntime
  projc train models/mlp_digits.onnx -o trained.onnx    train without gradients, export
  projc train models/mlp_digits.onnx --log h.jsonl --checkpoint ckpt/   history, resumable
  projc train models/reg_diabetes.onnx --data diabetes  a regression (the task follows y)
  projc plot h.jsonl -o curve.png                       loss and the task's metric against updates
  projc ops                                             supported ONNX ops and opsets
"""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (``projc train: error: argument --batch: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from projc import __version__

    parser = OneLineParser(
        prog="projc", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile ONNX models into gradient-free trainers solved by projection methods.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"projc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="print a model summary and its projc IR",
                       description="Import MODEL, print a summary (opset, inputs/outputs, op counts, "
                       "trainable and frozen params) and its IR. With a --print-after* or "
                       "--time-passes flag the training pipeline runs and prints as it goes.")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--print-after-all", action="store_true", help="IR after every training pass")
    p.add_argument("--print-after", action="append", default=[], metavar="PASS",
                   help="IR after PASS (repeatable), e.g. lower or bipartite")
    p.add_argument("--time-passes", action="store_true", help="time each training pass")
    p.add_argument("--pipeline", default=None, help="pass pipeline string (default: the training pipeline)")
    p.add_argument("--json", action="store_true", help="the summary and IR as one JSON object")
    p.add_argument("--freeze", type=name_list, default=[], metavar="NAME[,NAME...]",
                   help="show what trains when these initializers are frozen (as train --freeze)")

    p = sub.add_parser("compare", help="check projc's forward against onnxruntime",
                       description="Run projc's JAX forward and onnxruntime on the same inputs "
                       "(random and reproducible, or loaded) and compare every output. An element "
                       "fails only where |projc - ort| > atol + rtol*|ort|. Exit 0: all outputs "
                       "match; 1: a mismatch; 2: bad usage or unsupported model.")
    p.add_argument("model")
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=1, help="seed of the random inputs")
    p.add_argument("--batch", type=int, default=None, help="size of symbolic batch dims (default 3)")
    p.add_argument("--load-inputs", metavar="F.npz", help="inputs keyed by ONNX input names")
    p.add_argument("--save-inputs", metavar="F.npz", help="write the inputs used")
    p.add_argument("--save-outputs", metavar="F.npz", help="write projc's outputs")
    p.add_argument("--max-input-mb", type=float, default=1024, metavar="MB",
                   help="refuse random inputs larger than this in all (default 1024)")

    from projc.cli.train import add_train_parser
    add_train_parser(sub)

    p = sub.add_parser("ops", help="list supported ONNX ops with their opsets, and which train",
                       description="The ONNX ops projc imports (its forward matches onnxruntime on "
                       "them), with a column saying which the training pipeline lowers to constraint "
                       "families. --trainable: those ops alone, with the pass that lowers each, what "
                       "it becomes and when it applies.")
    p.add_argument("--markdown", action="store_true",
                   help="the Markdown page docs/ops.md (regenerate it with `make docs`)")
    p.add_argument("--trainable", action="store_true",
                   help="only the ops that train: the pass, the constraint ops they become, conditions")

    p = sub.add_parser("plot", help="draw a training history (train --log) as an image",
                       description="Draw the loss and the train/test accuracy (R² for a regression, "
                       "MSE for a reconstruction) of a `projc train --log` file against updates. "
                       "Needs matplotlib (pip install 'projc[plot]').")
    p.add_argument("log", metavar="FILE.jsonl", help="a history written by projc train --log")
    p.add_argument("-o", "--output", default=None, help="image path (default FILE.png)")
    return parser


def model_summary(graph) -> dict:
    """The facts `projc inspect` prints above the IR (also its JSON form)."""
    def tensor(v):
        return {"name": v.hint, "dtype": v.dtype, "shape": [d for d in v.shape]}
    return {
        "model": graph.meta.get("path", graph.name),
        "opset": graph.meta.get("opset", {}),
        "inputs": [tensor(v) for v in graph.inputs],
        "outputs": [tensor(v) for v in graph.outputs],
        "op_counts": dict(sorted(Counter(op.kind for op in graph.ops).items())),
        "trainable": [tensor(v) for v in graph.params],
        "frozen": [tensor(v) for v in graph.consts],
        "trainable_count": int(sum(v.data.size for v in graph.params if v.data is not None)),
    }


def format_summary(s: dict) -> str:
    def shape(t):
        return f"{t['dtype']}[{','.join(str(d) for d in t['shape'])}]"
    opset = ", ".join(f"{dom or 'ai.onnx'} {ver}" for dom, ver in sorted(s["opset"].items()))
    lines = [f"model    {s['model']}", f"opset    {opset}"]
    lines += [f"input    {t['name']}: {shape(t)}" for t in s["inputs"]]
    lines += [f"output   {t['name']}: {shape(t)}" for t in s["outputs"]]
    lines.append("ops      " + ", ".join(f"{k} x{n}" for k, n in s["op_counts"].items()))
    lines.append(f"params   {len(s['trainable'])} trainable ({s['trainable_count']} values), "
                 f"{len(s['frozen'])} frozen")
    lines += [f"  trainable {t['name']}: {shape(t)}" for t in s["trainable"]]
    lines += [f"  frozen    {t['name']}: {shape(t)}" for t in s["frozen"]]
    return "\n".join(lines)


def cmd_inspect(args) -> int:
    from projc.frontend.importer import load_model
    from projc.ir.printer import format_graph

    graph = load_model(args.model)
    if args.freeze:
        from projc.train.trainer import freeze_params
        freeze_params(graph, args.freeze)
    summary = model_summary(graph)
    if args.json:
        print(json.dumps({**summary, "ir": format_graph(graph)}, indent=2))
        return 0
    print(format_summary(summary))
    print()
    print(format_graph(graph), end="")
    if args.print_after_all or args.print_after or args.time_passes or args.pipeline:
        from projc.passes import PassManager, training_pipeline
        from projc.train.tasks import probe_outputs, resolve_task

        pipeline = args.pipeline or training_pipeline(  # the loss the output implies (no data here)
            loss=resolve_task("auto", "auto", probe_outputs(graph)).loss)
        manager = PassManager(pipeline, print_after_all=args.print_after_all,
                              print_after=tuple(args.print_after), time_passes=args.time_passes,
                              out=sys.stdout)
        manager.run(graph)
    return 0


def cmd_compare(args) -> int:
    import numpy as np

    from projc.cli.compare import compare_model

    inputs = None
    if args.load_inputs:
        inputs = load_npz(args.load_inputs)
    if not args.max_input_mb > 0:
        raise ProjcError(f"--max-input-mb {args.max_input_mb}: give a size > 0")
    report = compare_model(args.model, atol=args.atol, rtol=args.rtol, seed=args.seed,
                           batch=args.batch, inputs=inputs,
                           max_input_bytes=int(min(args.max_input_mb, 2.0**53) * 2**20))
    print(report.format())
    if args.save_inputs:
        save_npz(args.save_inputs, report.inputs)
    if args.save_outputs:
        save_npz(args.save_outputs, {name: np.asarray(v) for name, v in report.outputs.items()})
    return 0 if report.ok else 1


def load_npz(path: str) -> dict:
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise ProjcError(f"{path}: cannot read inputs ({e}); expected an .npz keyed by ONNX input names")


def save_npz(path: str, arrays: dict) -> None:
    """Atomic: a temp file beside the destination, then a rename."""
    import os
    import tempfile

    import numpy as np
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    except OSError as e:
        raise ProjcError(f"{path}: cannot write here ({e.strerror})")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cmd_ops(args) -> int:
    if args.trainable:
        print(trainable_ops_table())
        return 0
    from projc.ops import format_supported_ops
    print(ops_markdown() if args.markdown else format_supported_ops(_trainable_kinds()),
          end="" if args.markdown else "\n")
    return 0


def _trainable_kinds() -> set[str]:
    from projc.passes import lowering_table
    return set(lowering_table())


def trainable_ops_table() -> str:
    """The ONNX ops that train, from the passes' lowering tables (``projc ops --trainable``)."""
    from projc.passes import lowering_table

    lines = ["| op | pass | becomes | when |", "|---|---|---|---|"]
    for kind, entries in sorted(lowering_table().items()):
        for name, low in entries:
            lines.append(f"| {kind} | {name} | {low.becomes} | {low.note or '-'} |")
    return "\n".join(lines)


def ops_markdown() -> str:
    """docs/ops.md: generated from the registry and the passes (`make docs`); a test keeps it in sync."""
    from projc.ops import format_supported_ops
    return ("# Supported ONNX ops\n\n"
            "<!-- generated by `projc ops --markdown` (make docs); do not edit by hand -->\n\n"
            + format_supported_ops(_trainable_kinds()).rstrip("\n") + "\n\n"
            "An op outside this table is refused at import with a message naming the node; "
            "`projc ops` prints the same table.\n\n"
            "## Ops that train\n\n"
            "The training pipeline lowers these ONNX ops to constraint families (`projc ops "
            "--trainable`); an op computed from data and constants only needs none (it is folded).\n\n"
            + trainable_ops_table() + "\n")


def cmd_plot(args) -> int:
    from projc.cli.plot import plot_history
    output = args.output if args.output is not None else os.path.splitext(args.log)[0] + ".png"
    print(f"wrote {plot_history(args.log, output)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from projc.cli.train import cmd_train
    commands = {"inspect": cmd_inspect, "compare": cmd_compare, "train": cmd_train, "ops": cmd_ops,
                "plot": cmd_plot}
    try:
        return commands[args.command](args)
    except ProjcError as err:
        if args.debug:
            raise
        print(f"projc {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `projc ops | head`: the reader left early, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "checkpoint", None):
            hint = f"; the same command with --resume continues from {args.checkpoint}"
        print(f"projc: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
