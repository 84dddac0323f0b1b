"""The update loop of a training run: progress, per-epoch evaluation, history log, checkpoints,
guards against non-finite values and warnings for runs that do nothing or blow up.

    run = TrainingRun(config, trainer, data)    # config: projc.config.Config
    params = run.train()

``projc train`` and the benchmarks run the same loop.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from projc.config import Config
from projc.errors import DivergenceError
from projc.train.batches import UpdateSchedule

if TYPE_CHECKING:
    from projc.train.history import HistoryLog


def _print_warning(message: str | None) -> None:
    if message:
        print(f"projc train: warning: {message}", file=sys.stderr, flush=True)


def _print_note(message: str) -> None:
    print(f"projc train: note: {message}", file=sys.stderr, flush=True)


def run_lock_items(config: Config, output: str | None = None) -> list[tuple[str, str, str]]:
    """(path, what, option) of the files a run writes, for ``files.Locks``: one writer each."""
    from projc.train.checkpoint import checkpoint_path

    run = config.run
    items = []
    if output is not None:
        items.append((output, "the output", "-o"))
    if run.checkpoint:
        items.append((checkpoint_path(run.checkpoint), "the checkpoint", "--checkpoint folder"))
    if run.log:
        items.append((run.log, "the training log", "--log"))
    return items


class TrainingRun:
    """One run of ``trainer`` on ``data`` under ``config``; ``train()`` returns the params.

    ``rank``/``nproc``: this process's slice of each batch in a multi-process run; ``verbose``
    prints a line per epoch; ``warn`` receives one-line warnings, ``note`` one-line notes. The
    run holds the one-writer locks of its log and checkpoint (``files.PathLock``) while it trains."""

    def __init__(self, config: Config, trainer, data, *, warn: Callable[[str | None], None] = _print_warning,
                 rank: int = 0, nproc: int = 1, verbose: bool = True,
                 note: Callable[[str], None] = _print_note):
        config = trainer.resolved(config)  # the recipe's choices, where the run's config set nothing
        self.config, self.trainer, self.data, self.warn, self.note = config, trainer, data, warn, note
        self.rank, self.nproc, self.verbose = rank, nproc, verbose
        run, batch = config.run, config.dataset.batch
        n = len(data.y_train)
        per_epoch = -(-n // batch)
        self.total = run.updates if run.updates is not None else per_epoch * (run.epochs or run.DEFAULT_EPOCHS)
        self.schedule = UpdateSchedule(n, batch, self.total, run.seed)
        self.log: HistoryLog | None = None
        self.seconds_before = 0.0
        self.t_start = time.perf_counter()
        self.last_residual = None
        self.history: list[dict] = []   # every evaluation record, as the log writes them
        self._fp: dict | None = None

    # -- the run ---------------------------------------------------------------------------
    def train(self) -> dict:
        from projc.train.files import Locks

        with Locks(run_lock_items(self.config) if self.rank == 0 else []):
            return self._train()

    def _train(self) -> dict:
        from projc.train.history import HistoryLog
        from projc.train.watch import TrainingWatch

        params, state, initial_loss, resume_at = self._start()
        if self.config.run.log and self.rank == 0:
            self.log = HistoryLog(self.config.run.log, resume_at=resume_at)
        self.t_start = time.perf_counter()
        try:
            if initial_loss is None:  # a fresh run: record where it starts
                initial_loss = self._evaluate(params, epoch=0, show=False)
            self.watch = TrainingWatch(initial_loss)
            params = self._loop(params, state)
        finally:
            if self.log is not None:
                self.log.close()
        self.warn(self.watch.check_motion())
        return params

    def _start(self):
        """(params, state, initial loss or None, update count resumed at or None)."""
        trainer = self.trainer
        params = trainer.init_params(self.data.x_train[:self.config.dataset.batch])
        if not self.config.run.resume:
            return params, trainer.init_state(params), None, None
        from projc.train.checkpoint import checkpoint_path, load_checkpoint

        folder = self._checkpoint_folder()
        path = checkpoint_path(folder)
        if not os.path.lexists(path):
            self.note(f"{folder}: no checkpoint yet, so --resume starts a fresh run (its checkpoints "
                      f"go to {path})")
            return params, trainer.init_state(params), None, None
        ckpt = load_checkpoint(folder)
        params, state = self._restore(path, ckpt)
        print(f"resuming {path}: update {self.schedule.done} of {self.total}", flush=True)
        return params, state, ckpt.counters.get("initial_loss"), self.schedule.done

    def _restore(self, path: str, ckpt):
        """(params, state) from a loaded checkpoint, after checking that it fits this run; anything
        that does not (tampered values included) is one ProjcError naming the file."""
        import numpy as np

        from projc.errors import ProjcError
        from projc.train.checkpoint import DAMAGED_HINT, check_fingerprint, check_position

        check_fingerprint(self._checkpoint_folder(), ckpt.fingerprint, self.fingerprint())
        try:
            check_position(ckpt)
        except ProjcError as e:
            raise ProjcError(f"{path}: {e}; {DAMAGED_HINT}") from None
        trainer = self.trainer
        if sorted(ckpt.params) != sorted(trainer.param_names):
            raise ProjcError(f"{path}: the checkpoint holds parameters {', '.join(sorted(ckpt.params)) or 'none'}, "
                             f"the model {', '.join(sorted(trainer.param_names))}; {DAMAGED_HINT}")
        reference = trainer.param_shapes()
        for name, value in ckpt.params.items():
            if value.shape != reference[name] or not np.all(np.isfinite(value)):
                raise ProjcError(f"{path}: parameter {name!r} has shape {list(value.shape)} or non-finite "
                                 f"values, the model needs {list(reference[name])}; {DAMAGED_HINT}")
        done = ckpt.schedule["done"]
        try:
            state = trainer.state_from_leaves(dict(ckpt.params), ckpt.solver_state)
            self.schedule.load_state(ckpt.schedule)
        except ProjcError as e:
            raise ProjcError(f"{path}: {e}; {DAMAGED_HINT}") from None
        except Exception as e:  # noqa: BLE001 - a tampered generator state, leaves of other dtypes, ...
            raise ProjcError(f"{path}: the checkpoint's state cannot be restored ({type(e).__name__}: "
                             f"{str(e).strip()[:200]}); {DAMAGED_HINT}") from None
        sch = self.schedule
        if not (done <= self.total and sch.position < sch.per_epoch
                and done == sch.epoch * sch.per_epoch + sch.position):
            raise ProjcError(f"{path}: the checkpoint's position (update {done}, epoch {sch.epoch}, batch "
                             f"{sch.position}) does not fit this run of {self.total} updates; {DAMAGED_HINT}")
        self.seconds_before = float(ckpt.counters["seconds"])
        return dict(ckpt.params), state

    def _loop(self, params: dict, state) -> dict:
        import numpy as np

        from projc.train.progress import Progress

        trainer, data, schedule = self.trainer, self.data, self.schedule
        bar = self.progress = Progress(self.total, schedule.per_epoch, -(-self.total // schedule.per_epoch),
                                       done=schedule.done, enabled=self.verbose and self.rank == 0)
        for epoch, idx in schedule:
            idx = np.array_split(idx, self.nproc)[self.rank]  # this process's slice of the minibatch
            xb, yb = data.x_train[idx], data.y_train[idx]
            progress = min(max(schedule.done - 1, 0), self.total) / max(self.total, 1)
            try:
                new, state, stats = trainer.update(params, state, xb, yb, progress=progress)
            except DivergenceError as err:
                raise DivergenceError(f"stopped at update {schedule.done}: {err}; nothing exported") from None
            batch = trainer.evaluate(new, xb, yb)
            if not math.isfinite(batch["loss"]):
                raise DivergenceError(f"stopped at update {schedule.done}: the loss on the batch is "
                                      f"{batch['loss']}; try inputs scaled to about unit range or a "
                                      f"smaller --lam; nothing exported")
            self.last_residual = stats.get("residual")
            self.watch.step(params, new, self.last_residual)
            params = new
            headline = trainer.task.headline
            post = {headline.replace("accuracy", "acc"): f"{batch[headline]:.3f}"}
            if self.last_residual is not None:
                post["residual"] = f"{self.last_residual:.2e}"
            bar.update(schedule.done, epoch, post)
            ends, every = schedule.epoch_ends or schedule.done == self.total, self.config.run.eval_every
            if ends:
                bar.epoch_end()
            if ends or (every and schedule.done % every == 0):
                self._evaluate(params, epoch=epoch + 1)
            if self._checkpoint_due():
                self._save(params, state)
        return params

    # -- evaluation, log, checkpoints --------------------------------------------------------
    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t_start

    def _evaluate(self, params: dict, *, epoch: int, show: bool = True) -> float:
        from projc.train.history import finite_or_none
        from projc.train.tasks import epoch_line, log_fields

        train = self.trainer.evaluate(params, self.data.x_train, self.data.y_train)
        test = self.trainer.evaluate(params, self.data.x_test, self.data.y_test)
        if not math.isfinite(train["loss"]) and epoch > 0:
            raise DivergenceError(f"stopped at update {self.schedule.done}: the training loss is "
                                  f"{train['loss']}; nothing exported")
        seconds = self.seconds()
        if show and self.verbose and getattr(self, "progress", None) is not None:
            self.progress.epoch_end()  # a terminal's bar makes way for the evaluation line
        if show and self.verbose:
            print(f"epoch {epoch:3d}  {epoch_line(self.trainer.task, train, test)}  "
                  f"loss {train['loss']:.4f}  {seconds:.2f}s", flush=True)
        if show:
            self.warn(self.watch.check_loss(train["loss"]))
        record = dict(update=self.schedule.done, epoch=epoch,
                      **{k: finite_or_none(v) for k, v in log_fields(self.trainer.task, train, test).items()},
                      loss=finite_or_none(train["loss"]), seconds=round(seconds, 4))
        if self.trainer.entry.projection:
            record["residual"] = finite_or_none(self.last_residual)
        self.history.append(record)
        if self.log is not None:
            self.log.write(**record)
        return train["loss"]

    def _checkpoint_due(self) -> bool:
        run = self.config.run
        if not run.checkpoint or self.rank != 0:
            return False
        done = self.schedule.done
        if done == self.total:
            return True
        return done % run.checkpoint_every == 0 if run.checkpoint_every else self.schedule.epoch_ends

    def fingerprint(self) -> dict:
        """What shapes the run: the config's fingerprint (``Config.fingerprint``), the model's and the
        data's content, the update count and the resolved update scale."""
        if self._fp is None:
            fp = self.config.fingerprint()  # the resolved config: the values the run uses
            fp["loss"] = self.trainer.task.loss  # "auto" resolved (checkpoints before it resume)
            fp.pop("update_scale", None)
            if self.trainer.update_scale != 1.0:  # "auto" resolved for this model
                fp["update_scale"] = self.trainer.update_scale
            if fp.get("init") == getattr(self.trainer, "default_init", None):
                fp.pop("init")  # what "auto" meant before recipes: checkpoints of then still resume
            fp.update(model=self.trainer.source.digest, updates=self.total)
            digest = getattr(self.data, "digest", None)
            if digest:
                fp["data_digest"] = digest
            self._fp = fp
        return self._fp

    def _checkpoint_folder(self) -> str:
        folder = self.config.run.checkpoint
        assert folder is not None, "checkpoints and --resume need run.checkpoint (the config checks it)"
        return folder

    def _save(self, params: dict, state) -> None:
        import numpy as np

        from projc.train.checkpoint import Checkpoint, save_checkpoint

        ckpt = Checkpoint(params={k: np.asarray(v) for k, v in params.items()},
                          solver_state=self.trainer.state_leaves(state) or None,
                          schedule=self.schedule.state(),
                          counters={"seconds": self.seconds(), "initial_loss": self.watch.initial_loss},
                          fingerprint=self.fingerprint())
        save_checkpoint(self._checkpoint_folder(), ckpt)
