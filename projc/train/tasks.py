"""Tasks: what a model's output is trained for, chosen from the output and the targets.

    task = resolve_task("auto", "auto", probe_outputs(graph), y_train)
    task.kind, task.loss, task.reason     # 'regression', 'squared_error', 'float y [N] ...'
    y = task.check(x, y)                  # validated targets (one line naming both shapes if not)
    task.targets(y)                       # the compiled graph's label input
    task.metrics(outputs, y)              # {"rmse", "r2", "mse", "loss"} (numpy, float64)

Kinds (``KINDS``), each with its default loss and metrics (``METRICS``):

- ``classification``: integer class ids y [N], logits [B, C] (C >= 2): cross_entropy; accuracy.
- ``sequence``: per-step class ids y [N, T], logits [B, T, C]: cross_entropy over every step; accuracy.
- ``binary``: y in {0, 1}, one logit [B] or [B, 1]: binary_cross_entropy; accuracy (logit > 0).
- ``multilabel``: multi-hot y [N, C] in {0, 1}, logits [B, C]: binary_cross_entropy per label;
  accuracy is the per-label accuracy (every label of every sample counts once), ``exact_match``
  the fraction of samples with every label right.
- ``regression``: float y with the output's shape (or its element count): squared_error; rmse, r2
  (scikit-learn's r2_score: per output, averaged), mse.
- ``reconstruction``: y = the input (``target="input"``, or ``auto`` when the labels do not fit an
  output of the input's shape): squared_error; mse.

``loss`` in every task's metrics is the value the gradient baseline minimizes (the mean over samples
of the loss summed over the output; classification keeps the mean cross-entropy whatever the
training loss, as before). ``loss="auto"`` picks the kind's default loss; an explicit loss must fit
the targets (``squared_error``/``huber``/``l1`` on class ids train one-hot rows, as
``squared_error`` always did; ``binary_cross_entropy`` on class ids likewise). This module
imports no JAX.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from projc.errors import DataError, ProjcError

KINDS = ("classification", "sequence", "binary", "multilabel", "regression", "reconstruction")
CLASS_LOSSES = ("cross_entropy", "margin")
ELEMENTWISE = ("squared_error", "binary_cross_entropy", "huber", "l1")
METRICS = {"classification": ("accuracy",), "sequence": ("accuracy",), "binary": ("accuracy",),
           "multilabel": ("accuracy", "exact_match"), "regression": ("rmse", "r2", "mse"),
           "reconstruction": ("mse",)}
# the metric a run's progress line and `projc plot` lead with, and whether larger is better
HEADLINE = {"classification": "accuracy", "sequence": "accuracy", "binary": "accuracy",
            "multilabel": "accuracy", "regression": "r2", "reconstruction": "mse"}
TARGETS = ("auto", "labels", "input")


def _fmt(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _size(shape) -> int | None:
    return math.prod(shape) if all(isinstance(d, int) for d in shape) else None


@dataclass(frozen=True)
class Outputs:
    """What the losses would take at a model's output (``probe_outputs``): per-sample shapes of
    the class logits (Softmax stripped), of the binary logits (Sigmoid stripped) and of the plain
    output (for the elementwise losses), the ONNX name of each, and the input's per-sample shape."""

    classes: tuple
    binary: tuple
    values: tuple
    names: dict = field(default_factory=dict)
    input: tuple = ()
    sigmoid_head: bool = False

    @property
    def num_classes(self) -> int | None:
        c = self.classes[-1] if self.classes else None
        return c if isinstance(c, int) else None


def probe_outputs(graph) -> Outputs:
    """Outputs of an imported graph (before attach-loss; the graph is not changed)."""
    from projc.passes.attach_loss import find_logits, strip_set

    found = {}
    for key, loss in (("classes", "cross_entropy"), ("binary", "binary_cross_entropy"), ("values", "squared_error")):
        value, _ = find_logits(graph, strip_set(loss), key == "classes")
        found[key] = value
    data = graph.data_inputs
    return Outputs(tuple(found["classes"].shape[1:]), tuple(found["binary"].shape[1:]),
                   tuple(found["values"].shape[1:]),
                   {k: v.hint or "?" for k, v in found.items()},
                   tuple(data[0].shape[1:]) if len(data) == 1 else (),
                   sigmoid_head=found["binary"] is not found["values"])


def _integers(y: np.ndarray) -> bool:
    if y.dtype.kind in "iub":
        return True
    return y.dtype.kind == "f" and bool(np.all(np.isfinite(y))) and bool(np.all(y == np.round(y)))


def _zero_one(y: np.ndarray) -> bool:
    return y.size > 0 and y.dtype.kind in "iufb" and bool(np.all((y == 0) | (y == 1)))


def _describe_y(y: np.ndarray) -> str:
    if _zero_one(y):
        what = "0/1"
    elif _integers(y):
        what = "integer"
    else:
        what = y.dtype.name if y.dtype.kind != "f" else "float"
    return f"{what} y {_fmt(['N', *y.shape[1:]])}"


@dataclass(frozen=True)
class Task:
    """A resolved task (see the module docstring)."""

    kind: str
    loss: str
    reason: str
    out_shape: tuple            # per-sample shape of the output the loss takes
    classes: int | None = None  # classification / sequence: C
    target: str = "labels"      # "labels" | "input"

    @property
    def metric_names(self) -> tuple[str, ...]:
        return METRICS[self.kind]

    @property
    def headline(self) -> str:
        return HEADLINE[self.kind]

    @property
    def onehot(self) -> bool:
        """Class ids trained through an elementwise loss (one-hot rows)."""
        return self.kind == "classification" and self.loss in ELEMENTWISE

    def describe(self) -> str:
        """The run header's words: '<kind>: loss <loss> (<why>)'."""
        return f"{self.kind}: loss {self.loss} ({self.reason})"

    # -- targets ----------------------------------------------------------------------------------
    def check(self, x: np.ndarray, y) -> np.ndarray:
        """The targets of a batch of ``len(x)`` samples, validated and in canonical form: int32 class
        ids [N] or [N, T]; float32 of shape [N, *out_shape] otherwise (``target="input"``: x)."""
        n = len(x)
        if self.target == "input":
            y = np.asarray(x)
        try:
            y = np.asarray(y)
        except Exception:  # noqa: BLE001 - ragged lists
            raise DataError("y must be an array of numbers") from None
        if y.dtype.kind not in "iufb":
            raise DataError(f"y must hold numbers, got dtype {y.dtype}")
        if self.kind in ("classification", "sequence"):
            return self._check_classes(n, y)
        if y.ndim < 1 or len(y) != n:
            raise DataError(f"y must have one row per sample of x ({n}), got shape {list(y.shape)}")
        want = _size(self.out_shape)
        if want is not None and math.prod(y.shape[1:]) != want:
            raise DataError(f"y {_fmt(['N', *y.shape[1:]])} does not fit the output {_fmt(['B', *self.out_shape])} "
                            f"({self.kind}, loss {self.loss}): y needs {want} value(s) per sample")
        if not np.all(np.isfinite(y)):
            raise DataError("y holds NaN or inf; clean the targets before training")
        if self.kind in ("binary", "multilabel") and not np.all((y >= 0) & (y <= 1)):
            raise DataError(f"{self.kind} targets must lie in [0, 1] (0/1 labels), found {float(y.min()):g} "
                            f"to {float(y.max()):g}")
        if want is not None:
            y = y.reshape((n, *self.out_shape))
        return y.astype(np.float32, copy=False)

    def _check_classes(self, n: int, y: np.ndarray) -> np.ndarray:
        if self.kind == "sequence":
            steps = self.out_shape[0]
            if y.shape != (n, steps):
                raise DataError(f"y must be [{n}, {steps}]: the model has per-step logits, one integer label "
                                f"per sample and step; got shape {list(y.shape)}")
        elif y.ndim != 1 or len(y) != n:
            raise DataError(f"y must be a vector of {n} integer labels (one per sample of x), got shape "
                            f"{list(y.shape)}")
        if not _integers(y):
            raise DataError("y must hold integer class labels (found NaN, inf or fractions)")
        y = y.astype(np.int64)
        c = self.classes
        if c is not None and y.size and (y.min() < 0 or y.max() >= c):
            bad = int(y[(y < 0) | (y >= c)][0])
            raise DataError(f"label {bad} is out of range: the model has {c} classes, labels must lie "
                            f"in 0..{c - 1}; remap the labels")
        return y.astype(np.int32)

    def targets(self, y: np.ndarray) -> np.ndarray:
        """The compiled graph's label input for checked targets ``y``."""
        if self.onehot:
            assert self.classes is not None  # a classification task knows its class count
            return np.eye(self.classes, dtype=np.float32)[y]
        return y

    # -- metrics ----------------------------------------------------------------------------------
    def metrics(self, outputs, y: np.ndarray) -> dict[str, float]:
        """The task's metrics of ``outputs`` (the loss's input: logits or values) on checked ``y``."""
        out = np.asarray(outputs, np.float64)
        if self.kind in ("classification", "sequence"):
            lg, lab = out.reshape(-1, out.shape[-1]), y.reshape(-1)
            m = lg.max(-1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(lg - m).sum(-1))
            return {"accuracy": float(np.mean(np.argmax(lg, -1) == lab)),
                    "loss": float(np.mean(lse - lg[np.arange(len(lab)), lab]))}
        t = np.asarray(y, np.float64).reshape(out.shape)
        loss = float(np.mean(np.sum(_elementwise_loss(self.loss, out, t).reshape(len(out), -1), -1)))
        if self.kind in ("binary", "multilabel"):
            right = (out > 0) == (t > 0.5)
            result = {"accuracy": float(np.mean(right)), "loss": loss}
            if self.kind == "multilabel":
                result["exact_match"] = float(np.mean(np.all(right.reshape(len(out), -1), -1)))
            return result
        err = (out - t).reshape(len(out), -1)
        mse = float(np.mean(err ** 2))
        if self.kind == "reconstruction":
            return {"mse": mse, "loss": loss}
        flat = t.reshape(len(t), -1)
        ss_res = np.sum(err ** 2, 0)
        ss_tot = np.sum((flat - flat.mean(0)) ** 2, 0)
        per_output = np.where(ss_tot > 0, 1 - ss_res / np.where(ss_tot > 0, ss_tot, 1),
                              np.where(ss_res > 0, 0.0, 1.0))  # scikit-learn's convention
        return {"rmse": math.sqrt(mse), "r2": float(np.mean(per_output)), "mse": mse, "loss": loss}


def _elementwise_loss(loss: str, x: np.ndarray, t: np.ndarray, delta: float = 1.0) -> np.ndarray:
    """The loss per output element (projc.backends.jax.proj_losses.LOSS_VALUES, in numpy)."""
    if loss == "binary_cross_entropy":
        return np.logaddexp(0.0, x) - t * x
    d = x - t
    if loss == "huber":
        a = np.abs(d)
        return np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))
    if loss == "l1":
        return np.abs(d)
    return 0.5 * d * d


# -- how runs report a task ----------------------------------------------------------------------------

SHORT = {"accuracy": "acc", "exact_match": "exact", "rmse": "rmse", "r2": "r2", "mse": "mse"}
# metrics per kind in the --log records (train_* and test_*): classification keeps its old keys
LOGGED = {"classification": ("accuracy",), "sequence": ("accuracy",), "binary": ("accuracy",),
          "multilabel": ("accuracy", "exact_match"), "regression": ("rmse", "r2"),
          "reconstruction": ("mse",)}
LOG_KEYS = tuple(dict.fromkeys(f"{split}_{m}" for ms in LOGGED.values() for m in ms
                               for split in ("train", "test")))


def log_fields(task: Task, train: dict, test: dict) -> dict[str, float]:
    """The task's metrics as ``--log`` keys: train_accuracy, test_accuracy, ... (``LOG_KEYS``)."""
    out = {}
    for m in LOGGED[task.kind]:
        out[f"train_{m}"], out[f"test_{m}"] = train[m], test[m]
    return out


def epoch_line(task: Task, train: dict, test: dict) -> str:
    """A run's per-epoch words: 'train acc 0.9  test acc 0.9' or 'train rmse ..  test rmse ..  test r2 ..'."""
    if task.kind == "regression":
        return f"train rmse {train['rmse']:.4f}  test rmse {test['rmse']:.4f}  test r2 {test['r2']:.4f}"
    parts = [f"train {SHORT[m]} {train[m]:.4f}  test {SHORT[m]} {test[m]:.4f}" for m in LOGGED[task.kind][:1]]
    parts += [f"test {SHORT[m]} {test[m]:.4f}" for m in LOGGED[task.kind][1:]]
    return "  ".join(parts)


def score_line(task: Task, ort: dict, ours: dict) -> str:
    """The exported file's test scores: 'test accuracy A (onnxruntime), B (projc)' (classes), per
    metric for the others: 'test r2 A (onnxruntime), B (projc); rmse ...'."""
    names = {"accuracy": "accuracy", "exact_match": "exact match", "rmse": "rmse", "r2": "r2", "mse": "mse"}
    return "test " + "; ".join(f"{names[m]} {ort[m]:.4f} (onnxruntime), {ours[m]:.4f} (projc)"
                               for m in task.metric_names)


# -- choosing the task -------------------------------------------------------------------------------

def resolve_task(loss: str, target: str, outputs: Outputs, y: Any = None) -> Task:
    """The task for ``loss`` (a loss name or "auto") and ``target`` ("auto", "labels", "input") on a
    model with ``outputs``, given (a sample of) the training targets ``y`` or None (the output
    alone decides). Raises ProjcError, one line naming both shapes, when they do not fit."""
    if target not in TARGETS:
        raise ProjcError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if target == "input":
        return _reconstruction(loss, outputs, "y = x, --target input")
    if y is None:
        return _from_output(loss, outputs)
    y = np.asarray(y)
    if y.ndim == 0:
        raise ProjcError(f"y must have one row per sample, got a scalar {y!r}")
    try:
        return _from_labels(loss, outputs, y)
    except _Mismatch as e:
        if target == "auto" and outputs.input and _size(outputs.input) == _size(outputs.values) \
                and loss in ("auto", "squared_error", "huber", "l1"):
            return _reconstruction(loss, outputs, f"the labels ({_describe_y(y)}) do not fit the output "
                                                  f"{_fmt(['B', *outputs.values])}, which has the input's "
                                                  f"size: y = x")
        raise ProjcError(str(e)) from None


class _Mismatch(Exception):
    pass


def _reconstruction(loss: str, outputs: Outputs, why: str) -> Task:
    if loss not in ("auto", "squared_error", "huber", "l1"):
        raise ProjcError(f"reconstruction (y = x) trains a regression loss: squared_error, huber or l1, "
                         f"not {loss}")
    if outputs.input and _size(outputs.input) != _size(outputs.values):
        raise ProjcError(f"target input: the input {_fmt(['B', *outputs.input])} does not fit the output "
                         f"{outputs.names.get('values', '?')!r} {_fmt(['B', *outputs.values])}")
    chosen = "squared_error" if loss == "auto" else loss
    return Task("reconstruction", chosen, ("auto: " if loss == "auto" else "") + why, outputs.values,
                target="input")


def _from_output(loss: str, outputs: Outputs) -> Task:
    c, b = outputs.classes, outputs.binary
    why = "auto, from the output alone" if loss == "auto" else "--loss"
    class_like = (len(c) == 1 and isinstance(c[0], int) and c[0] >= 2) or len(c) == 2
    if loss in CLASS_LOSSES or (class_like and loss != "binary_cross_entropy"
                                and not (loss == "auto" and outputs.sigmoid_head)):
        chosen = "cross_entropy" if loss == "auto" else loss
        if len(c) == 2:
            return Task("sequence", chosen, f"{why}: per-step logits {_fmt(['B', *c])}", c, outputs.num_classes)
        return Task("classification", chosen, f"{why}: logits {_fmt(['B', *c])}", c, outputs.num_classes)
    if loss == "binary_cross_entropy" or (loss == "auto" and outputs.sigmoid_head):
        head = "a Sigmoid at the output" if outputs.sigmoid_head else "the output"
        return Task("binary" if _size(b) == 1 else "multilabel", "binary_cross_entropy",
                    f"{why}: {head} {_fmt(['B', *b])}", b)
    return Task("regression", "squared_error" if loss == "auto" else loss,
                f"{why}: the output {_fmt(['B', *outputs.values])}", outputs.values)


def _from_labels(loss: str, outputs: Outputs, y: np.ndarray) -> Task:
    c, b, v = outputs.classes, outputs.binary, outputs.values
    ints, zero_one = _integers(y), _zero_one(y)
    per = tuple(y.shape[1:])
    per_size = math.prod(per)
    ydesc = _describe_y(y)
    auto = loss == "auto"
    tag = "auto: " if auto else ""

    def mismatch(need: str):
        name = outputs.names.get("values", "?")
        return _Mismatch(f"{ydesc} does not fit the output {name!r} {_fmt(['B', *v])} for loss {loss}: {need}")

    classes_ok = ints and y.ndim == 1 and len(c) == 1 and isinstance(c[0], int) and c[0] >= 2
    steps_ok = ints and y.ndim == 2 and len(c) == 2 and y.shape[1] == c[0]
    if loss in CLASS_LOSSES or (auto and (classes_ok or steps_ok)):
        if classes_ok:
            return Task("classification", "cross_entropy" if auto else loss,
                        f"{tag}{ydesc} with logits {_fmt(['B', *c])}", c, c[0])
        if steps_ok and loss != "margin":
            return Task("sequence", "cross_entropy", f"{tag}{ydesc} with per-step logits {_fmt(['B', *c])}",
                        c, c[1] if isinstance(c[1], int) else None)
        raise mismatch("class ids need integer y [N] with logits [B,C] (C >= 2)"
                       + (", or y [N,T] with per-step logits [B,T,C]" if loss == "cross_entropy" else ""))
    b_size = _size(b)
    if loss == "binary_cross_entropy" or (auto and zero_one and per_size == b_size):
        if zero_one and per_size == b_size:
            kind = "binary" if b_size == 1 else "multilabel"
            what = "one logit" if b_size == 1 else "logits"
            return Task(kind, "binary_cross_entropy", f"{tag}{ydesc} with {what} {_fmt(['B', *b])}", b)
        if classes_ok and _size(c) == b_size:
            return Task("classification", loss, f"{ydesc} as one-hot rows of logits {_fmt(['B', *c])}", c, c[0])
        raise mismatch(f"binary cross-entropy needs 0/1 targets with {b_size} value(s) per sample")
    # the elementwise regression losses
    chosen = "squared_error" if auto else loss
    if per_size == _size(v) and (y.dtype.kind in "iuf"):
        return Task("regression", chosen, f"{tag}{ydesc} with the output {_fmt(['B', *v])}", v)
    if not auto and classes_ok and _size(v) == c[0]:
        return Task("classification", chosen, f"{ydesc} as one-hot rows of logits {_fmt(['B', *c])}", c, c[0])
    raise mismatch(f"y needs {_size(v)} value(s) per sample (the output's shape), or class ids with logits "
                   "[B,C]" + ("; for an autoencoder use --target input" if _size(v) == _size(outputs.input) else ""))
