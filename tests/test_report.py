"""The report: tables from runs (values, std, n, best, failed and missing cells, relative changes, the
paper's columns), the three sources (sweep directory, wandb offline, wandb API) agreeing, and the CLI's
files and figures, end to end on the smoke sweep.

Heavy: the tests on the smoke sweep (run once per session as run.py subprocesses) are marked slow.
"""

from __future__ import annotations

import json
import math
import shutil
import struct

import pytest

from othink_mr1.report.__main__ import main as report_main
from othink_mr1.report.runs import RunResult, load_run_dirs, load_source, load_wandb_api, run_from_wandb
from othink_mr1.report.tables import build_tables, cross_task_table, same_task_table, stat
from othink_mr1.report.wandb_offline import WandbFileError, iter_record_bytes, read_offline_runs
from othink_mr1.utils.errors import ConfigError

PLACEHOLDERS = ("missing", "failed", "unfinished")


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


def _row(table, *keys: str) -> list[str]:
    return next(r for r in table.rows if all(k in r for k in keys))


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


def _wait_for_exit_record(folder, timeout: float = 30.0) -> None:
    """wandb (0.31) offline: finish() can return before its writer flushes the .wandb file; on a loaded
    machine it was seen holding only its 7-byte header just after, and all 21 records 2 s later."""
    import time

    from wandb.proto import wandb_internal_pb2 as pb

    def has_exit() -> bool:
        for path in folder.rglob("run-*.wandb"):
            for raw in iter_record_bytes(path):
                record = pb.Record()
                record.ParseFromString(raw)
                if record.WhichOneof("record_type") == "exit":
                    return True
        return False

    deadline = time.monotonic() + timeout
    while not has_exit() and time.monotonic() < deadline:
        time.sleep(0.1)


def test_wandb_offline_reader_round_trips_a_real_offline_run(tmp_path):
    import wandb

    run = wandb.init(mode="offline", dir=str(tmp_path), project="p", group="g", job_type="grpo_d",
                     tags=["task:counting"], config={"run_name": "r", "mode": "train", "nested": {"a": 1}})
    for step in range(3):
        run.log({"train/reward": step / 2, "trainer/global_step": step})
    run.summary.update({"eval/counting/acc": 0.25, "status": "finished"})
    run.finish()
    _wait_for_exit_record(tmp_path)
    (read,) = read_offline_runs(tmp_path)
    assert (read.group, read.job_type, read.tags) == ("g", "grpo_d", ["task:counting"])
    assert read.config == {"run_name": "r", "mode": "train", "nested": {"a": 1}}
    assert read.summary["eval/counting/acc"] == 0.25 and read.summary["status"] == "finished"
    assert [h["train/reward"] for h in read.history if "train/reward" in h] == [0.0, 0.5, 1.0]
    assert read.exit_code == 0

    path = read.files[0]
    data = path.read_bytes()
    cut = tmp_path / "cut" / "run-cut.wandb"  # killed mid-write: the complete records still read
    cut.parent.mkdir()
    cut.write_bytes(data[: len(data) - 5])
    assert len(list(iter_record_bytes(cut))) == len(list(iter_record_bytes(path))) - 1
    bad = tmp_path / "bad.wandb"
    bad.write_bytes(b"not a wandb file")
    with pytest.raises(WandbFileError, match="not a wandb transaction log"):
        list(iter_record_bytes(bad))
    flipped = bytearray(data)
    flipped[7 + struct.calcsize("<IHB") + 2] ^= 0xFF  # a byte inside the first record
    bad.write_bytes(bytes(flipped))
    with pytest.raises(WandbFileError, match="checksum"):
        list(iter_record_bytes(bad))


def test_run_from_wandb_ignores_runs_of_other_projects():
    assert run_from_wandb({"lr": 1}, {}, 0) is None


def test_a_source_that_holds_nothing_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no run directories"):
        load_source(str(tmp_path))
    with pytest.raises(ConfigError, match="no such directory"):
        load_source(str(tmp_path / "nope"))
    assert report_main([str(tmp_path / "nope")]) == 2


# ------------------------------------------------------------------------- the smoke sweep


@pytest.mark.slow
def test_smoke_report_fills_every_cell_and_wandb_offline_gives_identical_tables(smoke_grid, tmp_path):
    process, grid = smoke_grid
    assert process.returncode == 0, process.stderr[-2000:]
    from_dirs = load_source(str(grid))
    from_wandb = load_source(f"wandb-offline:{grid}", group="smoke")
    assert len(from_dirs) == len(from_wandb) == 7
    tables, wandb_tables = build_tables(from_dirs, paper=True), build_tables(from_wandb, paper=True)
    # The smoke grid measures 2-point curves (step 0 and the last): the curve tables come with it.
    assert set(tables) == {"same_task", "relative_gains", "cross_task", "runs", "frontier", "forgetting_vs_kl",
                           "matched_gain", "kl_curves", "drift_claims"}
    for name in tables:
        assert tables[name].markdown() == wandb_tables[name].markdown(), name
    trained = sorted((r for r in from_dirs if r.mode == "train"), key=lambda r: r.run_name)
    assert len(trained) == 6 and all(sorted(r.curve) == [0, 2] for r in trained)
    assert [r.curve for r in trained] == [r.curve for r in sorted((r for r in from_wandb if r.mode == "train"),
                                                                 key=lambda r: r.run_name)]
    assert all(r.curve[0][r.task]["kl_to_base"] == 0.0 for r in trained)  # the start against itself

    same, cross, gains = tables["same_task"], tables["cross_task"], tables["relative_gains"]
    # One protocol for the whole grid, whichever the evaluation recorded (none: a legacy run, normalized).
    protocols = {p for r in from_dirs for p in r.protocol.values()}
    assert len(protocols) == 1 and protocols <= {"r1v", "normalized"}
    for table in (same, cross, gains):
        assert f"(scoring: {next(iter(protocols))}" in table.title, table.title
    assert [r[1] for r in same.rows] == ["base", "grpo", "sft", "grpo_d"]
    assert [r[:2] for r in gains.rows] == [["tiny", "counting"], ["tiny", "geometry"]]
    assert all(r[3] == r[5] == "—" and r[6] == "1, 1, 1" for r in gains.rows)  # tiny: not a model of the paper
    assert len(cross.rows) == 2 * 4  # two train -> eval pairs x four rows
    for table in (same, cross):
        for row in table.rows:
            assert not any(p in cell for cell in row for p in PLACEHOLDERS), row
            assert any("(n=1)" in cell for cell in row), row
    results = {p.parent.name: json.loads(p.read_text()) for p in grid.glob("*/results.json")}
    counting_sft = 100 * results["counting_sft_tiny_seed1"]["after"]["counting"]["accuracy"]
    assert _row(same, "sft")[2] == f"{counting_sft:.2f} (n=1)"

    # The CLI writes every format and the figures into the folder it is given.
    out = tmp_path / "report"
    assert report_main([str(grid), "--paper", "--out", str(out)]) == 0
    for name in ("tables.md", "tables.tex", "same_task.csv", "relative_gains.csv", "cross_task.csv", "runs.csv",
                 "beta_schedules.png", "training_curves.png", "cross_task.png", "frontier.csv", "forgetting_vs_kl.csv",
                 "matched_gain.csv", "kl_curves.csv", "drift_claims.csv", "drift_points.csv", "frontier.png",
                 "forgetting_vs_kl.png", "kl_beta_curves.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "tables.md").read_text().startswith("### Table 1")
    assert (out / "beta_schedules.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The curves the figures draw: beta from the schedule, one point per optimizer step.
    grpo_d = next(r for r in from_dirs if r.method == "grpo_d")
    assert [s for s, _ in grpo_d.curves["train/beta"]] == [0, 1]


@pytest.mark.slow
def test_report_shows_failed_and_never_started_cells(smoke_grid, tmp_path):
    _, shared = smoke_grid
    grid = tmp_path / "smoke"
    shutil.copytree(shared, grid)
    # One cell failed (as run.py records it), one never started (its folder is gone).
    cell = grid / "geometry_grpo_tiny_seed1"
    identity = {k: v for k, v in json.loads((cell / "results.json").read_text()).items()
                if k in ("run_name", "sweep", "cell", "mode", "task", "method", "kl", "model", "seed", "tag")}
    (cell / "results.json").unlink()
    (cell / "error.json").write_text(json.dumps({**identity, "status": "failed", "error": "RuntimeError: boom"}))
    shutil.rmtree(grid / "counting_sft_tiny_seed1")
    tables = build_tables(load_run_dirs(grid))
    assert _row(tables["same_task"], "grpo")[3] == "1 failed"
    assert _row(tables["same_task"], "sft")[2] == "1 missing"
    assert _row(tables["cross_task"], "geometry → counting", "grpo")[3] == "1 failed"
    runs = tables["runs"]
    assert _row(runs, "geometry_grpo_tiny_seed1")[4] == "failed: RuntimeError: boom"
    assert _row(runs, "sft counting seed 1 (never started)")[4] == "missing"


@pytest.mark.slow
def test_an_unfinished_run_from_before_sweep_keys_is_named_from_its_config(smoke_grid, tmp_path):
    """A run killed before results.json whose config.yaml predates the `sweep`/`cell` keys still gets
    the identity results.json would have given it (one run_identity for both)."""
    import yaml

    from othink_mr1.naming import run_identity

    _, shared = smoke_grid
    cell = tmp_path / "counting_grpo_d_tiny_seed1"
    shutil.copytree(shared / "counting_grpo_d_tiny_seed1", cell)
    finished = json.loads((cell / "results.json").read_text())
    (cell / "results.json").unlink()
    config = yaml.safe_load((cell / "config.yaml").read_text())
    assert run_identity(config) == {k: finished[k] for k in run_identity(config)}
    old = {k: v for k, v in config.items() if k not in ("sweep", "cell")}
    (cell / "config.yaml").write_text(yaml.safe_dump(old))
    [result] = load_run_dirs(tmp_path)
    assert result.status == "unfinished"
    assert (result.task, result.method, result.kl, result.seed, result.sweep, result.cell) == (
        "counting", "grpo_d", "grpo_d", 1, None, None)


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
