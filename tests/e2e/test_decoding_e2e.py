"""Decoding on tiny_base (a built model, so completions end at different lengths): the static decoder draws
generate()'s tokens through early ends and batch compaction, compiled decoding draws the eager tokens, a failing
compiler falls back once under auto (unit tests on the random tiny model: tests/models/test_decoding.py)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from conftest import CACHE, compose_config
from support.decoding import OPTIONS, ours, reference
from support.prefix_sharing import G, prompt_batch

from othink_mr1.models import decoding
from othink_mr1.models.decoding import StaticKV, buckets, decode_record
from othink_mr1.models.factory import load_model


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


@pytest.fixture(scope="module")
def tiny_base():
    """tiny_base (trained to answer, so its completions end at different lengths)."""
    cfg = compose_config(["model=tiny_base"])
    return load_model(cfg.model, str(CACHE))


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


# tiny_base only: it is the random tiny model's architecture with trained weights, so it compiles the same graph,
# and its rows end early, so the compiled step also runs on the smaller buckets (the random model's never end).
@pytest.mark.slow  # compiles the decode step (about half a minute on 2 cores)
def test_compiled_decoding_draws_the_eager_tokens(tiny_base, compactions):
    model, processor = copy.deepcopy(tiny_base[0]).eval(), tiny_base[1]
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
    assert compactions  # the compiled step also ran on smaller buckets
