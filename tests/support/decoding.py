"""Helpers shared by tests/ and tests/e2e/ (see each test file)."""

from __future__ import annotations

import torch

from support.prefix_sharing import G

from othink_mr1.data.batch_layout import model_inputs, repeat_samples
from othink_mr1.models.prefix_sharing import sample_groups
from othink_mr1.models.rollouts import stop_token_ids, suppressed_token_ids

OPTIONS = [{}, {"top_k": 7}, {"top_p": 0.8, "temperature": 0.7}, {"min_new_tokens": 12}]


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
