"""The tiny_base build: `tiny` after a short pretraining on both synthetic tasks, saved as a model folder.

It stands in for an instruct model: it answers in the `<think> ... </think> <answer> ... </answer>`
format and is right part of the time, so later methods have room both to improve it and to degrade
it. The pretraining data are the synthetic train distributions drawn with their own seed (so they
are not the task's train split), with short worked solutions as targets and R1-V's prompt templates
mixed, so the model does not hinge on one wording. After training the build scores both synthetic
test splits with the evaluation harness and records the result in `build_report.json`.

A job, not a model loader: it trains with the SFT module and evaluates with the harness, so it lives
above methods/. models.factory only loads and checks folders. The project ships the folder this job built
(models/tiny_base/, its manifest.json names the commit and machine): the build follows the CPU's kernel path,
so a rebuild on another CPU gives another model, and nothing builds it on first use. Build one explicitly:

    python -m othink_mr1.jobs.tiny_base --out outputs/tiny_base [model.base_build.steps=400 ...]
    python run.py model=tiny_base model.path=outputs/tiny_base [model.base_build.steps=400 ...]

A SIGTERM or SIGINT stops the build at the end of the optimizer step in flight, keeps its training state in
<parent of --out>/.<name of --out>.partial/ (last.ckpt: weights, optimizer, schedule, data position, random
state) and exits with 128 + the signal's number (143, 130), saying so; the same command continues from that
step and ends with the weights an uninterrupted build gives (tests/e2e/test_tiny_base_signals_e2e.py). A
signal after training (during the evaluation) keeps the trained state: the same command then only redoes the
evaluation. Nothing is written to --out, and no success is printed, unless the build finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.utilities.seed import isolate_rng
from torch.utils.data import ConcatDataset, DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from ..config import SFTConfig, SyntheticDataConfig
from ..data.collate import PromptCollator, SFTCollator
from ..data.records import Example, load_image
from ..data.sampling import StreamPosition
from ..data.synthetic import counting, geometry, synthetic_split
from ..data.tasks import TaskSplit, load_split
from ..evaluation.harness import EvalSpec, effective_max_new_tokens, format_table, generate
from ..methods.evaluation_module import EvaluationModule
from ..methods.sft import SFTModule
from ..models.factory import load_local, tiny_base_build_config, tiny_folder
from ..models.manifest import config_differences, write_manifest
from ..models.tiny import R1V_SUFFIXES
from ..rewards.base import DEFAULT_PROTOCOL
from ..rewards.scorers import get_scorer
from ..utils.checkout import checkout_root, conf_dir
from ..utils.checkpoints import AtomicCheckpointIO, LastCheckpoint
from ..utils.errors import USER_ERRORS, ConfigError, RunLockedError
from ..utils.machine import machine_info
from ..utils.preemption import Terminated, TerminationCheckpoint, terminate_on_signals
from ..utils.progress import check_every_s, progress_output
from ..utils.run_dir import LOCK_FILE, RunLock, describe_holder, git_state, write_json

log = logging.getLogger(__name__)

# The pretraining draws differ from every task's train split (those use synthetic.seed, 0 by default).
PRETRAIN_SEED_OFFSET = 1_000_003
ACCEPTANCE_TASKS = ("counting", "geometry")
# The build's accuracy window is checked at the tiny models' own generation cap (model/tiny.yaml), not at
# the cap of whichever run happens to trigger the build: the cache key ignores the cap, so a run with
# model.max_new_tokens_cap=24 must not record (or fail) a window measured on truncated answers.
BUILD_EVAL_MAX_NEW_TOKENS = 64
# Pretraining images are drawn at the synthetic generators' default size, not at conf/task/*.yaml's
# synthetic.image_size (also 112 today): the cache key covers the model config and GENERATOR_VERSION
# only, so reading the task files here could change the built weights without changing the key.
PRETRAIN_IMAGE_SIZE = SyntheticDataConfig().image_size
# The build trains with this many torch threads, whatever the caller's: the thread count changes the order of
# float reductions, and over 575 steps that gives another model (measured at commit b3f1f98: built with 1 thread
# tiny_base scored 51.5% on counting, with 2 threads 25.0%). So does the CPU's kernel path (measured at 4904ebf on
# one AVX-512 machine: model.safetensors 421c8aee... by default, adee8791... under the AVX2 caps), which is why
# the project ships the folder rather than building it. 2 is the core count of the machine that built it.
BUILD_NUM_THREADS = 2
# An interrupted build's training state: <parent of --out>/.<name>.partial/ holds last.ckpt (LastCheckpoint's
# file) and partial.json (the build config it belongs to, and each attempt), while a build of that --out runs
# or after one was stopped by a signal; a finished build removes it.
PARTIAL_CHECKPOINT = "last.ckpt"
PARTIAL_RECORD = "partial.json"


def synthetic_task(name: str) -> Any:
    """`tasks.<name>` as the primary config composes it with no overrides: the task the acceptance check
    scores, the same node `task=<name>` gives (Hydra composes it; nothing here reads the task files).

    Composed afresh, not taken from the triggering run's `tasks.*`: the cache key ignores task settings, so a
    run with shrunk splits or another prompt must not record (or fail) the window on its own variant."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside run.py's app or a sweep's job: its own config search path
        return compose("config").tasks[name]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config").tasks[name]


def build_folder(model_cfg: Any, out: str | Path, cache_dir: str | Path,
                 progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build tiny_base for `model_cfg` into the new folder `out` (refused if it exists), with its manifest.json:
    the build config, the commit and machine, each file's sha256. Built in a temporary sibling and renamed, so
    an interrupted build leaves no folder that looks finished. Returns the manifest.

    The build's training state lives in `partial_folder(out)`, locked for the build's life (a second build of
    the same --out stops at once). SIGTERM and SIGINT raise Terminated, whose `step` and `checkpoint` say what
    that folder keeps (None: nothing); a later build of the same --out and config continues from it.
    `progress`: utils.progress.progress_output's arguments (enabled, every_s)."""
    out = Path(out)
    refuse_existing(out)
    build_config = tiny_base_build_config(model_cfg)  # refuses a config without model.base_build up front
    git = git_state(checkout_root())  # before the build's temporary folder makes the checkout look dirty
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_folder(out)
    attempt = {"commit": git["sha"], "dirty": git["dirty"], "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "command": " ".join(["python -m othink_mr1.jobs.tiny_base", *sys.argv[1:]])}
    with terminate_on_signals(), locked_partial(partial, out):
        refuse_existing(out)  # a build of the same --out may have finished while this one waited for nothing
        try:
            earlier = claim_partial(partial, out, build_config, attempt)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
            try:
                # Restoring the global generators keeps a caller's later draws as they would be without the
                # build. CPU only: the build trains on the CPU.
                with isolate_rng(include_cuda=False), torch_threads(BUILD_NUM_THREADS):
                    machine = machine_info()  # inside the block: the thread count the build ran with
                    build_tiny_base(model_cfg, tiny_folder(model_cfg, cache_dir), tmp, cache_dir, partial=partial,
                                    progress=progress)
                built_at = {**attempt, "machine": machine}
                if earlier:  # continued from a checkpoint: the attempts before, each with the step it stopped at
                    built_at["interrupted"] = earlier
                manifest = write_manifest(tmp, build_config, built_at)
                tmp.rename(out)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except Terminated as exc:
            raise kept_after_signal(exc, partial, model_cfg.base_build.steps) from None
        finally:
            if out.exists() or not (partial / PARTIAL_CHECKPOINT).is_file():  # finished, or nothing worth keeping
                shutil.rmtree(partial, ignore_errors=True)
    return manifest


def refuse_existing(out: Path) -> None:
    if out.exists():
        raise ConfigError(f"--out {out} already exists: a build never writes into an existing folder (it may hold "
                          "a model runs were scored with); pick another --out or move that folder away")


def partial_folder(out: str | Path) -> Path:
    """Where a build of `out` keeps its training state until it finishes: a hidden sibling of `out`."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


@contextmanager
def locked_partial(partial: Path, out: Path) -> Iterator[None]:
    """`partial` locked for the block (utils/run_dir.RunLock: an flock the kernel drops however the holder
    dies), so two builds of one --out never write the same checkpoint; the second stops at once."""
    lock = RunLock(partial)
    try:
        lock.acquire()
    except RunLockedError:
        try:
            holder = json.loads(lock.path.read_text())
        except (OSError, ValueError):
            raise  # not a live holder's lock (e.g. a filesystem without locks): RunLock's own message
        raise RunLockedError(f"--out {out}: another build of it is running ({describe_holder(holder)}) and holds "
                             f"{partial}; nothing was changed. Wait for it to end, or pick another --out") from None
    try:
        yield
    finally:
        lock.release()


def claim_partial(partial: Path, out: Path, build_config: dict[str, Any], attempt: dict[str, Any]) -> list[dict]:
    """Record this attempt in `partial`/partial.json and return the earlier ones (each with the step it stopped
    at): [] for a fresh build. A checkpoint of another build config is refused, not overwritten."""
    record_path, checkpoint = partial / PARTIAL_RECORD, partial / PARTIAL_CHECKPOINT
    record = None
    if checkpoint.is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        differences = config_differences(record["build_config"], build_config)
        if differences:
            raise ConfigError(
                f"{partial} holds an interrupted build of --out {out} from another config ({'; '.join(differences)}): "
                f"run the build with the overrides it was started with to continue it (its command: "
                f"{record['attempts'][-1]['command']}), or delete {partial} to start this one")
        step = checkpoint_step(checkpoint)
        print(f"[tiny_base] continuing the build of {out} stopped at step {step} of "
              f"{build_config['base_build']['steps']} (training state in {partial})", flush=True)
        if record["attempts"][-1]["commit"] != attempt["commit"]:
            log.warning("the build was started at commit %s and continues at %s: if the build code changed between "
                        "them, the weights differ from an uninterrupted build's", record["attempts"][-1]["commit"],
                        attempt["commit"])
    else:  # nothing to continue from (leftovers of a build killed before its first save): start afresh
        for stale in partial.iterdir():
            if stale.name == LOCK_FILE:
                continue
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        record = {"build_config": build_config, "attempts": []}
    earlier = list(record["attempts"])
    record["attempts"].append(attempt)
    write_json(record_path, record)
    return earlier


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a build checkpoint was written at."""
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"])
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise ConfigError(f"{checkpoint}: unreadable build checkpoint ({type(exc).__name__}: {exc}); delete "
                          f"{checkpoint.parent} to start the build over") from None


def kept_after_signal(exc: Terminated, partial: Path, steps: int) -> Terminated:
    """`exc` with the step and checkpoint `partial` keeps (none: nothing kept), noted in partial.json."""
    checkpoint = partial / PARTIAL_CHECKPOINT
    step = exc.step if exc.checkpoint else (checkpoint_step(checkpoint) if checkpoint.is_file() else None)
    record_path = partial / PARTIAL_RECORD
    if step is not None and record_path.is_file():
        record = json.loads(record_path.read_text())
        record["attempts"][-1].update(stopped_at_step=step, signal=exc.signal_name)
        write_json(record_path, record)
    return Terminated(exc.signum, step, steps, str(checkpoint) if step is not None else None)


def terminated_message(exc: Terminated, out: str | Path, command: str) -> str:
    """What a signal left, and the command that goes on from there."""
    partial = partial_folder(out)
    head = f"[tiny_base] terminated by {exc.signal_name}: nothing was written to {out}"
    if exc.checkpoint is None:
        return f"{head} and nothing was kept (no training step was saved); start again with: {command}"
    if exc.step >= exc.max_steps:
        return (f"{head}. Training had finished ({exc.step} of {exc.max_steps} steps) and is kept in {partial}; the "
                f"same command redoes only the evaluation and writes the folder: {command}")
    return (f"{head}. The training state at step {exc.step} of {exc.max_steps} is kept in {partial}; the same "
            f"command continues from step {exc.step}: {command} (or delete {partial} to start over)")


def main(argv: list[str] | None = None) -> int:
    """`python -m othink_mr1.jobs.tiny_base --out DIR [overrides]`: build a tiny_base folder."""
    parser = argparse.ArgumentParser(
        prog="python -m othink_mr1.jobs.tiny_base",
        description="Build tiny_base (the tiny model after a short pretraining on both synthetic tasks) into a new "
                    "folder with its manifest.json. Use it with: python run.py model.path=DIR [the same overrides].")
    parser.add_argument("--out", required=True, help="the new folder (refused if it exists)")
    parser.add_argument("--cache", default=None, help="datasets and tiny-model cache (default: paths.cache_dir)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. model.base_build.steps=400")
    args = parser.parse_args(argv)
    os.environ.setdefault("OTHINK_ROOT", str(checkout_root()))  # paths.* as run.py composes them
    from hydra import compose, initialize_config_dir

    from ..hydra_setup import register_configs
    from ..utils.quiet import quiet_third_party

    register_configs()
    quiet_third_party()
    command = shlex.join(["python", "-m", "othink_mr1.jobs.tiny_base", *(sys.argv[1:] if argv is None else argv)])
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=["model=tiny_base", *args.overrides])
        if cfg.model.source != "tiny_base":
            raise ConfigError(f"model.source={cfg.model.source}: this job builds source tiny_base only")
        # The run's progress settings (trainer.enable_progress_bar, trainer.progress_every_s) apply to the build.
        progress = {"enabled": cfg.trainer.enable_progress_bar, "every_s": check_every_s(cfg.trainer.progress_every_s)}
        manifest = build_folder(cfg.model, args.out, args.cache or cfg.paths.cache_dir, progress)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except Terminated as exc:
        print(terminated_message(exc, args.out, command), file=sys.stderr, flush=True)
        return exc.exit_code  # 128 + the signal's number, as a shell reports a process killed by it
    print(f"[tiny_base] wrote {args.out} (model.safetensors sha256 {manifest['files']['model.safetensors']['sha256']})"
          f"; use it with: python run.py model.path={args.out} {' '.join(args.overrides)}".rstrip(), flush=True)
    return 0


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to `count` inside the block, and the caller's restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class PretrainingSet(TorchDataset):
    """Synthetic train items with worked-solution targets and a randomly chosen R1-V template."""

    def __init__(self, name: str, ds: Any, seed: int):
        self.name = name
        self.ds = ds
        self.seed = seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> Example:
        row = self.ds[index]
        rng = random.Random(f"tiny_base/{self.name}/{self.seed}/{index}")
        if self.name == "counting":
            answer = row["solution"].split()[1]
            thinking = counting.counting_thinking(int(answer), rng)
        else:
            _, problem = geometry.make_problem("train", index, self.seed)
            answer, thinking = problem.answer, problem.thinking
        question = f"{row['problem']}{rng.choice(R1V_SUFFIXES)}"
        return Example(images=[load_image(row["image"])], question=question, answer=answer,
                       target=f"<think> {thinking} </think> <answer> {answer} </answer>", index=index)


class PretrainingBatches(Sampler[list[int]]):
    """The build's `num_batches` batches, from batch `position.consumed` on (read when iteration starts).

    The order is the one every tiny_base so far was built with (models/tiny_base included): epoch after
    epoch of the set as DataLoader(shuffle=True, generator=...) shuffles it, short last batch included. Here
    it is one stream over all epochs drawn from that generator in the same order, so a build continued from
    a checkpoint at batch j gets batch j of the uninterrupted build, whatever the epoch. Per epoch torch's
    loader draws: its iterator's base seed (one int64; in the first epoch this loader's own iterator draws
    it), the epoch's permutation (RandomSampler), and one more permutation when RandomSampler runs out (its
    remainder, empty). tests/models/test_tiny_base_build.py holds the batches against torch's loader."""

    def __init__(self, dataset_len: int, batch_size: int, num_batches: int, generator: torch.Generator,
                 position: StreamPosition):
        self.dataset_len, self.batch_size, self.num_batches = dataset_len, batch_size, num_batches
        self.generator, self.position = generator, position

    def __iter__(self) -> Iterator[list[int]]:
        start, size = self.position.consumed, self.batch_size
        per_epoch = math.ceil(self.dataset_len / size)
        for epoch in range(math.ceil(self.num_batches / per_epoch)):
            if epoch:
                torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # the epoch's iterator seed
            order = torch.randperm(self.dataset_len, generator=self.generator).tolist()
            torch.randperm(self.dataset_len, generator=self.generator)  # RandomSampler's (empty) remainder
            for b in range(per_epoch):
                j = epoch * per_epoch + b
                if j >= self.num_batches:
                    return
                if j >= start:
                    yield order[b * size:(b + 1) * size]

    def __len__(self) -> int:
        return self.num_batches


class PretrainingLoader(DataLoader):
    """The build's training loader (PretrainingBatches), with Lightning's `state_dict` / `load_state_dict`: a
    checkpoint holds how many batches training consumed (SFTModule advances `position`)."""

    def __init__(self, dataset: TorchDataset, batch_size: int, num_batches: int, seed: int,
                 collate_fn: Any):
        self.position = StreamPosition()
        generator = torch.Generator().manual_seed(seed)
        super().__init__(dataset, batch_sampler=PretrainingBatches(len(dataset), batch_size, num_batches, generator,
                                                                   self.position),
                         collate_fn=collate_fn, generator=generator)

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.position.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position.consumed = int(state["consumed"])


def build_tiny_base(model_cfg: Any, tiny_dir: Path, out_dir: Path, cache_dir: str | Path, *,
                    partial: Path | None = None, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pretrain the tiny model saved in `tiny_dir`, check it, and save it into `out_dir`. With `partial` (a
    folder), training continues from its last.ckpt if it has one, a signal checkpoints the step in flight
    there, and the trained state is saved there before the evaluation. `progress`: progress_output's arguments."""
    build = model_cfg.base_build
    missing = [name for name in ACCEPTANCE_TASKS if name not in build.num_train]
    if missing:
        raise ConfigError(f"model.base_build.num_train={dict(build.num_train)}: no item count for {missing} (the build "
                          f"pretrains on {list(ACCEPTANCE_TASKS)})")
    started = time.time()
    print(f"[tiny_base] building: {build.steps} steps on both synthetic tasks",
          flush=True)
    model, processor = load_local(tiny_dir, min_pixels=model_cfg.min_pixels, max_pixels=model_cfg.max_pixels)
    seed = build.seed + PRETRAIN_SEED_OFFSET
    parts = [
        PretrainingSet(name, synthetic_split(f"synthetic_{name}", "train", build.num_train[name], seed,
                                             PRETRAIN_IMAGE_SIZE, cache_dir), seed)
        for name in ACCEPTANCE_TASKS
    ]
    method = OmegaConf.structured(SFTConfig(name="tiny_base_pretraining", lr=build.lr, warmup_ratio=build.warmup_ratio,
                                            lr_schedule="cosine", batch_size=build.batch_size, max_grad_norm=1.0,
                                            accumulate_grad_batches=1, epochs=1, target="auto",
                                            loss_on="assistant"))
    loader = PretrainingLoader(ConcatDataset(parts), build.batch_size, build.steps, build.seed,
                               SFTCollator(processor, "{question}", "assistant"))
    module = SFTModule(model, processor, method, total_steps=build.steps, data_position=loader.position)
    bar, callbacks = progress_output(**(progress or {}))
    resume_from = None
    if partial is not None:
        # The final state once at the end of training, and the step in flight on a signal (then Terminated).
        last = LastCheckpoint(partial, every_n_train_steps=None)
        callbacks = [*callbacks, last, TerminationCheckpoint(last, partial)]  # progress first: a stopped step's line
        if (partial / PARTIAL_CHECKPOINT).is_file():
            resume_from = str(partial / PARTIAL_CHECKPOINT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(build.seed)  # a continued build gets the checkpoint's random state instead
        # One epoch spanning all steps (PretrainingLoader), so a checkpoint anywhere resumes exactly.
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=build.steps, max_epochs=1, logger=False,
                             enable_checkpointing=partial is not None, gradient_clip_val=1.0,
                             enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=10,
                             enable_progress_bar=bar, callbacks=callbacks, plugins=[AtomicCheckpointIO()],
                             use_distributed_sampler=False)
        trainer.fit(module, train_dataloaders=loader, ckpt_path=resume_from)
    train_seconds = time.time() - started

    summaries = evaluate_synthetic(model, processor, cache_dir, BUILD_EVAL_MAX_NEW_TOKENS, progress)
    accuracy = {name: summaries[name]["accuracy"] for name in ACCEPTANCE_TASKS}
    headroom = {name: sampling_headroom(model, processor, synthetic_task(name), cache_dir) for name in ACCEPTANCE_TASKS}
    in_window = all(build.min_accuracy <= a <= build.max_accuracy for a in accuracy.values())
    report = {
        "accuracy": accuracy,
        "format_rate": {name: summaries[name]["format_rate"] for name in ACCEPTANCE_TASKS},
        "sampling_headroom": headroom,
        "window": [build.min_accuracy, build.max_accuracy],
        "in_window": in_window,
        "torch_threads": torch.get_num_threads(),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "model": OmegaConf.to_container(model_cfg, resolve=True),
    }
    print("[tiny_base] test accuracy after pretraining:\n" + format_table({"tiny_base": summaries}, list(ACCEPTANCE_TASKS)),
          flush=True)
    for name, h in headroom.items():
        print(f"[tiny_base] {name}: sampling {h['prompts']} train prompts x {h['group_size']} at temperature "
              f"{h['temperature']}: mean accuracy {h['mean_accuracy']:.3f}, pass@{h['group_size']} "
              f"{h['pass_at_group']:.3f}, groups with zero reward variance {h['zero_variance_groups']:.3f}", flush=True)
    if not in_window:
        log.warning("tiny_base accuracy %s is outside the window [%s, %s]: later methods may have no room to "
                    "improve or degrade; change model.base_build.steps", accuracy, build.min_accuracy, build.max_accuracy)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    (out_dir / "build_report.json").write_text(json.dumps(report, indent=2))
    return report


def evaluate_synthetic(model: Any, processor: Any, cache_dir: str | Path, cap: int | None,
                       progress: dict[str, Any] | None = None) -> dict[str, dict]:
    """Score `model` on the default synthetic test splits with the shared harness (`progress`:
    progress_output's arguments)."""
    tasks = {name: synthetic_task(name) for name in ACCEPTANCE_TASKS}
    spec = EvalSpec(scorers={n: t.scorer for n, t in tasks.items()},
                    max_new_tokens={n: effective_max_new_tokens(t.max_new_tokens, cap) for n, t in tasks.items()},
                    protocol=DEFAULT_PROTOCOL)
    loaders = [DataLoader(TaskSplit(t, "test", load_split(t, "test", str(cache_dir))), batch_size=32,
                          collate_fn=PromptCollator(processor, t.prompt)) for t in tasks.values()]
    module = EvaluationModule(model, processor, eval_spec=spec, eval_names=list(tasks))
    bar, callbacks = progress_output(**(progress or {}))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=bar, callbacks=callbacks)
    trainer.validate(module, dataloaders=loaders, verbose=False)
    return module.last_eval


# What GRPO will see from the base: groups of completions sampled on train prompts, as in a GRPO step.
HEADROOM_PROMPTS = 48
HEADROOM_GROUP = 8
HEADROOM_TEMPERATURE = 1.0


@torch.no_grad()
def sampling_headroom(model: Any, processor: Any, task: Any, cache_dir: str | Path, prompts: int = HEADROOM_PROMPTS,
                      group: int = HEADROOM_GROUP, temperature: float = HEADROOM_TEMPERATURE, seed: int = 0) -> dict[str, Any]:
    """Room for GRPO on `task`: sample `group` completions for each of `prompts` train prompts (the task's own
    train split, its seeded few-shot subset of that size) and score each with the task's accuracy verdict.
    `mean_accuracy` is the share of correct completions, `pass_at_group` the share of prompts with at least
    one, and `zero_variance_groups` the share whose completions all score the same (no GRPO advantage, no
    learning signal)."""
    subset = OmegaConf.merge(task, {"train_size": prompts})  # loads and checks only these rows
    split = TaskSplit(subset, "train", load_split(subset, "train", str(cache_dir)))
    examples = [split[i] for i in range(len(split))]
    scorer = get_scorer(task.scorer, DEFAULT_PROTOCOL)
    collate = PromptCollator(processor, task.prompt)
    cap = effective_max_new_tokens(task.max_new_tokens, BUILD_EVAL_MAX_NEW_TOKENS)
    sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=group)
    was_training = model.training
    model.eval()
    groups: list[list[bool]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(examples), 16):
            chunk = examples[start:start + 16]
            texts, _ = generate(model, processor, collate(chunk), cap, sampling)
            for i, example in enumerate(chunk):
                groups.append([scorer.score(t, example.answer).correct for t in texts[i * group:(i + 1) * group]])
    model.train(was_training)
    n = len(groups)
    return {
        "prompts": n, "group_size": group, "temperature": temperature, "max_new_tokens": cap,
        "mean_accuracy": round(sum(map(sum, groups)) / (n * group), 4),
        "pass_at_group": round(sum(any(g) for g in groups) / n, 4),
        "zero_variance_groups": round(sum(len(set(g)) == 1 for g in groups) / n, 4),
    }


if __name__ == "__main__":
    sys.exit(main())
