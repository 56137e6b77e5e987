"""The runner's steps short of a job: where resume=auto continues and what it sets aside, task overrides that
a run would ignore (the runs themselves: tests/e2e/test_run.py)."""

from __future__ import annotations

import pytest
import torch

from othink_mr1.utils.errors import ConfigError

TINY = ["model=tiny", "method=sft"]  # these tests look at the SFT path; test_grpo.py covers GRPO


def test_resume_auto_continues_only_where_a_checkpoint_is_and_sets_a_failed_record_aside(make_cfg, tmp_path):
    from othink_mr1.config_checks import check_config
    from othink_mr1.runner import resume_checkpoint
    from othink_mr1.utils.run_dir import claim_run_dir

    cfg, run_dir = make_cfg(*TINY, "resume=auto"), tmp_path / "cell"
    assert resume_checkpoint(cfg, run_dir) is None  # no checkpoint yet: a fresh start
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {"model.w": torch.ones(2)}}, ckpt)  # resume checks the file: a real checkpoint
    saved = ckpt.read_bytes()
    assert resume_checkpoint(cfg, run_dir) == ckpt
    evaluation = make_cfg("mode=eval", *TINY, "resume=auto")  # a sweep's base cell: accepted, a no-op
    check_config(evaluation)
    assert resume_checkpoint(evaluation, run_dir) is None
    # A failed attempt that is resumed keeps its files; its error record moves aside, not away.
    (run_dir / "error.json").write_text('{"status": "failed"}')
    (run_dir / "meta.json").write_text("{}")
    moved = claim_run_dir(run_dir, keep=True)
    assert (moved / "error.json").read_text() == '{"status": "failed"}'
    assert not (run_dir / "error.json").exists() and (run_dir / "meta.json").exists() and ckpt.read_bytes() == saved


@pytest.mark.parametrize("overrides, message", [
    (["mode=eval", "task.eval_size=5", "tasks.counting.eval_size=4"],
     "tasks.counting.eval_size=4 and task.eval_size=5 disagree: in mode=eval both set task 'counting'"),
    (["mode=eval", "task.eval_size=5", "eval.tasks=[geometry]"],
     r"task.eval_size=5: mode=eval scores eval.tasks=\['geometry'\], which leaves out 'counting'.*"
     r"set tasks.<name>.eval_size"),
    (["tasks.counting.eval_size=4"], "'counting' is the trained task, so task.* describes it .*set task.eval_size"),
])
def test_task_overrides_that_would_be_ignored_are_errors(make_cfg, overrides, message):
    from othink_mr1.config_checks import check_config

    with pytest.raises(ConfigError, match=message):
        check_config(make_cfg(*overrides), overrides)
    # Without the command line (a config composed elsewhere) nothing is known to clash.
    check_config(make_cfg(*overrides))


@pytest.mark.parametrize("env, setting, expected", [
    ({"SLURM_CPUS_PER_TASK": "1"}, None, 1),  # a SLURM job: its CPUs, not the node's cores
    ({"SLURM_CPUS_PER_TASK": "1", "OMP_NUM_THREADS": "2"}, None, "default"),  # the user's OMP_NUM_THREADS wins
    ({"SLURM_CPUS_PER_TASK": "1"}, 3, 3),  # so does trainer.num_threads
    ({}, None, "default"),  # outside SLURM: torch's default
])
def test_torch_threads_follow_the_setting_then_a_slurm_jobs_cpus(make_cfg, monkeypatch, capsys, env, setting,
                                                                   expected):
    from othink_mr1.runner import set_threads

    for name in ("SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the default a 2-core node gives
    try:
        set_threads(make_cfg(*TINY, f"trainer.num_threads={setting if setting else 'null'}"))
        assert torch.get_num_threads() == (2 if expected == "default" else expected)
        said = capsys.readouterr().out
        assert ("SLURM_CPUS_PER_TASK" in said) == (setting is None and expected == 1), said
    finally:
        torch.set_num_threads(before)
