"""The image+text processor of a Qwen2-VL-family folder, built the same way on every machine.

transformers 5 ships two image processors per model: a PIL one (what R1-V's transformers 4.49 ran) and
a torchvision one (what AutoProcessor picks wherever torchvision imports). They resize with different
code, so the backend is a config choice (`model.image_backend`), never a consequence of what is
installed. The processor itself is the model's own transformers class without its video processor
(which needs torchvision and which no task here uses); folders are saved in the hub's layout, so plain
transformers loads them without this project.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor, Qwen3VLProcessor


class ImageOnlyMixin:
    """A processor built without its video processor, whose `save_pretrained` writes the hub's layout
    under the real transformers class name (`hub_class`)."""

    hub_class: str = ""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        kwargs.pop("video_processor", None)
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> list[str]:
        return save_hub_layout(self, Path(save_directory))


class ImageOnlyQwen2VLProcessor(ImageOnlyMixin, Qwen2VLProcessor):
    hub_class = "Qwen2VLProcessor"


class ImageOnlyQwen2_5_VLProcessor(ImageOnlyMixin, Qwen2_5_VLProcessor):
    hub_class = "Qwen2_5_VLProcessor"


class ImageOnlyQwen3VLProcessor(ImageOnlyMixin, Qwen3VLProcessor):
    hub_class = "Qwen3VLProcessor"


# config.json's model_type -> the processor used for it.
PROCESSORS: dict[str, type] = {"qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor,
                               "qwen3_vl": ImageOnlyQwen3VLProcessor}


def save_hub_layout(processor: Any, folder: Path) -> list[str]:
    """The hub's processor files: tokenizer files, chat_template.jinja, preprocessor_config.json (the
    image processor's own standard config, which the video processor of a torchvision install also
    reads) and processor_config.json naming the transformers processor class."""
    folder.mkdir(parents=True, exist_ok=True)
    hub_class = processor.hub_class
    processor.tokenizer._set_processor_class(hub_class)
    written = list(processor.tokenizer.save_pretrained(folder))
    written += processor.image_processor.save_pretrained(folder)
    if processor.chat_template is not None:
        (folder / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": hub_class}, indent=2) + "\n")
    return written + [str(folder / "chat_template.jinja"), str(folder / "processor_config.json")]
