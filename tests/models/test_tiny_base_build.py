"""The tiny_base build over a signal (jobs/tiny_base.py), without training: its batches are torch's shuffled
loader's, continued from any batch; what it says after a signal; a checkpoint of another config or a build
in flight is refused, untouched. The real SIGTERM to a real build is tests/e2e/test_tiny_base_signals_e2e.py."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from conftest import compose_config
from torch.utils.data import DataLoader

from othink_mr1.jobs import tiny_base as job
from othink_mr1.utils.errors import ConfigError, RunLockedError
from othink_mr1.utils.preemption import Terminated
from othink_mr1.utils.run_dir import RunLock


def _same(x):
    return x


@pytest.fixture
def no_git(monkeypatch):
    # git runs as a subprocess (the e2e tests run it for real)
    monkeypatch.setattr(job, "git_state", lambda root: {"sha": "0123456789" * 4, "dirty": False})


@pytest.mark.parametrize("n, batch_size, num_batches", [(200, 16, 60), (192, 16, 30), (9200, 16, 575), (10, 4, 7)])
def test_the_builds_batches_are_torchs_shuffled_loaders_epoch_after_epoch(n, batch_size, num_batches):
    """The order every tiny_base was built with (DataLoader(shuffle=True, generator=seed), one epoch after
    another, short last batch included): unchanged, so a rebuild still gives the shipped weights."""
    torchs = DataLoader(list(range(n)), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(3),
                        collate_fn=_same)
    expected = []
    while len(expected) < num_batches:
        expected += list(torchs)
    expected = expected[:num_batches]
    ours = list(job.PretrainingLoader(list(range(n)), batch_size, num_batches, 3, _same))
    assert ours == expected


@pytest.mark.parametrize("consumed", [0, 1, 12, 13, 14, 40, 59])
def test_a_loader_continued_at_batch_j_gives_batch_j_onwards_of_the_uninterrupted_one(consumed):
    """What a checkpoint's loader state restores (13 batches per epoch here: some starts cross epochs)."""
    whole = list(job.PretrainingLoader(list(range(200)), 16, 60, 0, _same))
    continued = job.PretrainingLoader(list(range(200)), 16, 60, 0, _same)
    continued.load_state_dict({"consumed": consumed})
    assert list(continued) == whole[consumed:]
    assert len(continued) == 60 and continued.state_dict() == {"consumed": consumed}


def test_what_a_signal_kept_is_said_with_the_command_that_goes_on(tmp_path):
    out, command = tmp_path / "tb", "python -m othink_mr1.jobs.tiny_base --out tb"
    partial = job.partial_folder(out)
    assert partial == tmp_path / ".tb.partial"
    mid = job.terminated_message(Terminated(signal.SIGTERM, 37, 60, str(partial / "last.ckpt")), out, command)
    assert mid == (f"[tiny_base] terminated by SIGTERM: nothing was written to {out}. The training state at step 37 of "
                   f"60 is kept in {partial}; the same command continues from step 37: {command} (or delete {partial} "
                   "to start over)")
    after = job.terminated_message(Terminated(signal.SIGINT, 60, 60, str(partial / "last.ckpt")), out, command)
    assert "terminated by SIGINT" in after and "Training had finished (60 of 60 steps)" in after
    assert "redoes only the evaluation" in after
    early = job.terminated_message(Terminated(signal.SIGTERM, None, 60, None), out, command)
    assert early.endswith(f"nothing was kept (no training step was saved); start again with: {command}")
    assert Terminated(signal.SIGTERM).exit_code == 143 and Terminated(signal.SIGINT).exit_code == 130


def test_a_checkpoint_of_another_build_config_is_refused_and_left_as_it_was(tmp_path, no_git):
    out = tmp_path / "tb"
    partial = job.partial_folder(out)
    partial.mkdir()
    built = job.tiny_base_build_config(compose_config(["model=tiny_base", "model.base_build.steps=60"]).model)
    (partial / "last.ckpt").write_bytes(b"state at step 20")
    record = {"build_config": built, "attempts": [{"commit": "a" * 40, "command": "python -m ... steps=60"}]}
    (partial / "partial.json").write_text(json.dumps(record))
    before = {p.name: p.read_bytes() for p in partial.iterdir()}
    cfg = compose_config(["model=tiny_base", "model.base_build.steps=70"]).model
    with pytest.raises(ConfigError, match=r"holds an interrupted build of --out .*base_build.steps: built with 60, this "
                                          r"config has 70.*python -m \.\.\. steps=60.*or delete .*\.tb\.partial"):
        job.build_folder(cfg, out, tmp_path)
    assert {p.name: p.read_bytes() for p in partial.iterdir()} == before and not out.exists()


def test_a_second_build_of_the_same_out_stops_at_once_naming_the_first(tmp_path, no_git):
    out = tmp_path / "tb"
    with RunLock(job.partial_folder(out)):  # the first build's hold on its folder
        with pytest.raises(RunLockedError, match=r"--out .*tb: another build of it is running \(pid \d+ on .*\) and "
                                                 r"holds .*\.tb\.partial; nothing was changed"):
            job.build_folder(compose_config(["model=tiny_base"]).model, out, tmp_path)
    assert not out.exists()
