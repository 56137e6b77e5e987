"""`python -m othink_mr1.report --intervals`: Student-t intervals over seeds (checked against the published
t table and by simulated coverage) and the paper's claims as paired differences with a verdict."""

from __future__ import annotations

import json
import random
import statistics

import pytest
from support.report_gains import B2, write_run

from othink_mr1.report.__main__ import main as report_main
from othink_mr1.report.intervals import mean_interval, paired_difference, t_cdf, t_quantile
from othink_mr1.report.runs import load_run_dirs
from othink_mr1.report.tables import build_tables

# Two-sided 95% critical values of Student's t (any statistics table), df -> t_{0.975}.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}


@pytest.mark.parametrize("df", sorted(T975))
def test_t_quantiles_match_the_published_table(df):
    assert t_quantile(0.975, df) == pytest.approx(T975[df], abs=6e-4)
    assert t_cdf(T975[df], df) == pytest.approx(0.975, abs=2e-4)
    assert t_quantile(0.025, df) == pytest.approx(-t_quantile(0.975, df), abs=1e-8)


def test_t_cdf_is_the_cauchy_at_one_degree_and_the_normal_far_out():
    import math

    for t in (-3.0, -0.5, 0.0, 0.7, 2.5):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 1e6) == pytest.approx(0.5 * (1 + math.erf(t / math.sqrt(2))), abs=1e-5)


def test_intervals_cover_the_mean_95_percent_of_the_time():
    rng = random.Random(0)
    for n in (2, 3, 5, 10):
        trials = 4000
        covered = sum(_covers(rng, n) for _ in range(trials))
        assert abs(covered / trials - 0.95) < 0.015, (n, covered / trials)


def _covers(rng: random.Random, n: int) -> bool:
    interval = mean_interval([rng.gauss(0.3, 0.05) for _ in range(n)])
    return interval.low <= 0.3 <= interval.high


def test_paired_differences_use_the_shared_seeds_and_say_a_verdict():
    better = {1: 0.50, 2: 0.55, 3: 0.60, 4: 0.58}
    interval, seeds = paired_difference(better, {1: 0.40, 2: 0.47, 3: 0.49, 5: 0.1})
    assert seeds == [1, 2, 3]
    diffs = [0.10, 0.08, 0.11]
    half = t_quantile(0.975, 2) * statistics.stdev(diffs) / 3 ** 0.5
    assert interval.mean == pytest.approx(statistics.fmean(diffs))
    assert (interval.low, interval.high) == pytest.approx((interval.mean - half, interval.mean + half))
    assert interval.verdict == "holds"
    assert paired_difference({1: 0.1, 2: 0.2, 3: 0.15}, {1: 0.3, 2: 0.35, 3: 0.33})[0].verdict == "does not hold"
    assert paired_difference({1: 0.1, 2: 0.4}, {1: 0.3, 2: 0.2})[0].verdict == "inconclusive"
    assert paired_difference({1: 0.1}, {1: 0.3})[0].verdict == "no interval (fewer than 2 seeds)"


def write_claims_grid(grid):
    """Seeds 1-5 of base, SFT, GRPO and GRPO-D on counting; GRPO-D beats GRPO by 4-6 points on every seed,
    ties SFT within noise, and loses to SFT on geometry (cross-task); seed 5 of SFT failed."""
    write_run(grid, "base", None, None, {"counting": 0.30, "geometry": 0.20})
    sft = {1: 0.50, 2: 0.56, 3: 0.47, 4: 0.52}
    for seed in range(1, 6):
        grpo = 0.40 + 0.01 * seed
        write_run(grid, "grpo", "counting", seed, {"counting": grpo, "geometry": 0.21})
        write_run(grid, "grpo_d", "counting", seed, {"counting": grpo + 0.04 + 0.005 * seed, "geometry": 0.18 + 0.002 * seed})
        if seed in sft:
            write_run(grid, "sft", "counting", seed, {"counting": sft[seed], "geometry": 0.25})
    failed = grid / f"counting_sft_{B2}_seed5"  # an error record as the runner writes it for a failed run
    failed.mkdir()
    (failed / "error.json").write_text(json.dumps({"run_name": failed.name, "mode": "train", "model": B2, "cell": "sft",
                                                   "method": "sft", "task": "counting", "seed": 5, "error": "OOM"}))
    return grid


def test_the_claims_table_pairs_seeds_and_gives_each_claim_its_verdict(tmp_path):
    runs = load_run_dirs(write_claims_grid(tmp_path / "grid"))
    tables = build_tables(runs, intervals=True)
    rows = {row[1]: row for row in tables["claims"].rows}
    assert set(rows) == {"GRPO-D > GRPO (same task)", "GRPO-D > SFT (same task)", "GRPO-D > SFT (cross-task)",
                         "GRPO > SFT (cross-task)"}
    same = rows["GRPO-D > GRPO (same task)"]
    assert same[0] == B2 and same[2] == "counting" and same[3] == "1, 2, 3, 4, 5" and same[5] == "holds"
    expected = paired_difference({s: 0.44 + 0.015 * s for s in range(1, 6)}, {s: 0.40 + 0.01 * s for s in range(1, 6)})[0]
    assert same[4] == expected.text() and same[4].startswith("5.50 [")
    assert rows["GRPO-D > SFT (same task)"][3] == "1, 2, 3, 4"  # seed 5 of SFT failed: 4 pairs
    assert "1 failed" in next(r for r in tables["same_task"].rows if r[1] == "sft")[2]
    assert rows["GRPO-D > SFT (cross-task)"][2] == "counting → geometry"
    assert rows["GRPO-D > SFT (cross-task)"][5] == "does not hold"
    assert rows["GRPO > SFT (cross-task)"][5] == "does not hold"
    # Table 1 shows 95% intervals instead of standard deviations.
    grpo_cell = next(r for r in tables["same_task"].rows if r[1] == "grpo")[2]
    interval = mean_interval([0.40 + 0.01 * s for s in range(1, 6)])
    assert f"[{100 * interval.low:.2f}, {100 * interval.high:.2f}] (n=5)" in grpo_cell
    assert "claims" not in build_tables(runs)  # only on request


def test_the_cli_prints_and_writes_the_claims(tmp_path, capsys):
    grid = write_claims_grid(tmp_path / "grid")
    assert report_main([str(grid), "--intervals", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "GRPO-D > GRPO (same task)" in printed and "95% Student-t interval" in printed
    assert (grid / "report" / "claims.csv").read_text().count("\n") == 5  # header + 4 claims
