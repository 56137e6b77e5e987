"""The report on real grids: the smoke sweep's report fills every cell and wandb offline gives identical
tables; failed and never-started cells; an unfinished run from before the sweep keys."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from support.report import _row

from othink_mr1.report.__main__ import main as report_main
from othink_mr1.report.runs import load_run_dirs, load_source
from othink_mr1.report.tables import build_tables
from othink_mr1.report.wandb_offline import WandbFileError, iter_record_bytes, read_offline_runs

PLACEHOLDERS = ("missing", "failed", "unfinished")


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
