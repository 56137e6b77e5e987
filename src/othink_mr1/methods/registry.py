"""The method registry: method <name> declares its descriptor (methods/method.py: Method) as METHOD in
methods/<name>_method.py, found by that file name. Adding a method adds files; nothing here is edited."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..utils.errors import ConfigError

METHODS_DIR = Path(__file__).parent
DESCRIPTOR_SUFFIX = "_method"


def method_names() -> list[str]:
    """Every method this checkout has, from its descriptor modules' file names (nothing imported)."""
    return sorted(p.stem[: -len(DESCRIPTOR_SUFFIX)] for p in METHODS_DIR.glob(f"*{DESCRIPTOR_SUFFIX}.py"))


def find_method(name: str) -> Any:
    """The descriptor of method `name`, looked up by name as Hydra resolves a `_target_`. The descriptor
    modules are torch-free and import only downwards. An unknown name is a ConfigError listing the known ones."""
    if name not in method_names():
        raise ConfigError(f"method.name='{name}': expected one of {method_names()}")
    return importlib.import_module(f"{__package__}.{name}{DESCRIPTOR_SUFFIX}").METHOD


def method_tag(method: str, kl: str) -> str:
    """The method as run names, results and tables show it: its descriptor's tag for this KL schedule
    (sft; grpo_d, grpo or grpo_kl-<schedule>: methods/grpo_method.py). A method this checkout lacks (an
    old run's, read by the report) keeps its name."""
    return find_method(method).tag(kl) if method in method_names() else method
