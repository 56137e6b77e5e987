"""The KL-to-base estimator (evaluation/drift.py) against the exact KL, enumerated over every completion a
tiny language model can write, and a model against itself."""

from __future__ import annotations

import copy
import itertools
import math
import statistics

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from othink_mr1.evaluation.drift import (
    DriftItem,
    sample_log_ratios,
    sequence_log_ratios,
    stratified_mean,
    summarize_drift,
)
from othink_mr1.models.rollouts import Sampling, TokenRules

# Tokens 0..5: 0 pads and is never sampled (suppressed, as image markup is), 5 ends a completion.
VOCAB, PAD, STOP, MAX_NEW = 6, 0, 5, 3
RULES = TokenRules(stop_ids=(STOP,), pad_id=PAD, suppress_ids=(PAD,))
PROMPT = {"input_ids": torch.tensor([[1, 3, 2]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}


def tiny_lm(seed: int, sharpness: float) -> LlamaForCausalLM:
    """A one-layer Llama over 6 tokens whose next-token distributions are far from uniform."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=PAD,
                         bos_token_id=1, eos_token_id=STOP)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpness)
    return model


def completions() -> list[tuple[int, ...]]:
    """Every completion of at most MAX_NEW tokens: it ends at STOP or is cut at the budget."""
    words = [1, 2, 3, 4]
    out = [(STOP,)]
    for length in range(2, MAX_NEW + 1):
        for prefix in itertools.product(words, repeat=length - 1):
            out.append((*prefix, STOP))
    out += list(itertools.product(words, repeat=MAX_NEW))  # cut at the budget without a stop
    return out


@torch.no_grad()
def log_prob(model: LlamaForCausalLM, completion: tuple[int, ...]) -> float:
    """log p(completion | PROMPT), token by token from full forward passes, PAD taken out of each step."""
    total, ids = 0.0, PROMPT["input_ids"][0].tolist()
    for token in completion:
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].clone()
        logits[PAD] = float("-inf")
        total += float(logits.log_softmax(-1)[token])
        ids.append(token)
    return total


def exact_kl(policy: LlamaForCausalLM, base: LlamaForCausalLM) -> float:
    everything = completions()
    probs = [math.exp(log_prob(policy, c)) for c in everything]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # the enumeration covers every completion
    return sum(p * (log_prob(policy, c) - log_prob(base, c)) for p, c in zip(probs, everything))


def estimate(policy, base, k: int, seed: int) -> tuple[float, float, torch.Tensor]:
    torch.manual_seed(seed)
    completions_, ratios = sample_log_ratios(
        policy, lambda c: c.log_probs(base, 1.0, RULES.suppress_ids), PROMPT, k, Sampling(max_new_tokens=MAX_NEW),
        RULES, static=False, shared=False)
    values = ratios.tolist()
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values)), completions_.completion_ids


def test_the_estimate_is_within_its_standard_error_of_the_exact_kl():
    policy, base = tiny_lm(0, 8.0), tiny_lm(1, 8.0)
    exact = exact_kl(policy, base)
    assert exact > 0.3  # a divergence worth estimating
    mean, stderr, ids = estimate(policy, base, k=4000, seed=0)
    assert stderr < 0.1 * exact
    assert abs(mean - exact) <= stderr, (mean, exact, stderr)
    # Sampling drew real completions: never the suppressed pad mid-sequence, ended at the stop or the budget.
    assert ids.shape[1] <= MAX_NEW and not bool((ids[:, 0] == PAD).any())
    # Over independent draws the estimate is unbiased: z-scores look standard normal.
    zs = [(m - exact) / s for m, s, _ in (estimate(policy, base, k=1000, seed=seed) for seed in range(1, 9))]
    assert all(abs(z) < 4 for z in zs), zs
    assert abs(statistics.fmean(zs)) < 1.5, zs


def test_a_model_against_itself_is_exactly_zero():
    policy = tiny_lm(0, 8.0)
    mean, stderr, _ = estimate(policy, copy.deepcopy(policy), k=200, seed=3)
    assert mean == 0.0 and stderr == 0.0


def test_the_base_of_the_tiny_vlm_against_itself_is_exactly_zero_on_the_shared_prompt_path(tiny):
    """The path a tiny_base run takes: one prefill per prompt, fixed-shape decoding, shared-prompt log-probs."""
    from PIL import Image

    from othink_mr1.data.collate import PromptCollator
    from othink_mr1.data.records import Example

    model, processor = tiny
    examples = [Example(images=[Image.new("RGB", (112, 112), c)], question=q, answer="3", target="", index=i)
                for i, (c, q) in enumerate([("red", "How many?"), ("blue", "What angle is marked?")])]
    batch = PromptCollator(processor, "{question} Answer.")(examples)
    rules = TokenRules.of(model, processor)
    torch.manual_seed(0)
    completions_, ratios = sample_log_ratios(
        model, lambda c: c.log_probs(copy.deepcopy(model), 1.0, rules.suppress_ids), batch, 3,
        Sampling(max_new_tokens=8), rules, static=True, shared=True)
    assert completions_.completion_ids.shape[0] == 6 and completions_.prompts is not None
    assert ratios.tolist() == [0.0] * 6


def test_sequence_log_ratios_sum_only_the_completion_tokens():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    base = torch.tensor([[-2.0, -2.5, -1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert sequence_log_ratios(logp, base, mask).tolist() == pytest.approx([1.5, -8.0])


def test_the_standard_error_treats_prompts_as_strata():
    mean, se = stratified_mean([[1.0, 3.0], [10.0, 10.0]])
    assert mean == 6.0
    assert se == pytest.approx(math.sqrt((2.0 / 2 + 0.0) ) / 2)  # var(1, 3) = 2 over k = 2, two prompts
    # One value per prompt: the plain standard error of all values (between-prompt spread included).
    mean, se = stratified_mean([[1.0], [3.0]])
    assert (mean, se) == (2.0, pytest.approx(statistics.stdev([1.0, 3.0]) / math.sqrt(2)))
    summary = summarize_drift([DriftItem(0, [0.5, 1.5], [True, False]), DriftItem(1, [2.0, 2.0], [True, True])])
    assert summary["kl_to_base"] == 1.5 and summary["acc_sampled"] == 0.75
    assert summary["prompts"] == 2 and summary["samples"] == 4
