"""Helpers shared by tests/ and tests/e2e/ (see each test file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROMPT = "How many items are there? Output the final answer in <answer> </answer> tags."


MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]


def noise_image(path: Path | None = None) -> Image.Image:
    """An odd-sized noisy image, so resizing (where the backends differ) really happens."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(97, 150, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if path is not None:
        image.save(path)
    return image


def inputs(processor, image: Image.Image) -> dict[str, torch.Tensor]:
    text = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    return {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}


def assert_same_inputs(a: dict, b: dict) -> None:
    for key in ("pixel_values", "image_grid_thw", "input_ids", "mm_token_type_ids"):
        assert torch.equal(a[key], b[key]), key
