"""Completions sampled from a model for a prompt batch, and their per-token log-probs under any model.

GRPO's rollouts (methods/grpo.py) and the drift measure of training curves (evaluation/drift.py) both
sample n completions per prompt and score them under two models (the policy and the frozen starting
model), so both go through here:

- `TokenRules`: the tokens that end a completion (every stop id of the model's generation config, then
  the tokenizer's end of turn; evaluation's greedy decoding uses the same ones) and the image markup that
  is never sampled.
- `sample_completions`: n completions per prompt with generate()'s sampling rules and every setting
  explicit (a hub config's sampling defaults never apply). Qwen-style models run each prompt once and
  decode over fixed-shape buffers (models/prefix_sharing.py, models/decoding.py); any other model runs
  `generate()` on the n-times repeated prompts. Both draw the same tokens for the same seed.
- `Completions.log_probs`: log pi(token) of each completion token under a model, each prompt run once
  under its n completions where the model allows it (same values to float tolerance), else the plain
  forward of every prompt + completion.

How a prompt is repeated n times with its images, and a completion appended to it, is the batch's
layout, whatever the family: data/batch_layout.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.batch_layout import append_completions, has_image_grids, model_inputs, repeat_samples, vision_tokens
from .prefix_sharing import full_position_ids, grouped_completion_logits, sample_groups, supports_prefix_sharing

# --------------------------------------------------------------------------------------- tokens


def suppressed_token_ids(processor: Any) -> list[int]:
    """Tokens never sampled: the processor's own image and video markup (data.batch_layout.vision_tokens:
    Qwen's <|image_pad|> and <|vision_start|>, Idefics3's <image> and <fake_token_around_image>, Gemma
    3's <start_of_image>, ...). A completion holding one would no longer line up with the image
    features in a later forward pass, and it means nothing as text."""
    tokenizer = processor.tokenizer
    ids = {tokenizer.convert_tokens_to_ids(t) for t in vision_tokens(processor)}
    return sorted(i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id)


def generation_eos_ids(model: Any) -> list[int]:
    """The ids of the model's generation config `eos_token_id` (an int, a list or none)."""
    listed = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    return [] if listed is None else [int(listed)] if isinstance(listed, int) else [int(i) for i in listed]


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends a completion, in evaluation and in sampling alike: the ids of the model's
    generation config (`eos_token_id`, an int or a list: Qwen2-VL's hub config lists <|im_end|> and
    <|endoftext|>) and then the tokenizer's end-of-turn token, each once."""
    ids = generation_eos_ids(model)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids))


def completion_mask(completion_ids: torch.Tensor, stop_ids: int | list[int] | tuple[int, ...]) -> torch.Tensor:
    """[N, C] 1 for each token up to and including a row's first stop token, 0 after it (the pads that
    follow an ended completion, even when the pad token is itself a stop id); a row that never
    stopped is all ones. `.sum(dim=1)` is each completion's length."""
    stops = torch.tensor([stop_ids] if isinstance(stop_ids, int) else list(stop_ids), dtype=completion_ids.dtype,
                         device=completion_ids.device)
    is_stop = torch.isin(completion_ids, stops)
    after_stop = (is_stop.cumsum(dim=1) - is_stop.long()) > 0
    return (~after_stop).long()


@dataclass(frozen=True)
class TokenRules:
    """Which tokens end a completion, pad an ended one, and are never sampled."""

    stop_ids: tuple[int, ...]
    pad_id: int
    suppress_ids: tuple[int, ...] = ()

    @classmethod
    def of(cls, model: Any, processor: Any) -> "TokenRules":
        tokenizer = processor.tokenizer
        return cls(tuple(stop_token_ids(model, tokenizer)), tokenizer.pad_token_id,
                   tuple(suppressed_token_ids(processor)))


# ------------------------------------------------------------------------------- prompt sharing


def shares_prompts(batch: dict[str, Any], *models: torch.nn.Module | None) -> bool:
    """Whether log-prob passes can run each prompt of `batch` once under its completions, for every model
    given (None entries are skipped): Qwen-style batches (data.batch_layout.has_image_grids) and models."""
    return has_image_grids(batch) and all(supports_prefix_sharing(m) for m in models if m is not None)


# ------------------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class Sampling:
    """generate()'s sampling settings for one draw of completions."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: the whole distribution
    min_new_tokens: int = 0  # the stop tokens are blocked before this many tokens
    # models/decoding.py's switch (method.decode_compile): on | off | auto.
    compile_mode: str = "off"


@torch.no_grad()
def sample_completions(model: torch.nn.Module, batch: dict[str, Any], group_size: int, sampling: Sampling,
                       rules: TokenRules, static: bool) -> torch.Tensor:
    """Completion ids [prompts x group_size, C] sampled from `model` (rows i*G..i*G+G-1 continue prompt i),
    C <= max_new_tokens; a row ends at its first stop id, pads follow. `static`: one prefill per prompt
    and the fixed-shape decoder (Qwen-style models; the caller decides, see prefix_sharing), else
    `generate()` on the repeated prompts. The model samples in eval mode and gets its mode back."""
    was_training = model.training
    model.eval()
    try:
        settings = dict(temperature=sampling.temperature, top_p=sampling.top_p, pad_token_id=rules.pad_id,
                        eos_token_id=list(rules.stop_ids),
                        min_new_tokens=min(sampling.min_new_tokens, sampling.max_new_tokens))
        if static:
            return sample_groups(model, model_inputs(batch), group_size, sampling.max_new_tokens, top_k=sampling.top_k,
                                 suppress_token_ids=list(rules.suppress_ids), compile_mode=sampling.compile_mode,
                                 **settings)
        prompts = repeat_samples(batch, group_size)
        # Explicit settings win over a hub config's defaults (Qwen2-VL: top_k 1, temperature 0.01; the 7B's
        # repetition_penalty 1.05): completions come from the distribution the log-probs score.
        out = model.generate(**prompts, do_sample=True, max_new_tokens=sampling.max_new_tokens,
                             suppress_tokens=list(rules.suppress_ids), repetition_penalty=1.0,
                             top_k=sampling.top_k or None, **settings)
        return out[:, prompts["input_ids"].shape[1]:]
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------------ log-probs

LOG_SOFTMAX_CHUNK = 1 << 24  # elements of fp32 log-softmax alive at once (64 MiB)


def token_log_probs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0,
                    suppress_ids: tuple[int, ...] | list[int] = ()) -> torch.Tensor:
    """log pi(token) for each position: logits [B, T, V] predict token_ids [B, T]. `suppress_ids` are taken
    out of the distribution first (as sampling takes them out), so the log-probs are those of the
    distribution the tokens were drawn from. In chunks of rows, so the full [B, T, V] fp32 log-softmax
    never exists at once (real vocabularies are 150k wide: one row per chunk there; the tiny model's
    whole batch fits in one)."""
    rows = max(1, LOG_SOFTMAX_CHUNK // max(1, logits.shape[1] * logits.shape[2]))
    suppress = torch.tensor(list(suppress_ids), dtype=torch.long, device=logits.device) if suppress_ids else None
    out = []
    for chunk_logits, chunk_ids in zip(logits.split(rows), token_ids.split(rows)):
        chunk = chunk_logits.float() / temperature
        if suppress is not None:
            chunk = chunk.index_fill(2, suppress, float("-inf"))
        out.append(torch.gather(chunk.log_softmax(dim=-1), 2, chunk_ids.unsqueeze(2)).squeeze(2))
    return torch.cat(out)


@dataclass(kw_only=True)
class Completions:
    """Sampled completions of a prompt batch, laid out for log-prob passes. Sequences are prompt
    (left-padded) followed by completion (right-padded); every tensor has one row per completion."""

    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C], 1 up to and including the first stop token (completion_mask)
    # The un-repeated prompt batch, when log-probs run each prompt once under its group_size completions
    # (models/prefix_sharing.py); else None and `inputs` holds the repeated prompts + completions (repeating
    # every image group_size times costs memory, so it is only built when needed).
    prompts: dict[str, torch.Tensor] | None = None
    inputs: dict[str, torch.Tensor] | None = None
    group_size: int = 1
    position_ids: torch.Tensor | None = None  # [3, N, P + C] mrope positions, computed once, shared by every pass

    @classmethod
    def of(cls, batch: dict[str, Any], completion_ids: torch.Tensor, rules: TokenRules, group_size: int,
           shared: bool, **fields: Any) -> Any:
        mask = completion_mask(completion_ids, rules.stop_ids)
        if shared:
            return cls(completion_ids=completion_ids, completion_mask=mask, prompts=model_inputs(batch),
                       group_size=group_size, **fields)
        inputs = append_completions(repeat_samples(batch, group_size), completion_ids, mask)
        return cls(completion_ids=completion_ids, completion_mask=mask, inputs=inputs, group_size=group_size, **fields)

    @property
    def num_sequences(self) -> int:
        return int(self.completion_ids.shape[0])

    def log_probs(self, model: torch.nn.Module, temperature: float = 1.0,
                  suppress_ids: tuple[int, ...] | list[int] = ()) -> torch.Tensor:
        """Per-token log-probs [N, C] of the completions under `model` (with grad if enabled)."""
        if self.prompts is not None:
            if self.position_ids is None:
                self.position_ids = full_position_ids(model, self.prompts, self.completion_ids, self.completion_mask,
                                                      self.group_size)
            logits = grouped_completion_logits(model, self.prompts, self.completion_ids, self.completion_mask,
                                               self.group_size, self.position_ids)
        else:
            length = self.completion_ids.shape[1]
            logits = model(**self.inputs, logits_to_keep=length + 1).logits[:, :-1]
        return token_log_probs(logits, self.completion_ids, temperature, suppress_ids)

    def texts(self, tokenizer: Any) -> list[str]:
        """Each completion decoded up to and including its end (the pads after it never)."""
        lengths = self.completion_mask.sum(dim=1).tolist()
        return [tokenizer.decode(row[:n], skip_special_tokens=True) for row, n in zip(self.completion_ids, lengths)]
