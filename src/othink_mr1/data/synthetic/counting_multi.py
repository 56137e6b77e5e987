"""Synthetic multi-image counting: one or two counting scenes, and the total number of objects.

Each item shows one scene (even indices) or two (odd indices), drawn by counting.py's renderer in the
counting task's styles (train: circles, squares, hexagons; test: diamonds, triangles, crosses), and
asks for the number of objects in all its images together; the answer is the sum. Alternating the
number of scenes mixes one- and two-image items in every stretch of the split, so batches (and a
model's prompts) exercise both layouts.

Records follow the real schemas with an image list: train = {images, problem, solution, thinking},
test = {images, question, ground_truth}. The thinking (counted per image, then added) makes
`method.target=auto` train on the reasoning; `method.target=solution` ignores it.
"""

from __future__ import annotations

import random

from .counting import MAX_OBJECTS, MIN_OBJECTS, TEST_STYLE, TRAIN_STYLE, render_scene
from .counting import check_config  # noqa: F401 - the config check's hook: the same scenes, the same image size

# Questions by number of images: the total is asked for, so one image reads as the counting task.
TRAIN_QUESTIONS = {
    1: ("How many objects are there in the image?", "How many items are there in the image?"),
    2: ("How many objects are there in the two images together?",
        "How many items are there in both images combined?",
        "Count the objects in the two images. How many are there in total?"),
}
TEST_QUESTIONS = {
    1: ("How many different items are there in the image?",),
    2: ("How many different items are there in the two images in total?",),
}


def num_scenes(index: int) -> int:
    """1 for even items, 2 for odd ones."""
    return 1 + index % 2


def make_item(split: str, index: int, seed: int, image_size: int, render: bool = True) -> dict:
    """One record of `split` ("train", "validation" or "test"), a pure function of its arguments;
    validation is drawn like test (other scenes) and follows its schema."""
    # A string seed is hashed with SHA-512 by `random`, so items are stable across processes.
    rng = random.Random(f"counting_multi/{split}/{seed}/{index}")
    test = split != "train"
    n = num_scenes(index)
    counts = [rng.randint(MIN_OBJECTS, MAX_OBJECTS) for _ in range(n)]
    question = rng.choice((TEST_QUESTIONS if test else TRAIN_QUESTIONS)[n])
    # All text is drawn before any pixel, so render=False gives the same text.
    trace = None if test else thinking(counts, rng)
    style = TEST_STYLE if test else TRAIN_STYLE
    images = [render_scene(rng, count, image_size, style) for count in counts] if render else None
    total = sum(counts)
    if test:
        return {"images": images, "question": question, "ground_truth": total}
    return {"images": images, "problem": question, "solution": f"<answer> {total} </answer>", "thinking": trace}


def thinking(counts: list[int], rng: random.Random) -> str:
    """A short reasoning trace in the counting task's words: each image's count, then the total."""
    if len(counts) == 1:
        opener = rng.choice(("I count the objects in the image.", "Let me count the objects."))
        return f"{opener} There are {counts[0]} objects."
    opener = rng.choice(("I count the objects in each image.", "Let me count the objects in both images."))
    parts = " ".join(f"Image {i + 1} has {c} objects." for i, c in enumerate(counts))
    return f"{opener} {parts} In total there are {' + '.join(map(str, counts))} = {sum(counts)} objects."
