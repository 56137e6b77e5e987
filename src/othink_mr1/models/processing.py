"""The image+text processor of any vision-language folder, built the same way on every machine.

transformers 5 ships two image processors per model: a PIL one (what R1-V's transformers 4.49 ran) and
a torchvision one (what AutoProcessor picks wherever torchvision imports). They resize with different
code, so the backend is a config choice (`model.image_backend`), never a consequence of what is
installed. The processor itself is the model's own transformers class (Qwen2VLProcessor,
Idefics3Processor, LlavaOnevisionProcessor, Gemma3Processor, ...) built without a video processor
(which needs torchvision and which no task here uses); folders are saved in the hub's layout, so plain
transformers loads them without this project.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

# Constructor arguments that are sub-processors or the template, not a processor's own settings.
_PARTS = ("self", "image_processor", "tokenizer", "video_processor", "chat_template", "args", "kwargs")


class ImageOnlyMixin:
    """A processor built without its video processor, whose `save_pretrained` writes the hub's layout
    under the real transformers class name (`hub_class`) with the processor's own settings.

    The narrow `__init__` signature matters: ProcessorMixin reads a processor's sub-processors from
    it, so the video processor is never asked for (or type-checked) here."""

    hub_class: str = ""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        base = self.hub_base()
        if "video_processor" in inspect.signature(base.__init__).parameters:
            kwargs["video_processor"] = None
        base.__init__(self, image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

    @classmethod
    def hub_base(cls) -> type:
        """The transformers processor class this one is built on."""
        return next(c for c in cls.__mro__ if c.__name__ == cls.hub_class)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        return save_hub_layout(self, Path(save_directory))


@functools.cache
def image_only_class(processor_cls: type) -> type:
    """`processor_cls` as an image-only processor (ImageOnly<Name>), one class per processor class.
    Published in this module under its name, so processors pickle into DataLoader workers."""
    name = f"ImageOnly{processor_cls.__name__}"
    cls = type(name, (ImageOnlyMixin, processor_cls), {"hub_class": processor_cls.__name__, "__module__": __name__})
    setattr(sys.modules[__name__], name, cls)
    return cls


def constructor_settings(processor: Any) -> dict[str, Any]:
    """The processor's own constructor settings (Idefics3's image_seq_len, LLaVA's patch_size, ...), as
    processor_config.json holds them; the sub-processors and the chat template are saved separately."""
    base = processor.hub_base() if isinstance(processor, ImageOnlyMixin) else type(processor)
    names = [n for n in inspect.signature(base.__init__).parameters if n not in _PARTS]
    out = {}
    for name in names:
        value = getattr(processor, name, None)
        if value is not None and isinstance(value, (str, int, float, bool, list, dict)):
            out[name] = value
    return out


def settings_for(processor_cls: type, processor_dict: dict[str, Any]) -> dict[str, Any]:
    """The entries of a saved processor_config.json that `processor_cls` takes as settings."""
    accepted = set(inspect.signature(processor_cls.__init__).parameters) - set(_PARTS)
    return {k: v for k, v in processor_dict.items() if k in accepted}


def save_hub_layout(processor: Any, folder: Path) -> list[str]:
    """The hub's processor files: tokenizer files, chat_template.jinja, preprocessor_config.json (the
    image processor's own standard config, which the video processor of a torchvision install also
    reads) and processor_config.json naming the transformers processor class and its settings."""
    folder.mkdir(parents=True, exist_ok=True)
    hub_class = processor.hub_class
    processor.tokenizer._set_processor_class(hub_class)
    written = list(processor.tokenizer.save_pretrained(folder))
    written += processor.image_processor.save_pretrained(folder)
    if processor.chat_template is not None:
        (folder / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")
    payload = {"processor_class": hub_class, **constructor_settings(processor)}
    (folder / "processor_config.json").write_text(json.dumps(payload, indent=2) + "\n")
    return written + [str(folder / "chat_template.jinja"), str(folder / "processor_config.json")]


def has_pixel_budget(image_processor: Any) -> bool:
    """Whether the image processor resizes to a pixel-count budget (Qwen's smart resize: min_pixels /
    max_pixels), read from the keyword arguments it declares, not from a family name."""
    valid = getattr(image_processor, "valid_kwargs", None)
    return "max_pixels" in getattr(valid, "__annotations__", {})


def apply_image_settings(image_processor: Any, min_pixels: int | None, max_pixels: int | None,
                         overrides: dict[str, Any] | None, where: str) -> None:
    """The run's image settings on top of the folder's: `model.min_pixels`/`max_pixels` (pixel budgets,
    only where the image processor has them) and `model.image_processor.<key>` (any existing setting;
    a dict-valued one such as `size` only with keys it already has). Anything else is a ValueError
    naming the config key."""
    from transformers.image_utils import SizeDict

    if min_pixels is not None or max_pixels is not None:
        if not has_pixel_budget(image_processor):
            key = "model.min_pixels" if min_pixels is not None else "model.max_pixels"
            raise ValueError(f"{key}: {type(image_processor).__name__} of {where} has no pixel budget; set its size "
                             f"with model.image_processor.size.<key> instead (it has size={dict(image_processor.size)})")
        size = dict(image_processor.size)
        if min_pixels is not None:
            size["shortest_edge"] = int(min_pixels)
        if max_pixels is not None:
            size["longest_edge"] = int(max_pixels)
        image_processor.size = size
    for key, value in (overrides or {}).items():
        current = getattr(image_processor, key, None)
        known = sorted(k for k in image_processor.to_dict() if not k.startswith("_") and k != "image_processor_type")
        if current is None and key not in known:
            raise ValueError(f"model.image_processor.{key}: {type(image_processor).__name__} of {where} has no setting "
                             f"'{key}'; it has {known}")
        if isinstance(current, (dict, SizeDict)):  # size, crop_size, max_image_size, ...
            current = dict(current)
            if not isinstance(value, dict):
                raise ValueError(f"model.image_processor.{key}: expected a mapping with keys {sorted(current)}")
            unknown = sorted(set(value) - set(current))
            if unknown:
                raise ValueError(f"model.image_processor.{key}.{unknown[0]}: {type(image_processor).__name__} of {where} "
                                 f"has {key} keys {sorted(current)}")
            value = {**current, **value}
        setattr(image_processor, key, value)
