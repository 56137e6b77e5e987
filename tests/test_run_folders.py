"""A run folder is the user's data: one process at a time (run.lock), cells that would share a folder
refused at expansion, and how a run that did not finish ended (error.json: failed or terminated) as the
report shows it. Real processes and signals: tests/e2e/test_run_folders_e2e.py."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest

from othink_mr1 import grid
from othink_mr1.report.runs import read_run_dir
from othink_mr1.report.tables import runs_table
from othink_mr1.utils.errors import USER_ERRORS, RunLockedError
from othink_mr1.utils.preemption import Terminated, terminate_on_signals
from othink_mr1.utils.run_dir import LOCK_FILE, RunLock, claim_run_dir, record_failure


def test_a_second_lock_on_a_held_folder_is_refused_naming_the_holder_and_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        held = (run_dir / LOCK_FILE).read_text()
        assert json.loads(held)["pid"] == os.getpid()
        with pytest.raises(RunLockedError) as refused:
            RunLock(run_dir).acquire()  # another open file: flock refuses it as it would another process
        message = str(refused.value)
        assert str(run_dir) in message and f"pid {os.getpid()} on " in message and "nothing was changed" in message
        assert (run_dir / LOCK_FILE).read_text() == held
    assert not (run_dir / LOCK_FILE).exists()  # released: the next run finds no holder to report
    assert isinstance(refused.value, USER_ERRORS)  # run.py: one `error:` line, exit 2
    with RunLock(run_dir):
        pass


def test_a_lock_left_by_a_dead_holder_is_taken_over_with_one_line(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # What a SIGKILLed run leaves: its holder text, no flock (the kernel dropped it with the process).
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": "node7", "pid": 4242, "started_at": "2026-12-07T01:00:00",
                                                 "argv": ["run.py", "seed=3"]}))
    with caplog.at_level(logging.WARNING, logger="othink_mr1.utils.run_dir"):
        with RunLock(run_dir) as lock:
            assert lock.previous["pid"] == 4242
            assert json.loads((run_dir / LOCK_FILE).read_text())["pid"] == os.getpid()
    [line] = [r.getMessage() for r in caplog.records]
    assert "is gone (pid 4242 on node7, started 2026-12-07T01:00:00: run.py seed=3); taking its lock over" in line


def test_an_unfinished_attempt_moves_aside_but_the_lock_stays_in_place(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(run_dir):
        (run_dir / "config.yaml").write_text("seed: 1\n")
        moved = claim_run_dir(run_dir)
        assert (moved / "config.yaml").exists() and (run_dir / LOCK_FILE).exists()
        assert not (moved / LOCK_FILE).exists()


def test_cells_sharing_a_run_folder_are_named_with_what_differs():
    first = ["task=counting", "seed=1", "method=grpo", "kl=grpo_d", "method.num_generations=2", "cell=grpo_d"]
    second = ["task=counting", "seed=1", "method=grpo", "method.num_generations=0", "cell=bad"]
    error = grid.shared_folder_error("counting_grpo_d_tiny_seed1", first, second)
    message = str(error)
    assert message.startswith("cells 'grpo_d' and 'bad' would share the run folder counting_grpo_d_tiny_seed1")
    assert "kl: grpo_d / (default)" in message and "method.num_generations: 2 / 0" in message
    assert "task:" not in message and "cell:" not in message  # only what differs
    assert "tag=<name>" in message


def test_terminated_carries_the_shell_exit_code_and_its_record():
    stop = Terminated(signal.SIGTERM, step=12, max_steps=300, checkpoint="/r/checkpoints/last.ckpt")
    assert stop.exit_code == 143 and Terminated(signal.SIGINT).exit_code == 130
    assert str(stop) == "terminated by SIGTERM at step 12 of 300"
    assert stop.record() == {"status": "terminated", "signal": "SIGTERM", "step": 12, "max_steps": 300,
                             "checkpoint": "/r/checkpoints/last.ckpt"}
    assert not isinstance(stop, Exception)  # no `except Exception` on the way takes it for a failure


def test_a_signal_outside_training_raises_terminated_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as stopped:
        with terminate_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs as soon as the call returns
            pytest.fail("SIGTERM did not stop the block")
    assert stopped.value.signum == signal.SIGTERM and stopped.value.checkpoint is None
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize("status", ["failed", "terminated"])
def test_the_report_shows_how_a_run_ended(tmp_path, status):
    run_dir = tmp_path / "counting_grpo_d_tiny_seed1"
    identity = {"run_name": run_dir.name, "mode": "train", "task": "counting", "method": "grpo_d", "kl": "grpo_d",
                "model": "tiny", "seed": 1}
    if status == "terminated":
        stop = Terminated(signal.SIGTERM, 5, 80, str(run_dir / "checkpoints" / "last.ckpt"))
        record_failure(run_dir, stop, ["seed=1"], identity, **stop.record(), resume="python run.py seed=1 resume=true")
    else:
        record_failure(run_dir, ValueError("counting ground truth must be an integer, got 'many'"), ["seed=1"], identity)
    record = json.loads((run_dir / "error.json").read_text())
    assert record["status"] == status and ("traceback" in record) == (status == "failed")
    run = read_run_dir(run_dir)
    assert run.status == status
    [row] = runs_table([run]).rows
    expected = ("terminated: Terminated: terminated by SIGTERM at step 5 of 80" if status == "terminated" else
                "failed: ValueError: counting ground truth must be an integer, got 'many'")
    assert expected in row
