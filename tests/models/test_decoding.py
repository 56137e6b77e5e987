"""The fixed-shape rollout decoder (models/decoding.py) against transformers' generate(): the same tokens and
the same generator state for the same seed, with every sampling rule, early ends, compaction into smaller
batches, host checks every k tokens, and compiled against eager."""

from __future__ import annotations

import copy
import os
import logging

import pytest
import torch
from conftest import CACHE, compose_config
from support.decoding import OPTIONS, ours, reference
from support.prefix_sharing import prompt_batch

from othink_mr1.data.collate import PromptCollator
from othink_mr1.data.tasks import TaskSplit, load_split
from othink_mr1.models import decoding
from othink_mr1.models.decoding import buckets, decode_record
from othink_mr1.models.rollouts import suppressed_token_ids


@pytest.mark.parametrize("options", OPTIONS)
def test_tiny_draws_generates_tokens_with_every_sampling_rule(tiny, options):
    """The random-weight model rarely ends a turn: full-length rows, on geometry prompts of three lengths."""
    model, processor = tiny[0].eval(), tiny[1]
    batch = prompt_batch(processor, "geometry")
    torch.manual_seed(5)
    expected, expected_state = reference(model, processor, batch, 20, **options)
    torch.manual_seed(5)
    got, state = ours(model, processor, batch, 20, check_every=4, **options)
    assert torch.equal(got, expected) and torch.equal(state, expected_state)
    assert not torch.isin(got, torch.tensor(suppressed_token_ids(processor))).any()


def test_buckets_halve_from_the_batch_down_to_the_smallest():
    assert buckets(128) == [128, 64, 32, 16, 8, 4]
    assert buckets(24) == [24, 16, 8, 4]
    assert buckets(3) == [3]


def test_auto_compiles_on_cuda_only_and_the_run_records_it():
    assert decode_record("auto", torch.device("cpu")) == {"compile": "auto", "compiled": False, "fallback": None,
                                                          "loop": "static"}
    assert decode_record("on", torch.device("cpu"))["compiled"] and not decode_record("off", torch.device("cpu"))["compiled"]
    assert decoding.compiles("auto", torch.device("cuda"))
    with pytest.raises(ValueError, match="expected one of"):
        decoding.compiles("sometimes", torch.device("cpu"))


def test_the_decoder_names_what_it_cannot_run(tiny):
    language_model = copy.deepcopy(tiny[0]).model.language_model
    assert decoding.supports_static_decoding(language_model) is None
    language_model.config._attn_implementation = "flash_attention_2"
    assert decoding.supports_static_decoding(language_model) == "attention implementation flash_attention_2"
    language_model.config._attn_implementation = "sdpa"
    language_model.config.layer_types = ["full_attention", "sliding_attention"]
    assert decoding.supports_static_decoding(language_model) == "sliding-window layers"


def test_a_model_the_decoder_cannot_run_samples_with_generate_and_says_why(tmp_path, tiny, caplog, monkeypatch):
    """(flash-attention takes a 2-D padding mask; sliding windows another cache): rollouts take generate(),
    logged once and recorded in results.json; the log-prob passes still share the prompt."""
    from othink_mr1.methods import grpo
    from othink_mr1.runner import build_module

    monkeypatch.setattr(grpo, "static_decoding_blocker", lambda model: "attention implementation flash_attention_2")
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    cfg = compose_config(["model=tiny", "kl=constant", "kl.beta=0.0"], output_dir=tmp_path)
    module = build_module(cfg, model, processor, type("B", (), {"total_steps": 2})(), None, {})
    split = TaskSplit(cfg.task, "train", load_split(cfg.task, "train", str(CACHE)))
    batch = PromptCollator(processor, cfg.task.prompt)([split[0], split[1]])
    assert module.shares_prompts(batch)
    with caplog.at_level(logging.WARNING):
        torch.manual_seed(4)
        ids = module.sample(batch)
        module.sample(batch)
    assert module.train_record()["decode"] == {"compile": "auto", "compiled": False, "fallback": None, "loop": "generate",
                                               "why": "attention implementation flash_attention_2"}
    torch.manual_seed(4)  # the same draws as the fixed-shape decoder would make: generate() is its reference
    monkeypatch.setattr(grpo, "static_decoding_blocker", lambda model: None)
    module._static_blocker = None
    assert torch.equal(ids, module.sample(batch))
    assert [r.getMessage() for r in caplog.records if "generate()" in r.getMessage()] == [
        "GRPO rollouts are sampled with generate(), not the fixed-shape decoder: attention implementation flash_attention_2"]


def test_the_compiled_cpu_step_caches_per_kernel_path_unless_the_user_set_a_cache(monkeypatch, tmp_path):
    """Inductor's cache key misses ATEN_CPU_CAPABILITY: a step compiled on one kernel path and reused on another
    crashed (models/decoding.py). Each path gets its own folder under the default; a user's own choice stays."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from othink_mr1.models.decoding import separate_inductor_cache_per_kernel_path

    for capability in ("AVX512", "AVX2"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        expected = os.path.join(default_cache_dir(), f"cpu-{capability.lower()}")
        monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # unset
        separate_inductor_cache_per_kernel_path()
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == expected
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # inductor's default, written by inductor
        separate_inductor_cache_per_kernel_path()
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == expected
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    separate_inductor_cache_per_kernel_path()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path)
