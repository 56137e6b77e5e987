"""Model and processor factory behind `model=`: tiny, tiny_base, or a pretrained hub id / folder."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from ..data.synthetic import GENERATOR_VERSION

log = logging.getLogger(__name__)

# Bump when the tiny model or its tokenizer changes, so caches are rebuilt rather than reused.
TINY_VERSION = 1

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelError(ValueError):
    """A model config or checkpoint that cannot be loaded; the message names the key or path."""


def config_digest(*parts: Any) -> str:
    """A short stable hash of config nodes (OmegaConf or plain), for cache folder names."""
    plain = [OmegaConf.to_container(p, resolve=True) if OmegaConf.is_config(p) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_build(folder: Path, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp_dir)` once and publish it as `folder`; concurrent callers wait on a lock."""
    from filelock import FileLock

    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").exists():
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            build(tmp)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tiny_folder(model_cfg: Any, cache_dir: str | Path) -> Path:
    """The saved `tiny` model for this architecture, built on first use (seconds)."""
    from .tiny import build_model, build_processor, build_tokenizer

    arch = model_cfg.tiny
    if arch is None:
        raise ModelError(f"model '{model_cfg.name}': model.tiny (the architecture) is required for source '{model_cfg.source}'")
    folder = Path(cache_dir) / "models" / f"tiny-{config_digest(arch, TINY_VERSION)}"

    def build(tmp: Path) -> None:
        tokenizer = build_tokenizer(arch.vocab_size)
        processor = build_processor(tokenizer, model_cfg.min_pixels, model_cfg.max_pixels)
        model = build_model(arch, tokenizer)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return cached_build(folder, build)


def tiny_base_folder(model_cfg: Any, cache_dir: str | Path) -> Path:
    """The saved `tiny_base` model, built by pretraining `tiny` on first use (minutes)."""
    from .tiny_base import build_tiny_base

    if model_cfg.base_build is None:
        raise ModelError(f"model '{model_cfg.name}': model.base_build is required for source 'tiny_base'")
    source = tiny_folder(model_cfg, cache_dir)
    # The build pretrains on, and checks its window against, the synthetic generators' output.
    key = config_digest(model_cfg.tiny, model_cfg.base_build, TINY_VERSION, GENERATOR_VERSION)
    folder = Path(cache_dir) / "models" / f"tiny_base-{key}"
    return cached_build(folder, lambda tmp: build_tiny_base(model_cfg, source, tmp, cache_dir))


def load_local(folder: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
               min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[Any, Any]:
    """A saved model folder (tiny, tiny_base, or an exported run) with its processor."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=DTYPES[dtype],
                                                        attn_implementation=attn_implementation)
    processor = load_processor(str(folder), min_pixels, max_pixels)
    return model, processor


def load_processor(path: str, min_pixels: int | None, max_pixels: int | None) -> Any:
    """AutoProcessor, or the image-only Qwen2-VL processor where the video processor cannot be
    built (it needs torchvision, which CPU installs lack) or the folder holds our tiny processor."""
    from transformers import AutoProcessor

    from .tiny import ImageOnlyQwen2VLProcessor

    config_file = Path(path) / "processor_config.json"
    if config_file.exists() and "ImageOnlyQwen2VLProcessor" in config_file.read_text():
        processor = ImageOnlyQwen2VLProcessor.from_pretrained(path)
    else:
        try:
            processor = AutoProcessor.from_pretrained(path)
        except (ImportError, ValueError, TypeError) as exc:
            log.warning("AutoProcessor failed for %s (%s); using the image-only Qwen2-VL processor", path, exc)
            processor = ImageOnlyQwen2VLProcessor.from_pretrained(path)
    # The image budget belongs to the model config (R1-V: max_pixels 401408), not to the folder.
    size = dict(processor.image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = min_pixels
    if max_pixels is not None:
        size["longest_edge"] = max_pixels
    processor.image_processor.size = size
    return processor


def load_model(model_cfg: Any, cache_dir: str | Path) -> tuple[Any, Any]:
    """(model, processor) for `model_cfg`; tiny models come from (and are built into) the cache."""
    if model_cfg.dtype not in DTYPES:
        raise ModelError(f"model.dtype='{model_cfg.dtype}': expected one of {list(DTYPES)}")
    kwargs = dict(dtype=model_cfg.dtype, attn_implementation=model_cfg.attn_implementation,
                  min_pixels=model_cfg.min_pixels, max_pixels=model_cfg.max_pixels)
    if model_cfg.source == "tiny":
        return load_local(tiny_folder(model_cfg, cache_dir), **kwargs)
    if model_cfg.source == "tiny_base":
        return load_local(tiny_base_folder(model_cfg, cache_dir), **kwargs)
    if model_cfg.source == "pretrained":
        if not model_cfg.path:
            raise ModelError(f"model '{model_cfg.name}': model.path (hub id or folder) is required")
        try:
            return load_local(model_cfg.path, **kwargs)
        except OSError as exc:
            raise ModelError(f"could not load model.path='{model_cfg.path}': {exc}") from None
    raise ModelError(f"model.source='{model_cfg.source}': expected tiny, tiny_base or pretrained")


def load_checkpoint_weights(model: torch.nn.Module, ckpt: str | Path) -> torch.nn.Module:
    """`model` with a Lightning checkpoint's `model.*` weights (strict: shapes must match). A LoRA
    checkpoint holds only the adapters: they are applied to `model` and merged into its weights."""
    path = Path(ckpt)
    if not path.is_file():
        raise ModelError(f"ckpt='{ckpt}': checkpoint file not found")
    state = torch.load(path, map_location="cpu", weights_only=False)
    weights = {k[len("model."):]: v for k, v in state.get("state_dict", {}).items() if k.startswith("model.")}
    if not weights:
        raise ModelError(f"ckpt='{ckpt}': no model weights in this checkpoint")
    if state.get("lora"):
        from types import SimpleNamespace

        from .adapters import apply_lora

        model = apply_lora(model, SimpleNamespace(**state["lora"]))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        not_loaded = [k for k in missing if "lora_" in k]
        if unexpected or not_loaded:
            raise ModelError(f"ckpt='{ckpt}': LoRA adapters do not match model '{getattr(model, 'name_or_path', '')}': "
                             f"missing {not_loaded[:5]}, unexpected {unexpected[:5]}")
        return model.merge_and_unload()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied embeddings are saved once; anything else missing means another architecture.
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"ckpt='{ckpt}' does not match model '{getattr(model, 'name_or_path', '')}': "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
