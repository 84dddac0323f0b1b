"""The ``projc`` command line: inspect, compare, train, plot, ops.

Every user error (bad file, unsupported op, bad data) prints one message and exits 2; ``--debug``
shows the traceback instead. ``compare`` exits 1 when outputs differ.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections import Counter

from projc.cli.types import name_list
from projc.errors import ProjcError, UnsupportedModelError

EPILOG = """examples:
  projc inspect models/mlp_digits.onnx                  summary and IR dump
  projc inspect models/resmlp.onnx --print-after-all    IR after every training pass
  projc compare models/cnn_digits.onnx --batch 8        projc's forward vs onnxruntime
  projc compare models/ --junit-xml report.xml          every model, a JUnit report for CI
  projc train models/mlp_digits.onnx -o trained.onnx    train without gradients, export
  projc train models/mlp_digits.onnx --log h.jsonl --checkpoint ckpt/   history, resumable
  projc train models/reg_diabetes.onnx --data diabetes  a regression (the task follows y)
  projc plot h.jsonl -o curve.png                       loss and the task's metric against updates
  projc ops                                             supported ONNX ops and opsets
"""


COMPARE_DESCRIPTION = """\
Run projc's JAX forward and a reference on the same inputs and compare every output. The
reference is onnxruntime (on random, reproducible inputs, or --load-inputs), or stored expected
outputs: --expected, or the goldens beside a model (MODEL_DIR/test_data_set_* next to the
folder's only .onnx, as the ONNX backend cases ship; MODEL.expected.npz). An element fails only
where |projc - ref| > atol + rtol*|ref|. onnxruntime runs an old opset it no longer supports
upgraded to opset 13, as projc's importer does, and says so in a note.

One model prints a table per output. Several (files, folders searched recursively for *.onnx,
globs) print a row per model and a summary line; --json and --junit-xml write them for CI.

exit status:
  0  every output of every model matches
  1  some output of some model differs (even if other models errored)
  2  bad usage; or no output differs but some model could not be compared
     (unreadable, unsupported, onnxruntime refuses it, bad goldens)"""

COMPARE_EPILOG = """\
examples:
  projc compare models/mlp_digits.onnx --batch 8
  projc compare models/ --junit-xml compare.xml        every model under models/
  projc compare m.onnx --save-expected m.expected.npz  store onnxruntime's outputs as goldens
  projc compare m.onnx --expected m.expected.npz       compare against them later
  projc compare path/to/backend/test_AvgPool2d         an ONNX backend case with its data"""


def dim_size(text: str) -> tuple[str, int]:
    """``NAME=N`` with N >= 1 (``--dim``)."""
    name, sep, size = text.rpartition("=")
    try:
        value = int(size)
    except ValueError:
        value = 0
    if not sep or not name or value < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=N with N >= 1, got {text!r}")
    return name, value


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
    p.add_argument("--recipe", action="store_true",
                   help="show the options `projc train` would choose for this model (its recipe, "
                   "the reason and the estimated time per update) instead of the IR")

    p = sub.add_parser("compare", help="check projc's forward against onnxruntime or goldens",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=COMPARE_DESCRIPTION, epilog=COMPARE_EPILOG)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="an .onnx file, a folder (searched recursively for *.onnx) or a glob")
    p.add_argument("--atol", type=float, default=None,
                   help="absolute tolerance (default 1e-5; float16 outputs 1e-3)")
    p.add_argument("--rtol", type=float, default=None,
                   help="relative tolerance (default 1e-5; float16 outputs 1e-3)")
    p.add_argument("--seed", type=int, default=1, help="seed of the random inputs")
    p.add_argument("--batch", type=int, default=None,
                   help="size of the symbolic batch dim, wherever it is (default 3)")
    p.add_argument("--dim", type=dim_size, action="append", default=[], metavar="NAME=N",
                   help="size of the symbolic dim NAME (its ONNX name), e.g. --dim seq=10 "
                   "(repeatable; other symbolic dims get 3)")
    p.add_argument("--outputs", type=name_list, default=None, metavar="NAME[,NAME...]",
                   help="compare only these outputs")
    p.add_argument("--load-inputs", metavar="F.npz", help="inputs keyed by ONNX input names")
    p.add_argument("--save-inputs", metavar="F.npz", help="write the inputs used")
    p.add_argument("--save-outputs", metavar="F.npz", help="write projc's outputs")
    p.add_argument("--expected", metavar="DIR|F.npz",
                   help="compare against stored outputs instead of onnxruntime: a "
                   "test_data_set_N folder (input_*.pb, output_*.pb), a folder of them, or an "
                   ".npz of outputs (with its inputs under inputs/NAME, or --load-inputs)")
    p.add_argument("--save-expected", metavar="DIR|F.npz",
                   help="write onnxruntime's outputs and the inputs as goldens: an .npz, or "
                   "DIR/test_data_set_0 (DIR itself when named test_data_set_N)")
    p.add_argument("--ignore-expected", action="store_true",
                   help="compare against onnxruntime even where goldens lie beside a model")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--junit-xml", metavar="FILE", help="write a JUnit XML report (one testcase "
                   "per model) for CI")
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
    lines += [f"output   {name}: computed after unsupported nodes"
              for name in s.get("outputs_after_unsupported", [])]
    lines.append("ops      " + (", ".join(f"{k} x{n}" for k, n in s["op_counts"].items()) or "none"))
    if s.get("unsupported"):
        lines.append(f"unsupported {len(s['unsupported'])} node(s), left out of the IR below with "
                     "all they compute (`projc ops` lists the supported ops):")
        lines += [f"  {u['problem']}" for u in s["unsupported"]]
        if s.get("partial_outputs"):
            lines.append("  the IR's outputs are the values they read: "
                         + ", ".join(s["partial_outputs"]))
    lines.append(f"params   {len(s['trainable'])} trainable ({s['trainable_count']} values), "
                 f"{len(s['frozen'])} frozen")
    lines += [f"  trainable {t['name']}: {shape(t)}" for t in s["trainable"]]
    lines += [f"  frozen    {t['name']}: {shape(t)}" for t in s["frozen"]]
    return "\n".join(lines)


def cmd_inspect(args) -> int:
    """Summary and IR. A model with ops projc lacks is shown as far as projc imports it: the
    summary lists the unsupported nodes, the IR stops before them (the values they read become
    its outputs), and the command then fails with the usual error (exit 2)."""
    from projc.frontend.importer import load_supported_part, unsupported_message
    from projc.ir.printer import format_graph

    if args.recipe:
        return inspect_recipe(args)
    graph, unsupported = load_supported_part(args.model)
    if args.freeze:
        from projc.train.trainer import freeze_params
        freeze_params(graph, args.freeze)
    summary = model_summary(graph)
    if unsupported:
        summary["unsupported"] = [{"op": u.op_type, "domain": u.domain or "ai.onnx",
                                   "opset": u.opset, "node": u.name, "problem": u.problem}
                                  for u in unsupported]
        frontier = graph.meta.get("unsupported_frontier", [])
        summary["partial_outputs"] = frontier
        summary["outputs"] = [t for t in summary["outputs"] if t["name"] not in frontier]
        summary["outputs_after_unsupported"] = graph.meta.get("unsupported_outputs", [])
    if args.json:
        print(json.dumps({**summary, "ir": format_graph(graph)}, indent=2))
    else:
        print(format_summary(summary))
        print()
        if unsupported:
            print(f"# the IR stops before the {len(unsupported)} unsupported node(s); the values "
                  "they read are its outputs")
        print(format_graph(graph), end="")
    if unsupported:
        raise UnsupportedModelError(unsupported_message(unsupported, graph.meta.get("path")
                                                        or args.model))
    if not args.json and (args.print_after_all or args.print_after or args.time_passes
                          or args.pipeline):
        from projc.passes import PassManager, training_pipeline
        from projc.train.tasks import probe_outputs, resolve_task

        pipeline = args.pipeline or training_pipeline(  # the loss the output implies (no data here)
            loss=resolve_task("auto", "auto", probe_outputs(graph)).loss)
        manager = PassManager(pipeline, print_after_all=args.print_after_all,
                              print_after=tuple(args.print_after), time_passes=args.time_passes,
                              out=sys.stdout)
        manager.run(graph)
    return 0


def inspect_recipe(args) -> int:
    """``projc inspect MODEL --recipe``: the recipe's choice for MODEL, without training."""
    import projc
    from projc.train.recipe import RULES, update_estimate

    trainer = projc.compile(args.model, freeze=tuple(args.freeze))
    recipe, config = trainer.recipe, trainer.config
    seconds, faster = update_estimate(trainer, config.dataset.batch)
    rows = recipe.table()
    info = {"model": args.model, "structure": recipe.structure.summary(),
            "rule": recipe.rule.name if recipe.rule else None,
            "reason": recipe.rule.reason if recipe.rule else None,
            "benchmark": recipe.rule.benchmark if recipe.rule else None,
            "options": {name: {"value": value, "from": source} for name, value, source in rows},
            "seconds_per_update": round(seconds, 3), "faster": faster}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model      {args.model}")
    print(f"structure  {info['structure']}")
    print(f"{recipe.line()}")
    width = max(len(r[0]) for r in rows)
    for name, value, source in rows:
        print(f"  {name:<{width}}  {value:<12} {source}")
    if recipe.rule is not None:
        print(f"backed by  {recipe.rule.benchmark} (docs/recipes.md)")
    if trainer.entry.projection:
        print(f"estimate   about {seconds:.3g} s per update at batch {config.dataset.batch}, "
              f"{config.method.steps_per_update} steps" + (f"; faster: {faster}" if faster else ""))
    print("rules (the first that holds is taken; a flag you give always wins):")
    for rule in RULES:
        mark = "*" if recipe.rule is not None and rule.name == recipe.rule.name else " "
        print(f" {mark} {rule.name:<16} {rule.condition}")
    return 0


def cmd_compare(args) -> int:
    import time

    import numpy as np

    from projc.cli import compare_many, goldens

    options = _compare_options(args)  # every option checked before any model is read
    models = compare_many.find_models(args.models)
    single = len(models) == 1
    if not single:
        given = [f"--{name.replace('_', '-')}" for name in
                 ("load_inputs", "save_inputs", "save_outputs", "expected", "save_expected")
                 if getattr(args, name)]
        if given:
            raise ProjcError(f"{given[0]} applies to one model, and {len(models)} were given "
                             "(goldens stored beside each model are found without --expected)")
    if args.load_inputs:
        options.inputs, options.inputs_source = load_npz(args.load_inputs), args.load_inputs
    start = time.perf_counter()
    if single:
        result = compare_many.run_model(models[0], options, catch=bool(args.json or args.junit_xml)
                                        and not args.debug, capture_notes=False)
        if result.status != compare_many.ERROR:
            print("\n\n".join(report.format() for report in result.reports))
        results = [result]
    else:
        results = _compare_each(models, options, args.debug)
    seconds = time.perf_counter() - start
    compare_many.write_reports(results, options, seconds, json_path=args.json,
                               junit_path=args.junit_xml)
    if single and result.status == compare_many.ERROR and result.error is not None:
        raise result.error
    if single:
        report = result.reports[0]
        if args.save_inputs:
            save_npz(args.save_inputs, report.inputs)
        if args.save_outputs:
            save_npz(args.save_outputs, {name: np.asarray(v) for name, v in report.outputs.items()})
        if args.save_expected:
            from projc.frontend.importer import read_model
            with contextlib.redirect_stderr(io.StringIO()):
                proto = read_model(models[0]).proto
            written = goldens.write_expected(args.save_expected, proto, report.inputs,
                                             report.ort_outputs)
            print(f"wrote {written}: the inputs and the outputs of {report.reference_text}")
    return compare_many.exit_code(results)


def _compare_options(args):
    """The compare options, each checked (ProjcError naming it) before anything is read."""
    from projc.cli import goldens
    from projc.cli.compare import check_options
    from projc.cli.compare_many import CompareOptions

    check_options(atol=args.atol, rtol=args.rtol, seed=args.seed, batch=args.batch)
    if not args.max_input_mb > 0:
        raise ProjcError(f"--max-input-mb {args.max_input_mb}: give a size > 0")
    if args.expected and args.save_expected:
        raise ProjcError("--expected and --save-expected exclude each other: the goldens are "
                         "either read or written")
    from projc.train.files import refuse_link
    for option, path in (("--json", args.json), ("--junit-xml", args.junit_xml),
                         ("--save-inputs", args.save_inputs), ("--save-outputs", args.save_outputs)):
        if path:
            goldens.check_writable_file(path, option)
            refuse_link(path, option)  # never written through nor replaced (docs/reliability.md)
    if args.save_expected:
        goldens.check_target(args.save_expected)
    if args.expected and not os.path.exists(args.expected):
        raise ProjcError(f"--expected {args.expected}: no such file or folder")
    return CompareOptions(atol=args.atol, rtol=args.rtol, seed=args.seed, batch=args.batch,
                          dims=dict(args.dim), outputs=args.outputs,
                          max_input_bytes=int(min(args.max_input_mb, 2.0**53) * 2**20),
                          expected=args.expected, ignore_expected=args.ignore_expected,
                          save_expected=args.save_expected)


def _compare_each(models: list[str], options, debug: bool) -> list:
    """Many models: a row per model as it finishes, then the summary line."""
    import time

    from projc.cli import compare_many

    printer = compare_many.RowPrinter(models)
    atol = "1e-5 (float16 1e-3)" if options.atol is None else f"{options.atol:g}"
    rtol = "1e-5 (float16 1e-3)" if options.rtol is None else f"{options.rtol:g}"
    print(f"compare {len(models)} models against onnxruntime or the goldens beside them (batch "
          f"{options.batch or 3}, seed {options.seed}, atol {atol}, rtol {rtol})")
    print(printer.header())
    results, start = [], time.perf_counter()
    for path in models:
        result = compare_many.run_model(path, options, catch=not debug)
        results.append(result)
        print(printer.row(result), flush=True)
    print(compare_many.summary_line(results, time.perf_counter() - start))
    return results


def load_npz(path: str) -> dict:
    import numpy as np
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):
                raise ValueError("a single array, not an .npz archive")
            arrays = {k: np.asarray(f[k]) for k in f.files}
    except Exception as e:  # noqa: BLE001 - zip, zlib, numpy errors: the user's file is damaged
        reason = e.strerror if isinstance(e, OSError) and e.strerror else \
            (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ProjcError(f"{path}: cannot read inputs ({reason}); expected an .npz keyed by ONNX input "
                         f"names") from None
    empty = [k for k, a in arrays.items() if a.size == 0]
    if empty:
        raise ProjcError(f"{path}: input {empty[0]!r} has shape {list(arrays[empty[0]].shape)}, no elements; "
                         "give every input at least one element (onnxruntime aborts on some empty inputs)")
    return arrays


def save_npz(path: str, arrays: dict) -> None:
    """Atomic (``projc.train.files.atomic_write``): a temp file beside the destination, then a
    rename; a failure is one ProjcError (exit 2) and leaves an existing file as it was."""
    import numpy as np

    from projc.train.files import atomic_write
    atomic_write(path, lambda f: np.savez(f, **arrays), what="the arrays",
                 keep="an existing file there is unchanged")


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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like SIGINT's KeyboardInterrupt, so that every
    cleanup (temporary files, locks) runs the same way; ``main`` exits 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame):
    import signal
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a second signal must not interrupt the cleanup
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


def _install_signal_handlers() -> dict:
    """SIGTERM and SIGHUP raise ``Terminated`` (main thread only); returns the previous handlers."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, _terminate)
    return previous


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    from projc.cli.train import cmd_train
    commands = {"inspect": cmd_inspect, "compare": cmd_compare, "train": cmd_train, "ops": cmd_ops,
                "plot": cmd_plot}
    previous = _install_signal_handlers()
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
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        hint = ""
        if getattr(args, "checkpoint", None):
            hint = f"; the same command with --resume continues from {args.checkpoint}"
        print(f"projc: interrupted by {signal.Signals(signum).name}{hint}", file=sys.stderr)
        return 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
