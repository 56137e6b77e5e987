"""The report's curve outputs (report/frontier.py, report/figures.py) from fixture runs whose curves were
written so that every number can be worked out by hand: the frontier, forgetting against KL, SFT at a matched
gain, KL and beta over training, and the claims at the curves' end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from othink_mr1.report.__main__ import main as report_main
from othink_mr1.report.frontier import first_reach, least_squares
from othink_mr1.report.runs import RunResult, load_source
from othink_mr1.report.tables import build_tables

SEEDS = (1, 2, 3)
STEPS = (0, 10, 20)
BASE = {"counting": 0.2, "geometry": 0.4}  # greedy accuracy of the starting model on the curve items


def counting_curve(method: str, seed: int) -> dict[int, tuple[float, float]]:
    """step -> (greedy accuracy on counting, KL to base on counting's prompts) of a run trained on counting.
    Every run loses 1 point of geometry per nat of KL (geometry = 0.4 - 0.01 KL): forgetting tracks KL
    exactly, so its fit has slope -1 point per nat and R^2 1."""
    return {
        "sft": {0: (0.2, 0.0), 10: (0.6, 10.0 + seed), 20: (0.9, 20.0 + seed)},
        "grpo": {0: (0.2, 0.0), 10: (0.3, 1.0), 20: (0.4, 2.0)},
        "grpo_d": {0: (0.2, 0.0), 10: (0.35, 0.5), 20: (0.45, 1.0)},
    }[method]


def point(acc: float, kl: float) -> dict[str, float]:
    # Sampled accuracy is 10 points under greedy throughout (so the sampled tables mirror the greedy ones).
    return {"acc": acc, "n": 32, "acc_sampled": acc - 0.1, "acc_sampled_stderr": 0.02, "kl_to_base": kl,
            "kl_to_base_stderr": 0.1, "prompts": 32, "samples": 128}


def summary(accuracy: float) -> dict[str, object]:
    return {"protocol": "r1v", "n": 200, "correct": round(200 * accuracy), "accuracy": accuracy, "format_rate": 1.0,
            "parse_failure_rate": 0.0, "mean_completion_tokens": 30.0, "mean_completion_chars": 90.0}


def write_run(folder: Path, method: str, seed: int) -> None:
    kl_name = {"sft": "none", "grpo": "constant", "grpo_d": "grpo_d"}[method]
    name = f"counting_{method}_tiny_base_seed{seed}"
    curve = {}
    for step, (acc, kl) in counting_curve(method, seed).items():
        curve[str(step)] = {"counting": point(acc, kl), "geometry": point(0.4 - 0.01 * kl, 0.5 * kl)}
    results = {"run_name": name, "sweep": "fixture", "cell": method, "mode": "train", "task": "counting",
               "method": method, "kl": kl_name, "model": "tiny_base", "seed": seed, "tag": None,
               "eval_tasks": ["counting", "geometry"], "eval_split": "test", "before": None,
               "after": {t: summary(curve["20"][t]["acc"]) for t in ("counting", "geometry")},
               "curve": curve, "curve_settings": {"steps": list(STEPS), "items": {"counting": 32, "geometry": 32},
                                                  "samples_per_item": 4, "seed": 0, "temperature": 1.0},
               "train": {"steps": 20, "seconds": 60.0}, "seconds": 70.0,
               "hardware": {"accelerator": "cpu", "devices": 1, "gpu": None, "peak_memory_gib": None}}
    run_dir = folder / name
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(results))
    if method != "sft":  # beta per optimizer step, as GRPO logs it
        with (run_dir / "csv" / "metrics.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["step", "train/beta", "train/reward"])
            for step in range(20):
                writer.writerow([step, 0.04 if method == "grpo" else 0.07 - 0.001 * step, 1.0])


@pytest.fixture
def grid(tmp_path) -> Path:
    folder = tmp_path / "fixture"
    for method in ("sft", "grpo", "grpo_d"):
        for seed in SEEDS:
            write_run(folder, method, seed)
    base = folder / "eval_tiny_base_seed42"
    base.mkdir()
    (base / "results.json").write_text(json.dumps({
        "run_name": base.name, "sweep": "fixture", "cell": "base", "mode": "eval", "task": None, "method": None,
        "kl": None, "model": "tiny_base", "seed": 42, "tag": None, "eval_tasks": ["counting", "geometry"],
        "eval_split": "test", "after": {t: summary(a) for t, a in BASE.items()}, "curve": None, "seconds": 8.0,
        "hardware": {"accelerator": "cpu", "devices": 1}}))
    return folder


def row(table, **match) -> list[str]:
    [found] = [r for r in table.rows if all(r[table.columns.index(k)] == v for k, v in match.items())]
    return found


def cell(table, found: list[str], column: str) -> str:
    return found[table.columns.index(column)]


def test_runs_read_their_curves(grid):
    runs = {r.run_name: r for r in load_source(str(grid))}
    sft = runs["counting_sft_tiny_base_seed2"]
    assert sorted(sft.curve) == [0, 10, 20]
    assert sft.curve[20]["counting"] == {"acc": 0.9, "acc_sampled": pytest.approx(0.8), "kl_to_base": 22.0}
    assert runs["eval_tiny_base_seed42"].curve == {}


def test_the_frontier_is_the_mean_point_of_each_method_at_each_step(grid):
    tables = build_tables(load_source(str(grid)))
    frontier = tables["frontier"]
    assert "curve subset" in frontier.title and "scoring: r1v" in frontier.title
    base = row(frontier, method="base", step="0")
    assert cell(frontier, base, "n") == "9" and cell(frontier, base, "trained (greedy)") == "20.00"
    assert cell(frontier, base, "other (greedy)") == "40.00" and cell(frontier, base, "other (sampled)") == "30.00"
    sft = row(frontier, method="sft", step="10")
    # geometry = 0.4 - 0.01 (10 + seed), seeds 1-3: mean 0.28
    assert cell(frontier, sft, "trained (greedy)") == "60.00" and cell(frontier, sft, "other (greedy)") == "28.00"
    assert [r[3] for r in frontier.rows] == ["base"] + ["grpo"] * 3 + ["sft"] * 3 + ["grpo_d"] * 3


def test_forgetting_is_fitted_against_kl_over_every_run_and_point(grid):
    table = build_tables(load_source(str(grid)))["forgetting_vs_kl"]
    everything = row(table, accuracy="greedy", **{"runs of": "all methods"})
    # 3 methods x 3 seeds x 2 points after step 0, all on geometry change = -1 point per nat.
    assert cell(table, everything, "points") == "18"
    assert cell(table, everything, "slope (points per nat)") == "-1.00"
    assert cell(table, everything, "intercept (points)") in ("0.00", "-0.00")
    assert cell(table, everything, "R²") == "1.000"
    assert cell(table, row(table, accuracy="sampled", **{"runs of": "sft"}), "R²") == "1.000"
    assert cell(table, row(table, accuracy="greedy", **{"runs of": "all but sft"}), "points") == "12"
    # GRPO's points all sit at the same KL per step, on the line too: 6 points.
    assert cell(table, row(table, accuracy="greedy", **{"runs of": "grpo"}), "points") == "6"


def test_least_squares_and_r2():
    fit = least_squares([0.0, 1.0, 2.0, 3.0], [1.0, 3.0, 2.0, 5.0])
    assert (fit.slope, fit.intercept) == (pytest.approx(1.1), pytest.approx(1.1))
    # R^2 = 1 - SS_res / SS_tot = 1 - 2.7 / 8.75
    assert fit.r2 == pytest.approx(1 - 2.7 / 8.75)
    assert least_squares([1.0, 1.0], [0.0, 1.0]).r2 != least_squares([1.0, 1.0], [0.0, 1.0]).r2  # nan: x never varies


def test_sft_is_matched_where_its_curve_first_reaches_the_rl_gain(grid):
    runs = load_source(str(grid))
    sft = next(r for r in runs if r.run_name == "counting_sft_tiny_base_seed1")
    # Target 0.4 lies halfway between SFT's 0.2 at step 0 and 0.6 at step 10: step 5, half of step 10's KL (11)
    # and of its geometry drop (0.4 -> 0.29).
    assert first_reach(sft, "counting", "geometry", "acc", 0.4) == {"step": pytest.approx(5.0), "held": pytest.approx(0.345),
                                                                   "kl": pytest.approx(5.5)}
    assert first_reach(sft, "counting", "geometry", "acc", 0.1)["step"] == 0.0  # already there at the start
    assert first_reach(sft, "counting", "geometry", "acc", 0.95) is None  # never reached

    table = build_tables(runs)["matched_gain"]
    grpo = row(table, method="grpo", accuracy="greedy")
    assert cell(table, grpo, "target: final trained acc").startswith("40.00")
    assert cell(table, grpo, "SFT step at target") == "5.0" and cell(table, grpo, "SFT seeds reaching") == "3 of 3"
    # GRPO keeps geometry at 0.38; SFT at the match 0.4 - 0.005 (10 + seed): differences 3.5, 4.0, 4.5 points.
    difference = cell(table, grpo, "other acc: method − SFT")
    assert difference.startswith("4.00 [") and difference.endswith("(n=3)")
    assert cell(table, grpo, "verdict (method forgets less)") == "holds"
    # SFT's KL at the match, 0.5 (10 + seed), minus GRPO's final 2: 3.5, 4.0, 4.5 nats.
    assert cell(table, grpo, "KL: SFT − method").startswith("4.000 [")
    sampled = row(table, method="grpo_d", accuracy="sampled")  # target 0.35 sampled = 0.45 greedy: step 6.25
    assert cell(table, sampled, "SFT step at target") == "6.2"


def test_kl_and_beta_curves_and_the_claims_at_the_end(grid):
    tables = build_tables(load_source(str(grid)))
    curves = tables["kl_curves"]
    assert {r[2] for r in curves.rows} == {"grpo", "grpo_d"}  # SFT has no KL schedule
    final = row(curves, method="grpo", step="20")
    assert cell(curves, final, "KL to base (nats) [95% interval]") == "2.000 [2.000, 2.000] (n=3)"
    assert cell(curves, final, "beta") == "0.0400"
    assert cell(curves, row(curves, method="grpo_d", step="10"), "beta") == "0.0600"
    assert cell(curves, row(curves, method="grpo_d", step="20"), "beta") == "0.0510"  # the last logged step, 19

    claims = tables["drift_claims"]
    closer = next(r for r in claims.rows if r[1].startswith("GRPO-D stays closer"))
    assert closer[4].startswith("1.000 [1.000, 1.000]") and closer[5] == "holds"
    same = next(r for r in claims.rows if r[1] == "GRPO-D > GRPO (same task), sampled")
    assert same[4].startswith("5.00 [") and same[5] == "holds"  # 0.35 against 0.30 sampled, every seed


def test_the_cli_writes_markdown_csv_and_figures(grid, tmp_path):
    out = tmp_path / "report"
    assert report_main([str(grid), "--out", str(out)]) == 0
    for name in ("frontier", "forgetting_vs_kl", "matched_gain", "kl_curves", "drift_claims"):
        assert (out / f"{name}.csv").read_text().count("\n") > 1, name
    markdown = (out / "tables.md").read_text()
    for title in ("### Frontier", "### Forgetting vs KL", "### Matched gain", "### KL to base and beta", "### Claims at the end"):
        assert title in markdown, title
    for figure in ("frontier.png", "forgetting_vs_kl.png", "kl_beta_curves.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    points = list(csv.DictReader((out / "drift_points.csv").open()))
    assert len(points) == 18 and {p["method"] for p in points} == {"sft", "grpo", "grpo_d"}
    assert all(float(p["change_greedy"]) == pytest.approx(-0.01 * float(p["kl_to_base"])) for p in points)


def test_runs_without_curves_give_no_curve_tables(grid):
    runs = [RunResult(**{**r.__dict__, "curve": {}}) for r in load_source(str(grid))]
    assert not {"frontier", "forgetting_vs_kl", "matched_gain", "kl_curves", "drift_claims"} & set(build_tables(runs))


def test_a_method_that_gains_nothing_has_no_matched_point(grid):
    """A method ending below the base on its trained task would be "matched" by the untrained SFT start; the
    table says there is no gain to match instead of a verdict."""
    runs = load_source(str(grid))
    for run in runs:
        if run.method == "grpo":
            for step in run.curve:
                run.curve[step]["counting"]["acc"] = 0.15  # below the base's 0.2 throughout
    table = build_tables(runs)["matched_gain"]
    grpo = row(table, method="grpo", accuracy="greedy")
    assert cell(table, grpo, "verdict (method forgets less)").startswith("— (the method ends at or below the base's 20.00")
    assert cell(table, grpo, "SFT other acc at target") == "—" and cell(table, grpo, "other acc: method − SFT") == "—"
    assert cell(table, row(table, method="grpo_d", accuracy="greedy"), "verdict (method forgets less)") == "holds"
