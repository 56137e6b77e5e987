"""Model and processor factory behind `model=`: tiny, tiny_base, or a pretrained hub id / folder."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from ..config import IMAGE_BACKENDS  # model.image_backend: which image processor resizes and normalizes
from ..data.synthetic import GENERATOR_VERSION
from ..utils.errors import ModelError

# Bump when the tiny model, its tokenizer or its saved layout changes, so caches are rebuilt rather
# than reused. 2: processor files in the hub's layout (processor_config.json names Qwen2VLProcessor).
TINY_VERSION = 2

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}




@functools.lru_cache(maxsize=None)
def torchvision_import_error() -> str | None:
    """Why torchvision does not import here (None when it does)."""
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # a CUDA build on a CPU machine fails with OSError or RuntimeError, not ImportError
        return f"{type(exc).__name__}: {exc}"
    return None


def image_backend_problem(backend: str) -> str | None:
    """What is wrong with `model.image_backend=backend` on this machine (None when nothing)."""
    if backend not in IMAGE_BACKENDS:
        return f"model.image_backend='{backend}': expected one of {list(IMAGE_BACKENDS)}"
    if backend == "torchvision" and torchvision_import_error():
        return (f"model.image_backend=torchvision but torchvision does not import here ({torchvision_import_error()}); "
                "install it, or use model.image_backend=pil (the default: the same preprocessing on every machine)")
    return None


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
    # The tokenizer is trained on the synthetic tasks' text (models/tiny.py), so the generators' version keys it too.
    folder = Path(cache_dir) / "models" / f"tiny-{config_digest(arch, TINY_VERSION, GENERATOR_VERSION)}"

    def build(tmp: Path) -> None:
        tokenizer = build_tokenizer(arch.vocab_size)
        processor = build_processor(tokenizer, model_cfg.min_pixels, model_cfg.max_pixels)
        model = build_model(arch, tokenizer)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)

    return cached_build(folder, build)


def tiny_base_build_config(model_cfg: Any) -> dict[str, Any]:
    """What a tiny_base folder is built from: the tiny architecture, model.base_build and the versions of
    the tiny model and of the synthetic generators it pretrains on. Its manifest records this."""
    if model_cfg.base_build is None:
        raise ModelError(f"model '{model_cfg.name}': model.base_build is required for source 'tiny_base'")
    plain = OmegaConf.to_container(OmegaConf.create({"tiny": model_cfg.tiny, "base_build": model_cfg.base_build}),
                                   resolve=True)
    return {**plain, "tiny_version": TINY_VERSION, "generator_version": GENERATOR_VERSION}


TINY_BASE_BUILD = "python -m othink_mr1.jobs.tiny_base --out DIR [model.* overrides] (make tiny-base)"


def tiny_base_folder(model_cfg: Any) -> Path:
    """model.path when set (a folder the build job wrote), else the tiny_base the project ships."""
    from ..utils.checkout import shipped_tiny_base

    return Path(model_cfg.path) if model_cfg.path else shipped_tiny_base()


def check_tiny_base(model_cfg: Any) -> Path:
    """The tiny_base folder for `model_cfg`, checked against its manifest: every file's sha256, and the
    config it was built from equal to this one's (a ModelError naming the differing keys otherwise)."""
    from .manifest import check_folder

    folder = tiny_base_folder(model_cfg)
    check_folder(folder, tiny_base_build_config(model_cfg),
                 f"build a tiny_base for this config with `{TINY_BASE_BUILD}` and pass model.path=DIR")
    return folder


def load_local(folder: str | Path, dtype: str = "float32", attn_implementation: str = "sdpa",
               min_pixels: int | None = None, max_pixels: int | None = None, image_backend: str = "pil",
               image_settings: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """A saved model folder (tiny, tiny_base, an exported run or a hub id) with its processor. A local
    folder is checked before anything is read from it (check_model_folder), and the loaded weights after
    (check_finite_weights): a broken folder is one ModelError naming the folder and the file."""
    from transformers import AutoModelForImageTextToText

    weight_files = check_model_folder(folder)
    processor = load_processor(str(folder), image_backend, min_pixels, max_pixels, image_settings)
    model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=DTYPES[dtype],
                                                        attn_implementation=attn_implementation)
    check_stop_ids(str(folder), model, processor.tokenizer)
    check_finite_weights(itertools.chain(model.named_parameters(), model.named_buffers()), f"model '{folder}'",
                         weight_files or [str(folder)])
    return model, processor


# What transformers loads weights from, in the order it looks for them (an index lists the shards).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def looks_local(path: str | Path) -> bool:
    """Whether `path` means a folder on this machine rather than a hub id ("org/name"): it exists, starts
    with '/', '.' or '~', has more parts than a hub id can, or its parent folder exists here
    (`models/typo` beside a `models/` folder). Read as a hub id, a mistyped folder got the hub's
    "Repo id must be in the form 'repo_name' or 'namespace/repo_name'" instead of "not found"."""
    text = str(path)
    local = Path(text).expanduser()
    return (local.exists() or text.startswith(("/", ".", "~")) or len(Path(text).parts) > 2
            or (local.parent != Path(".") and local.parent.is_dir()))


def check_model_folder(path: str | Path) -> list[str] | None:
    """The weight files of the local model folder `path`, after checking what transformers would otherwise
    fail on with a traceback: the folder exists and is not empty, config.json reads and names a
    model_type, and every weight file (shards included) is complete. None for a hub id (nothing local to
    check). Reads headers only, never the weights: a few kilobytes, whatever the model's size."""
    if not looks_local(path):
        return None
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ModelError(f"model folder {path} does not exist (read as a local path, not a hub id 'org/name')")
    if not folder.is_dir():
        raise ModelError(f"model folder {path} is a file, not a folder (a saved model is a folder with config.json "
                         "and its weights; a Lightning .ckpt goes to ckpt=)")
    present = sorted(p.name for p in folder.iterdir())
    if not present:
        raise ModelError(f"model folder {folder} is empty: expected a saved model (config.json, model.safetensors, "
                         "the tokenizer and processor files)")
    config = folder / "config.json"
    if not config.is_file():
        raise ModelError(f"model folder {folder} has no config.json (it holds {_listing(present)}): not a saved model")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{config} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{config} is not valid JSON ({exc}): the file is damaged or cut short") from None
    except AttributeError:  # valid JSON, but a list or a string
        raise ModelError(f"{config} is not a JSON object: the file is damaged") from None
    if not model_type:
        raise ModelError(f"{config} names no model_type, so transformers cannot tell which model it is")
    files = _weight_files(folder, present)
    for file in files:
        problem = _weights_file_problem(file)
        if problem:
            raise ModelError(f"model folder {folder}: {file.name} {problem}; re-export or re-download the model")
    return [str(f) for f in files]


def _listing(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _weight_files(folder: Path, present: list[str]) -> list[Path]:
    """The weight files transformers would read from `folder`: the first of WEIGHT_FILES it has, an index
    expanded to its shards (each of which must exist)."""
    name = next((n for n in WEIGHT_FILES if n in present), None)
    if name is None:
        raise ModelError(f"model folder {folder} holds no weights: none of {', '.join(WEIGHT_FILES)} (it holds "
                         f"{_listing(present)})")
    if not name.endswith(".index.json"):
        return [folder / name]
    index = folder / name
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{index} is not a weight index with a weight_map ({type(exc).__name__}: {exc})") from None
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise ModelError(f"{index} lists shard(s) the folder lacks: {_listing(missing)}")
    return [folder / s for s in shards]


def _weights_file_problem(path: Path) -> str | None:
    """What is wrong with a weight file, judged from its size and header alone, or None."""
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if path.suffix == ".bin":
        return _torch_file_problem(path, size)
    # safetensors: an 8-byte header length, the JSON header, then the data its offsets describe.
    with path.open("rb") as fh:
        head = fh.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if header_len < 0 or 8 + header_len > size:
            return f"is truncated or not a safetensors file ({size} bytes, too short for its header)"
        try:
            header = json.loads(fh.read(header_len))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            return f"is not a safetensors file (its header does not parse: {exc})"
    expected = 8 + header_len + end
    if size < expected:
        return f"is truncated: {size} bytes, its header describes {expected}"
    return None


def _torch_file_problem(path: Path, size: int) -> str | None:
    """torch.save writes a zip whose directory is at its end, so a file cut short has none: found from the
    last kilobytes, where torch.load fails with a PytorchStreamReader error (or, mapped, with EINVAL)."""
    import zipfile

    return None if zipfile.is_zipfile(path) else (f"is truncated or not a torch.save file ({size} bytes, no zip "
                                                  "directory at its end)")


def check_finite_weights(named: Any, what: str, files: list[str],
                         remedy: str = "re-export or re-download it") -> None:
    """A ModelError naming the first tensors holding a NaN or inf and the file(s) they came from. Damaged
    or diverged weights otherwise load without complaint and score 0% with empty replies, or train into
    NaN. One aminmax per tensor (utils/finite.py): cheap beside the load itself."""
    from ..utils.finite import describe, nonfinite_tensors

    bad, total = nonfinite_tensors(named)
    if bad:
        raise ModelError(f"{what}: {describe(bad, total, 'weights')} loaded from {_listing(files, 3)}; the file is "
                         f"damaged or was saved from a diverged run: {remedy}")


def check_stop_ids(path: str, model: Any, tokenizer: Any) -> None:
    """Every id generation stops at (generation_config.json's eos_token_id) must be a token of the
    tokenizer: an id it lacks would never be sampled as the end, and a reply would never stop."""
    from .rollouts import generation_eos_ids

    for token_id in generation_eos_ids(model):
        token = tokenizer.convert_ids_to_tokens(token_id) if 0 <= token_id < len(tokenizer) else None
        if token is None:
            raise ModelError(f"model '{path}': generation_config.json eos_token_id lists {token_id}, which the tokenizer "
                             f"({len(tokenizer)} tokens) does not have; generation would never stop at it")


def image_processor_class(base_name: str, backend: str) -> type:
    """transformers' `backend` image processor of the family `base_name` (e.g. Qwen2VLImageProcessor)."""
    import transformers
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend

    problem = image_backend_problem(backend)
    if problem:
        raise ModelError(problem)
    name = base_name + ("Pil" if backend == "pil" else "")
    cls = getattr(transformers, name, None)
    # Without torchvision, transformers hands out the PIL class under the torchvision name: refuse it.
    if not isinstance(cls, type) or not issubclass(cls, PilBackend if backend == "pil" else TorchvisionBackend):
        raise ModelError(f"model.image_backend={backend}: transformers has no {backend} image processor '{name}'")
    return cls


def processor_class(path: str, model_type: str) -> type:
    """The transformers processor class of a folder: the one its processor_config.json (or tokenizer
    config) names, else the one transformers maps its model_type to. Exports written before the hub
    layout name ImageOnly<Class>: that is <Class>."""
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    named = None
    for file in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        candidate = Path(path) / file
        if candidate.is_file():
            named = json.loads(candidate.read_text(encoding="utf-8")).get("processor_class")
            if named:
                break
    if not named and not Path(path).is_dir():
        from transformers.processing_utils import ProcessorMixin

        named = ProcessorMixin.get_processor_dict(path)[0].get("processor_class")
    named = (named or PROCESSOR_MAPPING_NAMES.get(model_type) or "").removeprefix("ImageOnly")
    cls = getattr(transformers, named, None) if named else None
    if not isinstance(cls, type):
        raise ModelError(f"model '{path}': model_type '{model_type}' has no transformers processor "
                         f"({named or 'none named'}); an image-text model needs one")
    return cls


def load_processor(path: str, image_backend: str = "pil", min_pixels: int | None = None,
                   max_pixels: int | None = None, image_settings: dict[str, Any] | None = None) -> Any:
    """The folder's processor, built from its parts: its tokenizer, its chat template, its own settings
    and its image settings read into the `image_backend` image processor, in the model's transformers
    processor class without a video processor. Any family transformers' AutoModelForImageTextToText
    loads; nothing here depends on whether torchvision is installed unless `image_backend` is
    torchvision. The run's image settings (`min_pixels`, `max_pixels`, `image_settings`) go on top of
    the folder's (processing.apply_image_settings)."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.image_processing_base import ImageProcessingMixin
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from .processing import apply_image_settings, image_only_class, settings_for

    model_type = AutoConfig.from_pretrained(path).model_type
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ModelError(f"model '{path}': model_type '{model_type}' is not an image-text model (transformers' "
                         "AutoModelForImageTextToText does not load it); model.path needs a vision-language checkpoint")
    base_cls = processor_class(path, model_type)
    try:
        settings, _ = ImageProcessingMixin.get_image_processor_dict(path)
    except OSError:
        settings = {}
    family = settings.get("image_processor_type") or ""
    for suffix in ("Fast", "Pil"):
        family = family.removesuffix(suffix)
    if not family:
        raise ModelError(f"model '{path}': preprocessor_config.json names no image_processor_type (the folder's "
                         f"processor {base_cls.__name__} has no image processor); an image-text model needs one")
    image_processor = image_processor_class(family, image_backend).from_pretrained(path)
    try:
        apply_image_settings(image_processor, min_pixels, max_pixels, image_settings, f"model '{path}'")
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    tokenizer = AutoTokenizer.from_pretrained(path)
    processor_dict, _ = base_cls.get_processor_dict(path)
    chat_template = processor_dict.get("chat_template") or tokenizer.chat_template
    processor = image_only_class(base_cls)(image_processor=image_processor, tokenizer=tokenizer,
                                           chat_template=chat_template, **settings_for(base_cls, processor_dict))
    check_template(path, processor, "chat_template.jinja / chat_template.json" if processor_dict.get("chat_template")
                   else "tokenizer_config.json chat_template")
    return processor


def check_template(path: str, processor: Any, source: str) -> None:
    """The chat template must exist and write an image slot for an image part, or no prompt could carry
    its image (data.collate.image_slot reads the slot off the template)."""
    from ..data.collate import image_slot
    from ..data.records import DataError

    if not processor.chat_template:
        raise ModelError(f"model '{path}': no chat template (neither chat_template.jinja, chat_template.json nor "
                         "tokenizer_config.json chat_template)")
    try:
        slot = image_slot(processor)
    except DataError as exc:
        raise ModelError(f"model '{path}': {source}: {exc}") from None
    if not slot:
        raise ModelError(f"model '{path}': {source}: the chat template writes nothing for an image part "
                         "({'type': 'image'}), so no prompt can carry its image")


def processor_info(processor: Any) -> dict[str, str]:
    """What preprocesses images in this run, for results.json."""
    from transformers.image_processing_backends import PilBackend, TorchvisionBackend

    image_processor = processor.image_processor
    backend = ("pil" if isinstance(image_processor, PilBackend) else
               "torchvision" if isinstance(image_processor, TorchvisionBackend) else "unknown")
    return {"image_backend": backend, "image_processor": type(image_processor).__name__,
            "processor": type(processor).__name__}


def load_kwargs(model_cfg: Any) -> dict[str, Any]:
    """`load_local`'s settings from `model.*`: dtype, attention, image backend and image settings."""
    settings = model_cfg.get("image_processor") or None
    return dict(dtype=model_cfg.dtype, attn_implementation=model_cfg.attn_implementation,
                min_pixels=model_cfg.min_pixels, max_pixels=model_cfg.max_pixels, image_backend=model_cfg.image_backend,
                image_settings=OmegaConf.to_container(settings) if OmegaConf.is_config(settings) else settings)


def load_model(model_cfg: Any, cache_dir: str | Path) -> tuple[Any, Any]:
    """(model, processor) for `model_cfg`; `tiny` is built into the cache on first use (seconds), `tiny_base` is
    a folder checked against its manifest (the project ships one; jobs.tiny_base builds others)."""
    if model_cfg.dtype not in DTYPES:
        raise ModelError(f"model.dtype='{model_cfg.dtype}': expected one of {list(DTYPES)}")
    kwargs = load_kwargs(model_cfg)
    if model_cfg.source == "tiny":
        return load_local(tiny_folder(model_cfg, cache_dir), **kwargs)
    if model_cfg.source == "tiny_base":
        return load_local(check_tiny_base(model_cfg), **kwargs)
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
    state = read_checkpoint(path, f"ckpt='{ckpt}'")
    weights = {k[len("model."):]: v for k, v in state.get("state_dict", {}).items() if k.startswith("model.")}
    if not weights:
        raise ModelError(f"ckpt='{ckpt}': no model weights in this checkpoint")
    check_finite_weights(weights.items(), f"ckpt='{ckpt}'", [str(path)], "score an earlier checkpoint")
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


def read_checkpoint(path: Path, what: str, mmap: bool = False, hint: str = "") -> dict[str, Any]:
    """A Lightning checkpoint's contents, or a ModelError naming the file when it does not load (truncated,
    0 bytes, not a checkpoint): torch's own error is a PytorchStreamReader traceback. `mmap` maps the
    tensors instead of reading them (a check that looks at them once); `hint` says what to do instead."""
    hint = f"; {hint}" if hint else ""
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"{what}: {path} is empty (0 bytes), not a checkpoint{hint}")
    problem = _torch_file_problem(path, size)
    if problem:
        raise ModelError(f"{what}: {path} {problem}: the checkpoint is damaged{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ... for a bad file
        # torch's first sentence says what failed; the rest is its generic advice.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". ")[0].rstrip(".")
        raise ModelError(f"{what}: {path} does not load as a checkpoint ({size} bytes; {reason}): the file is "
                         f"truncated or damaged{hint}") from None
    if not isinstance(state, dict):
        raise ModelError(f"{what}: {path} holds a {type(state).__name__}, not a Lightning checkpoint{hint}")
    return state


def check_checkpoint(path: Path, what: str, hint: str = "") -> None:
    """A checkpoint a run resumes from loads and holds finite model weights, checked before the run folder
    is touched or any training time spent (Lightning would fail on it only inside fit, with a traceback).
    Mapped, not read into memory: the weights are looked at once (check_finite_weights)."""
    state = read_checkpoint(path, what, mmap=True, hint=hint)
    weights = [(k, v) for k, v in (state.get("state_dict") or {}).items() if isinstance(v, torch.Tensor)]
    if not weights:
        raise ModelError(f"{what}: {path} holds no model weights (no state_dict): not a checkpoint of a run")
    check_finite_weights(weights, what, [str(path)], "resume from an earlier copy, or start the run again with "
                         "resume=false and a lower method.lr")
