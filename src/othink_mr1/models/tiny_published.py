"""A tiny random-weight model of a published checkpoint, built from the checkpoint's own small files.

A hub checkpoint's folder is a few small files (config.json, generation_config.json, the processor and
tokenizer configs, the chat template) beside the large ones (weights, the full vocabulary). This build
keeps the small files verbatim and replaces the large ones:

- config.json: the published one with a small overlay applied (hidden sizes, layers, heads); every other
  setting (token ids, vocabulary size, patch and merge sizes, image size, rope) is the published value.
- the vocabulary: the embedded tiny model's byte-level BPE (models/tiny.py), with every special token at
  the id the published files give it (tokenizer_config.json's added tokens, or the overlay's `tokens`
  where that file was not found) and filler tokens in the other ids, so any id a random model samples
  decodes to text.
- the weights: random, seeded.

Where a small file was not found, the overlay says what stands in for it: `model_type` and the values
that matter (token ids, vocabulary size) for a missing config.json, `tokens` and `special_tokens` for a
missing tokenizer config, `files_from` for a sibling checkpoint's copy, `written` for a file written
here. `build_manifest.json` in the built folder says, file by file, what is published, what is shrunk
and what stands in.

Everything is a pure function of (published folder, overlay, seed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .tiny_families import random_model

# Bump when the build's output changes, so cached folders are rebuilt rather than reused.
PUBLISHED_BUILD_VERSION = 1

# Copied verbatim when published (config.json is shrunk; the tokenizer's vocabulary is rebuilt).
VERBATIM = ("generation_config.json", "preprocessor_config.json", "processor_config.json", "tokenizer_config.json",
            "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja")
# The ids a config names, at the top level or in text_config (old and new key names).
_ID_KEYS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index", "vision_start_token_id",
            "vision_end_token_id", "vision_token_id", "boi_token_index", "eoi_token_index", "bos_token_id",
            "eos_token_id", "pad_token_id")
_NAMED = ("bos_token", "eos_token", "unk_token", "pad_token")


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overlay`'s values on top, nested dicts merged key by key."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def special_tokens(published: Path, overlay: dict[str, Any]) -> dict[int, str]:
    """Every special token by id: tokenizer_config.json's added tokens (and added_tokens.json), else the
    overlay's `tokens` (written here where the published tokenizer files were not found)."""
    tokens: dict[int, str] = {}
    config = _read(published / "tokenizer_config.json") or {}
    for index, token in (config.get("added_tokens_decoder") or {}).items():
        tokens[int(index)] = token["content"]
    for token, index in (_read(published / "added_tokens.json") or {}).items():
        tokens.setdefault(int(index), token)
    for index, token in (overlay.get("tokens") or {}).items():
        if int(index) in tokens and tokens[int(index)] != token:
            raise ValueError(f"overlay tokens: id {index} is '{token}', but the published tokenizer files give "
                             f"'{tokens[int(index)]}'")
        tokens[int(index)] = token
    return tokens


def named_tokens(published: Path, overlay: dict[str, Any]) -> dict[str, str]:
    """bos/eos/unk/pad by name: special_tokens_map.json, then tokenizer_config.json, then the overlay's
    `special_tokens`."""
    names: dict[str, str] = {}
    for source in (overlay.get("special_tokens") or {}, _read(published / "tokenizer_config.json") or {},
                   _read(published / "special_tokens_map.json") or {}):
        for name in _NAMED:
            value = source.get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                names[name] = value
    return names


def config_ids(config: dict[str, Any]) -> dict[str, int]:
    """The token ids a model config names (`text_config.<key>` where nested), lists flattened."""
    out: dict[str, int] = {}
    for prefix, node in (("", config), ("text_config.", config.get("text_config") or {})):
        for key in _ID_KEYS:
            value = node.get(key)
            for i, item in enumerate(value if isinstance(value, list) else [value]):
                if isinstance(item, int):
                    out[f"{prefix}{key}" + (f"[{i}]" if isinstance(value, list) else "")] = item
    return out


def build_vocabulary(specials: dict[int, str], size: int, add_bos: str | None) -> Any:
    """The tiny BPE with its regular tokens renumbered around `specials` (kept at their ids), filler
    tokens up to `size`, and (`add_bos`) a post-processor that puts the bos token first, as a tokenizer
    whose config says add_bos_token does."""
    from tokenizers import Tokenizer, processors

    from .tiny import SPECIAL_TOKENS, build_tokenizer

    raw = json.loads(build_tokenizer(1024).backend_tokenizer.to_str())
    regular = [t for t, _ in sorted(raw["model"]["vocab"].items(), key=lambda kv: kv[1])
               if t not in SPECIAL_TOKENS and t not in specials.values()]
    free = (i for i in range(size) if i not in specials)
    vocab = {token: next(free) for token in regular}
    # Fillers: byte-level text (printable ASCII maps to itself), reachable by no merge.
    vocab.update({f"~{i}~": i for i in free})
    vocab.update({token: i for i, token in specials.items()})
    raw["model"]["vocab"] = vocab
    raw["added_tokens"] = [dict(id=i, content=t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                special=True) for i, t in sorted(specials.items())]
    tokenizer = Tokenizer.from_str(json.dumps(raw))
    if add_bos:
        bos_id = next(i for i, t in specials.items() if t == add_bos)
        tokenizer.post_processor = processors.TemplateProcessing(single=f"{add_bos} $A", pair=f"{add_bos} $A {add_bos} $B",
                                                                 special_tokens=[(add_bos, bos_id)])
    return tokenizer


def stand_ins(published: Path, overlay: dict[str, Any], staging: Path) -> dict[str, str]:
    """Gather the small files into `staging`: the published ones, then for files not published here the
    overlay's `files_from` (a sibling fixture's copy, `"<folder>/<file>"`, e.g. Qwen2-VL-7B's template from
    the 2B's folder) and `written` (content written here). Returns what each file is, for the manifest."""
    staging.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name in ("config.json", *VERBATIM):
        if (published / name).is_file():
            shutil.copyfile(published / name, staging / name)
            manifest[name] = "published, verbatim" if name != "config.json" else "published, shrunk by the overlay"
    for name, source in (overlay.get("files_from") or {}).items():
        if name in manifest:
            raise ValueError(f"overlay files_from: {name} is published in {published}; keep the published one")
        shutil.copyfile(published.parent / source, staging / name)
        manifest[name] = f"not published here: the copy in {source} (same family; not checked to be identical)"
    for name, content in (overlay.get("written") or {}).items():
        if name in manifest:
            raise ValueError(f"overlay written: {name} is already in {published} or files_from")
        text = content if isinstance(content, str) else json.dumps(content, indent=2) + "\n"
        (staging / name).write_text(text, encoding="utf-8")
        manifest[name] = "not published here: written here (overlay), not checked against the hub"
    return manifest


def build_from_published(published: str | Path, overlay: dict[str, Any], folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny build of the checkpoint whose small files are in `published` to `folder`."""
    from transformers import AutoConfig, PreTrainedTokenizerFast
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Staged apart, then copied in last: the tokenizer's and the model's save_pretrained write files of the
    # same names (tokenizer_config.json, generation_config.json), which the published copies replace.
    manifest = stand_ins(Path(published), overlay, folder / ".small_files")
    published = folder / ".small_files"

    base = _read(published / "config.json")
    if base is None:
        model_type = overlay.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{published}: no config.json, and the overlay names no known model_type ({model_type!r})")
        base = CONFIG_MAPPING[model_type]().to_dict()
        # Per-layer lists derived from the default depth would contradict the shrunk one.
        for node in (base, base.get("text_config") or {}):
            node.pop("layer_types", None)
        manifest["config.json"] = (f"not published here: transformers' {CONFIG_MAPPING[model_type].__name__} defaults "
                                   "with the overlay's values (token ids, vocabulary, image geometry written here), shrunk")
    settings = deep_merge(base, overlay.get("config") or {})
    config = AutoConfig.for_model(**settings)

    specials = special_tokens(published, overlay)
    names = named_tokens(published, overlay)
    ids = config_ids(settings)
    missing = {key: i for key, i in ids.items() if i not in specials}
    if missing:
        raise ValueError(f"{published}: config.json names token ids no special token holds: {missing}; add them to "
                         "the overlay's `tokens`")
    for name, token in names.items():
        if token not in specials.values():
            raise ValueError(f"{published}: {name} '{token}' is not among the special tokens {sorted(specials.values())}")
    vocab_size = max(specials) + 1
    tokenizer_config = _read(published / "tokenizer_config.json") or {}
    add_bos = names.get("bos_token") if tokenizer_config.get("add_bos_token") else None
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=build_vocabulary(specials, vocab_size, add_bos), **names)
    tokenizer.save_pretrained(folder)
    manifest["tokenizer.json"] = (f"built here: the tiny BPE, {len(specials)} special tokens at their published ids, "
                                  f"{vocab_size} ids in all")
    if "tokenizer_config.json" not in manifest:
        manifest["tokenizer_config.json"] = "not published here: written by transformers for the tokenizer built here"
        if overlay.get("tokenizer_settings"):  # e.g. Gemma 3's named image tokens, which its processor reads
            path = folder / "tokenizer_config.json"
            path.write_text(json.dumps(deep_merge(json.loads(path.read_text(encoding="utf-8")), overlay["tokenizer_settings"]),
                                       indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            manifest["tokenizer_config.json"] += ", with the overlay's tokenizer_settings"

    model = random_model(config, seed)
    model.save_pretrained(folder)
    manifest["model.safetensors"] = f"built here: random weights, seed {seed}"
    if not (published / "generation_config.json").is_file():
        manifest["generation_config.json"] = "not published here: written by transformers from config.json"

    for name in VERBATIM:
        if (published / name).is_file():
            shutil.copyfile(published / name, folder / name)
    shutil.rmtree(published)
    (folder / "build_manifest.json").write_text(json.dumps({"seed": seed,
                                                            "overlay": overlay, "files": manifest}, indent=2) + "\n")
    return folder
