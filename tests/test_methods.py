"""Method descriptors (methods/method.py): every conf/method option has one, found by its name; run names
are what they were; the descriptors (and so run names and the report) load no torch."""

from __future__ import annotations

import json
import subprocess
import sys

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


def test_descriptors_and_run_names_load_no_torch_and_nothing_above_utils():
    """The registry finds descriptors by name, and run naming (which the torch-free report reads) asks
    them for tags: what they import at module level must stay below methods/ and torch-free."""
    code = ("import sys; from othink_mr1.methods.registry import find_method, method_names, method_tag; "
            "[(find_method(n), method_tag(n, 'grpo_d')) for n in method_names()]; "
            "import json; print(json.dumps(sorted(m for m in sys.modules if m.startswith('othink_mr1.') or m == 'torch')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout)
    assert "torch" not in loaded
    low_rooms = ("othink_mr1.config", "othink_mr1.rewards", "othink_mr1.utils", "othink_mr1.data")
    descriptors = {"othink_mr1.methods", "othink_mr1.methods.method", "othink_mr1.methods.registry"} | {
        f"othink_mr1.methods.{n}_method" for n in method_names()}
    above = [m for m in loaded if not m.startswith(low_rooms) and m not in descriptors]
    assert not above, above
