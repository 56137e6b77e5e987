"""Synthetic tasks: deterministic items, true counts, correct geometry answers, disjoint splits, cache."""

from __future__ import annotations

import re
from collections import deque
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from othink_mr1.data import synthetic
from othink_mr1.data.synthetic import counting, counting_multi, generate_records, geometry, synthetic_split
from othink_mr1.data.synthetic.counting import CELL, MAX_OBJECTS, MIN_OBJECTS, TEST_STYLE, TRAIN_STYLE
from othink_mr1.data.synthetic.geometry import FAMILIES, _length, _sqrt_form, make_problem, split_combinations
from othink_mr1.rewards.geometry import NormalizedGeometryScorer

IMAGE_SIZE = 112
N_COUNTING = 40  # items per split whose objects are counted in the pixels


# ------------------------------------------------------------------------------------------ helpers


def _components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components of a boolean mask (plain BFS; scipy is not a dependency)."""
    seen = np.zeros_like(mask, dtype=bool)
    height, width = mask.shape
    found = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(int(y0), int(x0))]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < height and 0 <= nx < width and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        found.append(pixels)
    return found


def _objects(image: Image.Image, background: tuple[int, int, int]) -> list[list[tuple[int, int]]]:
    pixels = np.asarray(image.convert("RGB"))
    return _components(np.any(pixels != np.array(background, dtype=np.uint8), axis=-1))


def _image_bytes(image: Image.Image) -> tuple:
    return image.mode, image.size, image.tobytes()


def _text(item: dict) -> dict:
    return {k: v for k, v in item.items() if k != "image"}


# ------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("module", [counting, geometry], ids=["counting", "geometry"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_same_arguments_give_identical_items(module, split):
    for index in range(5):
        first = module.make_item(split, index, 3, IMAGE_SIZE)
        second = module.make_item(split, index, 3, IMAGE_SIZE)
        assert _text(first) == _text(second)
        assert _image_bytes(first["image"]) == _image_bytes(second["image"])
        assert first["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
        # Without rendering the text is the same as with it.
        assert _text(module.make_item(split, index, 3, IMAGE_SIZE, render=False)) == _text(first)
        assert module.make_item(split, index, 3, IMAGE_SIZE, render=False)["image"] is None


def test_counting_other_seed_gives_other_items():
    for index in range(5):
        a = counting.make_item("train", index, 0, IMAGE_SIZE)
        b = counting.make_item("train", index, 1, IMAGE_SIZE)
        assert _image_bytes(a["image"]) != _image_bytes(b["image"])
    # The sequence of answers differs too, not just the pixels.
    seed0 = [counting.make_item("train", i, 0, IMAGE_SIZE, render=False)["solution"] for i in range(20)]
    seed1 = [counting.make_item("train", i, 1, IMAGE_SIZE, render=False)["solution"] for i in range(20)]
    assert seed0 != seed1


def test_geometry_other_seed_gives_other_items():
    seed0 = [_text(geometry.make_item("train", i, 0, IMAGE_SIZE, render=False)) for i in range(20)]
    seed1 = [_text(geometry.make_item("train", i, 1, IMAGE_SIZE, render=False)) for i in range(20)]
    assert seed0 != seed1
    assert sum(a != b for a, b in zip(seed0, seed1)) >= 10


def test_generate_records_yields_num_items_in_index_order():
    records = list(generate_records("synthetic_counting", "test", 6, 2, IMAGE_SIZE, render=False))
    assert len(records) == 6
    assert records == [counting.make_item("test", i, 2, IMAGE_SIZE, render=False) for i in range(6)]


# ---------------------------------------------------------------------------------------- counting


@pytest.mark.parametrize("split,style", [("train", TRAIN_STYLE), ("validation", TEST_STYLE), ("test", TEST_STYLE)])
def test_counting_ground_truth_is_the_number_of_objects_in_the_image(split, style):
    counts = []
    for index in range(N_COUNTING):
        item = counting.make_item(split, index, 0, IMAGE_SIZE)
        truth = item["ground_truth"] if split != "train" else int(re.fullmatch(r"<answer> (\d+) </answer>", item["solution"])[1])
        objects = _objects(item["image"], style.background)
        assert len(objects) == truth, f"{split} item {index}: {len(objects)} objects drawn, ground truth {truth}"
        # Every object lies inside one 28px grid cell (so objects never touch), one object per cell.
        cells = set()
        for pixels in objects:
            ys, xs = zip(*pixels)
            cell = (min(ys) // CELL, min(xs) // CELL)
            assert (max(ys) // CELL, max(xs) // CELL) == cell, f"{split} item {index}: object spans cells"
            cells.add(cell)
        assert len(cells) == len(objects)
        counts.append(truth)
    assert all(MIN_OBJECTS <= c <= MAX_OBJECTS for c in counts)
    assert (MIN_OBJECTS, MAX_OBJECTS) == (3, 10)
    assert len(set(counts)) >= 5  # the counts vary


def _fill_ratio(pixels: list[tuple[int, int]]) -> float:
    """Object pixels over its bounding box: ~0.75-1.0 for circles, squares, hexagons; ~0.5 for diamonds,
    triangles and crosses."""
    ys, xs = zip(*pixels)
    return len(pixels) / ((max(ys) - min(ys) + 1) * (max(xs) - min(xs) + 1))


def test_counting_test_split_draws_other_object_types_in_the_same_colours():
    assert not set(TRAIN_STYLE.shapes) & set(TEST_STYLE.shapes)
    assert (TRAIN_STYLE.colors, TRAIN_STYLE.background) == (TEST_STYLE.colors, TEST_STYLE.background)
    for split, style in (("train", TRAIN_STYLE), ("test", TEST_STYLE)):
        ratios = []
        for index in range(10):
            image = counting.make_item(split, index, 0, IMAGE_SIZE)["image"]
            assert image.getpixel((0, 0)) == style.background  # objects keep off the cell border
            colours = {tuple(int(v) for v in c) for c in np.unique(np.asarray(image).reshape(-1, 3), axis=0)}
            # Objects are drawn without anti-aliasing: only the style's own colours appear.
            assert colours - {style.background} <= set(style.colors)
            ratios += [_fill_ratio(obj) for obj in _objects(image, style.background)]
        # The silhouettes differ: filled primitives in training, sparse shapes at test time.
        if split == "train":
            assert min(ratios) > 0.7
        else:
            assert max(ratios) < 0.7


@pytest.mark.parametrize("module", [counting, counting_multi, geometry], ids=["counting", "counting_multi", "geometry"])
def test_validation_split_is_test_shaped_and_shares_no_item_with_test(module):
    """Validation items follow the test schema, in the test's style, and are other items than the test's."""
    def key(item):
        images = item.get("images") or [item["image"]]
        return item["question"], str(item["ground_truth"]), tuple(_image_bytes(i) for i in images)

    validation = [module.make_item("validation", i, 0, IMAGE_SIZE) for i in range(12)]
    test = [module.make_item("test", i, 0, IMAGE_SIZE) for i in range(12)]
    assert {k for k in validation[0] if k not in ("image", "images")} == {k for k in test[0] if k not in ("image", "images")}
    assert not {key(v) for v in validation} & {key(t) for t in test}
    test_questions = {counting: set(counting.TEST_QUESTIONS),
                      counting_multi: {q for qs in counting_multi.TEST_QUESTIONS.values() for q in qs}}.get(module)
    if test_questions is not None:
        assert {v["question"] for v in validation} <= test_questions


def test_render_scene_refuses_more_objects_than_cells():
    import random

    with pytest.raises(ValueError, match="do not fit"):
        counting.render_scene(random.Random(0), 5, 56, TRAIN_STYLE)  # a 2x2 grid


def test_counting_records_follow_the_r1v_schemas():
    for index in range(10):
        train = counting.make_item("train", index, 0, IMAGE_SIZE)
        assert set(train) == {"image", "problem", "solution"}
        assert re.fullmatch(r"<answer> ([3-9]|10) </answer>", train["solution"])
        assert train["problem"] in counting.TRAIN_QUESTIONS
        assert isinstance(train["image"], Image.Image) and train["image"].mode == "RGB"

        test = counting.make_item("test", index, 0, IMAGE_SIZE)
        assert set(test) == {"image", "question", "ground_truth"}
        assert type(test["ground_truth"]) is int and 3 <= test["ground_truth"] <= 10
        assert test["question"] == "How many different items are there in the image?"


def test_geometry_records_follow_the_r1v_schemas():
    names = {f.name for f in FAMILIES}
    for index in range(10):
        train = geometry.make_item("train", index, 0, IMAGE_SIZE)
        # R1-V's train fields, plus the family name (an extra column, ignored by the loaders).
        assert set(train) == {"image", "problem", "solution", "family"}
        assert re.fullmatch(r"<answer> \S+ </answer>", train["solution"])
        assert train["family"] in names
        test = geometry.make_item("test", index, 0, IMAGE_SIZE)
        assert set(test) == {"image", "question", "ground_truth", "family"}
        assert isinstance(test["ground_truth"], str) and test["ground_truth"]
        assert test["question"].startswith("As shown in the figure")
        assert test["image"].size == (IMAGE_SIZE, IMAGE_SIZE)


# ---------------------------------------------------------------------------------------- geometry


def _sqrt_reference(value: int) -> str:
    """Independent simplification of sqrt(value): the largest square factor goes outside."""
    outside = max(k for k in range(1, value + 1) if value % (k * k) == 0)
    inside = value // (outside * outside)
    if inside == 1:
        return str(outside)
    return ("" if outside == 1 else str(outside)) + f"√{{{inside}}}"


def _numbers(pattern: str, question: str) -> tuple[int, ...]:
    match = re.search(pattern, question)
    assert match, f"{pattern!r} not in {question!r}"
    return tuple(int(g) for g in match.groups())


def _degrees(value: Fraction) -> str:
    assert value.denominator == 1 and 0 < value < 180, value
    return f"{value.numerator}°"


# The carry-over families: the answer is the given number, in the unit of the asked quantity.
CARRIED_OVER = {
    "isosceles_equal_base": (r"AB = AC, angle B = (\d+)\.0", "°"),
    "equal_radii": (r"angle OAB = (\d+)\.0", "°"),
    "parallelogram_angle": (r"parallelogram ABCD, angle A = (\d+)\.0", "°"),
    "parallelogram_side": (r"parallelogram ABCD, AB = (\d+)\.0", "cm"),
    "rectangle_diagonals": (r"rectangle, .*AC = (\d+)\.0", "cm"),
    "same_arc_angle": (r"angle ACB = (\d+)\.0", "°"),
}


def expected_answer(family: str, question: str) -> tuple[tuple[int, ...], str]:
    """(the numbers given in the question, the answer recomputed from them) for `family`."""
    if family in CARRIED_OVER:
        pattern, unit = CARRIED_OVER[family]
        (x,) = nums = _numbers(pattern, question)
        return nums, f"{x}{unit}"
    if family == "parallel_corresponding":
        (x,) = nums = _numbers(r"angle 1 = (\d+)\.0", question)
        return nums, _degrees(Fraction(x))
    if family == "vertical_angles":
        (x,) = nums = _numbers(r"angle AOC = (\d+)\.0", question)
        return nums, _degrees(Fraction(x))
    if family == "alternate_angles":
        (x,) = nums = _numbers(r"angle ABC = (\d+)\.0", question)
        return nums, _degrees(Fraction(x))
    if family == "parallel_interior":
        (x,) = nums = _numbers(r"angle AEF = (\d+)\.0", question)
        return nums, _degrees(180 - Fraction(x))
    if family == "triangle_sum":
        a, b = nums = _numbers(r"angle A = (\d+)\.0, angle B = (\d+)\.0", question)
        return nums, _degrees(180 - Fraction(a) - b)
    if family == "isosceles_base":
        (a,) = nums = _numbers(r"AB = AC, angle A = (\d+)\.0", question)
        return nums, _degrees((180 - Fraction(a)) / 2)
    if family == "angle_bisector":
        (x,) = nums = _numbers(r"angle AOB = (\d+)\.0", question)
        return nums, _degrees(Fraction(x) / 2)
    if family == "inscribed_angle":
        (x,) = nums = _numbers(r"angle AOB = (\d+)\.0", question)
        return nums, _degrees(Fraction(x) / 2)
    if family == "diameter_right_angle":
        (a,) = nums = _numbers(r"angle ABC = (\d+)\.0", question)
        return nums, _degrees(90 - Fraction(a))
    if family == "midline_length":
        (bc,) = nums = _numbers(r"BC = (\d+)\.0", question)
        de = Fraction(bc, 2)
        return nums, (f"{de.numerator}cm" if de.denominator == 1 else f"\\frac{{{de.numerator}}}{{{de.denominator}}}")
    if family == "pythagoras":
        a, b = nums = _numbers(r"angle C = 90\.0, AC = (\d+)\.0, BC = (\d+)\.0", question)
        return nums, _sqrt_reference(a * a + b * b)
    if family == "equilateral_angle":
        return _numbers(r"AB = (\d+)\.0", question), "60°"
    if family == "semicircle_right_angle":
        return _numbers(r"AC = (\d+)\.0", question), "90°"
    if family == "square_diagonals":
        return _numbers(r"AB = (\d+)\.0", question), "90°"
    if family == "regular_hexagon_angle":
        return _numbers(r"side length (\d+)\.0", question), "120°"
    raise AssertionError(f"no reference for family {family!r}")


GEOQA_NOTATION = re.compile(r"\d+°|\d+cm|\\frac\{\d+\}\{\d+\}|\d*√\{\d+\}|\d+")


def test_sqrt_form_and_length_use_geoqa_notation():
    assert _sqrt_form(20) == "2√{5}"
    assert _sqrt_form(25) == "5"
    assert _sqrt_form(13) == "√{13}"
    assert _sqrt_form(72) == "6√{2}"  # the largest square factor, not the first one found
    assert _sqrt_form(1) == "1"
    assert all(_sqrt_form(v) == _sqrt_reference(v) for v in range(1, 300))
    assert _length(6) == "6cm"
    assert _length(7, 2) == "\\frac{7}{2}"
    assert _length(8, 2) == "4cm"
    assert _length(6, 4) == "\\frac{3}{2}"


def test_geometry_families_split_their_numbers_disjointly():
    assert len(FAMILIES) == 21 and len({f.name for f in FAMILIES}) == 21
    for family in FAMILIES:
        train, validation, test = (split_combinations(family, s) for s in ("train", "validation", "test"))
        assert train and validation and test, family.name
        assert not set(train) & set(test) and not set(train) & set(validation), family.name
        assert not set(validation) & set(test), family.name
        assert set(train) | set(validation) | set(test) == set(family.combinations), family.name
        # A quarter tested, a tenth for validation (each at least one), the rest trained on.
        n = len(family.combinations)
        assert len(test) == max(1, round(0.25 * n)) and len(validation) == max(1, round(0.10 * n)), family.name
        # The split is a pure function of the combination (stable across calls).
        assert split_combinations(family, "test") == test
    with pytest.raises(ValueError, match="no split 'dev'"):
        split_combinations(FAMILIES[0], "dev")


def test_every_combination_of_every_family_has_the_right_answer():
    """Exhaustive: each family builds the answer a reference solver derives from the question."""
    for family in FAMILIES:
        for combo in family.combinations:
            problem = family.build(*combo)
            numbers, answer = expected_answer(family.name, problem.question)
            assert numbers == combo, (family.name, combo, problem.question)
            assert problem.answer == answer, (family.name, combo, problem.answer, answer)
            assert GEOQA_NOTATION.fullmatch(problem.answer), problem.answer
            # The worked solution ends with the answer it teaches.
            assert problem.answer in problem.thinking, (family.name, problem.thinking)


def test_generated_geometry_items_are_right_and_stay_in_their_split():
    scorer = NormalizedGeometryScorer()
    families = {f.name: f for f in FAMILIES}
    notations = set()
    checked = 0
    for split in ("train", "validation", "test"):
        for index in range(150):
            item = geometry.make_item(split, index, 0, IMAGE_SIZE, render=False)
            if split != "train":
                question, truth = item["question"], item["ground_truth"]
            else:
                question, truth = item["problem"], re.fullmatch(r"<answer> (.+) </answer>", item["solution"])[1]
            numbers, answer = expected_answer(item["family"], question)
            assert truth == answer, (split, index, item)
            assert numbers in split_combinations(families[item["family"]], split), (split, index, numbers)
            assert scorer.score(f"<answer> {answer} </answer>", truth).correct, (split, index, truth)
            assert make_problem(split, index, 0)[1].answer == truth
            notations.update(n for n in ("°", "cm", "\\frac", "√") if n in truth)
            checked += 1
    assert checked == 450
    assert notations == {"°", "cm", "\\frac", "√"}


def test_geometry_scorer_rejects_a_wrong_answer_for_generated_items():
    scorer = NormalizedGeometryScorer()
    for index in range(20):
        truth = geometry.make_item("test", index, 0, IMAGE_SIZE, render=False)["ground_truth"]
        # A different number with the same notation is wrong (so the check above is not vacuous).
        wrong = re.sub(r"\d+", lambda m: str(int(m.group()) + 1), truth, count=1)
        assert not scorer.score(f"<answer> {wrong} </answer>", truth).correct, (truth, wrong)


# ------------------------------------------------------------------------------------------- cache


@pytest.mark.parametrize("source", ["synthetic_counting", "synthetic_geometry"])
def test_synthetic_split_is_written_once_then_loaded_from_cache(tmp_path, monkeypatch, source):
    import datasets

    ds = synthetic_split(source, "test", 6, 0, IMAGE_SIZE, tmp_path)
    folders = list((tmp_path / "datasets").iterdir())
    assert len(folders) == 1, folders  # no half-written temporary folder left beside it
    folder = folders[0]
    assert folder.name.startswith(f"{source}-test-6-")
    assert (folder / "dataset_info.json").is_file()
    assert len(ds) == 6
    assert isinstance(ds.features["image"], datasets.Image)
    expected = list(generate_records(source, "test", 6, 0, IMAGE_SIZE))
    for row, record in zip(ds, expected):
        assert _text(row) == _text(record)
        assert _image_bytes(row["image"].convert("RGB")) == _image_bytes(record["image"])  # PNG is lossless

    def no_regeneration(*args, **kwargs):
        raise AssertionError("generate_records called although the split is cached")

    monkeypatch.setattr(synthetic, "generate_records", no_regeneration)
    again = synthetic_split(source, "test", 6, 0, IMAGE_SIZE, tmp_path)
    assert again.to_dict()["question"] == ds.to_dict()["question"]
    assert again.to_dict()["ground_truth"] == ds.to_dict()["ground_truth"]
    assert [_image_bytes(r["image"]) for r in again] == [_image_bytes(r["image"]) for r in ds]
    # Another size is another dataset: it is generated, in its own folder.
    with pytest.raises(AssertionError, match="generate_records called"):
        synthetic_split(source, "test", 7, 0, IMAGE_SIZE, tmp_path)


def test_synthetic_split_cache_key_covers_every_argument(tmp_path):
    synthetic_split("synthetic_counting", "train", 4, 0, IMAGE_SIZE, tmp_path)
    synthetic_split("synthetic_counting", "train", 4, 1, IMAGE_SIZE, tmp_path)
    synthetic_split("synthetic_counting", "train", 4, 0, 140, tmp_path)
    small = synthetic_split("synthetic_counting", "train", 4, 0, 140, tmp_path)
    assert len(list((tmp_path / "datasets").iterdir())) == 3
    assert small[0]["image"].size == (140, 140)
    assert set(small.column_names) == {"image", "problem", "solution"}


# ------------------------------------------------------------------------- sources name their generator


def test_a_synthetic_source_names_its_generator_module():
    from othink_mr1.data.synthetic import generator, synthetic_sources
    from othink_mr1.data.tasks import task_sources

    # Every generator module is a source (a new task's module joins them with no edit here).
    assert {"synthetic_counting", "synthetic_counting_multi", "synthetic_geometry"} <= set(synthetic_sources())
    assert task_sources() == [*synthetic_sources(), "r1v"]
    assert generator("synthetic_counting") is counting and generator("synthetic_geometry") is geometry
    # models/tiny.py draws its corpus this way: the counting generator, by source name.
    assert [r["ground_truth"] for r in generate_records("synthetic_counting", "test", 3, 0, IMAGE_SIZE, render=False)] \
        == [counting.make_item("test", i, 0, IMAGE_SIZE, render=False)["ground_truth"] for i in range(3)]


@pytest.mark.parametrize("source", ["synthetic_no_such_generator", "counting", "synthetic___init__", "r1v"])
def test_an_unknown_synthetic_source_is_a_data_error_listing_the_sources(source):
    from othink_mr1.data.records import DataError
    from othink_mr1.data.synthetic import generator, synthetic_sources

    with pytest.raises(DataError, match=f"source '{source}' names no synthetic generator") as err:
        generator(source)
    assert {"synthetic_counting", "synthetic_counting_multi", "synthetic_geometry"} <= set(synthetic_sources())
    assert str(synthetic_sources()) in str(err.value)


def test_load_split_names_task_source_and_lists_the_sources(tmp_path):
    from othink_mr1.config import SyntheticDataConfig, TaskConfig
    from othink_mr1.data.records import DataError
    from othink_mr1.data.tasks import load_split

    from othink_mr1.data.tasks import task_sources

    task = TaskConfig(name="nope", source="synthetic_no_such_generator", scorer="counting", max_new_tokens=8,
                      synthetic=SyntheticDataConfig(num_train=2, num_test=2, num_validation=2))
    assert task_sources()[-1] == "r1v" and "synthetic_counting" in task_sources()
    with pytest.raises(DataError) as err:
        load_split(task, "test", str(tmp_path))
    assert str(err.value) == (f"task.source='synthetic_no_such_generator' for task 'nope': expected one of "
                              f"{task_sources()}")


DICE = '''"""A throwaway generator: a die face (text only), the number of pips its answer."""

def make_item(split, index, seed, image_size, render=True):
    pips = 1 + (seed + index) % 6
    if split == "train":
        return {"image": None, "problem": "How many pips?", "solution": f"<answer> {pips} </answer>"}
    return {"image": None, "question": "How many pips?", "ground_truth": pips}


def check_config(synthetic, key):
    if synthetic.image_size < 56:
        raise ValueError(f"{key}.image_size={synthetic.image_size}: dice need at least 56px")
'''


def test_a_new_generator_module_is_a_source_with_no_registry_edit(tmp_path, monkeypatch):
    """A module dropped into the synthetic package is a source at once: resolved, generated, checked by the
    config checks through its own hook (here on a second folder of the package's path, so the checkout is
    untouched)."""
    import sys

    from omegaconf import OmegaConf

    from othink_mr1.config import SyntheticDataConfig, TaskConfig
    from othink_mr1.config_checks import check_task
    from othink_mr1.data.synthetic import generator, synthetic_sources
    from othink_mr1.data.tasks import task_sources
    from othink_mr1.utils.errors import ConfigError

    (tmp_path / "throwaway_dice.py").write_text(DICE)
    monkeypatch.setattr(synthetic, "__path__", [*synthetic.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "othink_mr1.data.synthetic.throwaway_dice", raising=False)
    try:
        assert "synthetic_throwaway_dice" in synthetic_sources() and "synthetic_throwaway_dice" in task_sources()
        module = generator("synthetic_throwaway_dice")
        assert module.__name__ == "othink_mr1.data.synthetic.throwaway_dice"
        records = list(generate_records("synthetic_throwaway_dice", "test", 4, 2, IMAGE_SIZE))
        assert [r["ground_truth"] for r in records] == [3, 4, 5, 6]
        task = OmegaConf.structured(TaskConfig(name="dice", source="synthetic_throwaway_dice", scorer="counting", max_new_tokens=8,
                                               synthetic=SyntheticDataConfig(num_train=2, num_test=2, num_validation=2)))
        check_task(task, "tasks.dice")
        task.synthetic.image_size = 28
        with pytest.raises(ConfigError, match=r"^tasks.dice.synthetic.image_size=28: dice need at least 56px$"):
            check_task(task, "tasks.dice")
    finally:
        sys.modules.pop("othink_mr1.data.synthetic.throwaway_dice", None)
        vars(synthetic).pop("throwaway_dice", None)  # the import's attribute on the package


def test_the_cache_key_is_the_source_name_and_the_split_settings(tmp_path):
    """Pinned: cached datasets (and tiny_base, built from them) stay valid across changes to how a source
    finds its generator."""
    synthetic_split("synthetic_counting", "test", 6, 0, IMAGE_SIZE, tmp_path)
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == ["synthetic_counting-test-6-593307c0204c"]
    assert synthetic.GENERATOR_VERSION == 4


# ---------------------------------------------------------------------------------- counting_multi


@pytest.mark.parametrize("split,style", [("train", TRAIN_STYLE), ("test", TEST_STYLE)])
def test_counting_multi_answer_is_the_total_of_the_objects_in_its_images(split, style):
    from othink_mr1.data.synthetic import counting_multi

    for index in range(12):
        item = counting_multi.make_item(split, index, 0, IMAGE_SIZE)
        images = item["images"]
        assert len(images) == 1 + index % 2  # one and two scenes alternate, so every batch mixes them
        assert all(im.size == (IMAGE_SIZE, IMAGE_SIZE) and im.mode == "RGB" for im in images)
        counts = [len(_objects(im, style.background)) for im in images]
        assert all(MIN_OBJECTS <= c <= MAX_OBJECTS for c in counts)
        if split == "test":
            assert set(item) == {"images", "question", "ground_truth"}
            assert item["ground_truth"] == sum(counts)
            assert item["question"] in counting_multi.TEST_QUESTIONS[len(images)]
        else:
            assert set(item) == {"images", "problem", "solution", "thinking"}
            assert item["solution"] == f"<answer> {sum(counts)} </answer>"
            assert item["problem"] in counting_multi.TRAIN_QUESTIONS[len(images)]
            assert item["thinking"].endswith(f"{sum(counts)} objects.")
            if len(counts) == 2:
                assert f"{counts[0]} + {counts[1]} = {sum(counts)}" in item["thinking"]
        again = counting_multi.make_item(split, index, 0, IMAGE_SIZE)
        assert [_image_bytes(im) for im in again["images"]] == [_image_bytes(im) for im in images]
        text = counting_multi.make_item(split, index, 0, IMAGE_SIZE, render=False)
        assert text["images"] is None and {k: v for k, v in text.items() if k != "images"} == \
            {k: v for k, v in item.items() if k != "images"}


def test_counting_multi_is_a_new_source_and_leaves_the_other_generators_alone():
    from othink_mr1.data.synthetic import generator
    from othink_mr1.data.tasks import task_sources

    assert generator("synthetic_counting_multi") is counting_multi
    assert generator("synthetic_counting").make_item is counting.make_item
    assert "synthetic_counting_multi" in task_sources()
    # Its own seed string: not the counting task's items in another order.
    one = counting_multi.make_item("train", 0, 0, IMAGE_SIZE)["images"][0]
    assert _image_bytes(one) != _image_bytes(counting.make_item("train", 0, 0, IMAGE_SIZE)["image"])


def test_counting_multi_split_is_cached_with_an_image_list_column(tmp_path):
    import datasets

    ds = synthetic_split("synthetic_counting_multi", "test", 4, 0, IMAGE_SIZE, tmp_path)
    assert isinstance(ds.features["images"], datasets.List)
    assert isinstance(ds.features["images"].feature, datasets.Image)
    assert [len(row["images"]) for row in ds] == [1, 2, 1, 2]
    expected = list(generate_records("synthetic_counting_multi", "test", 4, 0, IMAGE_SIZE))
    for row, record in zip(ds, expected):
        assert row["ground_truth"] == record["ground_truth"]
        assert [_image_bytes(im.convert("RGB")) for im in row["images"]] == [_image_bytes(im) for im in record["images"]]
