"""Synthetic GeoQA-like geometry problems.

Each item is a rendered diagram plus a question in GeoQA's style ("As shown in the figure, ...,
angle 1 = 50.0, then angle 2 is equal to ()") whose answer is an angle or a length written the way
GeoQA's ground truths are (`130°`, `6cm`, `\\frac{7}{2}`, `2√{5}`). Several problem families need
different operations: recognising a figure whose answer needs no arithmetic (equilateral triangle,
semicircle, square, regular hexagon), copying a given angle (corresponding, alternate, vertical
angles), supplements, the triangle angle sum, halving (bisectors, inscribed angles, midlines), and
Pythagoras.

Train, validation and test share the families but not the numbers: every family's possible number
combinations are split once, ordered by a hash of the combination (a quarter held out for testing, a
tenth for validation, each at least one), so no validation or test combination appears in training and
validation (for tuning) never sees a test combination. On those unseen numbers the families that carry
a given quantity over by a named fact generalize; the ones that need arithmetic on it mostly do not at
the tiny models' scale.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from PIL import Image, ImageDraw, ImageFont

from ..records import SPLITS

# Shares of each family's number combinations held out for testing and for validation (at least one each).
TEST_FRACTION = 0.25
VALIDATION_FRACTION = 0.10


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # GeoQA-style ground truth, e.g. "130°"
    thinking: str  # a short worked solution, used for tiny_base pretraining targets
    # Diagram in unit coordinates: labelled points, segments, circles (centre label, radius).
    points: dict[str, tuple[float, float]]
    segments: tuple[tuple[str, str], ...]
    circles: tuple[tuple[str, float], ...] = ()


def _deg(x: int) -> str:
    # GeoQA writes given angles as "50.0".
    return f"{x}.0"


def _length(numerator: int, denominator: int = 1, unit: str = "cm") -> str:
    """A length in GeoQA's notation: 6cm, 3.5cm style halves become \\frac{7}{2}."""
    g = math.gcd(numerator, denominator)
    n, d = numerator // g, denominator // g
    return f"{n}{unit}" if d == 1 else f"\\frac{{{n}}}{{{d}}}"


def _sqrt_form(value: int) -> str:
    """sqrt(value) simplified: 25 -> '5', 20 -> '2√{5}', 13 -> '√{13}'."""
    outside, inside = 1, value
    for k in range(int(math.isqrt(value)), 1, -1):
        if inside % (k * k) == 0:
            outside, inside = k, inside // (k * k)
            break
    if inside == 1:
        return str(outside)
    return f"√{{{inside}}}" if outside == 1 else f"{outside}√{{{inside}}}"


# Diagram layouts reused by several families (unit square coordinates, y down).
_PARALLEL = {
    "A": (0.05, 0.3), "B": (0.95, 0.3), "C": (0.05, 0.7), "D": (0.95, 0.7),
    "E": (0.45, 0.3), "F": (0.6, 0.7), "1": (0.52, 0.24), "2": (0.67, 0.64),
}
_PARALLEL_SEGMENTS = (("A", "B"), ("C", "D"), ("E", "F"))
_TRIANGLE = {"A": (0.5, 0.12), "B": (0.1, 0.85), "C": (0.9, 0.85)}
_TRIANGLE_SEGMENTS = (("A", "B"), ("B", "C"), ("C", "A"))


def _parallel_corresponding(x: int) -> Problem:
    return Problem(
        f"As shown in the figure, AB parallel CD, straight line EF intersects AB at point E and CD at "
        f"point F, angle 1 = {_deg(x)}, then the size of angle 2 is ()",
        f"{x}°",
        f"AB is parallel to CD, so angle 2 and angle 1 are corresponding angles. angle 2 = {x}°.",
        _PARALLEL, _PARALLEL_SEGMENTS,
    )


def _parallel_interior(x: int) -> Problem:
    return Problem(
        f"As shown in the figure, AB parallel CD, straight line EF intersects AB at point E and CD at "
        f"point F, angle AEF = {_deg(x)}, then the size of angle EFC is ()",
        f"{180 - x}°",
        f"AB is parallel to CD, so angle AEF + angle EFC = 180°. angle EFC = 180° - {x}° = {180 - x}°.",
        _PARALLEL, _PARALLEL_SEGMENTS,
    )


def _vertical(x: int) -> Problem:
    pts = {"A": (0.1, 0.2), "B": (0.9, 0.8), "C": (0.1, 0.8), "D": (0.9, 0.2), "O": (0.5, 0.5)}
    return Problem(
        f"As shown in the figure, straight lines AB and CD intersect at point O, angle AOC = {_deg(x)}, "
        f"then the degree of angle BOD is ()",
        f"{x}°",
        f"angle BOD and angle AOC are vertical angles, so angle BOD = {x}°.",
        pts, (("A", "B"), ("C", "D")),
    )


def _alternate(x: int) -> Problem:
    pts = {"A": (0.1, 0.25), "B": (0.45, 0.25), "C": (0.55, 0.75), "D": (0.9, 0.75)}
    return Problem(
        f"As shown in the figure, AB parallel CD, point B and point C are connected, angle ABC = {_deg(x)}, "
        f"then angle BCD is equal to ()",
        f"{x}°",
        f"AB is parallel to CD, so angle BCD = angle ABC = {x}° (alternate angles).",
        pts, (("A", "B"), ("C", "D"), ("B", "C")),
    )


def _triangle_sum(a: int, b: int) -> Problem:
    return Problem(
        f"As shown in the figure, in triangle ABC, angle A = {_deg(a)}, angle B = {_deg(b)}, "
        f"then the size of angle C is ()",
        f"{180 - a - b}°",
        f"The angles of a triangle add up to 180°. angle C = 180° - {a}° - {b}° = {180 - a - b}°.",
        _TRIANGLE, _TRIANGLE_SEGMENTS,
    )


def _isosceles(a: int) -> Problem:
    return Problem(
        f"As shown in the figure, in triangle ABC, AB = AC, angle A = {_deg(a)}, then the degree of "
        f"angle B is ()",
        f"{(180 - a) // 2}°",
        f"AB = AC, so angle B = angle C = (180° - {a}°) / 2 = {(180 - a) // 2}°.",
        _TRIANGLE, _TRIANGLE_SEGMENTS,
    )


def _bisector(x: int) -> Problem:
    pts = {"O": (0.1, 0.85), "A": (0.9, 0.85), "B": (0.45, 0.1), "C": (0.85, 0.4)}
    return Problem(
        f"As shown in the figure, OC bisects angle AOB, angle AOB = {_deg(x)}, then the size of angle AOC is ()",
        f"{x // 2}°",
        f"OC bisects angle AOB, so angle AOC = {x}° / 2 = {x // 2}°.",
        pts, (("O", "A"), ("O", "B"), ("O", "C")),
    )


def _inscribed(x: int) -> Problem:
    pts = {"O": (0.5, 0.5), "A": (0.16, 0.62), "B": (0.84, 0.62), "C": (0.5, 0.12)}
    return Problem(
        f"As shown in the figure, points A, B and C are on circle O, angle AOB = {_deg(x)}, then the "
        f"degree of angle ACB is ()",
        f"{x // 2}°",
        f"An inscribed angle is half of the central angle on the same arc. angle ACB = {x}° / 2 = {x // 2}°.",
        pts, (("O", "A"), ("O", "B"), ("C", "A"), ("C", "B")), (("O", 0.38),),
    )


def _diameter(a: int) -> Problem:
    pts = {"O": (0.5, 0.5), "A": (0.12, 0.5), "B": (0.88, 0.5), "C": (0.62, 0.14)}
    return Problem(
        f"As shown in the figure, AB is the diameter of circle O, point C is on circle O, angle ABC = "
        f"{_deg(a)}, then the degree of angle BAC is ()",
        f"{90 - a}°",
        f"AB is a diameter, so angle ACB = 90°. angle BAC = 90° - {a}° = {90 - a}°.",
        pts, (("A", "B"), ("A", "C"), ("B", "C")), (("O", 0.38),),
    )


def _midline(bc: int) -> Problem:
    pts = dict(_TRIANGLE, D=(0.3, 0.485), E=(0.7, 0.485))
    return Problem(
        f"As shown in the figure, in triangle ABC, D and E are the midpoints of AB and AC respectively, "
        f"if BC = {bc}.0, then the length of DE is ()",
        _length(bc, 2),
        f"DE is the midline of triangle ABC, so DE = BC / 2 = {bc} / 2 = {_length(bc, 2)}.",
        pts, _TRIANGLE_SEGMENTS + (("D", "E"),),
    )


def _pythagoras(a: int, b: int) -> Problem:
    pts = {"C": (0.15, 0.85), "A": (0.15, 0.15), "B": (0.85, 0.85)}
    return Problem(
        f"As shown in the figure, in right triangle ABC, angle C = 90.0, AC = {a}.0, BC = {b}.0, then "
        f"the length of AB is ()",
        _sqrt_form(a * a + b * b),
        f"By the Pythagorean theorem, AB = √({a}² + {b}²) = √{{{a * a + b * b}}} = {_sqrt_form(a * a + b * b)}.",
        pts, _TRIANGLE_SEGMENTS,
    )


def _equilateral(x: int) -> Problem:
    return Problem(
        f"As shown in the figure, triangle ABC is an equilateral triangle, AB = {x}.0, then the degree of angle B is ()",
        "60°",
        "All three angles of an equilateral triangle are equal, so angle B = 180° / 3 = 60°.",
        _TRIANGLE, _TRIANGLE_SEGMENTS,
    )


def _thales(x: int) -> Problem:
    pts = {"O": (0.5, 0.5), "A": (0.12, 0.5), "B": (0.88, 0.5), "C": (0.35, 0.15)}
    return Problem(
        f"As shown in the figure, AB is the diameter of circle O, point C is on circle O, AC = {x}.0, then the "
        f"degree of angle ACB is ()",
        "90°",
        "An angle inscribed in a semicircle is a right angle, so angle ACB = 90°.",
        pts, (("A", "B"), ("A", "C"), ("B", "C")), (("O", 0.38),),
    )


def _square_diagonals(x: int) -> Problem:
    pts = {"A": (0.15, 0.15), "B": (0.85, 0.15), "C": (0.85, 0.85), "D": (0.15, 0.85), "O": (0.5, 0.58)}
    return Problem(
        f"As shown in the figure, ABCD is a square, AB = {x}.0, the diagonals AC and BD intersect at point O, "
        f"then the degree of angle AOB is ()",
        "90°",
        "The diagonals of a square are perpendicular, so angle AOB = 90°.",
        pts, (("A", "B"), ("B", "C"), ("C", "D"), ("D", "A"), ("A", "C"), ("B", "D")),
    )


def _hexagon(x: int) -> Problem:
    pts = {k: (0.5 + 0.4 * math.cos(math.radians(60 * i)), 0.5 + 0.4 * math.sin(math.radians(60 * i)))
           for i, k in enumerate("ABCDEF")}
    return Problem(
        f"As shown in the figure, ABCDEF is a regular hexagon with side length {x}.0, then the degree of angle ABC is ()",
        "120°",
        "Each interior angle of a regular hexagon is (6 - 2) × 180° / 6 = 120°.",
        pts, tuple((a, b) for a, b in zip("ABCDEF", "BCDEFA")),
    )


# Families whose answer is a given quantity carried over by a named fact (equal base angles, equal radii,
# opposite sides and angles, equal diagonals, angles on the same arc). On held-out numbers they need
# no arithmetic, only reading the number and knowing the fact: the part of the task a ~1M-parameter
# model learns to generalize (measured: the arithmetic families stay near zero on held-out numbers).
def _isosceles_equal_base(x: int) -> Problem:
    return Problem(
        f"As shown in the figure, in triangle ABC, AB = AC, angle B = {_deg(x)}, then the degree of angle C is ()",
        f"{x}°",
        f"AB = AC, so the base angles are equal. angle C = angle B = {x}°.",
        _TRIANGLE, _TRIANGLE_SEGMENTS,
    )


def _equal_radii(x: int) -> Problem:
    pts = {"O": (0.5, 0.5), "A": (0.14, 0.62), "B": (0.86, 0.62)}
    return Problem(
        f"As shown in the figure, points A and B are on circle O, OA and OB are connected, angle OAB = {_deg(x)}, "
        f"then the degree of angle OBA is ()",
        f"{x}°",
        f"OA = OB are radii, so angle OBA = angle OAB = {x}°.",
        pts, (("O", "A"), ("O", "B"), ("A", "B")), (("O", 0.38),),
    )


_PARALLELOGRAM = {"A": (0.1, 0.8), "B": (0.65, 0.8), "C": (0.9, 0.2), "D": (0.35, 0.2)}
_PARALLELOGRAM_SEGMENTS = (("A", "B"), ("B", "C"), ("C", "D"), ("D", "A"))


def _parallelogram_angle(x: int) -> Problem:
    return Problem(
        f"As shown in the figure, in parallelogram ABCD, angle A = {_deg(x)}, then the degree of angle C is ()",
        f"{x}°",
        f"Opposite angles of a parallelogram are equal, so angle C = angle A = {x}°.",
        _PARALLELOGRAM, _PARALLELOGRAM_SEGMENTS,
    )


def _parallelogram_side(x: int) -> Problem:
    return Problem(
        f"As shown in the figure, in parallelogram ABCD, AB = {x}.0, then the length of CD is ()",
        _length(x),
        f"Opposite sides of a parallelogram are equal, so CD = AB = {_length(x)}.",
        _PARALLELOGRAM, _PARALLELOGRAM_SEGMENTS,
    )


def _rectangle_diagonals(x: int) -> Problem:
    pts = {"A": (0.1, 0.2), "B": (0.9, 0.2), "C": (0.9, 0.8), "D": (0.1, 0.8), "O": (0.5, 0.58)}
    return Problem(
        f"As shown in the figure, ABCD is a rectangle, the diagonals AC and BD intersect at point O, AC = {x}.0, "
        f"then the length of BD is ()",
        _length(x),
        f"The diagonals of a rectangle are equal, so BD = AC = {_length(x)}.",
        pts, (("A", "B"), ("B", "C"), ("C", "D"), ("D", "A"), ("A", "C"), ("B", "D")),
    )


def _same_arc(x: int) -> Problem:
    pts = {"O": (0.5, 0.5), "A": (0.14, 0.62), "B": (0.86, 0.62), "C": (0.3, 0.18), "D": (0.72, 0.16)}
    return Problem(
        f"As shown in the figure, points A, B, C and D are on circle O, angle ACB = {_deg(x)}, then the degree of "
        f"angle ADB is ()",
        f"{x}°",
        f"angle ADB and angle ACB are inscribed angles on the same arc AB, so angle ADB = angle ACB = {x}°.",
        pts, (("C", "A"), ("C", "B"), ("D", "A"), ("D", "B")), (("O", 0.38),),
    )


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[..., Problem]
    combinations: tuple[tuple[int, ...], ...]


FAMILIES: tuple[Family, ...] = (
    Family("parallel_corresponding", _parallel_corresponding, tuple((x,) for x in range(25, 160, 5))),
    Family("vertical_angles", _vertical, tuple((x,) for x in range(20, 165, 5))),
    Family("alternate_angles", _alternate, tuple((x,) for x in range(20, 90, 5))),
    Family("parallel_interior", _parallel_interior, tuple((x,) for x in range(25, 160, 5))),
    Family("triangle_sum", _triangle_sum,
           tuple((a, b) for a in range(20, 105, 5) for b in range(20, 105, 5) if a + b <= 150)),
    Family("isosceles_base", _isosceles, tuple((a,) for a in range(20, 150, 10))),
    Family("angle_bisector", _bisector, tuple((x,) for x in range(20, 180, 10))),
    Family("inscribed_angle", _inscribed, tuple((x,) for x in range(40, 170, 10))),
    Family("diameter_right_angle", _diameter, tuple((a,) for a in range(15, 80, 5))),
    Family("midline_length", _midline, tuple((n,) for n in range(2, 41))),
    Family("pythagoras", _pythagoras, tuple((a, b) for a in range(1, 13) for b in range(1, 13))),
    Family("isosceles_equal_base", _isosceles_equal_base, tuple((x,) for x in range(15, 90, 5))),
    Family("equal_radii", _equal_radii, tuple((x,) for x in range(10, 90, 5))),
    Family("parallelogram_angle", _parallelogram_angle, tuple((x,) for x in range(30, 155, 5))),
    Family("parallelogram_side", _parallelogram_side, tuple((x,) for x in range(2, 41))),
    Family("rectangle_diagonals", _rectangle_diagonals, tuple((x,) for x in range(2, 41))),
    Family("same_arc_angle", _same_arc, tuple((x,) for x in range(15, 90, 5))),
    # The answer follows from the figure alone; the length given is a distractor.
    Family("equilateral_angle", _equilateral, tuple((x,) for x in range(2, 41))),
    Family("semicircle_right_angle", _thales, tuple((x,) for x in range(2, 31))),
    Family("square_diagonals", _square_diagonals, tuple((x,) for x in range(2, 41))),
    Family("regular_hexagon_angle", _hexagon, tuple((x,) for x in range(2, 41))),
)


def _rank(family: str, combo: tuple[int, ...]) -> int:
    return int(hashlib.sha1(f"{family}:{combo}".encode()).hexdigest(), 16)


@lru_cache(maxsize=None)
def split_combinations(family: Family, split: str) -> tuple[tuple[int, ...], ...]:
    """The family's number combinations that belong to `split` (disjoint between splits, none empty)."""
    if split not in SPLITS:
        raise ValueError(f"synthetic geometry has no split {split!r}; splits: {', '.join(SPLITS)}")
    ordered = sorted(family.combinations, key=lambda c: _rank(family.name, c))
    n_test = max(1, round(TEST_FRACTION * len(ordered)))
    n_val = max(1, round(VALIDATION_FRACTION * len(ordered)))
    chosen = set({"test": ordered[:n_test], "validation": ordered[n_test:n_test + n_val],
                  "train": ordered[n_test + n_val:]}[split])
    return tuple(c for c in family.combinations if c in chosen)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render_problem(problem: Problem, image_size: int) -> Image.Image:
    image = Image.new("RGB", (image_size, image_size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    width = max(1, image_size // 80)

    def px(label: str) -> tuple[float, float]:
        x, y = problem.points[label]
        return x * (image_size - 1), y * (image_size - 1)

    for centre, radius in problem.circles:
        cx, cy = px(centre)
        r = radius * image_size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(0, 0, 0), width=width)
    for a, b in problem.segments:
        draw.line([px(a), px(b)], fill=(0, 0, 0), width=width)
    font = _font(max(8, image_size // 10))
    for label in problem.points:
        x, y = px(label)
        draw.text((x, y), label, fill=(200, 0, 0) if label.isdigit() else (0, 0, 160), font=font, anchor="mm")
    return image


def make_problem(split: str, index: int, seed: int) -> tuple[str, Problem]:
    rng = random.Random(f"geometry/{split}/{seed}/{index}")
    family = rng.choice(FAMILIES)
    combo = rng.choice(split_combinations(family, split))
    return family.name, family.build(*combo)


def make_item(split: str, index: int, seed: int, image_size: int, render: bool = True) -> dict:
    """One record of `split` ("train", "validation" or "test"), a pure function of its arguments.
    Validation records follow the test schema."""
    family, problem = make_problem(split, index, seed)
    image = render_problem(problem, image_size) if render else None
    if split != "train":
        return {"image": image, "question": problem.question, "ground_truth": problem.answer, "family": family}
    return {
        "image": image,
        "problem": problem.question,
        # Spaced like the counting task's solutions: R1-V's geometry verdict (math-verify over the whole
        # completion) cannot parse an unspaced `<answer>70°</answer>`, so SFT on unspaced targets would teach
        # unscorable answers (the paper's SFT does score on GeoQA).
        "solution": f"<answer> {problem.answer} </answer>",
        "family": family,
    }
