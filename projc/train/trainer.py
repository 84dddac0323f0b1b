"""The stable Python API: ``projc.compile(model, config) -> Trainer``.

    trainer = projc.compile("model.onnx", solver="dr", steps_per_update=50)   # or a projc.Config
    params = trainer.init_params()                 # {ONNX initializer name: array}
    state = trainer.init_state(params)             # what an update carries (Adam's moments; () else)
    params, state, stats = trainer.update(params, state, x, y)   # one minibatch, pure
    metrics = trainer.evaluate(params, x, y)       # {"accuracy": ..., "loss": ...}
    trainer.export(params, "trained.onnx")         # the original graph with trained initializers

``model`` is a path, the bytes of an ONNX file or an ``onnx.ModelProto``; it is read once, and the
export writes that same graph. Every option is a field of ``projc.config.Config`` (its docstrings
and ``projc train --help`` describe them); keywords land in their group. The update is a pure
function (the method table, ``projc.train.methods``), jit-compiled once per (model, batch shape);
the Trainer holds only what compilation fixed.

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


def compile(model, config: Config | None = None, **options) -> Trainer:  # noqa: A001
    """Compile an ONNX model (path, bytes or ModelProto) into a Trainer (see the module docstring)."""
    return Trainer(model, config, **options)


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
    from projc.backends.jax.layout_consensus import EXACT_SOLVERS, ConsensusLayout
    from projc.backends.jax.layout_copies import CopiesLayout

    if name == "copies" or (name == "auto" and solver not in EXACT_SOLVERS):
        return CopiesLayout(graph, factor_linear=factor_linear)
    if name == "auto":
        try:
            return ConsensusLayout(graph, solver=solver)
        except ProjcError:  # not exact for this graph: copies is
            return CopiesLayout(graph, factor_linear=factor_linear)
    return ConsensusLayout(graph, solver=solver)


def resolve_update_scale(update_scale: float | str, source_graph, projection: bool) -> float:
    """The number ``update_scale`` means for this model and method (``auto``: CONV_UPDATE_SCALE for
    a projection solver on a model with a Conv, else 1; a gradient method has no readout to stretch)."""
    if update_scale != "auto":
        return float(update_scale)
    has_conv = any(op.kind == "Conv" for op in source_graph.ops)
    return CONV_UPDATE_SCALE if has_conv and projection else 1.0


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

    def __init__(self, model, config: Config | None = None, **options):
        import jax

        from projc.frontend.importer import from_onnx, read_model
        from projc.passes import compile_for_training
        from projc.train.distributed import DataParallel
        from projc.train.init_params import initial_params, resolve_init
        from projc.train.methods import METHODS, build_method

        self.config = config = Config.build(config, **options)
        task, method, comp = config.task, config.method, config.compilation
        self.source = read_model(model)  # read once: the export writes this graph
        self.model_path = self.source.label
        self.source_graph = from_onnx(self.source.proto, path=self.source.path or self.source.label)
        self.entry = METHODS[method.solver]
        self.init = resolve_init(comp.init, self.source_graph)  # "auto" -> file | he
        self.update_scale = resolve_update_scale(config.update.update_scale, self.source_graph,
                                                 self.entry.projection)
        self.frozen = freeze_params(self.source_graph, comp.freeze)
        self.graph = compile_for_training(self.source_graph, loss=task.loss, lam=task.lam,
                                          ce_method=task.ce_method, repair=comp.repair,
                                          train_batchnorm=comp.train_batchnorm)
        self.layout = make_state_layout(method.layout, method.solver, self.graph,
                                        factor_linear=method.factor_linear)
        data = self.graph.data_inputs
        if len(data) != 1:
            raise ProjcError(f"{self.model_path}: projc trains models with one data input, this one "
                             f"has {len(data)} ({', '.join(v.hint for v in data)})")
        self._input = data[0]
        check_batch_axis(self._input, self.model_path)
        self._label = self.graph.labels[0]
        self.input_name = self._input.hint
        self.label_name = self._label.hint
        self.input_shape = tuple(d if isinstance(d, int) else None for d in self._input.shape)
        logits = self.layout.logits_value()
        self.logits_name = self.graph.meta.get("logits_output", logits.hint)
        self.num_classes = int(logits.shape[-1]) if isinstance(logits.shape[-1], int) else None
        # per-step logits [B, T, C] with labels [B, T] (cross_entropy over every step)
        self.per_step = task.loss != "squared_error" and self._label.rank == 2
        self.label_steps = self._label.shape[1] if self.per_step else None
        self.param_names = [v.hint for v in self.graph.params]
        self._init = initial_params(self.source_graph, {v.hint: np.asarray(v.data) for v in self.graph.params},
                                    self.init, config.run.seed)
        self.parallel = DataParallel.from_spec(config.parallel.devices)  # None: one device
        self.method = build_method(self.layout, config, self.update_scale)
        # (params, state) replicated, the batch sharded, progress replicated; outputs replicated
        shardings = self.parallel.jit_shardings(2, 1, n_outputs=3, n_replicated_after=1) if self.parallel else {}
        self._update = jax.jit(self.method.update, **shardings)
        layout, name = self.layout, self.input_name
        self._forward = jax.jit(lambda p, xb: layout.forward_logits(p, {name: xb}))
        self._planned: dict[int, Any] = {}  # global batch -> memory plan checked (projc.train.plan)

    # -- public API ------------------------------------------------------------------------
    def init_params(self) -> dict[str, np.ndarray]:
        """{ONNX initializer name: array}: the starting values (the file's, or re-drawn by ``init``)."""
        return {k: v.copy() for k, v in self._init.items()}

    def init_state(self, params: Mapping[str, Any]) -> Any:
        """The state the method carries from one update to the next, fresh: Adam's moments and step
        count; ``()`` for the projection solvers (each update starts from the parameters)."""
        import jax.numpy as jnp

        params = self._check_params(params)
        state = self.method.init({k: jnp.asarray(v, jnp.float32) for k, v in params.items()})
        return self.parallel.put_replicated(state) if self.parallel is not None else state

    def update(self, params: Mapping[str, Any], state: Any, x, y, *,
               progress: float = 0.0) -> tuple[dict[str, Any], Any, dict[str, float]]:
        """One minibatch update: (new params, new state, stats). ``progress`` in [0, 1] is how far
        the run is, the clock of a ``schedule``."""
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
            return self._update(params, state, batch, np.float32(progress))
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

    def export(self, params: Mapping[str, Any], path) -> str:
        """Write the original ONNX graph (as read at compile time) with the trained initializers,
        atomically."""
        from projc.frontend.export import export_onnx

        params = self._check_params(params)
        return export_onnx(self.source.proto, {k: np.asarray(v) for k, v in params.items()}, path)

    def lower_update(self, x, y):
        """The jitted update lowered for one batch of this shape (for inspection: ``.as_text()``,
        ``.compile().memory_analysis()``)."""
        params = self.init_params()
        state = self.init_state(params)
        x, y = self._check_data(x, y)
        batch = {self.input_name: x, self.label_name: self._targets(y)}
        if self.parallel is not None:
            params, batch = self.parallel.put_replicated(params), self.parallel.put_batch(batch)
        return self._update.lower(params, state, batch, np.float32(0))

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
        if self.config.task.loss != "squared_error":
            return y
        if self.num_classes is None:
            raise DataError("squared_error needs a model whose output has a known class count")
        return np.eye(self.num_classes, dtype=np.float32)[y]
