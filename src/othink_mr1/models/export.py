"""A trained model as a folder in the hub's layout (RUN/model with save_model=true)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from .adapters import has_adapters


def export_model(model: Any, processor: Any, folder: Path, state_dict: dict[str, Any] | None = None) -> None:
    """A plain transformers folder: `AutoModelForImageTextToText` and `AutoProcessor` load it without
    this project (processor_config.json names the transformers processor class; where torchvision
    is missing, AutoProcessor raises on the video processor and `AutoImageProcessor` + `AutoTokenizer`
    load the parts), and `ckpt=FOLDER` scores it. A LoRA model is exported merged, with its adapters
    alone beside it under adapter/. `state_dict`: the weights to write instead of the model's own (a sharded
    model's, gathered whole: TrainableModule.whole_policy)."""
    folder = Path(folder)
    if has_adapters(model):
        model.save_pretrained(folder / "adapter")
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder, state_dict=state_dict)
    processor.save_pretrained(folder)  # the hub's layout (models/processing.py)
