"""Sampling and scoring G completions of each prompt, running each prompt (and its image) once.

A GRPO rollout holds G completions per prompt, and the prompt is most of each sequence (on the tiny
tasks about 100 prompt tokens for a 64-token completion; on GeoQA with a 2B model, hundreds of image
tokens). The plain way runs prompt + completion G times per pass. Here the prompt batch runs once,
with its KV cache kept (and differentiable); each layer's keys and values are repeated G times, and
only the completion tokens run on top. The completion tokens see exactly the keys, values and 3D
(mrope) positions of the plain forward, so the log-probs agree to float tolerance and the gradients
reaching the prompt are the sum over the G copies, as in the plain forward.

`sample_groups` does the same for rollouts: one prefill per prompt, the cache repeated G times, then
a plain token-by-token loop with the sampling rules of `generate` (suppressed tokens, temperature,
top-k, top-p, multinomial), which also skips `generate`'s per-token bookkeeping.

Works for Qwen2-VL-style models (`.model` with `get_rope_index` and an `lm_head`), also under peft;
`supports_prefix_sharing` says whether a model qualifies, and callers fall back to the plain forward.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (LoRA layers are injected in place, so calling
    the unwrapped modules still runs the adapters, and `disable_adapter()` still applies)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def supports_prefix_sharing(model: torch.nn.Module) -> bool:
    inner = getattr(_unwrapped(model), "model", None)
    return (inner is not None and hasattr(inner, "get_rope_index") and hasattr(inner, "language_model")
            and _unwrapped(model).get_output_embeddings() is not None)


def _sequence_mask(prompts: dict[str, torch.Tensor], completion_mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, P + C] attention mask of the G-times repeated prompts followed by their completions."""
    return torch.cat([prompts["attention_mask"].repeat_interleave(group_size, dim=0), completion_mask], dim=1)


def full_position_ids(model: torch.nn.Module, prompts: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """The [3, N, P + C] mrope positions the plain forward would compute for the G-times repeated
    sequences (so the shared forward cannot drift from it). They depend on the tokens and image grids
    only, so a policy's and its reference's are the same."""
    G = group_size
    input_ids = torch.cat([prompts["input_ids"].repeat_interleave(G, dim=0), completion_ids], dim=1)
    token_types = torch.cat([prompts["mm_token_type_ids"].repeat_interleave(G, dim=0),
                             torch.zeros_like(completion_ids)], dim=1)
    position_ids, _ = _unwrapped(model).model.get_rope_index(
        input_ids, mm_token_type_ids=token_types, image_grid_thw=prompts["image_grid_thw"].repeat_interleave(G, dim=0),
        attention_mask=_sequence_mask(prompts, completion_mask, G))
    return position_ids


def grouped_completion_logits(model: torch.nn.Module, prompts: dict[str, torch.Tensor], completion_ids: torch.Tensor,
                              completion_mask: torch.Tensor, group_size: int,
                              position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Logits [N, C, V] predicting each completion token, N = prompts x group_size.

    prompts: the un-repeated, left-padded prompt batch (input_ids, attention_mask, mm_token_type_ids,
    pixel_values, image_grid_thw); completion row i belongs to prompt i // group_size.
    position_ids: `full_position_ids` of these sequences, when the caller keeps them between passes.
    """
    G = group_size
    base = _unwrapped(model)
    inner = base.model
    P = prompts["input_ids"].shape[1]
    attention_mask = _sequence_mask(prompts, completion_mask, G)
    if position_ids is None:
        position_ids = full_position_ids(model, prompts, completion_ids, completion_mask, G)

    prompt_out = inner(**prompts, position_ids=position_ids[:, ::G, :P], use_cache=True,
                       past_key_values=DynamicCache(config=base.config.get_text_config()))
    shared = _repeated_cache(prompt_out.past_key_values, G, base.config.get_text_config())
    completion_out = inner(input_ids=completion_ids, attention_mask=attention_mask,
                           position_ids=position_ids[:, :, P:], past_key_values=shared, use_cache=True)
    # The last prompt token predicts completion token 0; completion token t predicts t + 1.
    hidden = torch.cat([prompt_out.last_hidden_state[:, -1:].repeat_interleave(G, dim=0),
                        completion_out.last_hidden_state[:, :-1]], dim=1)
    return base.get_output_embeddings()(hidden)


class BufferedLayer(DynamicLayer):
    """A cache layer with room for `capacity` positions allocated up front: each decoding step
    writes one position in place instead of concatenating the whole cache again (on CPU, that
    copying was a third of sampling time)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.length = keys.shape[-2]
        shape = (*keys.shape[:-2], capacity, keys.shape[-1])
        self._key_buffer = keys.new_empty(shape)
        self._value_buffer = values.new_empty(shape[:-1] + (values.shape[-1],))
        self._key_buffer[..., :self.length, :] = keys
        self._value_buffer[..., :self.length, :] = values
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        end = self.length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2]:
            raise RuntimeError(f"BufferedLayer: {end} positions exceed the capacity {self._key_buffer.shape[-2]}")
        self._key_buffer[..., self.length:end, :] = key_states
        self._value_buffer[..., self.length:end, :] = value_states
        self.length = end
        self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
        return self.keys, self.values


def _repeated_cache(cache: DynamicCache, times: int, config: Any) -> DynamicCache:
    out = DynamicCache(config=config)
    for index, layer in enumerate(cache.layers):
        out.update(layer.keys.repeat_interleave(times, dim=0), layer.values.repeat_interleave(times, dim=0), index)
    return out


def filter_logits(scores: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k, then top-p (nucleus) filtering of [N, V] scores, as transformers' warpers do: removed
    entries become -inf; at least one token always survives."""
    if top_k and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1)  # ascending
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= 1.0 - top_p
        remove_sorted[:, -1] = False
        remove = remove_sorted.scatter(1, order, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


@torch.no_grad()
def sample_groups(model: torch.nn.Module, prompts: dict[str, torch.Tensor], group_size: int, max_new_tokens: int, *,
                  eos_token_id: int | list[int], pad_token_id: int, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0, suppress_token_ids: list[int] | tuple[int, ...] = (),
                  min_new_tokens: int = 0) -> torch.Tensor:
    """Completion ids [prompts x group_size, C] sampled from `model`, C <= max_new_tokens; row i
    continues prompt i // group_size; a row ends at any of the `eos_token_id` ids, pad tokens follow."""
    G = group_size
    base = _unwrapped(model)
    inner, head = base.model, base.get_output_embeddings()
    text_config = base.config.get_text_config()
    position_ids, deltas = inner.get_rope_index(prompts["input_ids"], mm_token_type_ids=prompts["mm_token_type_ids"],
                                                image_grid_thw=prompts["image_grid_thw"],
                                                attention_mask=prompts["attention_mask"])
    prefill = inner(**prompts, position_ids=position_ids, use_cache=True, past_key_values=DynamicCache(config=text_config))
    cache = DynamicCache(config=text_config)
    cache.layers = [BufferedLayer(layer.keys.repeat_interleave(G, dim=0), layer.values.repeat_interleave(G, dim=0),
                                  prompts["input_ids"].shape[1] + max_new_tokens)
                    for layer in prefill.past_key_values.layers]
    hidden = prefill.last_hidden_state[:, -1].repeat_interleave(G, dim=0)  # [N, H]
    attention_mask = prompts["attention_mask"].repeat_interleave(G, dim=0)
    # A new token's text position is the count of attended tokens before it; mrope shifts it by
    # the row's delta (images take fewer positions than tokens), on all three axes.
    next_position = attention_mask.sum(dim=1, keepdim=True) + deltas.repeat_interleave(G, dim=0).to(attention_mask.device)
    suppress = torch.tensor(list(suppress_token_ids), dtype=torch.long, device=hidden.device)
    stops = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), dtype=torch.long,
                         device=hidden.device)
    unfinished = torch.ones(hidden.shape[0], dtype=torch.bool, device=hidden.device)
    tokens = []
    for step in range(max_new_tokens):
        scores = head(hidden).float()
        if suppress.numel():
            scores[:, suppress] = float("-inf")
        if step < min_new_tokens:
            scores[:, stops] = float("-inf")
        scores = filter_logits(scores / temperature, top_k, top_p)
        next_tokens = torch.multinomial(scores.softmax(dim=-1), num_samples=1).squeeze(1)
        next_tokens = torch.where(unfinished, next_tokens, torch.full_like(next_tokens, pad_token_id))
        tokens.append(next_tokens)
        unfinished &= ~torch.isin(next_tokens, stops)
        if step == max_new_tokens - 1 or not bool(unfinished.any()):
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
        positions = (next_position + step).unsqueeze(0).expand(3, -1, -1)
        out = inner(input_ids=next_tokens.unsqueeze(1), attention_mask=attention_mask, position_ids=positions,
                    past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1]
    return torch.stack(tokens, dim=1)


def prompt_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model inputs of a prompt batch (tensors only; metadata dropped)."""
    keys = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
    return {k: batch[k] for k in keys if k in batch}
