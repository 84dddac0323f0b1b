"""The recipe: the options that measured best for a model's structure, filled in where the user set
nothing.

    recipe = choose(config, source_graph, task="regression")   # config: what the user set
    recipe.config                             # the resolved config a run uses
    recipe.line()                             # "recipe gated-recurrent: GRU/LSTM cells ...: ..."

The table ``RULES`` is read top to bottom; the first rule whose ``when`` holds for the model's
``Structure`` gives its ``values``. Every option the user set (an API keyword, a CLI flag given, a
field of a given Config that differs from its default) stays as set; the recipe fills only the
others. When the user picks another solver than the rule's, the rule's options that were tuned for
its solver (``SOLVER_BOUND``) are not applied. ``recipe="none"`` keeps the plain defaults.

Each rule names the benchmark that backs it (``benchmarks/recipes.py``, which runs every bundled
model with its recipe over seeds 0-2); docs/recipes.md gives each rule's measurements.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from projc.config import Config

# the options a rule may set (the CLI marks them "or the recipe's")
RECIPE_OPTIONS = frozenset({"solver", "layout", "steps_per_update", "relaxation", "anderson", "inertia",
                            "omega", "batch", "lam", "update_scale", "schedule", "weight_decay", "init",
                            "tied", "read_scale", "staircase"})
# tuned for the rule's solver: dropped when the user chooses another solver
SOLVER_BOUND = frozenset({"layout", "steps_per_update", "relaxation", "anderson", "inertia", "omega",
                          "lam", "update_scale", "schedule", "weight_decay", "tied",
                          "read_scale"})

STAIRCASE_OPS = ("Round", "Floor", "Ceil", "QuantizeLinear")
GATED_OPS = ("GRU", "LSTM")
MAX_POOLS = ("MaxPool", "GlobalMaxPool", "ReduceMax")
MEAN_POOLS = ("AveragePool", "GlobalAveragePool", "ReduceMean")


@dataclass(frozen=True)
class Structure:
    """What the rules read from a model's graph (the source graph, as imported, frozen
    initializers folded)."""

    ops: Mapping[str, int]          # op kind -> count
    free_input_convs: int           # Convs whose input moves in training (both operands free)
    data_convs: int                 # Convs of the data (or of constants): one free operand
    params: int                     # trainable values
    pair_copies: int = 0            # per sample: the products of the Convs with a moving input
    #                                 (output positions x Cout x Cin/group x kernel): the copies
    #                                 Douglas-Rachford keeps of each of their operands
    task: str = "classification"    # projc.train.tasks.Task.kind (from the output and the targets)
    attention: int = 0              # Attention ops, and Softmaxes whose output a MatMul/Einsum reads
    #                                 (p·v; a classifier's output Softmax is not attention)

    @classmethod
    def of(cls, graph, task: str = "classification") -> Structure:
        import math

        ops: dict[str, int] = {}
        free = {v: v.role == "param" for v in graph.values()}
        free_convs = data_convs = pair = 0
        for op in graph.ops:
            ops[op.kind] = ops.get(op.kind, 0) + 1
            if op.kind == "Conv":
                if free.get(op.inputs[0], False):
                    free_convs += 1
                    out, w = op.outputs[0].shape, op.inputs[1].shape
                    pair += math.prod(d for d in out[1:] if isinstance(d, int)) * \
                        math.prod(d for d in w[1:] if isinstance(d, int))
                else:
                    data_convs += 1
            moving = any(free.get(u, False) for u in op.inputs if u is not None)
            for out_v in op.outputs:
                free[out_v] = moving
        n = sum(_size(v) for v in graph.params)
        return cls(ops, free_convs, data_convs, n, pair, task, _attention(graph))

    def count(self, *kinds: str) -> int:
        return sum(self.ops.get(k, 0) for k in kinds)

    def summary(self) -> str:
        parts = []
        if self.free_input_convs or self.data_convs:
            parts.append(f"{self.free_input_convs + self.data_convs} Conv ({self.free_input_convs} with "
                         f"a moving input)")
        for kinds, name in ((GATED_OPS, "gated recurrent"), (("RNN",), "RNN"),
                            (STAIRCASE_OPS, "staircase"), (("Sign",), "Sign")):
            if self.count(*kinds):
                parts.append(f"{self.count(*kinds)} {name}")
        if self.attention:
            parts.append(f"{self.attention} attention")
        parts.append(f"{self.params} trainable values")
        return ", ".join(parts)


def _attention(graph) -> int:
    users = graph.users()
    return sum(1 for op in graph.ops
               if op.kind == "Attention" or op.kind == "Softmax"
               and any(u.kind in ("MatMul", "Einsum") for u, _ in users.get(op.outputs[0], [])))


def _size(v) -> int:
    import math
    return math.prod(d if isinstance(d, int) else 1 for d in v.shape)


@dataclass(frozen=True)
class Rule:
    """One line of the table: when ``when(structure)`` holds, ``values`` (option -> value)."""

    name: str
    condition: str                      # ``when`` in words
    when: Callable[[Structure], bool]
    values: Mapping[str, Any]
    reason: str
    benchmark: str                      # the command whose measurement backs the rule

    @property
    def solver(self) -> str:
        return self.values.get("solver", Config().method.solver)


BENCH = "benchmarks/recipes.py --models "
# Douglas-Rachford keeps copies of both operands of every product of a conv whose input moves: up to
# this many products per sample (lenet_digits: 13,824) it fits; cnn2_digits has 294,912
SMALL_PAIRS = 32768

RULES: tuple[Rule, ...] = (
    Rule("reconstruction", "an output trained toward the input (an autoencoder)",
         lambda s: s.task == "reconstruction",
         {"solver": "dr", "update_scale": 1.0},
         "a reconstruction: every output element has its own target, so the plain update (a stretched "
         "one, as for pooled classifiers, diverged on ae_digits)",
         BENCH + "ae_digits"),
    Rule("gated-recurrent", "a GRU or LSTM cell",
         lambda s: s.count(*GATED_OPS) > 0,
         {"solver": "dr", "batch": 64, "steps_per_update": 100, "lam": 2.0, "schedule": "cosine",
          "init": "file", "update_scale": 1.0, "read_scale": 0.5},
         "GRU/LSTM cells: a gate product passes on a small part of each pull, so more steps per "
         "update, a gentler loss prox and a decaying step; a weight read at every step moves by its "
         "copies' mean correction times the square root of its reads per sample",
         BENCH + "gru_digits,lstm_digits"),
    Rule("recurrent", "an RNN cell",
         lambda s: s.count("RNN") > 0,
         {"solver": "dr", "batch": 64, "init": "file", "update_scale": 1.0, "read_scale": 0.5},
         "an unrolled RNN: more, smaller updates; a weight read at every step moves by its copies' "
         "mean correction times the square root of its reads per sample",
         BENCH + "rnn_digits,rnn_tanh_digits"),
    Rule("conv-pairs-small", f"a Conv whose input moves, at most {SMALL_PAIRS} products per sample",
         lambda s: s.free_input_convs > 0 and s.pair_copies <= SMALL_PAIRS,
         {"solver": "dr", "batch": 64, "init": "he", "update_scale": 1.0, "read_scale": 1.0},
         "convolutions whose both operands move, small enough for Douglas-Rachford's copies of "
         "every product; each filter moves by the sum of its copies' corrections per sample",
         BENCH + "lenet_digits"),
    Rule("conv-pairs-max", "a Conv whose input moves, pooled by maxima only",
         lambda s: s.free_input_convs > 0 and s.count(*MAX_POOLS) > 0 and s.count(*MEAN_POOLS) == 0,
         {"solver": "cp", "batch": 32, "init": "he", "update_scale": 1.0, "anderson": 1,
          "read_scale": 1.0},
         "a Conv whose input moves has two free operands: cyclic projections keep consensus means "
         "(with Anderson acceleration); a max corrects one position's copy of a filter per sample, "
         "so each filter moves by the sum of its copies' corrections per sample",
         BENCH + "cnn2_digits,fcn_maxlogits_digits,maxlogits_digits"),
    Rule("conv-pairs", "a Conv whose input moves (a conv after a conv)",
         lambda s: s.free_input_convs > 0,
         {"solver": "cp", "batch": 32, "init": "he", "update_scale": 1.5, "anderson": 1},
         "a Conv whose input moves has two free operands: Douglas-Rachford would keep a copy of "
         "both in every product, cyclic projections keep consensus means (with Anderson "
         "acceleration and a stretched update); an average pool corrects every position's copy, "
         "so no read scale",
         BENCH + "gap_digits,mbv2_digits"),
    Rule("conv-attention", "a Conv of the data feeding attention (a vision transformer's patches)",
         lambda s: s.data_convs > 0 and s.attention > 0,
         {"solver": "dr", "batch": 64, "init": "he", "update_scale": 2.0},
         "patch tokens from a Conv of the data, then attention: the stretched update of a conv model "
         "and smaller batches (an epoch costs the same, with more updates); no read scale, since "
         "attention corrects every patch's copy",
         BENCH + "vit_digits"),
    Rule("conv-data", "a Conv of the data only",
         lambda s: s.data_convs > 0,
         {"solver": "dr", "init": "he", "update_scale": 1.0, "read_scale": 1.0},
         "one Conv of the data: a pooled loss corrects few of a filter's copies (one output position of "
         "many), so each filter moves by the sum of its copies' corrections per sample, not their mean",
         BENCH + "cnn_digits"),
    # per-step targets are noisy (one context, many next characters): a per-sample prox at lam 5
    # makes confident logits whose cross-entropy rises while the accuracy does (docs/transformers.md)
    Rule("next-token", "per-step logits (a sequence task) through softmax attention, no Conv",
         lambda s: s.task == "sequence" and s.attention > 0 and s.count("Conv") == 0,
         {"solver": "dr", "batch": 16, "steps_per_update": 100, "schedule": "cosine", "init": "file",
          "update_scale": 1.0, "lam": 0.1},
         "a decoder's next-token targets: the attention options, with a gentle loss prox, since one "
         "context has many next tokens and a strong pull toward each sample's makes overconfident logits",
         BENCH + "gpt_text"),
    # no Conv: vit_digits (a Conv of the data, then attention) trained worse under this rule than
    # under conv-data (docs/transformers.md)
    # lam 1: tfm_digits 10 epochs, seeds 0-2, above lam 5 after every epoch (docs/transformers.md)
    Rule("attention", "softmax attention (an Attention, or a Softmax read by a MatMul), no Conv",
         lambda s: s.attention > 0 and s.count("Conv") == 0,
         {"solver": "dr", "batch": 16, "steps_per_update": 100, "schedule": "cosine", "init": "file",
          "update_scale": 1.0, "lam": 1.0},
         "attention: the split softmax and LayerNorm chains make a deep graph that 50 steps do not "
         "settle: twice the steps, more and smaller updates, a decaying step, and a gentler loss prox",
         BENCH + "tfm_digits"),
    Rule("staircase", "Round, Floor, Ceil or fake quantization",
         lambda s: s.count(*STAIRCASE_OPS) > 0,
         {"solver": "dr", "init": "data", "staircase": "ramp"},
         "a staircase activation: its pieces are flat, so the start must spread the "
         "pre-activations over several steps (init scaled on one batch), and a bounded staircase "
         "projects onto its ramp, which passes corrections back to the layer before it",
         BENCH + "round_mlp,quant_mlp,staircase_mlp"),
    Rule("regression", "a regression (float targets), no Conv or recurrent cell",
         lambda s: s.task == "regression",
         {"solver": "ap", "weight_decay": 0.05, "init": "file", "update_scale": 1.0},
         "float targets: Douglas-Rachford fits the noise of a small training set within a few epochs; "
         "alternating projections with weight decay hold the test fit",
         BENCH + "reg_diabetes"),
    Rule("dense", "anything else",
         lambda s: True,
         {"solver": "dr", "init": "file", "update_scale": 1.0},
         "dense layers and elementwise activations: the plain defaults",
         BENCH + "mlp_digits,tanh_mlp,binary_mlp"),
)


@dataclass(frozen=True)
class Recipe:
    """The rule chosen for a model and what it did to a config."""

    rule: Rule | None                   # None: recipe="none"
    structure: Structure
    config: Config                      # the resolved config
    applied: Mapping[str, Any] = field(default_factory=dict)   # option -> value the recipe set
    kept: Mapping[str, Any] = field(default_factory=dict)      # rule values the user overrode
    dropped: Mapping[str, Any] = field(default_factory=dict)   # rule values not applied (another solver)
    given: frozenset = frozenset()                              # the options the user set

    def line(self) -> str:
        """One line for the run's header: the rule, its reason, and what the user overrode."""
        if self.rule is None:
            return "no recipe (the plain defaults)"
        text = f"recipe {self.rule.name}: {self.rule.reason}"
        if self.kept:
            text += f"; overridden: {', '.join(sorted(self.kept))}"
        if self.dropped:
            text += f"; not applied under solver {self.config.method.solver}: {', '.join(sorted(self.dropped))}"
        return text

    def table(self) -> list[tuple[str, str, str]]:
        """(option, value, where from) for every option a rule may set (``projc inspect --recipe``)."""
        from projc.config import field_owners
        owner = field_owners()
        rows = []
        for name in sorted(RECIPE_OPTIONS):
            value = getattr(getattr(self.config, owner[name]), name)
            source = "recipe" if name in self.applied else "given" if name in self.given else "default"
            rows.append((name, str(value), source))
        return rows


def rule_for(structure: Structure) -> Rule:
    return next(r for r in RULES if r.when(structure))


def choose(config: Config, graph, task: str = "classification") -> Recipe:
    """The recipe for ``graph`` (the imported source graph) training ``task`` (a
    ``projc.train.tasks.Task.kind``) under the options ``config`` set."""
    structure = Structure.of(graph, task)
    if config.compilation.recipe == "none":
        return Recipe(None, structure, config, given=config.user_set())
    rule = rule_for(structure)
    user = config.user_set()
    own_solver = "solver" not in user or config.method.solver == rule.solver
    applied, kept, dropped = {}, {}, {}
    from projc.config import field_owners
    owner = field_owners()
    for name, value in rule.values.items():
        current = getattr(getattr(config, owner[name]), name)
        if name in user:
            if current != value:
                kept[name] = value
        elif name in SOLVER_BOUND and not own_solver:
            dropped[name] = value
        else:
            applied[name] = value
    return Recipe(rule, structure, config.with_defaults(applied), applied, kept, dropped, frozenset(user))


__all__ = ["RECIPE_OPTIONS", "RULES", "Recipe", "Rule", "SOLVER_BOUND", "Structure", "choose", "rule_for"]


# -- how long one update takes, estimated from the state's size before anything is compiled ----------

# seconds per stored state number per projection step on this project's 2-core machine under its usual
# load (docs/recipes.md, "Progress"): measured as s/step ÷ state numbers on lenet_digits and cnn2_digits
# (copies DR: 7.6e-9 and 8.3e-9; consensus CP: 1.4e-8 and 1.6e-8); a smooth activation's exact
# search costs about SMOOTH_FACTOR times a closed-form projection per number
SECONDS_PER_NUMBER = {"copies": 1e-8, "consensus": 1.6e-8}
SMOOTH_FACTOR = 8.0


def state_numbers(layout, params, batch_spec) -> dict[str, int]:
    """{family op kind: stored numbers} of ``layout``'s solver state for one batch of the shapes in
    ``batch_spec`` ({input or label name: jax.ShapeDtypeStruct}; traced abstractly, nothing runs)."""
    import jax
    import numpy as np

    spec = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in params.items()}
    shapes = jax.eval_shape(lambda p, b: layout.init_state(layout.make_ctx(p, b)), spec, batch_spec)
    kinds = {f.key: f.op.kind for f in layout.families}
    out: dict[str, int] = {}
    for key, slots in shapes.items():
        n = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(slots))
        out[kinds.get(key, "?")] = out.get(kinds.get(key, "?"), 0) + n
    return out


def estimate_seconds(numbers: Mapping[str, int], layout_name: str, steps: int) -> float:
    """Seconds per update from the state's numbers by family kind (``state_numbers``)."""
    weighted = sum(n * (SMOOTH_FACTOR if kind == "sum_smooth" else 1.0) for kind, n in numbers.items())
    return weighted * steps * SECONDS_PER_NUMBER.get(layout_name, SECONDS_PER_NUMBER["copies"])


def update_estimate(trainer, batch: int) -> tuple[float, str | None]:
    """(estimated seconds per update, the faster choice in words or None) for ``trainer`` at ``batch``.
    The faster choice: cyclic projections on the consensus state when the trainer keeps copies and
    that layout fits the graph, else a quarter of the batch."""
    if not trainer.entry.projection:
        return 0.0, None
    config = trainer.config
    steps = config.method.steps_per_update
    spec = trainer.batch_spec(batch)
    params = trainer._init
    seconds = estimate_seconds(state_numbers(trainer.layout, params, spec), trainer.layout.name, steps)
    if seconds <= 30.0:
        return seconds, None
    faster = None
    if trainer.layout.name == "copies":
        try:
            from projc.backends.jax.layout_consensus import ConsensusLayout
            alt = ConsensusLayout(trainer.graph, solver="cp")
            alt_s = estimate_seconds(state_numbers(alt, params, spec), "consensus", steps)
            if alt_s < seconds / 2:
                faster = f"--solver cp keeps consensus means instead of copies: about {alt_s:.3g} s per update"
        except Exception:  # noqa: BLE001 - no consensus layout for this graph: suggest the batch
            faster = None
    if faster is None and batch >= 8:
        faster = f"--batch {batch // 4}: about {seconds / 4:.3g} s per update"
    return seconds, faster
