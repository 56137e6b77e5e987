"""Plain progress lines (utils/progress.py): the line a log reader sees, when one is written, and that a
terminal keeps Lightning's bar. The lines themselves, from a real run.py with stdout in a file, are in
tests/e2e/test_progress_e2e.py."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from othink_mr1.utils.errors import ConfigError
from othink_mr1.utils.progress import (PlainProgress, check_every_s, duration, progress_line, progress_output)


def test_a_training_line_says_steps_rate_eta_and_the_interval_means():
    assert progress_line("train", "step", 20, 80, 32.8, 20, {"train/reward": 0.41666}) == \
        "[train] step 20/80 (25%), 1.6 s/step, ETA 1:38, train/reward 0.4167"
    assert progress_line("train", "step", 20, 80, 10.0, 20, {"train/loss": 2.5}) == \
        "[train] step 20/80 (25%), 2.00 steps/s, ETA 0:30, train/loss 2.5"
    # A resumed fit: 50 steps were done before this process; its rate and ETA count its own 10.
    assert progress_line("train", "step", 60, 100, 20.0, 10) == "[train] step 60/100 (60%), 2.0 s/step, ETA 1:20"
    # Nothing done yet, total unknown: no rate, no ETA.
    assert progress_line("eval", "batch", 0, None, 0.0, 0) == "[eval] batch 0, -- batches/s"


def test_durations_read_like_a_clock():
    assert [duration(s) for s in (0, 59.6, 98, 725, 3723)] == ["0:00", "1:00", "1:38", "12:05", "1:02:03"]


@pytest.mark.parametrize("bad", [-1, "abc", float("nan"), True])
def test_a_bad_interval_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match=r"trainer.progress_every_s="):
        check_every_s(bad)


def test_the_interval_accepts_seconds_zero_and_null():
    assert (check_every_s(30), check_every_s(0), check_every_s(None)) == (30.0, 0.0, None)


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_a_terminal_keeps_lightnings_bar_and_a_log_gets_plain_lines():
    assert progress_output(True, 30, stream=_Stream(tty=True)) == (True, [])
    bar, callbacks = progress_output(True, 30, stream=_Stream(tty=False))
    assert bar is False and [type(c) for c in callbacks] == [PlainProgress] and callbacks[0].every_s == 30
    assert progress_output(True, None, stream=_Stream(tty=False)) == (False, [])  # no lines asked for
    assert progress_output(False, 30, stream=_Stream(tty=False)) == (False, [])  # progress off: neither
    assert progress_output(False, 30, stream=_Stream(tty=True)) == (False, [])


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _trainer(**kwargs):
    base = dict(global_step=0, max_steps=6, is_global_zero=True, progress_bar_metrics={},
                state=SimpleNamespace(fn="fit"), num_val_batches=[2, 1])
    return SimpleNamespace(**{**base, **kwargs})


def test_lines_come_once_per_interval_with_the_mean_since_the_last_and_one_at_the_end():
    """Steps 1..6, 10 s apart, a line every 25 s: after steps 3 and 6 (the last), each with its own steps'
    mean reward. A micro-batch that ends no optimizer step adds nothing."""
    clock, lines = _Clock(), []
    progress = PlainProgress(25, clock=clock, write=lines.append)
    trainer = _trainer()
    progress.on_train_start(trainer, None)
    for step, reward in zip(range(1, 7), [0.1, 0.2, 0.3, 0.5, 0.5, 0.8]):
        clock.now += 10
        trainer.global_step, trainer.progress_bar_metrics = step, {"train/reward": reward}
        progress.on_train_batch_end(trainer, None, None, None, step)
        progress.on_train_batch_end(trainer, None, None, None, step)  # the same step again: mid-accumulation
    progress.on_train_end(trainer, None)
    assert lines == ["[train] step 3/6 (50%), 10.0 s/step, ETA 0:30, train/reward 0.2",
                     "[train] step 6/6 (100%), 10.0 s/step, ETA 0:00, train/reward 0.6"]


def test_a_fit_stopped_early_still_gets_its_last_line():
    clock, lines = _Clock(), []
    progress = PlainProgress(1000, clock=clock, write=lines.append)
    trainer = _trainer()
    progress.on_train_start(trainer, None)
    clock.now += 4
    trainer.global_step = 2
    progress.on_train_batch_end(trainer, None, None, None, 1)
    progress.on_train_end(trainer, None)
    assert lines == ["[train] step 2/6 (33%), 2.0 s/step, ETA 0:08"]


def test_an_evaluation_pass_gets_batch_lines_and_a_closing_line_named_after_its_stage():
    clock, lines = _Clock(), []
    progress = PlainProgress(0, clock=clock, write=lines.append)
    trainer, module = _trainer(), SimpleNamespace(eval_stage="row_zero")
    progress.on_validation_start(trainer, module)
    for batch in range(3):
        clock.now += 30
        progress.on_validation_batch_end(trainer, module, None, None, batch)
    progress.on_validation_end(trainer, module)
    assert lines == ["[eval row_zero] batch 1/3 (33%), 30.0 s/batch, ETA 1:00",
                     "[eval row_zero] batch 2/3 (66%), 30.0 s/batch, ETA 0:30",
                     "[eval row_zero] 3/3 batches in 1:30"]
    lines.clear()
    trainer.global_step = 4
    progress.on_validation_start(trainer, SimpleNamespace(eval_stage=None))  # an in-training pass
    progress.on_validation_end(trainer, None)
    assert lines == ["[eval step4] 0/3 batches in 0:00"]


def test_only_rank_zero_writes():
    clock, lines = _Clock(), []
    progress = PlainProgress(0, clock=clock, write=lines.append)
    trainer = _trainer(is_global_zero=False)
    progress.on_train_start(trainer, None)
    trainer.global_step = 6
    progress.on_train_batch_end(trainer, None, None, None, 0)
    progress.on_validation_start(trainer, None)
    progress.on_validation_end(trainer, None)
    assert lines == []
