"""Grids on a real SLURM cluster: a one-node cluster on localhost (tests/slurm/cluster.sh: munged, slurmctld and
slurmd from a temp folder), driven as users drive one, by `python run.py sweeps=... hydra/launcher=slurm`
with the localhost settings as overrides. The smoke grid runs one job per cell and reports what the serial
launcher reports; a cell preempted mid-training checkpoints, is requeued by submitit and ends identical to an
uninterrupted run; a cell with two SLURM tasks trains as two DDP ranks. A machine that cannot start the
cluster (not root, no apt) skips these tests, saying why."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CACHE, ROOT, SHRINK, SHRINK_GRPO, run_smoke_sweep
from safetensors.torch import load_file

from othink_mr1.report.runs import load_source
from othink_mr1.report.tables import build_tables

# Heavy: SLURM daemons and grids of run.py jobs (minutes); `make test-fast` skips it.
pytestmark = pytest.mark.slow

CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
PARTITION = os.environ.get("OTHINK_SLURM_PARTITION", "othink_test")
# What a localhost cluster needs, as overrides of conf/hydra/launcher/slurm.yaml: no GPUs, one CPU and a little
# memory per cell, a time limit above submitit's 10-minute floor (below it every signal counts as a timeout).
SLURM = ["hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=30"]
# One GRPO-D cell of the smoke grid on counting, long enough to be preempted in the middle.
# Periodic checkpoints every 2 steps: the test signals once the first is on disk, so training is under way.
# (A cell's own overrides come after the command line's: its step count is set in the cell.)
ONE_CELL = ["~hydra.sweeper.cells.base", "~hydra.sweeper.cells.sft", "~hydra.sweeper.cells.grpo",
            'hydra.sweeper.cells.grpo_d=["method=grpo","kl=grpo_d","method.max_steps=8","method.prompts_per_step=4",'
            '"method.batch_size=4","method.num_generations=2","method.max_completion_length=8"]',
            "hydra.sweeper.params.task=counting", "trainer.checkpoint_every_n_steps=2", "save_model=true",
            "eval.curve_points=null"]
CELL = "counting_grpo_d_tiny_seed1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """SLURM_CONF of a running localhost cluster: the one .ci/run started, else one started here (and stopped
    after the module)."""
    if os.environ.get("SLURM_CONF"):
        yield Path(os.environ["SLURM_CONF"])
        return
    folder = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, OTHINK_SLURMCTLD_PORT=str(free_port()), OTHINK_SLURMD_PORT=str(free_port()))
    started = time.time()
    start = subprocess.run([str(CLUSTER), "start", str(folder)], capture_output=True, text=True, timeout=300, env=env)
    if start.returncode == 3:
        print(start.stderr, file=sys.stderr)
        pytest.skip(start.stderr.strip())
    assert start.returncode == 0, start.stderr
    print(f"[slurm] localhost cluster up in {time.time() - started:.1f} s", file=sys.stderr)
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield folder / "slurm.conf"
    finally:
        del os.environ["SLURM_CONF"]
        subprocess.run([str(CLUSTER), "stop", str(folder)], timeout=60)


def squeue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=30)
    return out.stdout.split("\n") if out.stdout.strip() else []


def test_the_smoke_grid_runs_one_slurm_job_per_cell_and_reports_as_the_serial_launcher(slurm_cluster, smoke_grid,
                                                                                      tmp_path):
    serial = {r.run_name: r for r in load_source(str(smoke_grid[1]))}
    # The serial grid's thread count, given to the jobs: inside a SLURM job torch takes the job's CPUs (1 here)
    # unless OMP_NUM_THREADS says otherwise (runner.set_threads), and the curves compared below are bitwise.
    [threads] = {json.loads((smoke_grid[1] / name / "meta.json").read_text())["machine"]["torch_threads"]
                 for name in serial}
    started = time.time()
    process = run_smoke_sweep(tmp_path, *SLURM, env={"OMP_NUM_THREADS": str(threads)})
    print(f"[slurm] smoke grid on SLURM: {time.time() - started:.1f} s", file=sys.stderr)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    grid = tmp_path / "sweeps" / "smoke"
    # submitit's folder per SLURM job: 7 cells (the row zero once, 3 trained cells x 2 tasks), one array job.
    jobs = sorted(p.name for p in (grid / ".submitit").glob("*_*") if p.is_dir())  # <array job>_<index>
    assert len(jobs) == 7 and len({j.split("_")[0] for j in jobs}) == 1, jobs
    assert "[sweep] 7 cells: 7 finished" in process.stdout
    script = next((grid / ".submitit").glob("*/*_submission.sh")).read_text()
    for line in ("--array=0-6%7", f"--partition={PARTITION}", "--signal=USR2@120", "--time=30", "--cpus-per-task=1"):
        assert f"#SBATCH {line}\n" in script, line

    on_slurm = {r.run_name: r for r in load_source(str(grid))}
    assert sorted(on_slurm) == sorted(serial)
    for name, run in on_slurm.items():
        assert run.status == serial[name].status == "finished"
        assert run.accuracy == serial[name].accuracy, name
        assert run.curve == serial[name].curve, name
    tables, serial_tables = build_tables(list(on_slurm.values()), paper=True), build_tables(list(serial.values()), paper=True)
    for name in ("same_task", "cross_task", "relative_gains", "frontier", "matched_gain"):
        assert tables[name].markdown() == serial_tables[name].markdown(), name


def test_a_cell_preempted_mid_training_checkpoints_requeues_and_ends_as_an_uninterrupted_run(slurm_cluster, tmp_path):
    """USR2, the signal SLURM sends before a time limit and a scheduler sends to preempt: the run finishes the
    step in flight and writes last.ckpt at it (preemptions.jsonl names the step; the checkpoint holds it while
    the job waits requeued), submitit requeues the job, and the requeued job continues from that checkpoint to
    the end an uninterrupted run reaches, with no relaunch by hand."""
    # One thread in both: a SLURM job takes its CPUs' count otherwise (runner.set_threads), and the weights are
    # compared bitwise.
    whole = run_smoke_sweep(tmp_path / "whole", *ONE_CELL, env={"OMP_NUM_THREADS": "1"})
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]

    out = tmp_path / "preempted"
    env = dict(os.environ, OTHINK_OUTPUT_DIR=str(out), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline",
               OMP_NUM_THREADS="1")
    log = (tmp_path / "sweep.log").open("w")
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "sweeps=smoke", *ONE_CELL, *SLURM],
                               env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    run_dir = out / "sweeps" / "smoke" / CELL
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:  # step 2 saved
        time.sleep(0.05)
    [job] = [line.split()[0] for line in squeue() if line.endswith("RUNNING")]
    signalled = time.time()
    subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=30)
    # Requeued, the job waits for its old credential to expire (cred_expire, 5 s here) before it runs again:
    # meanwhile the checkpoint it will resume from is on disk.
    while time.time() < deadline and not any(line.endswith("PENDING") for line in squeue()):
        time.sleep(0.05)
    preempted = [json.loads(line) for line in (run_dir / "preemptions.jsonl").read_text().splitlines()]
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    assert len(preempted) == 1 and preempted[0]["signal"] == "SIGUSR2" and preempted[0]["step"] == saved
    assert 2 <= saved < 8, saved
    while time.time() < deadline and not any(line.endswith("RUNNING") for line in squeue()):
        time.sleep(0.05)
    print(f"[slurm] preempted at step {saved}; requeued job running again {time.time() - signalled:.1f} s after "
          "the signal", file=sys.stderr)
    process.wait(timeout=900)
    assert process.returncode == 0, (tmp_path / "sweep.log").read_text()[-4000:]

    logs = "\n".join(p.read_text() for p in sorted((out / "sweeps" / "smoke" / ".submitit").glob("*/*_log.*")))
    assert f"[run] preempted: checkpoint at step {saved} written" in logs
    assert f"Requeued job {job}" in logs and "[run] resuming from" in logs
    resumes = [json.loads(line) for line in (run_dir / "resumes.jsonl").read_text().splitlines()]
    assert len(resumes) == 1 and resumes[0]["checkpoint"] == str(checkpoint)

    results = [json.loads((d / "sweeps" / "smoke" / CELL / "results.json").read_text()) for d in (tmp_path / "whole", out)]
    assert results[1]["train"]["steps"] == 8 and results[1]["train"]["resumed_from"].endswith("last.ckpt")
    assert results[0]["after"] == results[1]["after"]
    weights = [load_file(str(d / "sweeps" / "smoke" / CELL / "model" / "model.safetensors")) for d in (tmp_path / "whole", out)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_partition_that_does_not_exist_fails_at_submission_naming_it(slurm_cluster, tmp_path):
    process = run_smoke_sweep(tmp_path, *SLURM, "hydra.launcher.partition=no_such_partition")
    assert process.returncode == 1
    assert ("[sweep] SLURM refused the submission (hydra.launcher.partition=no_such_partition): sbatch: error: invalid "
            "partition specified: no_such_partition") in process.stdout
    assert not squeue()


DDP_CELL = ["model=tiny", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
            "trainer.num_threads=1", "method.batch_size=2", "method.num_generations=4", "kl=constant", "method.lr=1e-3",
            "save_model=true", "eval.row_zero=false"]


def run_py(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args, f"paths.output_dir={out}",
                           f"paths.cache_dir={CACHE}"], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)


def test_a_cell_with_two_slurm_tasks_trains_as_two_ddp_ranks_like_the_local_two_process_run(slurm_cluster, tmp_path):
    """`hydra.launcher.tasks_per_node=2`: SLURM starts the cell twice, Lightning's SLURM environment gives the
    two processes ranks 0 and 1, and they train and evaluate as the two processes Lightning launches locally."""
    settings = [*SHRINK, *SHRINK_GRPO, *DDP_CELL]
    local = run_py(tmp_path / "local", *settings)
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    on_slurm = run_py(tmp_path / "slurm", "-m", *settings, *SLURM, "hydra.launcher.tasks_per_node=2",
                      f"hydra.sweep.dir={tmp_path / 'slurm' / 'multirun'}")
    assert on_slurm.returncode == 0, on_slurm.stdout[-3000:] + on_slurm.stderr[-3000:]
    [task_logs] = [sorted(p.name for p in d.glob("*_log.out")) for d in (tmp_path / "slurm" / "multirun" / ".submitit").iterdir() if d.is_dir()]
    assert [name.rsplit("_", 2)[1] for name in task_logs] == ["0", "1"]  # two SLURM tasks, one log each
    logs = [p.read_text() for p in sorted((tmp_path / "slurm" / "multirun" / ".submitit").glob("*/*_log.out"))]
    assert ["GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0], "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]] == [True, True]

    [a] = (tmp_path / "local" / "runs").iterdir()
    [b] = [d for d in (tmp_path / "slurm" / "multirun").iterdir() if (d / "results.json").exists()]  # a multirun's job
    results = [json.loads((d / "results.json").read_text()) for d in (a, b)]
    assert results[1]["train"]["processes"] == 2 and results[1]["hardware"]["devices"] == 2
    assert results[0]["train"]["steps"] == results[1]["train"]["steps"] == 2
    assert results[0]["after"] == results[1]["after"]
    weights = [load_file(str(d / "model" / "model.safetensors")) for d in (a, b)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_sweep_whose_jobs_all_fail_names_each_cell_and_its_logs(slurm_cluster, tmp_path):
    process = run_smoke_sweep(tmp_path, *ONE_CELL, *SLURM, "model=pretrained", "model.path=/no/such/model",
                              "method.accumulate_grad_batches=1")
    assert process.returncode == 1, process.stdout[-3000:]
    grid = tmp_path / "sweeps" / "smoke"
    [line] = [line for line in process.stdout.splitlines() if line.startswith("[sweep] failed: ")]
    [log] = sorted((grid / ".submitit").glob("*/*_0_log.err"))
    assert line.startswith(f"[sweep] failed: {grid}/counting_grpo_d_model_seed1 (") and line.endswith(f"; logs: {log}")
    assert "model.path: model folder /no/such/model does not exist" in line and "error.json" not in line
    assert json.loads((grid / "counting_grpo_d_model_seed1" / "error.json").read_text())["status"] == "failed"
    assert "[sweep] 1 cells: 1 failed" in process.stdout
