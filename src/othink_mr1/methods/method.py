"""What a training method declares about itself for the runner, the budget, the data module, the checks
and run names, so that none of them names a method.

Method `<name>` (method.name, set by conf/method/<name>.yaml) declares `METHOD`, a `Method`, in
`methods/<name>_method.py`, beside its LightningModule; methods/registry.find_method finds it by that name.
These descriptor modules stay torch-free and import nothing above utils/ at module level: run naming
(naming.py) reads a method's tag from them, the config registration (hydra_setup.py) its schema, and the
report, which never loads torch, reads run names through naming. What needs more (the LightningModule, the
collator, the owners of the checks) they import when a run calls for it. Adding a method adds files and
edits none.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..utils.errors import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    # The LightningModule class by dotted path (imported only when a run trains); built with its
    # from_config(cfg, model, processor, **common).
    module: str
    # The structured config conf/method/<name>.yaml starts from (`- /schema/<name>@_here_`), by dotted
    # path; None for a method whose yaml extends another method's.
    schema: str | None
    # method config -> the collator class (or partial) for training micro-batches, called as
    # collator(processor, template, split=...).
    train_collator: Callable[[Any], Callable[..., Any]]
    # method config -> optimizer steps each batch of accumulate_grad_batches micro-batches is used for
    # (GRPO's num_iterations; 1 when every micro-batch is seen once).
    updates_per_batch: Callable[[Any], int]
    # (method config, Budget, the run's steps and lr as text, kl name) -> the start-up budget line.
    budget_line: Callable[[Any, Any, str, str], str]
    # The composed config -> None, or a ConfigError naming the key: the method's own settings (the
    # settings every method shares are config_checks.check_method's).
    check: Callable[[Any], None]
    # kl schedule name -> the method as run names, results.json and the report's tables name it.
    tag: Callable[[str], str]
    # method config -> pl.Trainer arguments of its own (automatic optimization's accumulation and
    # clipping); {} for a module that optimizes by hand.
    trainer_settings: Callable[[Any], dict[str, Any]]


@contextlib.contextmanager
def config_error(prefix: str = "") -> Iterator[None]:
    """A setting refused by the module that owns it (which states the check once, for its own callers
    too) becomes a ConfigError with the same message."""
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{prefix}{exc}") from None
