"""``projc train``: compile a model into a trainer, train it, export, re-score with onnxruntime.

The flags are generated from ``projc.config`` (one per option, grouped as the config is); every
value is checked before anything is loaded or written. ``--checkpoint``/``--resume`` continue an
interrupted run exactly, ``--log`` writes the training history (``projc plot``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap

import numpy as np

from projc.config import GROUPS, Check, Config, describe
from projc.errors import ProjcError

GROUP_TITLES = {"task": "the loss", "method": "the update method (projection solver, or adam)",
                "update": "after each update", "compilation": "compiling the model",
                "dataset": "data", "run": "the run: budget, seed and files",
                "parallel": "scaling out (docs/scaling.md)"}


def add_train_parser(sub) -> None:
    from projc.train.methods import METHODS

    p = sub.add_parser(
        "train", help="train a model without gradients and export it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill("Compile MODEL into a projection-based trainer (one constraint per elementary "
        "op, solved by alternating projections / Douglas-Rachford and kin), train it on DATA, write "
        "the original graph with the trained initializers, and score that file with onnxruntime. "
        "MODEL may be a file projc wrote: training then continues from its weights (fine-tuning).", 100),
        epilog="solvers:\n" + "".join(f"  {k:5s} {e.summary}\n" for k, e in METHODS.items())
        + "resume: run with --checkpoint DIR; after an interruption run the same command with "
        "--resume: the final weights equal an uninterrupted run's")
    p.add_argument("model", help="an .onnx file")
    for group, cls in GROUPS.items():
        g = p.add_argument_group(GROUP_TITLES[group])
        for f in dataclasses.fields(cls):
            if f.metadata["flag"] is not None:
                add_option(g, f)


def add_option(parser, f: dataclasses.Field) -> None:
    """One flag for config field ``f``: its check parses and validates the text."""
    check: Check = f.metadata["check"]
    flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
    names = [flag, "--" + f.name.replace("_", "-")] if not flag.startswith("--") else [flag]
    help_text = f.metadata["help"]
    # default=SUPPRESS: a flag not given leaves no attribute, so the config knows what the user set
    # (the recipe fills the rest: projc.train.recipe)
    if f.default is False:
        parser.add_argument(*names, dest=f.name, action="store_true", default=argparse.SUPPRESS,
                            help=help_text)
        return
    if f.default is True:
        parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                            default=argparse.SUPPRESS, help=help_text)
        return
    if f.default not in (None, ()):
        help_text += f" (default {f.default}{RECIPE_MARK if f.name in recipe_options() else ''})"
    elif f.name in recipe_options():
        help_text += f" ({RECIPE_MARK.lstrip('; ')})"
    if check.choices is not None:
        choices = list(check.choices())
        parser.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, choices=choices, help=help_text)
        return
    parser.add_argument(*names, dest=f.name, default=argparse.SUPPRESS, type=argument_type(check),
                        metavar=f.metadata["metavar"] or check.metavar, help=help_text)


RECIPE_MARK = "; or the recipe's"


def recipe_options() -> frozenset:
    from projc.train.recipe import RECIPE_OPTIONS
    return RECIPE_OPTIONS


def argument_type(check: Check):
    """argparse ``type=``: parse, then check (a bad value is one usage line, exit 2)."""
    def parse(text: str):
        try:
            value = check.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {describe(check)}, got {text!r}") from None
        if not check.ok(value):
            raise argparse.ArgumentTypeError(f"must be {describe(check)}, got {text}")
        return value
    return parse


def config_from_args(args) -> Config:
    """The Config the parsed flags describe (cross-option checks raise ProjcError); the flags given
    are the options the user set (``Config.explicit``), the recipe fills the others."""
    given = {f.name: getattr(args, f.name) for cls in GROUPS.values() for f in dataclasses.fields(cls)
             if hasattr(args, f.name)}
    return Config.build(None, **given)


def start_scaling(config: Config):
    """Join the multi-process run (before any JAX work) and return the ``devices`` option."""
    from projc.train import distributed

    par = config.parallel
    if par.coordinator is not None:
        distributed.initialize(par.coordinator, par.num_processes, par.process_id)
    if par.devices is None:
        return "all" if par.coordinator is not None else None
    return par.devices


def default_output(model: str) -> str:
    stem = os.path.splitext(os.path.basename(model))[0]
    return f"{stem}.trained.onnx"


def _nearest_existing(folder: str) -> str:
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def check_output_writable(path: str, what: str = "-o") -> None:
    """Fail before training, not after, when a file cannot be written. A missing folder is fine
    (it is created when written) as long as the nearest existing one is a writable folder."""
    if path == "":
        raise ProjcError(f"{what} is empty; give a file name")
    if os.path.isdir(path):
        raise ProjcError(f"{path}: is a folder; give a file name for {what}, e.g. "
                         f"{os.path.join(path, 'trained.onnx' if what == '-o' else 'file')}")
    folder = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ProjcError(f"{path}: cannot write {what} there ({folder} is read-only or not a folder)")


def check_run_paths(model: str, config: Config, output: str) -> None:
    """Refuse, before anything runs, paths that would lose data: two of the model, ``-o``, ``--log``
    and the checkpoint naming the same file, a checkpoint folder that is a file, a destination that
    is a symbolic link (``projc.train.files``: never written through, never replaced), and
    unwritable or over-long paths."""
    from projc.train.checkpoint import checkpoint_path
    from projc.train.files import refuse_link

    run = config.run
    named = [("the model", model), ("-o", output)]
    if run.log is not None:
        if run.log == "" or os.path.isdir(run.log):
            raise ProjcError(f"--log {run.log!r}: give a file name, e.g. history.jsonl")
        named.append(("--log", run.log))
    if run.checkpoint is not None:
        if run.checkpoint == "" or os.path.isfile(run.checkpoint):
            raise ProjcError(f"--checkpoint {run.checkpoint!r}: give a folder for the checkpoints")
        named.append(("--checkpoint", checkpoint_path(run.checkpoint)))
    seen: dict[str, str] = {}
    for what, path in named:
        key = os.path.realpath(path)
        if key in seen:
            raise ProjcError(f"{path}: {seen[key]} and {what} name the same file; give each its own "
                             f"path (nothing was written)")
        seen[key] = what
    for what, path in named[1:]:
        check_path_length(path, what)
        refuse_link(path, what)
        check_output_writable(path, what)


def check_checkpoint_state(config: Config) -> None:
    """With the run's locks held: an existing checkpoint is continued only with ``--resume``."""
    from projc.train.checkpoint import checkpoint_path

    run = config.run
    if run.checkpoint is not None and not run.resume and os.path.lexists(checkpoint_path(run.checkpoint)):
        raise ProjcError(f"{run.checkpoint}: holds a checkpoint already; add --resume to continue it, "
                         f"or choose another folder")


def check_path_length(path: str, what: str) -> None:
    """A name longer than the file system allows fails at the end of a run: fail now."""
    full = os.path.abspath(path)
    folder = _nearest_existing(os.path.dirname(full))
    try:
        name_max = os.pathconf(folder, "PC_NAME_MAX")
        path_max = os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max((len(part.encode()) for part in full.split(os.sep)), default=0)
    if longest > name_max or len(full.encode()) >= path_max:
        raise ProjcError(f"{what} {path[:60]}...: a name of {longest} bytes is longer than this file "
                         f"system allows ({name_max}); choose a shorter path")


def onnxruntime_outputs(path: str, input_name: str, logits_name: str, x) -> np.ndarray:
    """The exported file's output that the loss took (the logits, or the regression output),
    computed by onnxruntime alone.

    It may be an internal tensor (a scikit-learn classifier outputs labels and probabilities): then
    an in-memory copy lists it as an extra graph output; the file is untouched.
    """
    import onnx
    import onnxruntime as ort
    model = onnx.load(path)
    if logits_name not in [o.name for o in model.graph.output]:
        model.graph.output.append(onnx.ValueInfoProto(name=logits_name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    kind = next(i.type for i in session.get_inputs() if i.name == input_name)
    ids = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}  # token ids (an embedding lookup)
    (outputs,) = session.run([logits_name], {input_name: x.astype(ids.get(kind, np.float32), copy=False)})
    return outputs


def onnxruntime_scores(path: str, trainer, x, y) -> dict[str, float]:
    """The task's test metrics of the exported file (``trainer.task.metrics`` on onnxruntime's outputs)."""
    x, y = trainer._check_data(x, y)
    return trainer.task.metrics(onnxruntime_outputs(path, trainer.input_name, trainer.logits_name, x), y)


def onnxruntime_accuracy(path: str, input_name: str, logits_name: str, x, y) -> float:
    """Test accuracy of the exported file (class-id targets), computed by onnxruntime alone."""
    return float(np.mean(np.argmax(onnxruntime_outputs(path, input_name, logits_name, x), axis=-1) == y))


def warn(message: str | None) -> None:
    if message:
        print(f"projc train: warning: {message}", file=sys.stderr, flush=True)


# How the run's header names an option that differs from its default (others: "name value").
HEADER_FORMS = {"update_scale": "update scale {:g}", "schedule": "{} schedule", "weight_decay": "weight decay {:g}",
                "freeze": "frozen {}", "repair": "no repair", "train_batchnorm": "trained BatchNorm",
                "recipe": "recipe {}", "tied": "tied step 1/(1+{:g}(k-1))",
                "read_scale": "read scale r^{:g}"}
SHOWN_FIRST = ("solver", "steps_per_update", "lr", "init", "update_scale")


def run_header(model: str, config: Config, trainer, data) -> str:
    """The run's first line: model, data, the task and its loss (and why), the method, and every
    option that differs from its default."""
    extras = [(name, value) for name, value in config.changed("task", "method", "update", "compilation")
              if name not in SHOWN_FIRST and name != "loss"]
    if trainer.update_scale != 1:
        extras.insert(0, ("update_scale", trainer.update_scale))

    def form(name, value):
        value = ", ".join(value) if isinstance(value, tuple) else value
        return HEADER_FORMS.get(name, name.replace("_", " ") + " {}").format(value)
    return (f"projc train: {model} on {data.name} ({len(data.y_train)} train, {len(data.y_test)} test), "
            f"{trainer.task.describe()}, solver {config.method.solver}, {trainer.entry.describe(config)}, "
            f"batch {config.dataset.batch}, "
            f"init {trainer.init}" + "".join(f", {form(n, v)}" for n, v in extras)
            + f"; {trainer.recipe.line()}")


def cmd_train(args) -> int:
    from projc.train.files import Locks
    from projc.train.loop import run_lock_items

    config = config_from_args(args)
    output = config.run.output if config.run.output is not None else default_output(args.model)
    check_run_paths(args.model, config, output)
    # one writer per file: process 0 writes the log, the checkpoints and the export
    with Locks(run_lock_items(config, output) if config.parallel.process_id == 0 else []):
        check_checkpoint_state(config)
        if config.parallel.process_id == 0:
            remove_stale_temps_of(config, output)
        return _train(args, config, output)


def remove_stale_temps_of(config: Config, output: str) -> None:
    """Temporary files that killed runs left in this run's folders (``files.remove_stale_temps``)."""
    from projc.train.files import remove_stale_temps

    folders = {os.path.dirname(os.path.abspath(output))}
    if config.run.checkpoint:
        folders.add(os.path.abspath(config.run.checkpoint))
    if config.run.log:
        folders.add(os.path.dirname(os.path.abspath(config.run.log)))
    for folder in sorted(folders):
        if os.path.isdir(folder):
            remove_stale_temps(folder)


def _train(args, config: Config, output: str) -> int:
    import projc
    from projc.train.data import load_data
    from projc.train.distributed import process_count, process_index
    from projc.train.loop import TrainingRun
    from projc.train.progress import slow_update_warning
    from projc.train.recipe import update_estimate
    from projc.train.tasks import score_line
    from projc.train.watch import input_scale_warning

    devices = start_scaling(config)
    rank, nproc = process_index(), process_count()
    if config.dataset.batch % nproc:
        raise ProjcError(f"--batch {config.dataset.batch} does not divide over {nproc} processes; choose "
                         f"a multiple of {nproc}")
    if rank != 0:  # process 0 logs and writes the exported file; the others only train
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # also silences gloo's C++ log
    config = Config.build(config, devices=devices)
    data = load_data(config.dataset.data, seed=config.run.seed, **model_io(args.model, config))
    trainer = projc.compile(args.model, config, y=data.y_train)
    config = trainer.resolved(config)  # the recipe fills in what the flags left unset
    if config.dataset.batch % nproc:
        raise ProjcError(f"the recipe's batch {config.dataset.batch} does not divide over {nproc} "
                         f"processes; give --batch")
    trainer.memory_plan(config.dataset.batch)  # the estimate against this process's memory, before XLA
    if trainer.task.target == "input":
        data = data.with_input_targets()
    warn(input_scale_warning(data.x_train))
    print(run_header(args.model, config, trainer, data), flush=True)
    if rank == 0:
        warn(slow_update_warning(*update_estimate(trainer, config.dataset.batch // nproc)))
    params = TrainingRun(config, trainer, data, warn=warn, rank=rank, nproc=nproc).train()
    if rank != 0:
        return 0
    if os.path.dirname(output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
    trainer.export(params, output)
    ours = trainer.evaluate(params, data.x_test, data.y_test)
    ort = onnxruntime_scores(output, trainer, data.x_test, data.y_test)
    print(f"wrote {output}: {score_line(trainer.task, ort, ours)}")
    return 0


def model_io(model: str, config: Config) -> dict:
    """What loading the data needs to know of the model before it compiles (the task is chosen
    from the data): its input shape, and whether ``text`` should label every step."""
    from projc.frontend.importer import from_onnx, read_model
    from projc.train.tasks import ELEMENTWISE, probe_outputs
    from projc.train.trainer import check_batch_axis

    source = read_model(model)
    graph = from_onnx(source.proto, path=source.path or source.label)
    inputs = graph.data_inputs
    if len(inputs) != 1:  # the Trainer says so
        return {}
    check_batch_axis(inputs[0], model)  # before the data is shaped to it
    per_step = len(probe_outputs(graph).classes) == 2 and config.task.loss not in ELEMENTWISE
    return {"input_shape": tuple(d if isinstance(d, int) else None for d in inputs[0].shape),
            "per_step": per_step}
