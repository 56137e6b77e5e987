"""Run naming: what a run is (run_identity: the same keys in results.json, error.json, the wandb config and
the report) and the resolvers the config's run names use (${suffix:...}, ${method_tag:...}, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from .methods.registry import method_tag


def _suffix(value: Any) -> str:
    """`${suffix:${tag}}` -> "" for an empty tag, "_<tag>" otherwise."""
    text = "" if value is None else str(value)
    return f"_{text}" if text else ""


def run_identity(cfg: Any) -> dict[str, Any]:
    """What a run is, as results.json, error.json, the wandb config and the report name it: the same
    keys everywhere, so a report built from run directories and one built from wandb agree. `cfg` is
    the composed config or a run's config.yaml loaded as a dict (older ones may lack `sweep`/`cell`)."""
    train = cfg.get("mode") == "train"
    section = lambda key: cfg.get(key) or {}  # noqa: E731
    return {
        "run_name": cfg.get("run_name"), "sweep": cfg.get("sweep") or None, "cell": cfg.get("cell") or None,
        "mode": cfg.get("mode"), "task": section("task").get("name") if train else None,
        "method": method_tag(section("method").get("name"), section("kl").get("name")) if train else None,
        "kl": section("kl").get("name") if train else None, "model": section("model").get("name"),
        "seed": cfg.get("seed"), "tag": cfg.get("tag") or None,
    }


def _ckpt_tag(value: Any) -> str:
    """A short, path-free label for a checkpoint, used in eval-mode run names."""
    if value in (None, ""):
        return ""
    p = Path(str(value))
    # outputs/runs/<run>/checkpoints/last.ckpt -> <run>-last ; a model folder -> its name.
    if p.suffix == ".ckpt" and p.parent.name == "checkpoints":
        return f"_{p.parent.parent.name}-{p.stem}"
    return f"_{p.stem if p.suffix else p.name}"


def _path_name(value: Any) -> str:
    """A model's label from its hub id or folder: the last path component (Qwen/Qwen2-VL-2B-Instruct ->
    Qwen2-VL-2B-Instruct), so run names say which model ran without holding a path."""
    return str(value).rstrip("/").replace("\\", "/").rsplit("/", 1)[-1] if value not in (None, "") else "pretrained"


def _split_tag(split: Any) -> str:
    """Run names of runs scored on the validation split end in _validation (test runs keep their names), so
    a tuning run never takes, or skips as finished, the directory of the run it tunes for."""
    return "" if str(split) == "test" else f"_{split}"


def register_resolvers() -> None:
    for name, fn in (("suffix", _suffix), ("ckpt_tag", _ckpt_tag), ("method_tag", method_tag), ("path_name", _path_name),
                     ("split_tag", _split_tag)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
