"""The report: tables from runs (values, std, n, best, failed and missing cells, relative changes, the
paper's columns), the three sources (sweep directory, wandb offline, wandb API) agreeing, and the CLI's
files and figures, end to end on the smoke sweep.

Heavy: the tests on the smoke sweep (run once per session as run.py subprocesses) are marked slow.
"""

from __future__ import annotations

import math

import pytest
from support.report import _row

from othink_mr1.report.__main__ import main as report_main
from othink_mr1.report.runs import RunResult, load_source, load_wandb_api, run_from_wandb
from othink_mr1.report.tables import cross_task_table, same_task_table, stat
from othink_mr1.utils.errors import ConfigError


def _run(row: str, task: str | None, seed: int | None, acc: dict[str, float], status: str = "finished",
         model: str = "tiny_base") -> RunResult:
    method = None if row == "base" else row
    return RunResult(run_name=f"{task}_{row}_seed{seed}", mode="eval" if row == "base" else "train", model=model,
                     status=status, cell=row, task=task, method=method, kl=None, seed=seed,
                     accuracy=acc if status == "finished" else {},
                     protocol={t: "r1v" for t in acc} if status == "finished" else {})


def _grid() -> list[RunResult]:
    """base + sft/grpo/grpo_d on counting (3 seeds) and geometry (1 seed, one cell failed)."""
    runs = [_run("base", None, None, {"counting": 0.25, "geometry": 0.40})]
    for seed, (sft, grpo, grpo_d) in enumerate([(0.50, 0.40, 0.60), (0.60, 0.50, 0.70), (0.70, 0.30, 0.80)], 1):
        runs.append(_run("sft", "counting", seed, {"counting": sft, "geometry": 0.10}))
        runs.append(_run("grpo", "counting", seed, {"counting": grpo, "geometry": 0.30}))
        runs.append(_run("grpo_d", "counting", seed, {"counting": grpo_d, "geometry": 0.44}))
    runs.append(_run("sft", "geometry", 1, {"counting": 0.20, "geometry": 0.50}))
    runs.append(_run("grpo", "geometry", 1, {}, status="failed"))
    runs.append(_run("grpo_d", "geometry", 1, {"counting": 0.30, "geometry": 0.45}))
    return runs


# ----------------------------------------------------------------------------------- tables


def test_stat_is_mean_and_sample_std_over_seeds_in_percent():
    s = stat([_run("grpo_d", "counting", i, {"counting": v}) for i, v in enumerate((0.41, 0.475, 0.46), 1)], "counting")
    assert s.n == 3 and s.mean == pytest.approx(0.44833, abs=1e-5) and s.std == pytest.approx(0.03403, abs=1e-5)
    assert s.text() == "44.83 ± 3.40 (n=3)"
    one = stat([_run("sft", "counting", 1, {"counting": 0.745})], "counting")
    assert one.text() == "74.50 (n=1)" and math.isnan(one.std)


def test_same_task_table_values_order_best_and_failed_cells():
    table = same_task_table(_grid())
    assert table.title == "Table 1 (scoring: r1v): accuracy (%) on the trained task (same-task)"
    assert table.columns == ["model", "method", "counting", "geometry"]
    assert [r[1] for r in table.rows] == ["base", "grpo", "sft", "grpo_d"]  # the paper's row order
    assert _row(table, "grpo_d")[2] == "70.00 ± 10.00 (n=3)"
    assert _row(table, "base") == ["tiny_base", "base", "25.00 (n=1)", "40.00 (n=1)"]
    assert _row(table, "grpo")[3] == "1 failed"  # shown, never dropped
    best = {(table.rows[i][1], table.columns[j]) for i, j in table.best}
    assert best == {("grpo_d", "counting"), ("sft", "geometry")}
    assert "**70.00 ± 10.00 (n=3)**" in table.markdown()
    assert r"\textbf{70.00 $\pm$ 10.00 (n=3)}" in table.latex()
    assert "70.00 ± 10.00 (n=3) *" in table.csv()


def test_a_table_renders_exactly_as_before_render_py_existed():
    """report/render.py's output, character for character as report/tables.py's Table methods wrote it: the
    best cell, notes, and every character LaTeX escapes (documents: the tables one after another)."""
    from othink_mr1.report.render import Table, csv_text, latex, latex_document, markdown, markdown_document

    table = Table(title="Table 1 (scoring: r1v): 50% & #_x", columns=["model", "counting", "Δ"],
                  rows=[["tiny_base", "70.00 ± 1.00 (n=2)", "+1.00"], ["a\\b", "—", "−2"]], best={(0, 1)},
                  notes=["mean ± std → n", "second"])
    assert markdown(table) == table.markdown() == (
        "### Table 1 (scoring: r1v): 50% & #_x\n\n| model | counting | Δ |\n| --- | --- | --- |\n"
        "| tiny_base | **70.00 ± 1.00 (n=2)** | +1.00 |\n| a\\b | — | −2 |\n\n_mean ± std → n_\n_second_\n")
    assert csv_text(table) == table.csv() == "model,counting,Δ\ntiny_base,70.00 ± 1.00 (n=2) *,+1.00\na\\b,—,−2\n"
    assert latex(table) == table.latex() == (
        "\\begin{table}[t]\n\\centering\n\\caption{Table 1 (scoring: r1v): 50\\% \\& \\#\\_x}\n\\begin{tabular}{lll}\n"
        "\\toprule\nmodel & counting & $\\Delta$ \\\\\n\\midrule\n"
        "tiny\\_base & \\textbf{70.00 $\\pm$ 1.00 (n=2)} & +1.00 \\\\\na\\textbackslash{}b & --- & -2 \\\\\n"
        "\\bottomrule\n\\end{tabular}\n\\end{table}\n")
    assert markdown_document([table, table]) == markdown(table) + "\n" + markdown(table)
    assert latex_document([table, table]) == latex(table) + "\n" + latex(table)


def test_cross_task_table_relative_change_vs_base_and_vs_sft():
    table = cross_task_table(_grid())
    grpo_d = _row(table, "counting → geometry", "grpo_d")
    # mean 0.44 vs base 0.40 and vs SFT 0.10, as the paper defines it: (x - y) / y
    assert grpo_d[3:] == ["44.00 ± 0.00 (n=3)", "+10.00%", "+340.00%"]
    sft = _row(table, "counting → geometry", "sft")
    assert sft[4:] == ["-75.00%", "—"]
    failed = _row(table, "geometry → counting", "grpo")
    assert failed[3:] == ["1 failed", "n/a", "n/a"]


def test_paper_columns_carry_the_published_numbers_and_the_difference():
    runs = [r for r in _grid()]
    for r in runs:
        r.model = "qwen2_vl_2b_instruct"
    table = same_task_table(runs, paper=True)
    assert table.columns[2:5] == ["counting", "counting (paper)", "counting Δ"]
    assert _row(table, "grpo_d")[2:5] == ["70.00 ± 10.00 (n=3)", "76.50", "-6.50"]
    cross = cross_task_table(runs, paper=True)
    assert _row(cross, "counting → geometry", "grpo_d")[-2:] == ["16.18", "+4.25%"]
    # Another model: the paper's 2B numbers for reference, no difference across models.
    tiny = same_task_table(_grid(), paper=True)
    assert _row(tiny, "grpo_d")[3:5] == ["76.50", "—"]


def test_ablation_sweep_rows_are_cells_with_the_change_vs_the_first():
    runs = [_run("base", None, None, {"geometry": 0.2})]
    for beta, acc in (("beta_0.00", 0.25), ("beta_0.01", 0.30), ("beta_0.02", 0.20)):
        run = _run("grpo", "geometry", 1, {"geometry": acc})
        run.cell = beta
        runs.append(run)
    runs.append(RunResult(run_name="beta_0.03 geometry seed 1 (never started)", mode="train", model="tiny_base",
                          status="missing", cell="beta_0.03", task="geometry", seed=1))
    table = same_task_table(runs)
    assert table.title.startswith("Ablation")
    assert [r[1] for r in table.rows] == ["base", "beta_0.00", "beta_0.01", "beta_0.02", "beta_0.03"]
    assert _row(table, "beta_0.01")[2:] == ["30.00 (n=1)", "+20.00%"]
    assert _row(table, "beta_0.03")[2:] == ["1 missing", "n/a"]


# ----------------------------------------------------------------------------------- sources


def test_wandb_api_source_reads_config_summary_and_state():
    class FakeRun:
        def __init__(self, config, summary, state):
            self.config, self.summary, self.state = config, summary, state

        def scan_history(self, keys=None):
            return [{"trainer/global_step": 0, "train/reward": 0.5}, {"trainer/global_step": 1, "train/reward": 0.7}]

    ident = {"run_name": "counting_grpo_d_tiny_seed1", "mode": "train", "model": "tiny", "sweep": "smoke",
             "cell": "grpo_d", "task": "counting", "method": "grpo_d", "kl": "grpo_d", "seed": 1,
             "eval_tasks": ["counting", "geometry"]}
    runs = [FakeRun(ident, {"status": "finished", "eval/counting/acc": 0.5, "eval/geometry/acc": 0.25, "seconds": 3.0},
                    "finished"),
            FakeRun({**ident, "run_name": "x", "seed": 2}, {}, "crashed"),
            FakeRun({"unrelated": 1}, {}, "finished")]
    calls = []

    class FakeApi:
        def runs(self, path, filters):
            calls.append((path, filters))
            return runs

    results = load_wandb_api("me/othink-mr1", group="smoke", api_factory=FakeApi)
    assert calls == [("me/othink-mr1", {"group": "smoke"})]
    assert [(r.status, r.accuracy) for r in results] == [("finished", {"counting": 0.5, "geometry": 0.25}),
                                                         ("failed", {})]
    assert results[0].curves["train/reward"] == [(0, 0.5), (1, 0.7)]
    with pytest.raises(ConfigError, match="ENTITY/PROJECT"):
        load_wandb_api("just-a-project", api_factory=FakeApi)


def test_run_from_wandb_ignores_runs_of_other_projects():
    assert run_from_wandb({"lr": 1}, {}, 0) is None


def test_a_source_that_holds_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no run directories"):
        load_source(str(tmp_path))
    with pytest.raises(ConfigError, match="no such directory"):
        load_source(str(tmp_path / "nope"))
    assert report_main([str(tmp_path / "nope")]) == 2


# ------------------------------------------------------------------------- the smoke sweep


def test_runs_table_gives_device_hours_per_cell():
    from othink_mr1.report.tables import runs_table

    gpu_run = RunResult(run_name="geoqa_grpo_d_qwen2_vl_2b_instruct_seed1", mode="train", model="qwen2_vl_2b_instruct",
                        status="finished", task="geoqa", method="grpo_d", kl="grpo_d", seed=1, seconds=5400.0,
                        train_seconds=5000.0, devices=8, accuracy={"geoqa": 0.5})
    unknown = RunResult(run_name="old", mode="train", model="qwen2_vl_2b_instruct", status="finished", task="geoqa",
                        method="sft", kl="none", seed=1, seconds=60.0, accuracy={"geoqa": 0.4})
    table = runs_table([gpu_run, unknown])
    column = table.columns.index("device h")
    assert {row[0]: row[column] for row in table.rows} == {gpu_run.run_name: "12.000", "old": "—"}
