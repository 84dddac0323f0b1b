"""The stable Python API: ``projc.compile(model) -> Trainer``.

    trainer = projc.compile("model.onnx", loss="cross_entropy", solver="dr", steps_per_update=50)
    params = trainer.init_params()                # {ONNX initializer name: array}, the file's values
    params, stats = trainer.update(params, x, y)  # one minibatch; x in the model's input shape
    metrics = trainer.evaluate(params, x, y)      # {"accuracy": ..., "loss": ...}
    trainer.export(params, "trained.onnx")        # the original graph with trained initializers

The update is jit-compiled once per (model, batch shape). Options: ``lam`` (cross-entropy prox
weight, 5.0), ``ce_method`` ("newton" | "fixed-point"), ``relaxation`` (DR λ, 0.5), ``beta`` (DM, 1.0),
``repair`` (bipartite repair, True), ``layout`` (the solver's state layout: "auto" | "copies" |
"consensus"), ``lr`` (Adam, 1e-3), ``factor_linear`` (exact factored slots for linear dot families,
True), ``freeze`` (names of
initializers kept fixed: they become constants of the compiled graph). ``ce_method`` and ``lam``
go to the ``attach-loss`` pass as options. ``init`` ("file": the exported values | "he": He-normal
weights, zero biases | "auto", the default: he for a model with a Conv, else file; see
projc.train.init_params) and ``seed`` (the init's seed, 0). ``train_batchnorm`` (False): train the
scale/bias (gamma/beta) of BatchNormalization nodes as parameters (its statistics stay frozen);
by default the whole BatchNormalization is a frozen per-channel affine. ``weight_decay`` (0.0, in
[0, 1)): decoupled weight decay, p ← p + α (readout − p) − δ p after each projection update; for
``adam`` it is optax.adamw's (scaled by ``lr``).

Time-to-accuracy options of the projection solvers (off by default; README "Time to accuracy"):
``tol`` (stop an update's steps once the fixed-point residual is <= tol; ``steps_per_update`` is then
the maximum), ``omega`` (over-relaxed projections for ap/cp, in (0, 2)), ``inertia`` (inertial
extrapolation, [0, 1)), ``anderson`` (Anderson memory, 0: off) and ``update_scale`` (p ← p +
α (readout − p), > 0; "auto", the default: CONV_UPDATE_SCALE for a model with a Conv, else 1). See
projc.backends.jax.solvers and emit.

``devices`` (None | N | "all" | a jax Mesh) shards every minibatch over that many devices and
replicates the parameters (data parallelism, see ``projc.train.distributed``); in a multi-process run
(``jax.distributed.initialize`` first) each process passes its own slice of every global minibatch.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from projc.backends.jax.solvers import SOLVERS
from projc.errors import DataError, DivergenceError, ParamError, ProjcError

STATE_LAYOUTS = ("auto", "copies", "consensus")
_OPTIONS = ("lam", "ce_method", "relaxation", "beta", "repair", "layout", "lr", "factor_linear",
            "freeze", "init", "seed", "tol", "omega", "inertia", "anderson", "update_scale",
            "train_batchnorm", "weight_decay")
DEFAULT_INIT = "auto"  # he for a model with a Conv, else file; measured: benchmarks/init.py (README "Initialization")
DEFAULT_UPDATE_SCALE = "auto"  # CONV_UPDATE_SCALE for a model with a Conv, else 1 (plain updates)
# A conv weight's target averages the copies of every output position, most of which a pooled
# loss barely corrects, so a conv model's updates come out short. Measured on digits (cnn_digits DR
# 60 updates, seeds 0-4; lenet_digits DR batch 64, seeds 0-1; cnn2_digits CP batch 64, seed 0):
# 2 is as good as or better than 1 on every run; MLPs keep 1 (their README tables used 1).
CONV_UPDATE_SCALE = 2.0


def compile(model: str | os.PathLike, *, loss: str = "cross_entropy", solver: str = "dr",  # noqa: A001
            steps_per_update: int = 50, **options) -> Trainer:
    """Compile an ONNX model file into a Trainer (see the module docstring)."""
    return Trainer(model, loss=loss, solver=solver, steps_per_update=steps_per_update, **options)


def freeze_params(graph, names) -> list[str]:
    """Turn the trainable initializers named in ``names`` into constants of ``graph`` (in place):
    the passes then fold them like any other constant, so they stay exactly fixed. Returns the
    names frozen; an unknown name is an error listing the trainable ones."""
    if isinstance(names, str):
        names = [names]
    names = list(names or ())
    params = {v.hint: v for v in graph.params}
    unknown = [n for n in names if n not in params]
    if unknown:
        raise ParamError(f"cannot freeze {', '.join(map(repr, unknown))}: not a trainable initializer "
                         f"of {graph.meta.get('path', graph.name)}; trainable: {', '.join(params) or 'none'}")
    for n in names:
        params[n].role = "const"
    if params and not graph.params:
        raise ParamError("every trainable initializer is frozen: nothing is left to train")
    return names


def make_state_layout(name: str, solver: str, graph, *, factor_linear: bool = True):
    """The state layout ``name`` for ``solver``: ``auto`` takes consensus where it is exact (AP, CP
    on this graph), copies otherwise."""
    from projc.backends.jax.layout_copies import CopiesLayout

    if name == "copies" or (name == "auto" and solver not in ("ap", "cp")):
        return CopiesLayout(graph, factor_linear=factor_linear)
    try:
        from projc.backends.jax.layout_consensus import ConsensusLayout
    except ImportError:
        if name == "auto":
            return CopiesLayout(graph, factor_linear=factor_linear)
        raise ProjcError("layout 'consensus' is not available in this build; use layout='copies'") from None
    if name == "auto":
        try:
            return ConsensusLayout(graph, solver=solver)
        except ProjcError:  # not exact for this graph: copies is
            return CopiesLayout(graph, factor_linear=factor_linear)
    return ConsensusLayout(graph, solver=solver)


def resolve_update_scale(update_scale: float | str, source_graph, solver: str) -> float:
    """The number ``update_scale`` means for this model and solver (``auto``: CONV_UPDATE_SCALE for
    a projection solver on a model with a Conv, else 1; Adam has no projected readout to stretch)."""
    if update_scale != "auto":
        return float(update_scale)
    has_conv = any(op.kind == "Conv" for op in source_graph.ops)
    return CONV_UPDATE_SCALE if has_conv and solver != "adam" else 1.0


def _check_acceleration(solver, tol, omega, inertia, anderson, update_scale) -> None:
    """Range checks of the time-to-accuracy options, before anything is compiled."""
    from projc.backends.jax.solvers import check_acceleration

    for name, v in (("tol", tol), ("update_scale", update_scale), ("omega", omega), ("inertia", inertia)):
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ProjcError(f"{name} must be a finite number, got {v!r}")
    if tol is not None and tol <= 0:
        raise ProjcError(f"tol must be > 0 (or None: always run steps_per_update), got {tol!r}")
    if update_scale <= 0:
        raise ProjcError(f"update_scale must be > 0, got {update_scale!r}")
    if solver != "adam":
        check_acceleration(solver, omega, inertia, anderson)


class Trainer:
    """A compiled projection trainer for one ONNX model (see the module docstring)."""

    def __init__(self, model: str | os.PathLike, *, loss: str = "cross_entropy", solver: str = "dr",
                 steps_per_update: int = 50, lam: float = 5.0, ce_method: str = "newton",
                 relaxation: float = 0.5, beta: float = 1.0, repair: bool = True, layout: str = "auto",
                 lr: float = 1e-3, factor_linear: bool = True, freeze=(), devices=None,
                 init: str = DEFAULT_INIT, seed: int = 0, tol: float | None = None, omega: float = 1.0,
                 inertia: float = 0.0, anderson: int = 0, update_scale: float | str = DEFAULT_UPDATE_SCALE,
                 train_batchnorm: bool = False, weight_decay: float = 0.0):
        from projc.frontend.importer import load_model
        from projc.passes import compile_for_training
        from projc.train.init_params import INITS, initial_params, resolve_init

        if solver not in SOLVERS:
            raise ProjcError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
        if init not in INITS:
            raise ProjcError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        if layout not in STATE_LAYOUTS:
            raise ProjcError(f"unknown layout {layout!r}; choose one of {', '.join(STATE_LAYOUTS)}")
        if ce_method not in ("newton", "fixed-point"):
            raise ProjcError(f"unknown ce_method {ce_method!r}; choose newton or fixed-point")
        if not isinstance(steps_per_update, int) or steps_per_update < 1:
            raise ProjcError(f"steps_per_update must be a positive integer, got {steps_per_update!r}")
        if not (isinstance(lam, (int, float)) and lam > 0 and math.isfinite(lam)):
            raise ProjcError(f"lam must be a positive number, got {lam!r}")
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ProjcError(f"lr must be a positive number, got {lr!r}")
        _check_acceleration(solver, tol, omega, inertia, anderson,
                            1.0 if update_scale == "auto" else update_scale)
        if not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < 1):
            raise ProjcError(f"weight_decay must be a number in [0, 1), got {weight_decay!r}")
        self.model_path = os.fspath(model)
        self.loss, self.solver_name, self.steps_per_update = loss, solver, steps_per_update
        self.options = dict(lam=lam, ce_method=ce_method, relaxation=relaxation, beta=beta,
                            repair=repair, layout=layout, lr=lr, factor_linear=factor_linear,
                            init=init, seed=seed, tol=tol, omega=omega, inertia=inertia,
                            anderson=anderson, update_scale=update_scale,
                            train_batchnorm=bool(train_batchnorm), weight_decay=float(weight_decay))
        self.source_graph = load_model(self.model_path)
        self.options["init"] = init = resolve_init(init, self.source_graph)  # "auto" -> file | he
        self.options["update_scale"] = update_scale = resolve_update_scale(update_scale, self.source_graph, solver)
        self.frozen = freeze_params(self.source_graph, freeze)
        self.graph = compile_for_training(self.source_graph, loss=loss, lam=lam, ce_method=ce_method,
                                          repair=repair, train_batchnorm=bool(train_batchnorm))
        self.layout = make_state_layout(layout, solver, self.graph, factor_linear=factor_linear)
        data = self.graph.data_inputs
        if len(data) != 1:
            raise ProjcError(f"{self.model_path}: projc trains models with one data input, this one "
                             f"has {len(data)} ({', '.join(v.hint for v in data)})")
        self._input = data[0]
        self._label = self.graph.labels[0]
        self.input_name = self._input.hint
        self.label_name = self._label.hint
        self.input_shape = tuple(d if isinstance(d, int) else None for d in self._input.shape)
        logits = self.layout.logits_value()
        self.logits_name = self.graph.meta.get("logits_output", logits.hint)
        self.num_classes = int(logits.shape[-1]) if isinstance(logits.shape[-1], int) else None
        # per-step logits [B, T, C] with labels [B, T] (cross_entropy over every step)
        self.per_step = self.loss != "squared_error" and self._label.rank == 2
        self.label_steps = self._label.shape[1] if self.per_step else None
        self.param_names = [v.hint for v in self.graph.params]
        self._init = initial_params(self.source_graph, {v.hint: np.asarray(v.data) for v in self.graph.params},
                                    init, seed)
        self._label_dtype = self._label.dtype
        self._update = None
        self._forward = None
        self._adam = None
        self._adam_state = None
        from projc.train.distributed import DataParallel
        self.parallel = DataParallel.from_spec(devices)  # None: one device, no sharding
        # params, batch, the schedule's scale
        shardings = self.parallel.jit_shardings(n_replicated_after=1) if self.parallel else {}
        if solver != "adam":
            from projc.backends.jax.emit import make_update
            from projc.backends.jax.solvers import Solver

            self.solver = Solver(self.layout, solver, relaxation=relaxation, beta=beta, omega=omega,
                                 inertia=inertia, anderson=anderson)
            self._update = make_update(self.layout, self.solver, steps_per_update, tol=tol,
                                       update_scale=update_scale, weight_decay=float(weight_decay),
                                       **shardings)

    # -- public API ------------------------------------------------------------------------
    def init_params(self) -> dict[str, np.ndarray]:
        """{ONNX initializer name: array}: the starting values (the file's, or re-drawn by ``init``)."""
        self._adam_state = None
        return {k: v.copy() for k, v in self._init.items()}

    def update(self, params: Mapping[str, Any], x, y, *,
               scale: float = 1.0) -> tuple[dict[str, Any], dict[str, float]]:
        """One minibatch update; returns (new params, stats). ``scale`` multiplies the step (a
        schedule's factor, see ``projc.train.batches.schedule_factor``): the projected move and the weight decay, or
        Adam's update."""
        if not (isinstance(scale, (int, float)) and 0 <= scale and math.isfinite(scale)):
            raise ProjcError(f"scale must be a finite number >= 0, got {scale!r}")
        params = self._check_params(params)
        x, y = self._check_data(x, y)
        labels = y if self.solver_name == "adam" else self._targets(y)
        batch = {self.input_name: x, self.label_name: labels}
        if self.parallel is not None:  # x, y: this process's slice of the global minibatch
            self.parallel.check_batch(len(x))
            params, batch = self.parallel.put_replicated(params), self.parallel.put_batch(batch)
        if self.solver_name == "adam":
            new, stats = self._adam_update(params, batch[self.input_name], batch[self.label_name], scale)
        else:
            new, stats = self._update(params, batch, np.float32(scale))
        stats = {k: float(v) for k, v in stats.items()}
        bad = [k for k, v in new.items() if not bool(np.all(np.isfinite(np.asarray(v))))]
        bad += [f"its {k}" for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            raise DivergenceError(
                f"the {self.solver_name} update produced non-finite values in {', '.join(bad)}; "
                f"try a smaller relaxation, fewer steps_per_update, or solver='ap'")
        return new, stats

    def logits(self, params: Mapping[str, Any], x) -> np.ndarray:
        """The model's logits on ``x`` (the compiled forward)."""
        import jax

        params = self._check_params(params)
        x = self._check_x(x)
        if self.parallel is not None:  # evaluate locally, on this process's default device
            from projc.train.distributed import to_host
            params = to_host(params)
        if self._forward is None:
            layout = self.layout
            name = self.input_name
            self._forward = jax.jit(lambda p, xb: layout.forward_logits(p, {name: xb}))
        return np.asarray(self._forward(params, x))

    def evaluate(self, params: Mapping[str, Any], x, y) -> dict[str, float]:
        """{"accuracy", "loss"} on (x, y): loss is the mean softmax cross-entropy of the logits
        (per-step logits: accuracy and loss over every sample and step)."""
        x, y = self._check_data(x, y)
        lg = self.logits(params, x).astype(np.float64)
        lg, y = lg.reshape(-1, lg.shape[-1]), y.reshape(-1)  # per-step logits: every step a row
        m = lg.max(-1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(lg - m).sum(-1)))
        ce = float(np.mean(lse - lg[np.arange(len(y)), y]))
        return {"accuracy": float(np.mean(np.argmax(lg, -1) == y)), "loss": ce}

    def export(self, params: Mapping[str, Any], path: str | os.PathLike) -> str:
        """Write the original ONNX graph with the trained initializers (atomically)."""
        from projc.frontend.export import export_onnx

        params = self._check_params(params)
        return export_onnx(self.model_path, {k: np.asarray(v) for k, v in params.items()}, path)

    # -- validation ------------------------------------------------------------------------
    def _check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(params, Mapping):
            raise ParamError("params must be the dict returned by init_params() or update()")
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise ParamError(f"params lack {', '.join(missing)}; start from trainer.init_params()")
        out = {}
        for n in self.param_names:
            v = params[n]
            dtype = getattr(v, "dtype", None)
            if dtype is None:
                try:
                    dtype = np.asarray(v).dtype
                except Exception:  # noqa: BLE001 - ragged lists and other non-arrays
                    dtype = np.dtype(object)
            if np.dtype(dtype).kind != "f":
                raise ParamError(f"param {n} has dtype {dtype}; the model needs floating-point values "
                                 f"({self._init[n].dtype}), e.g. np.asarray(value, np.float32)")
            if tuple(np.shape(v)) != self._init[n].shape:
                raise ParamError(f"param {n} has shape {list(np.shape(v))}, the model needs "
                                 f"{list(self._init[n].shape)}")
            out[n] = v
        return out

    def _check_x(self, x) -> np.ndarray:
        try:
            x = np.asarray(x)
        except Exception:  # noqa: BLE001
            raise DataError("x must be an array of numbers") from None
        if not np.issubdtype(x.dtype, np.number) or x.dtype.kind == "c":
            raise DataError(f"x must hold real numbers, got dtype {x.dtype}")
        per = [d for d in self.input_shape[1:]]
        shape_txt = "[B," + ",".join("?" if d is None else str(d) for d in per) + "]"
        if x.ndim < 1 or len(x) == 0:
            raise DataError(f"x must be a non-empty batch of shape {shape_txt} for input "
                            f"{self.input_name!r}, got {list(x.shape)}")
        known = all(d is not None for d in per)
        want = math.prod(per) if known else None
        have = math.prod(x.shape[1:])
        if tuple(x.shape[1:]) != tuple(per):
            if known and have == want:
                x = x.reshape((len(x), *per))
            else:
                raise DataError(
                    f"x has shape {list(x.shape)}: the model's input {self.input_name!r} is "
                    f"{shape_txt}" + (f" ({want} features per sample, got {have})" if known else "")
                    + "; reshape the data to the model's input shape")
        if not np.all(np.isfinite(x)):
            row = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0][0])
            raise DataError(f"x holds NaN or inf (first in sample {row}); clean or impute the data "
                            f"before training")
        if self._input.dtype in ("i64", "i32"):  # token ids (an embedding lookup): keep them integers
            if x.dtype.kind == "f" and np.any(x != np.round(x)):
                raise DataError(f"x must hold integer ids: the model's input {self.input_name!r} is "
                                f"{self._input.dtype}, and x holds fractions")
            return x.astype(np.int32, copy=False)
        return x.astype(np.float32, copy=False)

    def _check_data(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        x = self._check_x(x)
        y = np.asarray(y)
        if self.per_step:
            if y.shape != (len(x), self.label_steps):
                raise DataError(f"y must be [{len(x)}, {self.label_steps}]: the model has per-step logits, "
                                f"one integer label per sample and step; got shape {list(y.shape)}")
        elif y.ndim != 1 or len(y) != len(x):
            raise DataError(f"y must be a vector of {len(x)} integer labels (one per sample of x), "
                            f"got shape {list(y.shape)}")
        if y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise DataError("y must hold integer class labels (found NaN, inf or fractions)")
        elif y.dtype.kind not in "iu":
            raise DataError(f"y must hold integer class labels, got dtype {y.dtype}")
        y = y.astype(np.int64)
        c = self.num_classes
        if c is not None and (y.min() < 0 or y.max() >= c):
            bad = int(y[(y < 0) | (y >= c)][0])
            raise DataError(f"label {bad} is out of range: the model has {c} classes, labels must lie "
                            f"in 0..{c - 1}; remap the labels")
        return x, y.astype(np.int32)

    def _targets(self, y: np.ndarray):
        """The label input of the compiled graph: class ids, or one-hot rows for squared_error
        (whose label has the logits' shape)."""
        if self.loss != "squared_error":
            return y
        if self.num_classes is None:
            raise DataError("squared_error needs a model whose output has a known class count")
        return np.eye(self.num_classes, dtype=np.float32)[y]

    # -- solver state carried across updates (checkpoints) -----------------------------------
    def solver_state(self) -> list[np.ndarray] | None:
        """The state an update carries to the next one, as arrays: Adam's moments and step count;
        None for the projection solvers (each update starts its state from the params)."""
        if self.solver_name != "adam" or self._adam_state is None:
            return None
        import jax
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(self._adam_state)]

    def set_solver_state(self, leaves: list[np.ndarray] | None) -> None:
        """Restore what ``solver_state`` returned (after ``init_params``, before ``update``)."""
        if self.solver_name != "adam":
            if leaves:
                raise ProjcError(f"solver {self.solver_name} carries no state across updates")
            return
        if leaves is None:
            self._adam_state = None
            return
        import jax
        import jax.numpy as jnp
        opt, _ = self._adam_setup()
        template = opt.init({k: jnp.asarray(v, jnp.float32) for k, v in self._init.items()})
        ref, treedef = jax.tree_util.tree_flatten(template)
        if len(ref) != len(leaves) or any(np.shape(a) != np.shape(b) for a, b in zip(ref, leaves)):
            raise ProjcError("the saved Adam state does not fit this model")
        self._adam_state = jax.tree_util.tree_unflatten(
            treedef, [jnp.asarray(v, dtype=r.dtype) for v, r in zip(leaves, ref)])

    # -- adam baseline ---------------------------------------------------------------------
    def _adam_setup(self):
        import jax
        import jax.numpy as jnp
        import optax

        if self._adam is None:
            lr, wd = self.options["lr"], self.options["weight_decay"]
            opt = optax.adamw(lr, weight_decay=wd) if wd else optax.adam(lr)
            layout, name = self.layout, self.input_name

            def loss_fn(p, xb, yb):
                lg = layout.forward_logits(p, {name: xb})
                return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(lg, yb))

            def step(p, s, scale, xb, yb):
                loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
                upd, s = opt.update(g, s, p)
                return optax.apply_updates(p, jax.tree_util.tree_map(lambda u: scale * u, upd)), s, loss

            shardings = self.parallel.jit_shardings(3, 2, 3) if self.parallel else {}
            self._adam = (opt, jax.jit(step, **shardings))
        return self._adam

    def _adam_update(self, params, x, y, scale=1.0):
        import jax.numpy as jnp

        opt, step = self._adam_setup()
        p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
        if self._adam_state is None:
            self._adam_state = opt.init(p)
            if self.parallel is not None:
                self._adam_state = self.parallel.put_replicated(self._adam_state)
        p, self._adam_state, loss = step(p, self._adam_state, np.float32(scale), x, y)
        return p, {"loss": loss}
