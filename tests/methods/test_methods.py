"""Method descriptors (methods/method.py): every conf/method option has one, found by its name; run names
are what they were; the descriptors (and so run names and the report) load no torch."""

from __future__ import annotations

import pytest
from conftest import CONF, compose_config

from othink_mr1.methods.registry import find_method, method_names, method_tag
from othink_mr1.utils.errors import ConfigError


def test_every_method_option_has_a_descriptor_under_its_name():
    options = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
    assert method_names() == options
    for name in options:
        assert compose_config([f"method={name}"]).method.name == name == find_method(name).name


@pytest.mark.parametrize("overrides, run_name", [
    (["method=sft"], "counting_sft_tiny_base_seed42"),
    ([], "counting_grpo_d_tiny_base_seed42"),
    (["kl=constant"], "counting_grpo_tiny_base_seed42"),
    (["kl=none"], "counting_grpo_kl-none_tiny_base_seed42"),
    (["kl=adaptive", "tag=x"], "counting_grpo_kl-adaptive_tiny_base_seed42_x"),
])
def test_run_names_are_unchanged(overrides, run_name):
    assert compose_config(overrides).run_name == run_name


def test_an_unknown_method_is_named_and_an_old_runs_method_keeps_its_name():
    with pytest.raises(ConfigError, match=r"method.name='ppo': expected one of \[.*'grpo'.*'sft'"):
        find_method("ppo")
    assert method_tag("ppo", "none") == "ppo"  # a run of a method this checkout lacks, read by the report


def test_trainer_settings_and_updates_per_batch():
    sft, grpo = compose_config(["method=sft", "method.accumulate_grad_batches=3"]).method, compose_config(
        ["method.num_iterations=2"]).method
    assert find_method("sft").trainer_settings(sft) == {"accumulate_grad_batches": 3, "gradient_clip_val": 1.0}
    assert find_method("grpo").trainer_settings(grpo) == {}  # manual optimization
    assert find_method("sft").updates_per_batch(sft) == 1 and find_method("grpo").updates_per_batch(grpo) == 2


