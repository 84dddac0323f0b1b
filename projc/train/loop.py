"""The update loop of ``projc train``: progress, per-epoch evaluation, history log, checkpoints,
guards against non-finite values and warnings for runs that do nothing or blow up."""
from __future__ import annotations

import math
import sys
import time

from projc.errors import DivergenceError
from projc.train.batches import UpdateSchedule, schedule_factor

DEFAULT_EPOCHS = 10


class TrainingRun:
    """One ``projc train`` run over ``data`` with the CLI's ``args``; ``train()`` returns the params."""

    def __init__(self, trainer, data, args, *, warn, rank: int = 0, nproc: int = 1):
        self.trainer, self.data, self.args, self.warn = trainer, data, args, warn
        self.rank, self.nproc = rank, nproc  # a multi-process run: this process's slice of each batch
        n = len(data.y_train)
        per_epoch = -(-n // args.batch)
        total = args.updates if args.updates is not None else per_epoch * (args.epochs or DEFAULT_EPOCHS)
        self.schedule = UpdateSchedule(n, args.batch, total, args.seed)
        self.total = total
        self.log = None
        self.seconds_before = 0.0
        self.t_start = time.perf_counter()
        self.last_residual = None

    # -- the run ---------------------------------------------------------------------------
    def train(self) -> dict:
        from projc.train.history import HistoryLog
        from projc.train.watch import TrainingWatch

        params, initial_loss, resume_at = self._start()
        if self.args.log and self.rank == 0:
            self.log = HistoryLog(self.args.log, resume_at=resume_at)
        self.t_start = time.perf_counter()
        try:
            if initial_loss is None:  # a fresh run: record where it starts
                initial_loss = self._evaluate(params, epoch=0, show=False)
            self.watch = TrainingWatch(initial_loss)
            params = self._loop(params)
        finally:
            if self.log is not None:
                self.log.close()
        self.warn(self.watch.check_motion())
        return params

    def _start(self):
        """(params, initial loss or None, update count resumed at or None)."""
        trainer, args = self.trainer, self.args
        params = trainer.init_params()
        if not args.resume:
            return params, None, None
        from projc.train.checkpoint import check_fingerprint, checkpoint_path, load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        check_fingerprint(args.checkpoint, ckpt.fingerprint, self.fingerprint())
        trainer.set_solver_state(ckpt.solver_state)
        self.schedule.load_state(ckpt.schedule)
        self.seconds_before = float(ckpt.counters["seconds"])
        print(f"resuming {checkpoint_path(args.checkpoint)}: update {self.schedule.done} of "
              f"{self.total}", flush=True)
        return dict(ckpt.params), ckpt.counters.get("initial_loss"), self.schedule.done

    def _loop(self, params: dict) -> dict:
        from tqdm import tqdm

        trainer, data, schedule = self.trainer, self.data, self.schedule
        import numpy as np

        tty = sys.stderr.isatty() and self.rank == 0
        bar, current = None, None
        for epoch, idx in schedule:
            if epoch != current:
                current = epoch
                bar = tqdm(desc=f"epoch {epoch + 1}", unit="upd", disable=not tty, leave=False,
                           total=schedule.per_epoch, initial=schedule.position - 1)
            idx = np.array_split(idx, self.nproc)[self.rank]  # this process's slice of the minibatch
            xb, yb = data.x_train[idx], data.y_train[idx]
            try:
                new, stats = trainer.update(params, xb, yb, scale=schedule_factor(
                    getattr(self.args, "schedule", "constant"), schedule.done - 1, self.total))
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
            post = {"acc": f"{batch['accuracy']:.3f}"}
            if self.last_residual is not None:
                post["residual"] = f"{self.last_residual:.2e}"
            bar.set_postfix(**post)
            bar.update()
            if schedule.epoch_ends or schedule.done == self.total:
                bar.close()
                self._evaluate(params, epoch=epoch + 1)
            if self._checkpoint_due():
                self._save(params)
        return params

    # -- evaluation, log, checkpoints --------------------------------------------------------
    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.t_start

    def _evaluate(self, params: dict, *, epoch: int, show: bool = True) -> float:
        from projc.train.history import finite_or_none

        train = self.trainer.evaluate(params, self.data.x_train, self.data.y_train)
        test = self.trainer.evaluate(params, self.data.x_test, self.data.y_test)
        if not math.isfinite(train["loss"]) and epoch > 0:
            raise DivergenceError(f"stopped at update {self.schedule.done}: the training loss is "
                                  f"{train['loss']}; nothing exported")
        seconds = self.seconds()
        if show:
            print(f"epoch {epoch:3d}  train acc {train['accuracy']:.4f}  test acc {test['accuracy']:.4f}  "
                  f"loss {train['loss']:.4f}  {seconds:.2f}s", flush=True)
            self.warn(self.watch.check_loss(train["loss"]))
        if self.log is not None:
            record = dict(update=self.schedule.done, epoch=epoch, train_accuracy=train["accuracy"],
                          test_accuracy=test["accuracy"], loss=finite_or_none(train["loss"]),
                          seconds=round(seconds, 4))
            if self.trainer.solver_name != "adam":
                record["residual"] = finite_or_none(self.last_residual)
            self.log.write(**record)
        return train["loss"]

    def _checkpoint_due(self) -> bool:
        if not self.args.checkpoint or self.rank != 0:
            return False
        every, done = self.args.checkpoint_every, self.schedule.done
        if done == self.total:
            return True
        return done % every == 0 if every else self.schedule.epoch_ends

    def fingerprint(self) -> dict:
        """The options that shape a run: a checkpoint resumes only under the same ones."""
        from projc.train.checkpoint import file_digest

        a = self.args
        return {"model": file_digest(a.model), "data": a.data, "seed": a.seed, "batch": a.batch,
                "updates": self.total, "solver": a.solver, "steps": a.steps, "loss": a.loss,
                "lam": a.lam, "relaxation": a.relaxation, "layout": a.layout, "lr": a.lr,
                "repair": not a.no_repair, "freeze": sorted(a.freeze), **self._acceleration()}

    def _acceleration(self) -> dict:
        """The time-to-accuracy and BatchNorm options that differ from their defaults (so that
        checkpoints written before they existed still resume)."""
        defaults = {"tol": None, "omega": 1.0, "inertia": 0.0, "anderson": 0, "update_scale": 1.0,
                    "train_batchnorm": False, "weight_decay": 0.0, "schedule": "constant"}
        values = {k: getattr(self.args, k, d) for k, d in defaults.items()}
        values["update_scale"] = self.trainer.options["update_scale"]  # "auto" resolved for this model
        return {k: v for k, v in values.items() if v != defaults[k]}

    def _save(self, params: dict) -> None:
        import numpy as np

        from projc.train.checkpoint import Checkpoint, save_checkpoint

        ckpt = Checkpoint(params={k: np.asarray(v) for k, v in params.items()},
                          solver_state=self.trainer.solver_state(), schedule=self.schedule.state(),
                          counters={"seconds": self.seconds(), "initial_loss": self.watch.initial_loss},
                          fingerprint=self._fingerprint_cache())
        save_checkpoint(self.args.checkpoint, ckpt)

    def _fingerprint_cache(self) -> dict:
        if not hasattr(self, "_fp"):
            self._fp = self.fingerprint()
        return self._fp


