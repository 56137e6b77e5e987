"""Shared fixtures: the real primary config, composed and shrunk for tests (lightning-hydra-template
style), a project-wide model cache so tiny_base is built once per checkout, and helpers."""

from __future__ import annotations

import os

# Offline and quiet before anything imports the hub clients.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OTHINK_ROOT", str(ROOT))
CONF = ROOT / "conf"
R1V_EVAL = ROOT / "data" / "r1v_eval"
# The same cache `make run` uses: tiny/tiny_base and synthetic datasets are built once per checkout.
CACHE = Path(os.environ.get("OTHINK_CACHE", ROOT / ".cache"))

from othink_mr1.hydra_setup import register_configs  # noqa: E402
from support.numerics import THREAD_COUNTS  # noqa: E402

register_configs()

# Small and fast: a few dozen items per split, short generations, 2 optimizer steps.
SHRINK = [
    "task.synthetic.num_train=32",
    "task.synthetic.num_test=8",
    "tasks.counting.synthetic.num_test=8",
    "tasks.geometry.synthetic.num_test=8",
    "task.synthetic.num_validation=8",
    "tasks.counting.synthetic.num_validation=8",
    "tasks.geometry.synthetic.num_validation=8",
    "eval.batch_size=8",
    "method.batch_size=4",
    "method.max_steps=2",
    "model.max_new_tokens_cap=12",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "save_model=false",
    # No training curve (eval.curve_points): 2 steps leave it nothing to draw; the curve's tests ask for one.
    "eval.curve_points=null",
]
# GRPO (the default method): 4 prompts per step in one micro-batch, G = 4.
SHRINK_GRPO = ["method.prompts_per_step=4", "method.accumulate_grad_batches=1", "method.num_generations=4"]


def compose_config(overrides: list[str] | None = None, output_dir: Path | None = None, shrink: bool = True) -> DictConfig:
    """The real primary config with `overrides`, its run_dir under `output_dir`."""
    GlobalHydra.instance().clear()
    overrides = list(overrides or [])
    shrink_list = SHRINK + ([] if "method=sft" in overrides else SHRINK_GRPO) if shrink else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=shrink_list + overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.cache_dir = str(CACHE)
        if output_dir is not None:
            cfg.paths.output_dir = str(output_dir)
        cfg.paths.run_dir = f"{cfg.paths.output_dir}/runs/{cfg.run_name}"
        del cfg.hydra
    return cfg


def family_folder(family: str) -> Path:
    """A tiny random-weight model of `family` (models/tiny_families.py) saved as a hub folder, built once
    per checkout into the shared cache."""
    from othink_mr1.models.factory import cached_build
    from othink_mr1.models.tiny_families import FAMILIES_VERSION, build_tiny_family

    return cached_build(CACHE / "models" / f"tiny-{family}-v{FAMILIES_VERSION}", lambda tmp: build_tiny_family(family, tmp))


PUBLISHED = ROOT / "tests" / "fixtures" / "published"
SHRINK_OVERLAYS = ROOT / "tests" / "fixtures" / "shrink"
# Every preset under conf/model/ that names a hub checkpoint (model=pretrained's children).
PRESETS = sorted(p.stem for p in SHRINK_OVERLAYS.glob("*.json"))


def preset_folder(preset: str) -> Path:
    """The tiny build of `preset`'s checkpoint from its published small files (tests/fixtures/published/<preset>)
    and its shrink overlay (tests/fixtures/shrink/<preset>.json), built once per fixture content into the
    shared cache."""
    import json

    from othink_mr1.models.factory import cached_build, config_digest
    from othink_mr1.models.tiny_published import PUBLISHED_BUILD_VERSION, build_from_published

    published = PUBLISHED / preset
    files = {f.name: f.read_text(encoding="utf-8") for f in sorted(published.glob("*"))} if published.is_dir() else {}
    overlay = json.loads((SHRINK_OVERLAYS / f"{preset}.json").read_text(encoding="utf-8"))
    siblings = {s: (PUBLISHED / s).read_text(encoding="utf-8") for s in (overlay.get("files_from") or {}).values()}
    key = config_digest(files, overlay, siblings, PUBLISHED_BUILD_VERSION)
    return cached_build(CACHE / "models" / f"published-{preset}-{key}",
                        lambda tmp: build_from_published(published, overlay, tmp))


def task_config(**kwargs) -> DictConfig:
    """A task node (schema-checked) for loader tests: an R1-V counting task unless `kwargs` say otherwise."""
    from omegaconf import OmegaConf

    from othink_mr1.config import TaskConfig

    kwargs.setdefault("name", "t")
    kwargs.setdefault("source", "r1v")
    kwargs.setdefault("scorer", "counting")
    kwargs.setdefault("prompt", "{question} Output the final answer in <answer> </answer> tags.")
    return OmegaConf.structured(TaskConfig(**kwargs))


@pytest.fixture
def make_cfg(tmp_path):
    def _make(*overrides: str, shrink: bool = True) -> DictConfig:
        return compose_config(list(overrides), output_dir=tmp_path / "outputs", shrink=shrink)

    return _make


@pytest.fixture(params=THREAD_COUNTS, ids=lambda n: f"threads{n}")
def threads(request):
    """torch's intra-op thread count for one test, each of THREAD_COUNTS in turn (the caller's restored after):
    a test asking for it checks an equality that must hold however a reduction is split across threads, in the
    fast tier (one thread per worker otherwise) and the full suite alike."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The `tiny` model and processor (random weights), built once per session."""
    from othink_mr1.models.factory import load_model

    cfg = compose_config(["model=tiny"])
    return load_model(cfg.model, str(CACHE))


@pytest.fixture
def bare_wandb_env(monkeypatch, tmp_path):
    """No WANDB_MODE, no API key, an empty netrc: a fresh machine that never ran `wandb login`."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    empty = tmp_path / "netrc"
    empty.write_text("")
    monkeypatch.setenv("NETRC", str(empty))
    from othink_mr1.loggers import resolve_wandb_mode

    resolve_wandb_mode.cache_clear()
    yield
    resolve_wandb_mode.cache_clear()


def run_smoke_sweep(out: Path, *args: str, env: dict[str, str] | None = None) -> "subprocess.CompletedProcess":
    """`python run.py sweeps=smoke ARGS` in a subprocess, its outputs under `out` (`env`: extra variables)."""
    import subprocess
    import sys

    env = dict(os.environ, OTHINK_OUTPUT_DIR=str(out), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               WANDB_MODE="offline", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "sweeps=smoke", *args], capture_output=True,
                          text=True, env=env, timeout=900)


@pytest.fixture(scope="session")
def smoke_grid(tmp_path_factory):
    """The smoke sweep run once per session, logged to wandb offline too: (process, grid folder).
    Tests that change the grid work on a copy."""
    out = tmp_path_factory.mktemp("smoke")
    process = run_smoke_sweep(out, "logger=wandb")
    return process, out / "sweeps" / "smoke"


# ------------------------------------------------------------------------------------------ the tiers
# tests/e2e/ holds every test that starts a job (runner.run, the tiny_base build), a Trainer fit or
# validate, a subprocess or a process: all marked slow, so `make test-fast` (-m "not slow") runs none.
# Everywhere else these are refused while a test (its fixtures included) runs, so the fast tier stays
# job-free as tests are added.
E2E = Path(__file__).resolve().parent / "e2e"
# tests/e2e/vllm_env/ runs vLLM for real: collected only where vllm is installed (.venv-vllm, `make vllm-env`);
# tests/e2e/test_vllm_env.py runs it there from `make test`.
import importlib.util  # noqa: E402

collect_ignore_glob = [] if importlib.util.find_spec("vllm") else ["e2e/vllm_env/*"]
_running: list[str | None] = [None]  # the node id of the test running outside tests/e2e, if any


class JobOutsideE2E(AssertionError):
    """A test outside tests/e2e started a job, a fit, a subprocess or a process."""


def in_e2e(item) -> bool:
    return E2E in Path(str(item.fspath)).resolve().parents


def pytest_collection_modifyitems(config, items):
    for item in items:
        if in_e2e(item):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _running[0] = None if in_e2e(item) else item.nodeid
    try:
        yield
    finally:
        _running[0] = None


def _refused_outside_e2e(owner, name: str, what: str) -> None:
    import functools

    original = getattr(owner, name)

    @functools.wraps(original)
    def guarded(*args, **kwargs):
        if _running[0] is not None:
            raise JobOutsideE2E(f"{_running[0]} {what}: a test that does so belongs in tests/e2e/ (the slow tier)")
        return original(*args, **kwargs)

    setattr(owner, name, guarded)


def pytest_configure(config):
    import multiprocessing.process
    import subprocess

    import pytorch_lightning as pl

    from othink_mr1 import runner
    from othink_mr1.jobs import tiny_base

    _refused_outside_e2e(subprocess.Popen, "__init__", "started a subprocess")
    _refused_outside_e2e(multiprocessing.process.BaseProcess, "start", "started a process")
    _refused_outside_e2e(pl.Trainer, "fit", "ran Trainer.fit")
    _refused_outside_e2e(pl.Trainer, "validate", "ran Trainer.validate")
    _refused_outside_e2e(runner, "run", "ran a job (runner.run)")
    _refused_outside_e2e(tiny_base, "build_tiny_base", "built tiny_base (a training job)")


# ------------------------------------------------------------------ which file a worker takes next
# Under `--dist loadfile` (make test) xdist hands out files with the most tests first, so the e2e files of a
# few minute-long tests came last and one worker ran them alone at the end. Instead a worker takes the
# heaviest file left: the files below in this order (their times on 2 cores at abbd9f4: the smoke-grid files
# together ~700 s, test_models_e2e.py ~400 s with its 400-step build, the presets ~330 s, the signalled build
# ~170 s; test_vllm_env.py builds .venv-vllm and runs the vLLM tests in it, ~7 min on a fresh clone; the FSDP
# cells ~3 min), then the rest of tests/e2e/, then the fast tests, small pieces that even out the two workers'
# ends. The three files that use the session's smoke grid form one unit, so the grid is built once. This
# changes only the order, never what runs.
SMOKE_GRID_UNIT = "smoke grid"
SMOKE_GRID_FILES = ("tests/e2e/test_sweeps.py", "tests/e2e/test_report_e2e.py", "tests/e2e/test_slurm.py")
HEAVIEST_FIRST = (SMOKE_GRID_UNIT, "tests/e2e/test_vllm_env.py", "tests/e2e/test_models_e2e.py",
                  "tests/e2e/test_presets_e2e.py", "tests/e2e/test_tiny_base_signals_e2e.py", "tests/e2e/test_fsdp.py", "tests/e2e/test_families.py",
                  "tests/e2e/test_decoding_e2e.py", "tests/e2e/test_run_folders_e2e.py",
                  "tests/e2e/test_kill_resume.py", "tests/e2e/test_tuned_sweep_e2e.py")


def _weight(scope: str) -> tuple[int, int]:
    if scope in HEAVIEST_FIRST:
        return 0, HEAVIEST_FIRST.index(scope)
    return (1 if scope.startswith("tests/e2e/") else 2), 0


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class HeaviestFileFirst(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return SMOKE_GRID_UNIT if path in SMOKE_GRID_FILES else path

        def _assign_work_unit(self, node) -> None:
            # min() keeps xdist's order (most tests first) among equal weights.
            heaviest = min(self.workqueue, key=_weight)
            self.workqueue.move_to_end(heaviest, last=False)
            super()._assign_work_unit(node)

    return HeaviestFileFirst(config, log)


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite tests/golden/*.yaml from the current configs (review the diff!)")
