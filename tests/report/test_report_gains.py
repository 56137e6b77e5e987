"""The report's "same-task relative gains" section and its scoring protocols, on run directories written
to a tmp dir in results.json's shape: GRPO-D vs SFT and vs GRPO on the means over seeds beside the
paper's values (stated for 2B, derived from Table 1 for 7B, none for other models), each table labelled
with its protocol, legacy runs read as normalized, and mixed protocols refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.report_gains import B2, B7, LEGACY, write_grid, write_run

from othink_mr1.report.__main__ import main as report_main
from othink_mr1.report.paper import STATED_MODEL, STATED_RELATIVE, TABLE1
from othink_mr1.report.relative import format_relative, relative_change
from othink_mr1.report.runs import load_run_dirs, run_from_wandb
from othink_mr1.report.tables import (
    MixedProtocolsError,
    build_tables,
    paper_gain,
    relative_gains_table,
    same_task_table,
)

TASKS = ("counting", "geometry")
def _row(table, *keys: str) -> list[str]:
    return next(r for r in table.rows if all(k in r for k in keys))


# ------------------------------------------------------------------------------- the section


def test_gains_are_relative_changes_of_the_means_with_the_papers_stated_values(tmp_path):
    table = build_tables(load_run_dirs(write_grid(tmp_path / "grid")))["relative_gains"]
    assert table.columns == ["model", "task", "GRPO-D vs SFT", "paper", "GRPO-D vs GRPO", "paper",
                             "n (GRPO-D, SFT, GRPO)"]
    assert _row(table, "counting") == [B2, "counting", "+25.00%", "+11.68%", "+50.00%", "+18.60%", "2, 2, 3"]
    assert _row(table, "geometry") == [B2, "geometry", "+10.00%", "+5.72%", "-17.50%", "+13.59%", "2, 1, 2"]
    assert table.title == ("Same-task relative gains (scoring: r1v): GRPO-D vs SFT and vs GRPO on the "
                           "trained task")


def test_7b_paper_values_are_derived_from_table1_and_other_models_have_none(tmp_path):
    grid = tmp_path / "grid"
    for method, value in (("grpo_d", 0.78), ("sft", 0.745), ("grpo", 0.765)):
        write_run(grid, method, "counting", 1, {"counting": value}, model=B7)
        write_run(grid, method, "counting", 1, {"counting": value}, model="tiny_base")
    table = relative_gains_table(load_run_dirs(grid))
    # 78.00 / 74.50 - 1 and 78.00 / 76.50 - 1: the paper's 7B numbers, which its text never states.
    assert _row(table, B7) == [B7, "counting", "+4.70%", "+4.70% (derived)", "+1.96%", "+1.96% (derived)", "1, 1, 1"]
    assert _row(table, "tiny_base") == ["tiny_base", "counting", "+4.70%", "—", "+1.96%", "—", "1, 1, 1"]
    assert paper_gain(B7, "geoqa", "sft") == "+4.57% (derived)" and paper_gain(B7, "geometry", "grpo") == "+8.21% (derived)"
    assert paper_gain(B2, "some_other_task", "sft") == "—"


def test_the_stated_headline_is_what_table1_gives_to_two_decimals():
    """The paper column shows the stated value for 2B; Table 1 reproduces each of them exactly."""
    for task in ("counting", "geometry"):
        for baseline in ("sft", "grpo"):
            stated = STATED_RELATIVE[(f"grpo_d vs {baseline}", task)]
            t = TABLE1[STATED_MODEL]
            derived = 100 * relative_change(t["grpo_d"][task], t[baseline][task])
            assert round(derived, 2) == pytest.approx(stated, abs=1e-9)
            assert paper_gain(STATED_MODEL, task, baseline) == format_relative(derived / 100) == f"{stated:+.2f}%"
    assert [paper_gain(B2, t, b) for t in TASKS for b in ("sft", "grpo")] == ["+11.68%", "+18.60%", "+5.72%", "+13.59%"]


def test_a_missing_baseline_or_grid_without_grpo_d(tmp_path):
    grid = tmp_path / "grid"
    write_run(grid, "grpo_d", "counting", 1, {"counting": 0.5})
    write_run(grid, "sft", "counting", 1, {"counting": 0.4})
    table = relative_gains_table(load_run_dirs(grid))
    assert table.rows == [[B2, "counting", "+25.00%", "+11.68%", "n/a", "+18.60%", "1, 1, 0"]]
    only_sft = tmp_path / "only_sft"
    write_run(only_sft, "sft", "counting", 1, {"counting": 0.4})
    assert relative_gains_table(load_run_dirs(only_sft)) is None
    assert "relative_gains" not in build_tables(load_run_dirs(only_sft))


def test_the_section_in_every_format_and_printed_by_the_cli(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid")
    out = tmp_path / "report"
    assert report_main([str(grid), "--out", str(out), "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "### Same-task relative gains (scoring: r1v)" in printed
    assert f"| {B2} | geometry | +10.00% | +5.72% | -17.50% | +13.59% | 2, 1, 2 |" in printed
    assert f"{B2},counting,+25.00%,+11.68%,+50.00%,+18.60%,\"2, 2, 3\"" in (out / "relative_gains.csv").read_text()
    tex = (out / "tables.tex").read_text()
    assert r"\caption{Same-task relative gains (scoring: r1v): GRPO-D vs SFT and vs GRPO on the trained task}" in tex
    assert r"qwen2\_vl\_2b\_instruct & geometry & +10.00\% & +5.72\% & -17.50\% & +13.59\% & 2, 1, 2 \\" in tex
    md = (out / "tables.md").read_text()
    assert md.index("### Table 1") < md.index("### Same-task relative gains") < md.index("### Cross-task")


# ------------------------------------------------------------------------------- protocols


def test_every_table_is_labelled_with_its_protocol(tmp_path):
    tables = build_tables(load_run_dirs(write_grid(tmp_path / "grid")), paper=True)
    assert tables["same_task"].title == "Table 1 (scoring: r1v): accuracy (%) on the trained task (same-task)"
    assert tables["cross_task"].title == "Cross-task (scoring: r1v): accuracy (%) on the task not trained on"
    assert all("paper's numbers use" not in t.title for t in tables.values())  # r1v is the paper's protocol
    assert {row[-1] for row in tables["runs"].rows} == {"r1v"}
    assert tables["runs"].columns[-1] == "scoring"


def test_normalized_tables_beside_the_paper_say_the_paper_uses_r1v(tmp_path):
    runs = load_run_dirs(write_grid(tmp_path / "grid", protocol="normalized"))
    plain, paper = build_tables(runs), build_tables(runs, paper=True)
    assert plain["same_task"].title.startswith("Table 1 (scoring: normalized): ")
    assert plain["cross_task"].title.startswith("Cross-task (scoring: normalized): ")
    note = "(scoring: normalized; the paper's numbers use r1v)"
    assert paper["same_task"].title.startswith(f"Table 1 {note}: ")
    assert paper["cross_task"].title.startswith(f"Cross-task {note}: ")
    # The gains section always stands beside the paper's values.
    assert plain["relative_gains"].title.startswith(f"Same-task relative gains {note}: ")
    assert f"### Table 1 {note}" in paper["same_task"].markdown()
    assert f"Table 1 {note}" in paper["same_task"].latex().replace(r"\_", "_")


def test_runs_without_a_protocol_key_read_as_normalized(tmp_path):
    runs = load_run_dirs(write_grid(tmp_path / "grid", protocol=LEGACY))
    assert {p for r in runs for p in r.protocol.values()} == {"normalized"}
    assert same_task_table(runs).title.startswith("Table 1 (scoring: normalized): ")
    # So do wandb runs that logged no eval/<task>/protocol and no eval.protocol in their config.
    ident = {"run_name": "r", "mode": "train", "model": B2, "task": "counting", "method": "sft", "seed": 1,
             "eval_tasks": ["counting", "geometry"]}
    legacy = run_from_wandb(ident, {"status": "finished", "eval/counting/acc": 0.5, "eval/geometry/acc": 0.2}, 0)
    assert legacy.protocol == {"counting": "normalized", "geometry": "normalized"}
    new = run_from_wandb(ident, {"status": "finished", "eval/counting/acc": 0.5, "eval/counting/protocol": "r1v"}, 0)
    assert new.protocol == {"counting": "r1v"}
    from_config = run_from_wandb({**ident, "config": {"eval": {"protocol": "r1v"}}},
                                 {"status": "finished", "eval/counting/acc": 0.5, "eval/geometry/acc": 0.2}, 0)
    assert from_config.protocol == {"counting": "r1v", "geometry": "r1v"}


def test_one_cell_mixing_protocols_is_refused_naming_both_and_a_run_of_each(tmp_path):
    grid = write_grid(tmp_path / "grid")
    write_run(grid, "grpo_d", "counting", 3, {"counting": 0.9}, protocol=LEGACY)  # an older seed
    runs = load_run_dirs(grid)
    with pytest.raises(MixedProtocolsError) as info:
        same_task_table(runs)
    message = str(info.value)
    assert message.startswith(f"Table 1: cell '{B2} grpo_d counting' would average accuracies scored under "
                              "different protocols (normalized, r1v)")
    assert f"normalized: 1 result(s), e.g. run 'counting_grpo_d_{B2}_seed3' on counting" in message
    assert f"r1v: 14 result(s), e.g. run 'counting_grpo_d_{B2}_seed1' on counting" in message  # from the cell
    with pytest.raises(MixedProtocolsError, match="Same-task relative gains: cell"):
        relative_gains_table(runs)


def test_one_table_mixing_protocols_across_cells_is_refused(tmp_path):
    grid = tmp_path / "grid"
    write_run(grid, "grpo_d", "counting", 1, {"counting": 0.7}, protocol="r1v")
    write_run(grid, "grpo_d", "geometry", 1, {"geometry": 0.3}, protocol="normalized")
    with pytest.raises(MixedProtocolsError) as info:
        same_task_table(load_run_dirs(grid))
    message = str(info.value)
    assert "Table 1: its cells would compare accuracies scored under different protocols (normalized, r1v)" in message
    assert f"run 'geometry_grpo_d_{B2}_seed1' on geometry" in message
    assert f"run 'counting_grpo_d_{B2}_seed1' on counting" in message
    # The per-run listing shows each run's protocol instead of averaging anything.
    from othink_mr1.report.tables import runs_table

    assert {row[0]: row[-1] for row in runs_table(load_run_dirs(grid)).rows} == {
        f"counting_grpo_d_{B2}_seed1": "r1v", f"geometry_grpo_d_{B2}_seed1": "normalized"}


def test_the_cli_refuses_mixed_protocols_with_status_2(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid")
    write_run(grid, "sft", "geometry", 2, {"geometry": 0.3, "counting": 0.2}, protocol=LEGACY)
    out = tmp_path / "report"
    assert report_main([str(grid), "--paper", "--out", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Table 1: cell ") and "(normalized, r1v)" in err
    assert f"'geometry_sft_{B2}_seed2'" in err
    assert not out.exists()  # nothing written from a refused report


def _validation(run_dir: Path) -> Path:
    """Mark a written run as scored on the validation split, as a tuning run's results.json is."""
    payload = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**payload, "eval_split": "validation"}))
    return run_dir


def test_a_validation_run_among_test_runs_is_refused_naming_a_run_of_each_split(tmp_path, capsys):
    grid = write_grid(tmp_path / "grid")  # no eval_split key: read as test, as every run before the splits
    _validation(write_run(grid, "sft", "geometry", 7, {"geometry": 0.9, "counting": 0.2}))
    runs = load_run_dirs(grid)
    assert {r.eval_split for r in runs if r.seed == 7} == {"validation"}
    assert {r.eval_split for r in runs if r.seed != 7} == {"test"}
    out = tmp_path / "report"
    assert report_main([str(grid), "--out", str(out), "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert "scored on different splits (test: 13 run(s), e.g. " in err
    assert f"validation: 1 run(s), e.g. 'geometry_sft_{B2}_seed7'" in err
    assert not out.exists()


def test_a_report_of_validation_runs_only_says_so_in_every_title(tmp_path):
    grid = tmp_path / "tune"
    for seed, acc in ((1, 0.5), (2, 0.7)):
        _validation(write_run(grid, "sft", "counting", seed, {"counting": acc}))
    tables = build_tables(load_run_dirs(grid))
    assert tables and all(t.title.endswith(" [validation split]") for t in tables.values())
    assert _row(tables["same_task"], "sft")[2].startswith("60.00 ± ")
    test_tables = build_tables(load_run_dirs(write_grid(tmp_path / "grid")))
    assert not any("split]" in t.title for t in test_tables.values())


def test_a_wandb_run_reads_its_split_from_the_logged_eval_config():
    config = {"run_name": "r", "mode": "train", "model": B2, "task": "counting", "seed": 1, "eval_tasks": ["counting"],
              "config": {"eval": {"protocol": "r1v", "split": "validation"}}}
    run = run_from_wandb(config, {"eval/counting/acc": 0.5, "status": "finished"}, 0)
    assert run.eval_split == "validation"
    del config["config"]["eval"]["split"]
    assert run_from_wandb(config, {"eval/counting/acc": 0.5, "status": "finished"}, 0).eval_split == "test"


