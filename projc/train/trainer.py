"""The stable Python API: ``projc.compile(model, config) -> Trainer``.

    trainer = projc.compile("model.onnx", solver="dr", steps_per_update=50)   # or a projc.Config
    params = trainer.init_params()                 # {ONNX initializer name: array}
    state = trainer.init_state(params)             # what an update carries (Adam's moments; () else)
    params, state, stats = trainer.update(params, state, x, y)   # one minibatch, pure
    metrics = trainer.evaluate(params, x, y)       # the task's metrics: {"accuracy", "loss"}, ...
    trainer.export(params, "trained.onnx")         # the original graph with trained initializers

The task (``trainer.task``, ``projc.train.tasks``) follows the model's output and the targets:
``loss="auto"`` (the default) picks it from ``y`` when ``compile(..., y=y_train)`` is given them
(class ids, 0/1 labels for one logit, multi-hot rows, float targets of the output's shape), else from
the output alone; ``target="input"`` trains a reconstruction (y = x; ``y`` may be omitted).
``evaluate`` returns the task's metrics: accuracy for classes, rmse/r2/mse for regression, mse for
reconstruction (and always ``loss``).

``model`` is a path, the bytes of an ONNX file or an ``onnx.ModelProto``; it is read once, and the
export writes that same graph. Every option is a field of ``projc.config.Config`` (its docstrings
and ``projc train --help`` describe them); keywords land in their group. The update is a pure
function (the method table, ``projc.train.methods``), jit-compiled once per (model, batch shape);
the Trainer holds only what compilation fixed. The gradient baseline (a non-projection entry of the
method table) lowers nothing: it differentiates the imported graph's own forward with the loss attached
(``gradient_graph``), so it trains every model the forward runs.

``update(..., progress=t)`` tells a schedule how far the run is (t in [0, 1]). ``devices`` (an
option: None | N | "all" | a jax Mesh) shards every minibatch over that many devices and replicates
the parameters (data parallelism, ``projc.train.distributed``); in a multi-process run
(``jax.distributed.initialize`` first) each process passes its own slice of every global minibatch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from projc.config import Config
from projc.errors import DataError, DivergenceError, ParamError, ProjcError

# A conv weight's target averages the copies of every output position, most of which a pooled
# loss barely corrects, so a conv model's updates come out short. Measured on digits (cnn_digits DR
# 60 updates, seeds 0-4; lenet_digits DR batch 64, seeds 0-1; cnn2_digits CP batch 64, seed 0):
# 2 is as good as or better than 1 on every run; MLPs keep 1 (their README tables used 1).
CONV_UPDATE_SCALE = 2.0


def compile(model, config: Config | None = None, *, y=None, **options) -> Trainer:  # noqa: A001
    """Compile an ONNX model (path, bytes or ModelProto) into a Trainer (see the module docstring);
    ``y``: the training targets (or a sample of them), from which ``loss="auto"`` picks the task."""
    return Trainer(model, config, y=y, **options)


def gradient_graph(source_graph, *, loss: str, lam: float = 5.0, delta: float = 1.0,
                   train_batchnorm: bool = False):
    """The imported graph with only its loss attached (attach-loss): what a gradient method
    differentiates, through the ONNX ops' own forwards. Its parameters are the ones projection
    training has: BatchNormalization's scale and bias stay fixed unless ``train_batchnorm`` (as
    canonicalize folds them), and initializers the logits do not depend on are constants."""
    from projc.passes.attach_loss import AttachLoss

    graph = source_graph.clone()
    if not train_batchnorm:
        for op in graph.ops:
            if op.kind == "BatchNormalization":
                for v in op.inputs[1:3]:
                    if v is not None and v.role == "param":
                        v.role = "const"
    AttachLoss(loss=loss, lam=lam, delta=delta).run(graph)
    producers = graph.producers()
    needed, stack = set(), list(graph.outputs)
    while stack:
        v = stack.pop()
        if v is None or v in needed:
            continue
        needed.add(v)
        if v in producers:
            stack.extend(producers[v].inputs)
    for v in graph.params:
        if v not in needed:
            v.role = "const"
    return graph


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


def make_state_layout(name: str, solver: str, graph, *, factor_linear: bool = True, tied: float = 0.0,
                      read_scale: float = 0.0, staircase: str = "exact"):
    """The state layout ``name`` for ``solver``: ``auto`` takes consensus where it is exact (AP, CP
    on this graph), copies otherwise; ``hybrid``: copies with the conv families as edge means."""
    from projc.backends.jax.layout_consensus import EXACT_SOLVERS, ConsensusLayout
    from projc.backends.jax.layout_copies import CopiesLayout

    shared = {"tied": tied, "read_scale": read_scale, "staircase": staircase}
    if name == "hybrid":
        from projc.backends.jax.layout_hybrid import HybridLayout
        return HybridLayout(graph, factor_linear=factor_linear, **shared)
    if name == "copies" or (name == "auto" and solver not in EXACT_SOLVERS):
        return CopiesLayout(graph, factor_linear=factor_linear, **shared)
    if name == "auto":
        try:
            return ConsensusLayout(graph, solver=solver, **shared)
        except ProjcError:  # not exact for this graph: copies is
            return CopiesLayout(graph, factor_linear=factor_linear, **shared)
    return ConsensusLayout(graph, solver=solver, **shared)


def resolve_update_scale(update_scale: float | str, source_graph, projection: bool,
                         out_shape: tuple = ()) -> float:
    """The number ``update_scale`` means for this model and method (``auto``: CONV_UPDATE_SCALE for
    a projection solver on a model with a Conv whose loss takes one vector per sample (``out_shape``
    the per-sample shape: [C] or [] — the conv maps are pooled), else 1; a gradient method has no
    readout to stretch). A dense output (an autoencoder's [1, 8, 8]) corrects every position of the
    last conv maps, so the short-update argument does not hold there: measured on ae_digits (DR,
    seed 0), scale 2 diverges (test MSE 0.59 -> 18 in 12 updates) where 1 trains (0.59 -> 0.076)."""
    if update_scale != "auto":
        return float(update_scale)
    has_conv = any(op.kind == "Conv" for op in source_graph.ops)
    return CONV_UPDATE_SCALE if has_conv and projection and len(out_shape) <= 1 else 1.0


def check_batch_axis(value, model: str) -> None:
    """Training feeds minibatches along the input's first axis: it must be the symbolic batch."""
    shape = list(value.shape)
    if value.rank and not isinstance(shape[0], int):
        return
    text = "[" + ",".join(str(d) for d in shape) + "]"
    symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
    if symbolic:
        raise ProjcError(f"{model}: input {value.hint!r} is {text}: its batch axis is {symbolic[0]}, but projc "
                         f"trains on minibatches along axis 0; re-export with the batch first (e.g. torch's "
                         f"batch_first=True) and a dynamic axis 0")
    raise ProjcError(f"{model}: input {value.hint!r} has the static shape {text}, so every minibatch would have "
                     f"to hold {shape[0] if shape else 1} samples; re-export with a dynamic batch axis (torch: "
                     f"dynamic_axes={{'{value.hint}': {{0: 'batch'}}}}, or dynamo=True with dynamic_shapes)")


class Trainer:
    """A compiled trainer for one ONNX model (see the module docstring)."""

    def __init__(self, model, config: Config | None = None, *, y=None, **options):
        import jax

        from projc.frontend.importer import from_onnx, read_model
        from projc.passes import compile_for_training
        from projc.train.distributed import DataParallel
        from projc.train.init_params import initial_params, resolve_init
        from projc.train.methods import METHODS, build_method
        from projc.train.recipe import choose
        from projc.train.tasks import probe_outputs, resolve_task

        config = Config.build(config, **options)
        if config.compilation.cache:
            from projc.train.cache import enable
            self.cache_dir = enable()  # before anything compiles (projc.train.cache)
        else:
            self.cache_dir = None
        self.source = read_model(model)  # read once: the export writes this graph
        self.model_path = self.source.label
        self.source_graph = from_onnx(self.source.proto, path=self.source.path or self.source.label)
        self.frozen = freeze_params(self.source_graph, config.compilation.freeze)
        if len(self.source_graph.data_inputs) != 1:
            data = self.source_graph.data_inputs
            raise ProjcError(f"{self.model_path}: projc trains models with one data input, this one "
                             f"has {len(data)} ({', '.join(v.hint for v in data)})")
        # the task reads only options no recipe sets (loss, target)
        self.outputs = probe_outputs(self.source_graph)
        self.task = resolve_task(config.task.loss, config.dataset.target, self.outputs, y)
        # the options the user left unset come from the recipe for this model's structure and task
        self.recipe = choose(config, self.source_graph, self.task.kind)
        self.config = config = self.recipe.config
        task, method, comp = config.task, config.method, config.compilation
        self.entry = METHODS[method.solver]
        self.init = resolve_init(comp.init, self.source_graph)  # "auto" -> file | he
        self.default_init = resolve_init("auto", self.source_graph)  # what auto means without a recipe
        self.update_scale = resolve_update_scale(config.update.update_scale, self.source_graph,
                                                 self.entry.projection, self.task.out_shape)
        if self.entry.projection:
            self.graph = compile_for_training(self.source_graph, loss=self.task.loss, lam=task.lam,
                                              ce_method=task.ce_method, repair=comp.repair,
                                              train_batchnorm=comp.train_batchnorm, delta=task.huber_delta)
            self.layout = make_state_layout(method.layout, method.solver, self.graph,
                                            factor_linear=method.factor_linear, tied=method.tied,
                                            read_scale=method.read_scale,
                                            staircase=method.staircase)
        else:  # a gradient method: the imported graph's own forward, nothing lowered
            from projc.backends.jax.forward import GraphForward

            self.graph = gradient_graph(self.source_graph, loss=self.task.loss, lam=task.lam,
                                        delta=task.huber_delta, train_batchnorm=comp.train_batchnorm)
            self.layout = GraphForward(self.graph)
        self._input = self.graph.data_inputs[0]
        check_batch_axis(self._input, self.model_path)
        self._label = self.graph.labels[0]
        self.input_name = self._input.hint
        self.label_name = self._label.hint
        self.input_shape = tuple(d if isinstance(d, int) else None for d in self._input.shape)
        logits = self.layout.logits_value()
        self.logits_name = self.graph.meta.get("logits_output", logits.hint)
        self.num_classes = self.task.classes
        # per-step logits [B, T, C] with labels [B, T] (cross_entropy over every step)
        self.per_step = self.task.kind == "sequence"
        self.label_steps = self.task.out_shape[0] if self.per_step else None
        self.param_names = [v.hint for v in self.graph.params]
        self._init = initial_params(self.source_graph, {v.hint: np.asarray(v.data) for v in self.graph.params},
                                    "file" if self.init == "data" else self.init, config.run.seed)
        self.parallel = DataParallel.from_spec(config.parallel.devices)  # None: one device
        self.method = build_method(self.layout, config, self.update_scale)
        # (params, state) replicated, the batch sharded, progress replicated; outputs replicated
        shardings = self.parallel.jit_shardings(2, 1, n_outputs=3, n_replicated_after=1) if self.parallel else {}
        self._update = jax.jit(self.method.update, **shardings)
        self.exported_update = self._exported_update()  # None: no cache, or data parallel
        layout, name = self.layout, self.input_name
        self._forward = jax.jit(lambda p, xb: layout.forward_logits(p, {name: xb}))
        self._planned: dict[int, Any] = {}  # global batch -> memory plan checked (projc.train.plan)

    def _exported_update(self):
        """The update exported to the cache and loaded from it on a repeated run
        (``projc.train.exported_update``); None without a cache or under data parallelism, where
        the jitted update runs as it is."""
        if self.cache_dir is None or self.parallel is not None:
            return None
        import os

        from projc.train.exported_update import SUBDIR, ExportedUpdate, model_key, source_digest

        source_digest()  # now, with the traced code just imported: an edit after it is not in this run
        def key() -> str:
            return model_key(self.source.proto.SerializeToString(deterministic=True), self.config,
                             self.task, self.update_scale)
        return ExportedUpdate(self.method.update, self._update, os.path.join(self.cache_dir, SUBDIR), key)

    # -- public API ------------------------------------------------------------------------
    def init_params(self, x=None) -> dict[str, np.ndarray]:
        """{ONNX initializer name: array}: the starting values (the file's, or re-drawn by ``init``).
        ``init="data"`` scales the file's values on ``x``, one batch of inputs (required then)."""
        if self.init != "data":
            return {k: v.copy() for k, v in self._init.items()}
        if x is None:
            raise ProjcError("init 'data' scales each layer on one batch of inputs: call "
                             "trainer.init_params(x) with a batch (e.g. the first training batch), or "
                             "choose init='file' or 'he'")
        from projc.train.init_params import calibrated_params
        return calibrated_params(self.source_graph, self._init, self._check_x(x), self.input_name)

    def resolved(self, config: Config) -> Config:
        """``config`` (a run's options) with this model's recipe filled in where it set nothing:
        ``self.config`` for the config the trainer was compiled with."""
        return config.with_defaults(dict(self.recipe.applied))

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """{ONNX initializer name: shape} of the trained parameters (no batch needed, any init)."""
        return {k: tuple(np.shape(v)) for k, v in self._init.items()}

    def init_state(self, params: Mapping[str, Any]) -> Any:
        """The state the method carries from one update to the next, fresh: Adam's moments and step
        count; ``()`` for the projection solvers (each update starts from the parameters)."""
        import jax.numpy as jnp

        params = self._check_params(params)
        state = self.method.init({k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
        return self.parallel.put_replicated(state) if self.parallel is not None else state

    def update(self, params: Mapping[str, Any], state: Any, x, y=None, *,
               progress: float = 0.0) -> tuple[dict[str, Any], Any, dict[str, float]]:
        """One minibatch update: (new params, new state, stats). ``progress`` in [0, 1] is how far
        the run is, the clock of a ``schedule``. ``y`` may be omitted for ``target="input"``."""
        if not (isinstance(progress, (int, float)) and 0 <= progress <= 1):
            raise ProjcError(f"progress must be a number in [0, 1], got {progress!r}")
        params = self._check_params(params)
        x, y = self._check_data(x, y)
        batch = {self.input_name: x, self.label_name: self._targets(y)}
        if self.parallel is not None:  # x, y: this process's slice of the global minibatch
            self.parallel.check_batch(len(x))
            params, batch = self.parallel.put_replicated(params), self.parallel.put_batch(batch)
        from projc.train.distributed import process_count
        size = len(x) * process_count()
        self.memory_plan(size)
        new, state, stats = self._run_update(params, state, batch, progress, size)
        stats = {k: float(v) for k, v in stats.items()}
        bad = [k for k, v in new.items() if not bool(np.all(np.isfinite(np.asarray(v))))]
        bad += [f"its {k}" for k, v in stats.items() if not math.isfinite(v)]
        if bad:
            raise DivergenceError(
                f"the {self.config.method.solver} update produced non-finite values in {', '.join(bad)}; "
                f"try a smaller relaxation, fewer steps_per_update, or solver='ap'")
        return new, state, stats

    def memory_plan(self, batch: int):
        """The memory plan of one update of ``batch`` samples (``projc.train.plan``), checked once per
        batch size against what this process can allocate, before XLA compiles anything: raises
        ``MemoryPlanError`` (a ProjcError) with the estimate and what would fit, or when the graph
        is too large to compile (``projc.frontend.limits.MAX_TRAIN_OPS``)."""
        from projc.train.plan import check_graph_size, check_memory
        check_graph_size(self)
        if batch not in self._planned:
            self._planned[batch] = check_memory(self, batch)
        return self._planned[batch]

    def _run_update(self, params, state, batch, progress, size: int):
        """The jitted update; XLA running out of memory anyway (the plan is an estimate) is a
        MemoryPlanError too, not a runtime traceback."""
        try:
            update = self.exported_update or self._update
            return update(params, state, batch, np.float32(progress))
        except Exception as err:  # jax.errors.JaxRuntimeError and kin
            if "RESOURCE_EXHAUSTED" not in str(err) and not isinstance(err, MemoryError):
                raise
            from projc.train.plan import MemoryPlanError, format_bytes
            plan = self._planned.get(size)
            estimate = f" (the plan estimated {format_bytes(plan.total)})" if plan is not None else ""
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise MemoryPlanError(f"one {self.config.method.solver} update of {self.model_path} ran out of "
                                  f"memory{estimate}: {first}; use a smaller batch or solver='cp'") from None

    def logits(self, params: Mapping[str, Any], x) -> np.ndarray:
        """The model's logits on ``x`` (the compiled forward)."""
        params = self._check_params(params)
        x = self._check_x(x)
        if self.parallel is not None:  # evaluate locally, on this process's default device
            from projc.train.distributed import to_host
            params = to_host(params)
        return np.asarray(self._forward(params, x))

    def evaluate(self, params: Mapping[str, Any], x, y=None) -> dict[str, float]:
        """The task's metrics on (x, y) (``projc.train.tasks``): classes: {"accuracy", "loss"}, loss
        the mean softmax cross-entropy (per-step logits: over every sample and step); binary:
        {"accuracy", "loss"}; multi-label: + "exact_match"; regression: {"rmse", "r2", "mse",
        "loss"}; reconstruction: {"mse", "loss"}."""
        x, y = self._check_data(x, y)
        return self.task.metrics(self.logits(params, x), y)

    def export(self, params: Mapping[str, Any], path) -> str:
        """Write the original ONNX graph (as read at compile time) with the trained initializers,
        atomically."""
        from projc.frontend.export import export_onnx

        params = self._check_params(params)
        return export_onnx(self.source.proto, {k: np.asarray(v) for k, v in params.items()}, path)

    def lower_update(self, x, y):
        """The jitted update lowered for one batch of this shape (for inspection: ``.as_text()``,
        ``.compile().memory_analysis()``)."""
        params = self.init_params(x)
        state = self.init_state(params)
        x, y = self._check_data(x, y)
        batch = {self.input_name: x, self.label_name: self._targets(y)}
        if self.parallel is not None:
            params, batch = self.parallel.put_replicated(params), self.parallel.put_batch(batch)
        return self._update.lower(params, state, batch, np.float32(0))

    def batch_spec(self, batch: int) -> dict[str, Any]:
        """{input name, label name: jax.ShapeDtypeStruct} of a minibatch of ``batch`` samples (what
        ``update`` feeds the compiled graph), for abstract tracing."""
        import jax

        x_shape = (batch,) + tuple(1 if d is None else d for d in self.input_shape[1:])
        x_dtype = np.int32 if self._input.dtype in ("i64", "i32") else np.float32
        if self.config.task.loss == "squared_error":
            y = jax.ShapeDtypeStruct((batch, self.num_classes or 1), np.float32)
        else:
            y = jax.ShapeDtypeStruct((batch, self.label_steps) if self.per_step else (batch,), np.int32)
        return {self.input_name: jax.ShapeDtypeStruct(x_shape, np.dtype(x_dtype)), self.label_name: y}

    # -- the state as arrays (checkpoints) -----------------------------------------------------
    def state_leaves(self, state: Any) -> list[np.ndarray]:
        import jax
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state)]

    def state_from_leaves(self, params: Mapping[str, Any], leaves: list[np.ndarray] | None) -> Any:
        """The state ``state_leaves`` saved, on the structure ``init_state(params)`` has; None (a
        checkpoint of a method that carried nothing) gives the fresh state."""
        import jax
        import jax.numpy as jnp

        template = self.init_state(params)
        if leaves is None:
            return template
        ref, treedef = jax.tree_util.tree_flatten(template)
        if len(ref) != len(leaves) or any(np.shape(a) != np.shape(b) for a, b in zip(ref, leaves)):
            raise ProjcError(f"the saved {self.config.method.solver} state does not fit this model")
        state = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(v, dtype=r.dtype) for v, r in zip(leaves, ref)])
        return self.parallel.put_replicated(state) if self.parallel is not None else state

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
            want = self._init[n].dtype
            out[n] = v if np.dtype(dtype) == want else np.asarray(v, want)  # float16/64 in, the model's out
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
        fixed = [d for d in per if d is not None]
        known = len(fixed) == len(per)
        want = math.prod(fixed) if known else None
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
        if y is None and self.task.target != "input":
            raise DataError(f"y is missing: the {self.task.kind} task needs targets (target='input' "
                            f"trains y = x)")
        return x, self.task.check(x, y)

    def _targets(self, y: np.ndarray):
        """The label input of the compiled graph: class ids, one-hot rows (class ids under an
        elementwise loss) or the targets themselves."""
        return self.task.targets(y)
