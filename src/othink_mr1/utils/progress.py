"""Progress in a log file: plain lines where stdout is not a terminal, Lightning's bar where it is.

Lightning's default bar is RichProgressBar (rich is installed; TQDMProgressBar without it). Under nohup,
SLURM, CI or `| tee` stdout is a file or a pipe, and rich then draws nothing until the loop ends: one frame
at the end, so a log stays silent for the whole training (a fresh-clone `make run` log showed no line for
36 minutes; measured here: a tiny_base build's log held only its last frame, `Epoch 3/3 ━ 1/13 ...`).
TQDM would instead redraw its line with carriage returns, which a log keeps as one ever-growing line. So
without a terminal the bar is off and `PlainProgress` prints one ordinary line per
`trainer.progress_every_s` seconds and at the end of each loop:

    [train] step 20/80 (25%), 1.6 s/step, ETA 1:38, train/reward 0.4167
    [eval row_zero] batch 3/14 (21%), 9.8 s/batch, ETA 1:48
    [eval row_zero] 14/14 batches in 2:17

The metrics shown are those the method logs with `prog_bar=True` (the ones the bar shows: GRPO's
train/reward, SFT's train/loss), averaged over the optimizer steps since the previous line. On a terminal
nothing changes: Lightning's bar, as before. `trainer.enable_progress_bar=false` silences both.

The one home of this choice: runner.build_trainer and the tiny_base build (jobs/tiny_base.py) both take
their Trainer's progress from `progress_output`.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable

import pytorch_lightning as pl

from .errors import ConfigError

# trainer.progress_every_s's default (config.py): often enough that a log shows a live run, rarely enough
# that an hour of training is about a hundred lines.
DEFAULT_EVERY_S = 30.0


def check_every_s(every_s: Any) -> float | None:
    """trainer.progress_every_s, checked: seconds between plain progress lines, >= 0 (0: a line per step or
    batch), or None (no lines)."""
    if every_s is None:
        return None
    if isinstance(every_s, bool) or not isinstance(every_s, (int, float)) or not math.isfinite(every_s) or every_s < 0:
        raise ConfigError(f"trainer.progress_every_s={every_s!r}: seconds between progress lines, a number >= 0 "
                          "(0: every step), or null for none")
    return float(every_s)


def progress_output(enabled: bool = True, every_s: float | None = DEFAULT_EVERY_S,
                    stream: Any = None) -> tuple[bool, list[pl.Callback]]:
    """A Trainer's progress output, as (enable_progress_bar, callbacks): on a terminal Lightning's bar; otherwise
    no bar and a PlainProgress every `every_s` seconds (None: no lines); nothing at all when not `enabled`."""
    every_s = check_every_s(every_s)
    if not enabled:
        return False, []
    if is_terminal(sys.stdout if stream is None else stream):
        return True, []
    return False, [] if every_s is None else [PlainProgress(every_s)]


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


# ------------------------------------------------------------------------------------------ the lines


def duration(seconds: float) -> str:
    """1:38, 12:05, 1:02:03 (hours:minutes:seconds, as a clock shows it)."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate_text(done: int, seconds: float, unit: str) -> str:
    """'1.64 steps/s' or, slower than one per second, '9.8 s/step': the figure stays readable either way."""
    units = unit + ("es" if unit.endswith("ch") else "s")
    if done <= 0 or seconds <= 0:
        return f"-- {units}/s"
    per_second = done / seconds
    return f"{per_second:.2f} {units}/s" if per_second >= 1 else f"{seconds / done:.1f} s/{unit}"


def progress_line(label: str, unit: str, done: int, total: int | None, seconds: float, counted: int,
                  metrics: dict[str, float] | None = None) -> str:
    """One progress line: `done` of `total` units (None: unknown), the rate over the `counted` units this
    process ran in `seconds`, the ETA at that rate, and `metrics` (name -> mean since the previous line)."""
    parts = [f"[{label}] {unit} {done}/{total} ({100 * done // total}%)" if total else f"[{label}] {unit} {done}",
             rate_text(counted, seconds, unit)]
    if total and counted > 0 and seconds > 0:
        parts.append(f"ETA {duration((total - done) * seconds / counted)}")
    parts += [f"{name} {value:.4g}" for name, value in (metrics or {}).items()]
    return ", ".join(parts)


class PlainProgress(pl.Callback):
    """Plain progress lines for a log (see the module's docstring): training by optimizer step, evaluation by
    batch, one line per `every_s` seconds and one at the end of each loop. Rank zero only."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic,
                 write: Callable[[str], None] | None = None):
        self.every_s = every_s
        self.clock = clock
        self.write = write or (lambda line: print(line, flush=True))
        self.train: _Loop | None = None
        self.eval: _Loop | None = None

    # ----------------------------------------------------------------------------------- training
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        self.train = _Loop("train", "step", total, trainer.global_step, self.clock())

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loop = self.train
        if loop is None or trainer.global_step == loop.done:  # mid-accumulation: no optimizer step yet
            return
        loop.done = trainer.global_step
        # What the method logged for this step with prog_bar=True (train/reward, train/loss).
        for name, value in trainer.progress_bar_metrics.items():
            loop.add(name, value)
        self._maybe_write(trainer, loop, final=loop.total is not None and loop.done >= loop.total)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.train is not None and self.train.written != self.train.done:  # stopped before max_steps
            self._maybe_write(trainer, self.train, final=True)
        self.train = None

    # --------------------------------------------------------------------------------- evaluation
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stage = getattr(pl_module, "eval_stage", None)  # EvaluationModule's name for this pass (row_zero, final)
        if stage is None and trainer.state.fn == "fit":
            stage = f"step{trainer.global_step}"  # an in-training pass, named as its results folder is
        total = sum(n for n in trainer.num_val_batches if math.isfinite(n)) or None
        label = "eval" if stage in (None, "eval") else f"eval {stage}"  # mode=eval's one pass is named eval
        self.eval = _Loop(label, "batch", total, 0, self.clock())

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.eval is not None:
            self.eval.done += 1
            if self.eval.done != self.eval.total:  # the last batch: on_validation_end says it
                self._maybe_write(trainer, self.eval, final=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop, self.eval = self.eval, None
        if loop is not None and trainer.is_global_zero:
            self.write(f"[{loop.label}] {loop.done}/{loop.total or loop.done} batches in "
                       f"{duration(self.clock() - loop.started)}")

    # ------------------------------------------------------------------------------------ helpers
    def _maybe_write(self, trainer: pl.Trainer, loop: "_Loop", final: bool) -> None:
        now = self.clock()
        if not (final or now - loop.last_written >= self.every_s) or not trainer.is_global_zero:
            return
        self.write(progress_line(loop.label, loop.unit, loop.done, loop.total, now - loop.started,
                                 loop.done - loop.first, loop.means()))
        loop.last_written, loop.written = now, loop.done
        loop.sums.clear()


class _Loop:
    """One loop's progress: units done (of total), since when, and the metric sums since the last line."""

    def __init__(self, label: str, unit: str, total: int | None, first: int, started: float):
        self.label, self.unit, self.total = label, unit, total
        self.first = self.done = self.written = first  # a resumed fit starts at its checkpoint's step
        self.started = self.last_written = started
        self.sums: dict[str, list[float]] = {}

    def add(self, name: str, value: Any) -> None:
        entry = self.sums.setdefault(name, [0.0, 0])
        entry[0] += float(value)
        entry[1] += 1

    def means(self) -> dict[str, float]:
        return {name: total / count for name, (total, count) in self.sums.items() if count}
