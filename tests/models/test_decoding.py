"""The fixed-shape rollout decoder (models/decoding.py) against transformers' generate(): the same tokens and
the same generator state for the same seed, with every sampling rule, early ends, compaction into smaller
batches, host checks every k tokens, and compiled against eager."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import CACHE, compose_config
from support.prefix_sharing import prompt_batch

from othink_mr1.data.batch_layout import model_inputs, repeat_samples
from othink_mr1.data.collate import PromptCollator
from othink_mr1.data.tasks import TaskSplit, load_split
from othink_mr1.models import decoding
from othink_mr1.models.decoding import StaticKV, buckets, decode_record
from othink_mr1.models.factory import load_model
from othink_mr1.models.prefix_sharing import sample_groups
from othink_mr1.models.rollouts import stop_token_ids, suppressed_token_ids

G = 4
OPTIONS = [{}, {"top_k": 7}, {"top_p": 0.8, "temperature": 0.7}, {"min_new_tokens": 12}]


@pytest.fixture(scope="module")
def tiny_base():
    """tiny_base (trained to answer, so its completions end at different lengths)."""
    from othink_mr1.jobs.tiny_base import ensure_built

    cfg = compose_config(["model=tiny_base"])
    ensure_built(cfg, CACHE)
    return load_model(cfg.model, str(CACHE))


def reference(model, processor, batch, max_new_tokens, **options):
    """generate() on the G-times repeated prompts: its tokens and the generator state after it."""
    tok = processor.tokenizer
    prompts = repeat_samples(batch, G)
    ids = model.generate(**prompts, do_sample=True, max_new_tokens=max_new_tokens,
                         suppress_tokens=suppressed_token_ids(processor), top_k=options.get("top_k"),
                         top_p=options.get("top_p", 1.0), temperature=options.get("temperature", 1.0),
                         min_new_tokens=options.get("min_new_tokens", 0), pad_token_id=tok.pad_token_id,
                         eos_token_id=stop_token_ids(model, tok), repetition_penalty=1.0)
    return ids[:, prompts["input_ids"].shape[1]:], torch.get_rng_state()


def ours(model, processor, batch, max_new_tokens, **options):
    tok = processor.tokenizer
    ids = sample_groups(model, model_inputs(batch), G, max_new_tokens, eos_token_id=stop_token_ids(model, tok),
                        pad_token_id=tok.pad_token_id, suppress_token_ids=suppressed_token_ids(processor), **options)
    return ids, torch.get_rng_state()


@pytest.fixture
def compactions(monkeypatch):
    """Counts the batch gathers into smaller buckets."""
    calls = []
    select = StaticKV.select

    def counted(self, rows):
        calls.append(rows.shape[0])
        return select(self, rows)

    monkeypatch.setattr(StaticKV, "select", counted)
    return calls


@pytest.mark.parametrize("options", OPTIONS)
def test_tiny_base_draws_generates_tokens_through_early_ends_and_compaction(tiny_base, options, compactions):
    model, processor = tiny_base[0].eval(), tiny_base[1]
    batch = prompt_batch(processor, "counting", n=6)
    torch.manual_seed(11)
    expected, expected_state = reference(model, processor, batch, 48, **options)
    assert (expected == processor.tokenizer.pad_token_id).any(dim=1).any()  # some rows end early
    for check_every in (1, 3, 8):
        compactions.clear()
        torch.manual_seed(11)
        got, state = ours(model, processor, batch, 48, check_every=check_every, **options)
        assert got.shape == expected.shape and torch.equal(got, expected), check_every
        assert torch.equal(state, expected_state), check_every  # draws after the last end are rewound
        assert all(size in buckets(6 * G) for size in compactions)  # 24 rows -> 16, 8 or 4
        if check_every < 8:  # (with checks 8 tokens apart a low-temperature run's rows often end in one block)
            assert compactions, check_every


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


def test_a_failing_compiler_falls_back_once_under_auto_and_fails_under_on(tiny_base, monkeypatch, caplog):
    model, processor = tiny_base[0].eval(), tiny_base[1]
    batch = prompt_batch(processor, "counting", n=2)
    calls = []

    def broken(device):
        def step(*args):
            calls.append(1)
            raise RuntimeError("inductor: no C++ compiler")
        return step

    monkeypatch.setattr(decoding, "compiled_step", broken)
    monkeypatch.setattr(decoding, "_FALLBACK", {})
    monkeypatch.setattr(decoding, "compiles", lambda switch, device: switch == "on" or (
        switch == "auto" and device.type not in decoding._FALLBACK))  # auto compiles on this CPU too
    torch.manual_seed(2)
    expected, _ = ours(model, processor, batch, 24, compile_mode="off")
    with caplog.at_level(logging.WARNING, logger=decoding.__name__):
        for _ in range(2):
            torch.manual_seed(2)
            got, _ = ours(model, processor, batch, 24, compile_mode="auto")
            assert torch.equal(got, expected)
    assert len(calls) == 1  # tried once, then eager for the rest of the process
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0].getMessage()
    assert decode_record("auto", torch.device("cpu"))["fallback"] == "RuntimeError: inductor: no C++ compiler"
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler"):
        ours(model, processor, batch, 24, compile_mode="on")


def test_auto_compiles_on_cuda_only_and_the_run_records_it():
    assert decode_record("auto", torch.device("cpu")) == {"compile": "auto", "compiled": False, "fallback": None,
                                                          "loop": "static"}
    assert decode_record("on", torch.device("cpu"))["compiled"] and not decode_record("off", torch.device("cpu"))["compiled"]
    assert decoding.compiles("auto", torch.device("cuda"))
    with pytest.raises(ValueError, match="expected one of"):
        decoding.compiles("sometimes", torch.device("cpu"))


@pytest.mark.slow  # compiles the decode step (about half a minute per model on 2 cores)
@pytest.mark.parametrize("which", ["tiny", "tiny_base"])
def test_compiled_decoding_draws_the_eager_tokens(which, tiny, tiny_base, compactions):
    loaded = tiny if which == "tiny" else tiny_base
    model, processor = copy.deepcopy(loaded[0]).eval(), loaded[1]
    batch = prompt_batch(processor, "counting", n=6)
    results = {}
    for mode in ("off", "on"):
        compactions.clear()
        for options in ({}, {"top_k": 7, "temperature": 0.9}, {"top_p": 0.9, "min_new_tokens": 6}):
            torch.manual_seed(21)
            results.setdefault(mode, []).append(ours(model, processor, batch, 48, compile_mode=mode, check_every=4,
                                                     **options))
    for (eager_ids, eager_state), (compiled_ids, compiled_state) in zip(results["off"], results["on"]):
        assert torch.equal(compiled_ids, eager_ids) and torch.equal(compiled_state, eager_state)
    if which == "tiny_base":
        assert compactions  # the compiled step also ran on smaller buckets


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
