"""Sampling and scoring G completions of each prompt, running each prompt (and its image) once.

A GRPO rollout holds G completions per prompt, and the prompt is most of each sequence (on the tiny
tasks about 100 prompt tokens for a 64-token completion; on GeoQA with a 2B model, hundreds of image
tokens). The plain way runs prompt + completion G times per pass. Here the prompt batch runs once,
with its KV cache kept (and differentiable); each layer's keys and values are repeated G times, and
only the completion tokens run on top. The completion tokens see exactly the keys, values and 3D
(mrope) positions of the plain forward, so the log-probs agree to float tolerance and the gradients
reaching the prompt are the sum over the G copies, as in the plain forward.

`sample_groups` does the same for rollouts: one prefill per prompt, the cache repeated G times into
fixed-shape buffers, then models/decoding.py's token loop with the sampling rules of `generate`
(suppressed tokens, temperature, top-k, top-p, multinomial): the same tokens for the same seed.

Works for Qwen2-VL-style models (`.model` with `get_rope_index` and an `lm_head`), also under peft;
`supports_prefix_sharing` says whether a model qualifies, and callers fall back to the plain forward.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from ..data.batch_layout import append_completions, repeat_samples
from .decoding import CHECK_EVERY, SamplingRules, StaticDecoder, StaticKV, supports_static_decoding


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (LoRA layers are injected in place, so calling
    the unwrapped modules still runs the adapters, and `disable_adapter()` still applies)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supports_prefix_sharing(model: torch.nn.Module) -> bool:
    inner = getattr(_unwrapped(model), "model", None)
    return (inner is not None and hasattr(inner, "get_rope_index") and hasattr(inner, "language_model")
            and _unwrapped(model).get_output_embeddings() is not None)


def static_decoding_blocker(model: torch.nn.Module) -> str | None:
    """Why `sample_groups` cannot decode `model` (None: it can)."""
    language_model = getattr(getattr(_unwrapped(model), "model", None), "language_model", None)
    return "no language_model submodule" if language_model is None else supports_static_decoding(language_model)


def _sequences(prompts: dict[str, torch.Tensor], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
               group_size: int) -> dict[str, torch.Tensor]:
    """The G-times repeated prompts followed by their completions, as the plain forward lays them out
    (data.batch_layout: each prompt's image grids repeated with it), without the pixels: what positions
    and masks are computed from."""
    return append_completions(repeat_samples(prompts, group_size, pixels=False), completion_ids, completion_mask)


def _rope_index(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mrope position ids [3, B, T], per-row deltas) of a Qwen-style batch's tokens and image grids."""
    return _unwrapped(model).model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                                  image_grid_thw=inputs["image_grid_thw"],
                                                  attention_mask=inputs["attention_mask"])


def full_position_ids(model: torch.nn.Module, prompts: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """The [3, N, P + C] mrope positions the plain forward would compute for the G-times repeated
    sequences (so the shared forward cannot drift from it). They depend on the tokens and image grids
    only, so a policy's and its reference's are the same."""
    return _rope_index(model, _sequences(prompts, completion_ids, completion_mask, group_size))[0]


def grouped_completion_logits(model: torch.nn.Module, prompts: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                              completion_mask: torch.Tensor, group_size: int,
                              position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [N, C, V] predicting each completion token, N = prompts x group_size.

    prompts: the un-repeated, left-padded prompt batch's model inputs (data.batch_layout.model_inputs:
    input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw); completion row i belongs
    to prompt i // group_size.
    position_ids: `full_position_ids` of these sequences, when the caller keeps them between passes.
    """
    G = group_size
    base = _unwrapped(model)
    inner = base.model
    P = prompts["input_ids"].shape[1]
    sequences = _sequences(prompts, completion_ids, completion_mask, G)
    attention_mask = sequences["attention_mask"]
    if position_ids is None:
        position_ids = _rope_index(model, sequences)[0]

    prompt_out = inner(**prompts, position_ids=position_ids[:, ::G, :P], use_cache=True,
                       past_key_values=DynamicCache(config=base.config.get_text_config()))
    shared = _repeated_cache(prompt_out.past_key_values, G, base.config.get_text_config())
    completion_out = inner(input_ids=completion_ids, attention_mask=attention_mask,
                           position_ids=position_ids[:, :, P:], past_key_values=shared, use_cache=True)
    # The last prompt token predicts completion token 0; completion token t predicts t + 1.
    hidden = torch.cat([prompt_out.last_hidden_state[:, -1:].repeat_interleave(G, dim=0),
                        completion_out.last_hidden_state[:, :-1]], dim=1)
    return base.get_output_embeddings()(hidden)


def _repeated_cache(cache: DynamicCache, times: int, config: Any) -> DynamicCache:
    out = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        out.update(layer.keys.repeat_interleave(times, dim=0), layer.values.repeat_interleave(times, dim=0), index)
    return out


@torch.no_grad()
def sample_groups(model: torch.nn.Module, prompts: dict[str, torch.Tensor], group_size: int, max_new_tokens: int, *,
                  eos_token_id: int | list[int], pad_token_id: int, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, suppress_token_ids: list[int] | tuple[int, ...] = (),
                  min_new_tokens: int = 0, compile_mode: str = "off", check_every: int = CHECK_EVERY) -> torch.Tensor:
    """Completion ids [prompts x group_size, C] sampled from `model`, C <= max_new_tokens; row i
    continues prompt i // group_size; a row ends at any of the `eos_token_id` ids, pad tokens follow.
    One prefill per prompt, then models/decoding.py's fixed-shape loop (`compile_mode`: method.decode_compile)."""
    G = group_size
    base = _unwrapped(model)
    inner, head = base.model, base.get_output_embeddings()
    text_config = base.config.get_text_config()
    position_ids, deltas = _rope_index(model, prompts)
    prefill = inner(**prompts, position_ids=position_ids, use_cache=True, past_key_values=DynamicCache(config=text_config))
    P = prompts["input_ids"].shape[1]
    cache = StaticKV.from_prefill(prefill.past_key_values.layers, G, P + max_new_tokens)
    first_logits = head(prefill.last_hidden_state[:, -1].repeat_interleave(G, dim=0))  # [N, V]
    prompt_mask = prompts["attention_mask"].repeat_interleave(G, dim=0)
    # A new token's text position is the count of attended tokens before it; mrope shifts it by
    # the row's delta (images take fewer positions than tokens), on all three axes.
    base_positions = prompt_mask.sum(dim=1) + deltas.view(-1).repeat_interleave(G).to(prompt_mask.device)
    device = first_logits.device
    rules = SamplingRules(
        temperature=temperature, top_k=top_k or 0, top_p=top_p, min_new_tokens=min_new_tokens, pad_token_id=pad_token_id,
        suppress=torch.tensor(list(suppress_token_ids), dtype=torch.long, device=device),
        stops=torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), dtype=torch.long,
                           device=device))
    decoder = StaticDecoder(inner.language_model, head, rules, compile_mode=compile_mode, check_every=check_every)
    return decoder.run(cache, prompt_mask, first_logits, base_positions, max_new_tokens)
