"""Rollout decoding over fixed-shape buffers: one decode step per token, compiled once, rows that ended
leaving the batch.

`StaticDecoder.run` continues a prefilled batch token by token with `generate()`'s sampling rules and
draws the same tokens for the same seed:

- **Fixed shapes.** Keys and values live in per-layer buffers [B, heads, prompt + max_new_tokens, dim]
  written in place at one position per step (`StaticKV`), and the attention mask is a [B, 1, 1, capacity]
  buffer whose next column is switched on per step; attention reads both up to the written length rounded
  up to WINDOW positions, so a bucket's steps take a few shapes. Compiled (`method.decode_compile`), the
  step (decoder layers, head, filtering, the draw) runs through `torch.compile` ("reduce-overhead" on
  CUDA, which captures it as a CUDA graph); after the first change of a shape dynamo makes that dimension
  dynamic, so a run compiles two or three times, not per step or per bucket.
- **Same draws.** `torch.multinomial(p, 1)` is `argmax(p / q)` with `q ~ Exp(1)` drawn as
  `empty_like(p).exponential_()` (ATen's one-sample path). The noise is drawn eagerly for the full batch
  every step, in the order the plain loop draws it, and the step takes its rows' share, so compiling or
  compacting changes no draw and the generator ends where the plain loop leaves it.
- **Compaction.** Every `check_every` tokens (the only host syncs) the rows still running are counted;
  when they fit a smaller bucket (batch sizes halve: N, N/2, ...) the buffers are gathered down to it, so
  the cost follows the tokens actually generated, not the longest completion.
- **Ending.** The loop stops at the first check after every row has ended; the columns after the last end
  are dropped and the random draws made after it are rewound (restore the generator, redraw up to the
  end), so the result and the generator's state are those of a loop that checks every token.

Works on decoder stacks that take `position_embeddings` from the language model's `rotary_emb` and call
`past_key_values.update(keys, values, layer_idx)` (the Qwen2-VL family and transformers' Llama-style
decoders), with sdpa or eager attention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import DECODE_COMPILE

log = logging.getLogger(__name__)

# Host syncs (and compaction decisions) every this many tokens.
CHECK_EVERY = 8
# Buckets stop halving below this many rows (smaller batches gain nothing from a smaller shape).
MIN_BUCKET = 4
# Attention reads the cache up to the written length rounded up to this many positions (reading the keys and
# values is most of a decode step's memory traffic; a few lengths per run keep the shapes few).
WINDOW = 64


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


@dataclass
class SamplingRules:
    """generate()'s sampling settings; tensors on the decoding device."""

    temperature: float
    top_k: int
    top_p: float
    suppress: torch.Tensor  # token ids never sampled
    stops: torch.Tensor  # token ids that end a row
    min_new_tokens: int
    pad_token_id: int


def pick_tokens(scores: torch.Tensor, noise: torch.Tensor, step: torch.Tensor, rules: SamplingRules) -> torch.Tensor:
    """[B] next tokens from [B, V] logits: suppression, the min-new-tokens block on the stop tokens, temperature,
    top-k/top-p, then multinomial sampling written as argmax(p / noise), noise ~ Exp(1)."""
    scores = scores.float()
    if rules.suppress.numel():
        scores = scores.index_fill(1, rules.suppress, float("-inf"))
    if rules.min_new_tokens:
        scores = torch.where(step < rules.min_new_tokens, scores.index_fill(1, rules.stops, float("-inf")), scores)
    scores = filter_logits(scores / rules.temperature, rules.top_k, rules.top_p)
    return (scores.softmax(dim=-1) / noise).argmax(dim=-1)


class StaticKV:
    """Per-layer key/value buffers [B, heads, capacity, dim]; the attention layers' cache: `update` writes
    the step's keys and values at `write_at` (a 0-d tensor, so the position is data, not a shape) and
    returns the whole buffers (the mask hides the unwritten positions)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], write_at: torch.Tensor):
        self.keys, self.values, self.write_at = keys, values, write_at

    @classmethod
    def from_prefill(cls, layers: list[Any], group_size: int, capacity: int) -> "StaticKV":
        """Buffers holding each prompt's prefill keys and values G times over (rows i*G..i*G+G-1 = prompt i)."""
        keys, values = [], []
        for layer in layers:
            for source, out in ((layer.keys, keys), (layer.values, values)):
                buffer = source.new_zeros((source.shape[0] * group_size, source.shape[1], capacity, source.shape[3]))
                buffer[:, :, :source.shape[2]] = source.repeat_interleave(group_size, dim=0)
                out.append(buffer)
        return cls(keys, values, torch.zeros((), dtype=torch.long, device=keys[0].device))

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any):
        index = self.write_at.view(1)
        self.keys[layer_idx].index_copy_(2, index, key_states)
        self.values[layer_idx].index_copy_(2, index, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def select(self, rows: torch.Tensor) -> "StaticKV":
        return StaticKV([k.index_select(0, rows) for k in self.keys], [v.index_select(0, rows) for v in self.values],
                        self.write_at)

    def window(self, length: int) -> "StaticKV":
        """The first `length` positions (views: writes land in these buffers)."""
        return StaticKV([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values], self.write_at)


def decode_forward(language_model: torch.nn.Module, head: torch.nn.Module, cache: StaticKV, mask: torch.Tensor,
                   tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits [B, V] after feeding `tokens` [B] at mrope `positions` [3, B, 1] into `cache` at its write position."""
    hidden = language_model.embed_tokens(tokens.unsqueeze(1))
    position_embeddings = language_model.rotary_emb(hidden, positions)
    for layer in language_model.layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=None, past_key_values=cache,
                       position_embeddings=position_embeddings)
    return head(language_model.norm(hidden)[:, -1])


def _step(language_model: torch.nn.Module, head: torch.nn.Module, cache: StaticKV, mask: torch.Tensor,
          visible: Any, tokens: torch.Tensor, positions: torch.Tensor, noise: torch.Tensor, step: torch.Tensor,
          rules: SamplingRules) -> torch.Tensor:
    """One decode step: the fed tokens' column of the mask turns visible, the model runs, the next tokens are drawn."""
    mask.index_fill_(-1, cache.write_at.view(1), visible)
    return pick_tokens(decode_forward(language_model, head, cache, mask, tokens, positions), noise, step, rules)


def supports_static_decoding(language_model: torch.nn.Module) -> str | None:
    """None when `StaticDecoder` can run this language model, else why not."""
    config = language_model.config
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or []):
        return "sliding-window layers"
    if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return f"attention implementation {config._attn_implementation}"
    if not all(hasattr(language_model, name) for name in ("embed_tokens", "rotary_emb", "layers", "norm")):
        return "not a decoder stack with embed_tokens, rotary_emb, layers and norm"
    return None


_COMPILED: dict[str, Callable] = {}  # device type -> `_step` under torch.compile (one per process)
_FALLBACK: dict[str, str] = {}  # device type -> why compiling failed in this process (then it decodes eagerly)


def compiled_step(device: torch.device) -> Callable:
    """`_step` under torch.compile for this device type: "reduce-overhead" (CUDA graphs) on CUDA. It compiles on
    first use and once more when the batch shrinks (the batch dimension then turns dynamic)."""
    kind = device.type
    if kind == "cpu":
        separate_inductor_cache_per_kernel_path()
    if kind not in _COMPILED:
        _COMPILED[kind] = torch.compile(_step, mode="reduce-overhead" if kind == "cuda" else None)
    return _COMPILED[kind]


def separate_inductor_cache_per_kernel_path() -> None:
    """Point inductor's cache (unless TORCHINDUCTOR_CACHE_DIR is set) at a folder of this CPU kernel path's own.
    Its key does not cover ATEN_CPU_CAPABILITY: measured with torch 2.13.0+cpu on an AVX-512 machine, a decode
    step compiled on the default path and reused from the cache under ATEN_CPU_CAPABILITY=avx2 killed the process
    with a bus error; compiled afresh under the cap it ran and drew the eager tokens."""
    import os

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # Inductor writes its default into the variable on first use, so the default's value means "not set".
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR", default_cache_dir()) == default_cache_dir():
        capability = torch.backends.cpu.get_cpu_capability().lower()
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), f"cpu-{capability}")


def compiles(switch: str, device: torch.device) -> bool:
    """Whether decoding on `device` runs the compiled step: `on`; `auto` on CUDA (on CPU the compile, about
    half a minute per process on 2 cores, outweighs what it saves on short completions; `on` compiles
    there too); never `off`, nor after compiling failed in this process under `auto`."""
    if switch not in DECODE_COMPILE:
        raise ValueError(f"decode compile switch {switch!r}: expected one of {DECODE_COMPILE}")
    if switch == "auto":
        return device.type == "cuda" and device.type not in _FALLBACK
    return switch == "on"


def decode_record(switch: str, device: torch.device) -> dict[str, Any]:
    """What a run's results.json records about its decoding: the switch, whether the step ran compiled, and
    the compiler failure it fell back from (None when it did not)."""
    return {"compile": switch, "compiled": compiles(switch, device), "fallback": _FALLBACK.get(device.type), "loop": "static"}


def buckets(rows: int) -> list[int]:
    """Batch sizes a decode may shrink to, largest first: rows, then powers of two below it down to MIN_BUCKET."""
    sizes, size = [rows], 1 << max(rows - 1, 0).bit_length()
    while size // 2 >= MIN_BUCKET:
        size //= 2
        if size < sizes[-1]:
            sizes.append(size)
    return sizes


class StaticDecoder:
    """Decodes a prefilled, G-times repeated batch; see the module docstring."""

    def __init__(self, language_model: torch.nn.Module, head: torch.nn.Module, rules: SamplingRules,
                 compile_mode: str = "off", check_every: int = CHECK_EVERY):
        self.language_model, self.head, self.rules = language_model, head, rules
        self.check_every = check_every
        self.compile_mode = compile_mode

    def run(self, cache: StaticKV, prompt_mask: torch.Tensor, first_logits: torch.Tensor, base_positions: torch.Tensor,
            max_new_tokens: int) -> torch.Tensor:
        """Completion ids [N, C], C <= max_new_tokens.

        cache: `StaticKV` holding the N rows' prompt keys/values at [0, P); prompt_mask: [N, P] (1 = token);
        first_logits: [N, V] logits after the prompt; base_positions: [N] mrope position of the first
        completion token."""
        rules, device = self.rules, first_logits.device
        N, P = prompt_mask.shape
        V = first_logits.shape[-1]
        capacity = cache.keys[0].shape[2]
        generator = torch.cuda.default_generators[device.index or 0] if device.type == "cuda" else torch.default_generator
        eager = getattr(self.language_model.config, "_attn_implementation", "sdpa") == "eager"
        dtype = cache.keys[0].dtype
        if eager:  # an additive mask, as transformers builds it for eager attention
            closed, visible = torch.finfo(dtype).min, 0.0
            mask = torch.full((N, 1, 1, capacity), closed, dtype=dtype, device=device)
            mask[:, 0, 0, :P] = torch.where(prompt_mask.bool(), visible, closed).to(dtype)
        else:
            visible = True
            mask = torch.zeros((N, 1, 1, capacity), dtype=torch.bool, device=device)
            mask[:, 0, 0, :P] = prompt_mask.bool()

        self._pin(cache, mask, device)
        out = torch.full((N + 1, max_new_tokens), rules.pad_token_id, dtype=torch.long, device=device)
        row_of_slot = torch.arange(N, device=device)  # the output row each batch slot decodes (N: a filler slot)
        noise_row = row_of_slot.clone()
        running = torch.ones(N, dtype=torch.bool, device=device)
        last_end = torch.full((), -1, dtype=torch.long, device=device)
        sizes = buckets(N)
        block_start, block_state = 0, generator.get_state()
        tokens = None
        steps_done = 0
        for step in range(max_new_tokens):
            noise = torch.empty((N, V), dtype=torch.float32, device=device).exponential_()
            step_t = torch.full((), step, dtype=torch.long, device=device)
            if step == 0:
                tokens = pick_tokens(first_logits, noise, step_t, rules)
            else:
                cache.write_at.fill_(P + step - 1)
                positions = (base_positions + (step - 1)).view(1, -1, 1).expand(3, -1, -1)
                length = min(capacity, -(-(P + step) // WINDOW) * WINDOW)
                tokens = self._run_step(cache.window(length), mask[..., :length], visible, tokens, positions,
                                        noise.index_select(0, noise_row), step_t, device)
            tokens = torch.where(running, tokens, torch.full_like(tokens, rules.pad_token_id))
            out.index_put_((row_of_slot, step_t.expand(row_of_slot.shape[0])), tokens)  # filler slots write row N
            ended = running & torch.isin(tokens, rules.stops)
            last_end = torch.where(ended.any(), step_t, last_end)
            running = running & ~ended
            steps_done = step + 1
            if step + 1 == max_new_tokens:
                break
            if (step + 1) % self.check_every:
                continue
            # ------------------------------------------------------------ a check: the only host sync
            alive = int(running.sum())
            if alive == 0:
                break
            smaller = [size for size in sizes if size >= alive]
            if smaller and smaller[-1] < running.shape[0]:
                keep = running.nonzero().squeeze(1)
                fill = keep[:1].expand(smaller[-1] - alive)
                slots = torch.cat([keep, fill])
                cache = cache.select(slots)
                mask = mask.index_select(0, slots)
                tokens, base_positions = tokens.index_select(0, slots), base_positions.index_select(0, slots)
                filler = torch.arange(slots.shape[0], device=device) >= alive
                row_of_slot = torch.where(filler, N, row_of_slot.index_select(0, slots))
                noise_row = torch.where(filler, 0, noise_row.index_select(0, slots))
                running = running.index_select(0, slots) & ~filler
                self._pin(cache, mask, device)
            block_start, block_state = step + 1, generator.get_state()
        # Every row ended at `end`: drop the later columns and rewind the draws made after it.
        end = int(last_end) if not bool(running.any()) else steps_done - 1
        if end + 1 < steps_done:
            generator.set_state(block_state)
            for _ in range(block_start, end + 1):
                torch.empty((N, V), dtype=torch.float32, device=device).exponential_()
        return out[:N, :end + 1]

    def _pin(self, cache: StaticKV, mask: torch.Tensor, device: torch.device) -> None:
        """A CUDA graph replays fixed addresses: the buffers the step writes in place keep theirs (per bucket)."""
        if device.type == "cuda" and compiles(self.compile_mode, device):
            for tensor in (*cache.keys, *cache.values, cache.write_at, mask):
                torch._dynamo.mark_static_address(tensor)

    def _run_step(self, cache: StaticKV, mask: torch.Tensor, visible: Any, tokens: torch.Tensor, positions: torch.Tensor,
                  noise: torch.Tensor, step: torch.Tensor, device: torch.device) -> torch.Tensor:
        args = (self.language_model, self.head, cache, mask, visible, tokens, positions, noise, step, self.rules)
        if not compiles(self.compile_mode, device):
            return _step(*args)
        try:
            return compiled_step(device)(*args)
        except Exception as error:  # noqa: BLE001 - under auto any compiler failure falls back, once, loudly
            if self.compile_mode == "on":
                raise
            _FALLBACK[device.type] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"[:300]
            log.warning("method.decode_compile=auto: torch.compile failed on %s (%s); decoding eagerly from here on "
                        "(recorded in results.json under train.decode)", device.type, _FALLBACK[device.type])
            return _step(*args)
