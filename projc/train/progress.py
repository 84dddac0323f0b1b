"""Per-update progress of a training run: seconds per update and the time left.

On a terminal (stderr a tty) a tqdm bar per epoch shows the updates of the epoch, the batch accuracy,
the residual, seconds per update and the run's time left. Elsewhere (a log file, a pipe, CI) a plain
line goes to stderr every ``PLAIN_EVERY`` seconds of training, so a long run is never silent and a
short one prints nothing extra:

    projc train: update 37/220 (epoch 2/10), 4.1 s/update, 12m30s left, batch acc 0.812

The rate leaves out the first update of the process, which includes the jit compilation (its time is
said once, in the first plain line). ``first_update_warning`` is the one-line warning before training
when an update is estimated to take over ``SLOW_UPDATE`` seconds (``projc.train.trainer.Trainer.
estimate_update_seconds``).
"""
from __future__ import annotations

import sys
import time
from typing import Any

PLAIN_EVERY = 30.0   # seconds between plain progress lines (not a terminal)
SLOW_UPDATE = 30.0   # warn before training when one update is estimated to take longer


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """``update(done, epoch, post)`` after each update, ``epoch_end()`` before an epoch's evaluation
    line; ``close()`` at the end. ``enabled`` False prints nothing (benchmarks, ranks > 0)."""

    def __init__(self, total: int, per_epoch: int, epochs: int, *, done: int = 0, enabled: bool = True,
                 tty: bool | None = None, stream=None, every: float = PLAIN_EVERY, clock=time.perf_counter):
        self.total, self.per_epoch, self.epochs = total, per_epoch, epochs
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty() if tty is None else tty
        self.every, self.clock = every, clock
        self.start_done = done
        self.t0 = self.t_last = self.clock()
        self.t_first: float | None = None   # when the first update of this process ended
        self.first_seconds: float | None = None
        self.n_after_first = 0
        self.bar: Any = None  # a tqdm bar on a terminal
        self.bar_epoch: int | None = None

    # -- the rate ------------------------------------------------------------------------------
    def seconds_per_update(self) -> float | None:
        """Mean seconds per update after the first (compilation) one; None until one has run."""
        if self.t_first is None or not self.n_after_first:
            return None
        return (self.clock() - self.t_first) / self.n_after_first

    def left(self, done: int) -> float | None:
        rate = self.seconds_per_update()
        return None if rate is None else rate * (self.total - done)

    # -- per update ---------------------------------------------------------------------------
    def update(self, done: int, epoch: int, post: dict[str, str]) -> None:
        now = self.clock()
        if self.t_first is None:
            self.t_first, self.first_seconds = now, now - self.t0
        else:
            self.n_after_first += 1
        if not self.enabled:
            return
        if self.tty:
            self._bar_update(done, epoch, post)
        elif now - self.t_last >= self.every:
            self.t_last = now
            print(self.line(done, epoch, post), file=self.stream, flush=True)

    def line(self, done: int, epoch: int, post: dict[str, str]) -> str:
        rate, left = self.seconds_per_update(), self.left(done)
        text = f"projc train: update {done}/{self.total} (epoch {epoch + 1}/{self.epochs})"
        if rate is not None and left is not None:
            text += f", {rate:.3g} s/update, {duration(left)} left"
        elif self.first_seconds is not None:
            text += f", the first update (compilation included) took {duration(self.first_seconds)}"
        if "acc" in post:
            text += f", batch acc {post['acc']}"
        return text

    def _bar_update(self, done: int, epoch: int, post: dict[str, str]) -> None:
        from tqdm import tqdm

        if self.bar is None or self.bar_epoch != epoch:
            self.epoch_end()
            position = done - epoch * self.per_epoch
            self.bar = tqdm(desc=f"epoch {epoch + 1}/{self.epochs}", unit="upd", leave=False,
                            total=min(self.per_epoch, self.total - epoch * self.per_epoch),
                            initial=max(position - 1, 0), file=self.stream)
            self.bar_epoch = epoch
        rate, left = self.seconds_per_update(), self.left(done)
        shown = dict(post)
        if rate is not None and left is not None:
            shown["s/upd"] = f"{rate:.3g}"
            shown["run left"] = duration(left)
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update()

    def epoch_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.epoch_end()


def slow_update_warning(seconds: float, faster: str | None) -> str | None:
    """The warning before training, when one update is estimated over SLOW_UPDATE seconds."""
    if seconds <= SLOW_UPDATE:
        return None
    text = f"one update is estimated to take about {duration(seconds)} on this machine"
    return text + (f"; {faster}" if faster else "; try a smaller --batch or fewer --steps")
