"""GRPO's rollouts sampled by an in-process vLLM engine colocated with training (`method.rollout_engine=vllm`;
docs/training.md, "Rollout engine").

The engine lives in the training process (vLLM's `LLM` with its multiprocessing off), one per process:
under DDP each rank runs its own engine on its own device and samples its own prompts, so no rank waits
on another for rollouts. What it holds and when it changes:

- **Start.** The policy as it is when fit starts (a LoRA policy merged) is written to a folder with its
  processor, and vLLM loads it from there (its own model code, its own processor from that folder).
- **Sync, once per optimizer step, before the step's first rollout** (`sync`): the policy's weights (LoRA
  merged on the fly: base + B A, the training model untouched) go into the engine in place
  (`reload_weights`), then the prefix cache and the encoder cache are reset. vLLM's `reload_weights` empties
  the worker's encoder cache but not the scheduler's record of what it holds, so without the engine-level
  reset the next image raises "Encoder cache miss"; without the prefix reset a prompt whose KV blocks are
  cached continues from the old weights' keys and values (tests/e2e/vllm_env prove both). The multimodal
  processor cache holds pixel values, which the weights do not change, and is kept.
- **Sampling** (`sample`): G requests per prompt, each with its own seed drawn from torch's generator (so a
  resumed run, whose checkpoint restores that generator, draws the same seeds), stopping on the model's stop
  ids, never emitting the image markup, with the sampled token's log-prob after temperature and filtering
  (vLLM's processed log-probs). The loss never uses them: they measure the engine's mismatch with the
  training model (train/rollout_logprob_gap) and weigh truncated importance sampling (method.rollout_is_cap).

vLLM is imported only here, only when a run asks for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..data.batch_layout import image_counts, image_token_id
from .adapters import has_adapters
from .rollouts import Sampling, TokenRules

log = logging.getLogger(__name__)

# The model types whose prompts the engine lays out (a run of image tokens collapsed to the one vLLM expands
# itself): the Qwen2-VL layout. qwen2_5_vl shares it and is not run on this machine (docs/training.md).
SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


def check_model_supported(model: Any, model_name: str) -> None:
    """Refuses a model whose family the engine does not serve, naming the key (a ConfigError: rc 2)."""
    from ..utils.errors import ConfigError

    model_type = getattr(model.config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"method.rollout_engine=vllm: model={model_name} is a {model_type} model; the vLLM rollout "
                          f"engine lays out the prompts of {list(SUPPORTED_MODEL_TYPES)} only. Use "
                          "method.rollout_engine=hf with this model")


@dataclass(frozen=True)
class EngineSettings:
    """How the engine is built (vLLM's LLM arguments that matter here)."""

    seed: int = 0
    max_model_len: int | None = None  # None: the model config's context
    # Images per prompt at most (vLLM's limit_mm_per_prompt, which sizes its encoder budget): the paper's tasks
    # have one, task=counting_multi up to two.
    max_images: int = 4
    gpu_memory_utilization: float = 0.3  # method.vllm_gpu_memory_utilization; CUDA only
    dtype: str = "float32"
    enforce_eager: bool = True  # no CUDA graphs: the engine's weights change every step
    block_size: int | None = None  # KV block size; None: vLLM's default for the device


def policy_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's weights under the names of its plain transformers model (what the engine loaded): a LoRA
    model's base weights plus each adapter's B A, computed aside, so the training model stays as it is."""
    if not has_adapters(model):
        return {name: value.detach() for name, value in model.state_dict().items()}
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas = {name: sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
              for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    out = {}
    for key, value in base.state_dict().items():
        if "lora_" in key:
            continue
        owner, _, leaf = key.partition(".base_layer.")
        if leaf == "weight" and owner in deltas:
            value = value + deltas[owner].to(value.dtype)
        out[key.replace(".base_layer.", ".")] = value.detach()
    return out


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Python's, numpy's and torch's global random states (CUDA's too) as they were before the block."""
    import random

    import numpy as np

    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


def _prompt_ids(batch: dict[str, Any], image_id: int | None) -> list[list[int]]:
    """Each prompt's token ids as vLLM takes them: the left padding dropped and each run of image tokens (the
    processor's expansion of one image) collapsed to one, which vLLM expands again from the image."""
    prompts = []
    for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
        kept = [i for i, m in zip(ids, mask) if m]
        if image_id is not None:
            kept = [t for k, t in enumerate(kept) if t != image_id or k == 0 or kept[k - 1] != image_id]
        prompts.append(kept)
    return prompts


class VLLMEngine:
    """An in-process vLLM engine serving one policy; see the module docstring."""

    def __init__(self, llm: Any, processor: Any, settings: EngineSettings, folder: Path, start_seconds: float):
        self.llm = llm
        self.processor = processor
        self.settings = settings
        self.folder = folder
        self.start_seconds = start_seconds
        self.syncs = 0
        self.sync_seconds = 0.0
        self.sample_seconds = 0.0
        self.image_id = image_token_id(processor)

    @classmethod
    def start(cls, model: torch.nn.Module, processor: Any, folder: Path, settings: EngineSettings,
              device: torch.device | None = None) -> "VLLMEngine":
        """Writes the policy (merged) and its processor to `folder` and starts vLLM on it."""
        from . import vllm_without_torchvision

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        base = model.get_base_model() if has_adapters(model) else model
        base.save_pretrained(folder, state_dict=policy_weights(model))
        processor.save_pretrained(folder)
        # In-process (no engine subprocess: the weights are pushed by reference); on CPU a small KV cache and
        # vLLM's thread binding off, so it leaves torch's threads to training.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        vllm_without_torchvision.register()  # vLLM runs it too (its plugin); here before vllm is imported
        from vllm import LLM

        began = time.perf_counter()
        kwargs: dict[str, Any] = dict(
            model=str(folder), dtype=settings.dtype, seed=settings.seed, enforce_eager=settings.enforce_eager,
            max_model_len=settings.max_model_len, limit_mm_per_prompt={"image": settings.max_images, "video": 0},
            # The sampled token's log-prob after temperature and filtering: the distribution it was drawn from.
            logprobs_mode="processed_logprobs",
            # Every sampling setting comes from the request: the folder's generation_config.json never applies.
            generation_config="vllm", enable_prefix_caching=True, block_size=settings.block_size)
        if device is not None and device.type == "cuda":
            kwargs["gpu_memory_utilization"] = settings.gpu_memory_utilization
        # vLLM seeds python's, numpy's and torch's global generators when it starts (its `seed`); training draws
        # from them (data order, dropout, the requests' seeds), and a resumed run has restored them from its
        # checkpoint before fit starts, so the engine's start must leave them as they were.
        with preserved_random_state():
            llm = LLM(**kwargs)
        engine = cls(llm, processor, settings, folder, time.perf_counter() - began)
        log.info("vLLM rollout engine started in %.1f s on %s", engine.start_seconds, folder)
        return engine

    # ------------------------------------------------------------------------------------- sync
    def load_weights(self, model: torch.nn.Module) -> None:
        """The policy's current weights into the engine, in place (no cache is reset: `sync` does both)."""
        weights = list(policy_weights(model).items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})

    def reset_caches(self) -> None:
        """Everything the engine computed from the old weights: cached prompt KV blocks and image encodings
        (the scheduler's record of them included)."""
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()

    def sync(self, model: torch.nn.Module) -> None:
        began = time.perf_counter()
        self.load_weights(model)
        self.reset_caches()
        self.syncs += 1
        self.sync_seconds += time.perf_counter() - began

    # --------------------------------------------------------------------------------- sampling
    def sample(self, batch: dict[str, Any], group_size: int, sampling: Sampling, rules: TokenRules,
               greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(completion ids [prompts x group_size, C], the engine's log-prob of each [same shape]); rows
        i*G..i*G+G-1 continue prompt i, a row ends at its first stop id, pads (and log-prob 0) follow.
        `greedy`: argmax decoding (one request per prompt repeated G times), for the equality checks."""
        from vllm import SamplingParams

        began = time.perf_counter()
        images = batch["meta"].get("images")
        if images is None:
            raise ValueError("the batch has no meta['images']: the vLLM engine needs each prompt's images")
        counts = image_counts(batch)
        if max(counts, default=0) > self.settings.max_images:
            raise ValueError(f"a prompt holds {max(counts)} images; the vLLM engine was started for at most "
                             f"{self.settings.max_images} per prompt (EngineSettings.max_images)")
        vocab = len(self.processor.tokenizer)
        allowed = sorted(set(range(vocab)) - set(rules.suppress_ids)) if rules.suppress_ids else None
        requests, params = [], []
        for ids, sample_images, count in zip(_prompt_ids(batch, self.image_id), images, counts):
            prompt = {"prompt_token_ids": ids}
            if count:
                prompt["multi_modal_data"] = {"image": sample_images if count > 1 else sample_images[0]}
            for _ in range(1 if greedy else group_size):
                # Drawn from torch's generator, so a resumed run (which restores it) draws the same seeds.
                seed = None if greedy else int(torch.randint(0, 2**31 - 1, ()).item())
                requests.append(prompt)
                params.append(SamplingParams(
                    n=1, seed=seed, temperature=0.0 if greedy else sampling.temperature,
                    top_p=1.0 if greedy else sampling.top_p, top_k=0 if greedy else sampling.top_k,
                    max_tokens=sampling.max_new_tokens, min_tokens=min(sampling.min_new_tokens, sampling.max_new_tokens),
                    stop_token_ids=list(rules.stop_ids), ignore_eos=False, repetition_penalty=1.0,
                    allowed_token_ids=allowed, logprobs=0, detokenize=False, skip_special_tokens=False))
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        rows, logps = [], []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            rows.append(ids)
            logps.append([next(iter(step.values())).logprob if step else 0.0 for step in (completion.logprobs or [])]
                         if completion.logprobs is not None else [0.0] * len(ids))
        if greedy:
            rows = [r for r in rows for _ in range(group_size)]
            logps = [lp for lp in logps for _ in range(group_size)]
        width = max(1, max(len(r) for r in rows))
        ids_out = torch.full((len(rows), width), rules.pad_id, dtype=torch.long)
        logp_out = torch.zeros((len(rows), width), dtype=torch.float32)
        for k, (r, lp) in enumerate(zip(rows, logps)):
            ids_out[k, :len(r)] = torch.tensor(r, dtype=torch.long)
            logp_out[k, :len(lp)] = torch.tensor(lp, dtype=torch.float32)
        self.sample_seconds += time.perf_counter() - began
        return ids_out, logp_out

    def record(self) -> dict[str, Any]:
        """What results.json's train record says of the engine."""
        import vllm

        from . import vllm_without_torchvision

        return {"engine": "vllm", "vllm": vllm.__version__, "settings": asdict(self.settings),
                "start_seconds": round(self.start_seconds, 2), "syncs": self.syncs,
                "sync_seconds": round(self.sync_seconds, 2), "sample_seconds": round(self.sample_seconds, 2),
                "compat": vllm_without_torchvision.mended()}
