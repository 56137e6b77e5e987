"""Synthetic CLEVR-like counting scenes.

A scene holds 3-10 simple objects on a plain background. Objects sit in the cells of a coarse grid
(one cell per visual token of the tiny model after Qwen2-VL's 2x2 patch merge) with some jitter,
so a 1M-parameter VLM can learn to count in minutes on a CPU. The test split draws other object
types (diamonds, triangles, crosses instead of circles, squares, hexagons), as SuperCLEVR does
against CLEVR, so accuracy there measures generalization rather than memorised silhouettes.

Records follow the real schemas: train = {image, problem, solution}, test = {image, question,
ground_truth}.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

MIN_OBJECTS = 3
MAX_OBJECTS = 10
CELL = 28  # pixels per merged visual token (patch 14 x merge 2)


@dataclass(frozen=True)
class SceneStyle:
    shapes: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    background: tuple[int, int, int]
    radius: tuple[int, int]  # min, max half-size in pixels


# CLEVR-ish: spheres, cubes and cylinders seen from above, in saturated CLEVR colours, one size.
# Light colours and mixed sizes make the tiny model's counting much slower to learn (measured), so
# the train style keeps object area and contrast nearly constant; the test style then shifts them.
TRAIN_STYLE = SceneStyle(
    shapes=("circle", "square", "hexagon"),
    colors=((87, 87, 87), (173, 35, 35), (42, 75, 215), (29, 105, 20), (129, 74, 25), (129, 38, 192)),
    background=(235, 235, 235),
    radius=(9, 11),
)
# SuperCLEVR-ish shift: new object types (SuperCLEVR swaps CLEVR's primitives for vehicles), in the same
# colours on the same floor. Shifting colours and floor as well left SFT's gains transferring but
# not GRPO's (measured), which is a property of the style gap, not of the methods being compared.
TEST_STYLE = SceneStyle(
    shapes=("diamond", "triangle", "cross"),
    colors=TRAIN_STYLE.colors,
    background=TRAIN_STYLE.background,
    radius=(9, 11),
)

TRAIN_QUESTIONS = (
    "How many items are there in the image?",
    "How many objects are there in the image?",
    "How many things are in the picture?",
)
# SuperCLEVR-200 asks exactly this.
TEST_QUESTIONS = ("How many different items are there in the image?",)


def _draw_object(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, color) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "hexagon":
        draw.regular_polygon((cx, cy, r), n_sides=6, fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx - r, cy), (cx, cy + r), (cx + r, cy)], fill=color)
    elif shape == "cross":
        w = max(2, r // 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=color)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=color)
    else:  # pragma: no cover - styles are module constants
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(rng: random.Random, count: int, image_size: int, style: SceneStyle) -> Image.Image:
    """Draw `count` objects, one per grid cell, with jitter inside the cell."""
    grid = max(1, image_size // CELL)
    if count > grid * grid:
        raise ValueError(f"{count} objects do not fit a {grid}x{grid} grid ({image_size}px image)")
    image = Image.new("RGB", (image_size, image_size), style.background)
    draw = ImageDraw.Draw(image)
    offset = (image_size - grid * CELL) // 2
    for cell in rng.sample(range(grid * grid), count):
        r = rng.randint(*style.radius)
        slack = max(0, CELL // 2 - r - 1)
        cx = offset + (cell % grid) * CELL + CELL // 2 + rng.randint(-slack, slack)
        cy = offset + (cell // grid) * CELL + CELL // 2 + rng.randint(-slack, slack)
        _draw_object(draw, rng.choice(style.shapes), cx, cy, r, rng.choice(style.colors))
    return image


def check_config(synthetic: Any, key: str) -> None:
    """The config check's hook (see data/synthetic/__init__.py): `synthetic.image_size` must fit a scene of
    MAX_OBJECTS objects, one per 28px cell (a merged visual token); a ValueError naming `key` otherwise."""
    grid = math.isqrt(MAX_OBJECTS - 1) + 1  # the smallest square grid with MAX_OBJECTS cells: 4x4 for 10
    if (synthetic.image_size // CELL) ** 2 < MAX_OBJECTS:
        raise ValueError(f"{key}.image_size={synthetic.image_size}: counting scenes of up to {MAX_OBJECTS} "
                         f"objects need at least {grid * CELL}px")


def make_item(split: str, index: int, seed: int, image_size: int, render: bool = True) -> dict:
    """One record of `split` ("train", "validation" or "test"), a pure function of its arguments.
    Validation draws other scenes in the test's style (for tuning on the shifted distribution without
    touching a test item) and follows the test schema."""
    # A string seed is hashed with SHA-512 by `random`, so items are stable across processes.
    rng = random.Random(f"counting/{split}/{seed}/{index}")
    count = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    test = split != "train"
    question = rng.choice(TEST_QUESTIONS if test else TRAIN_QUESTIONS)
    image = render_scene(rng, count, image_size, TEST_STYLE if test else TRAIN_STYLE) if render else None
    if test:
        return {"image": image, "question": question, "ground_truth": count}
    return {"image": image, "problem": question, "solution": f"<answer> {count} </answer>"}


def counting_thinking(count: int, rng: random.Random) -> str:
    """A short reasoning trace for `tiny_base` pretraining targets."""
    opener = rng.choice(("I count the objects in the image.", "Let me count the objects."))
    return f"{opener} There are {count} objects."
