"""What run.py and the tests call before composing a config: every schema in Hydra's ConfigStore (each
method's own, found through the method registry) and the run-naming resolvers."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from .config import Config, EvalConfig, LoggerConfig, ModelConfig, PathsConfig, TaskConfig, TrainerConfig
from .methods import kl_schedules
from .methods.registry import find_method, method_names
from .naming import register_resolvers


def register_configs() -> None:
    """Store the schemas so the YAML options can name them in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="schema_config", node=Config)
    # In a group of their own, not in the groups they type, so `task=<typo>` lists only real options.
    for name, node in (("task", TaskConfig), ("model", ModelConfig), ("trainer", TrainerConfig),
                       ("logger", LoggerConfig), ("paths", PathsConfig), ("eval", EvalConfig)):
        cs.store(group="schema", name=name, node=node)
    for name, schedule in kl_schedules.KL_SCHEDULES.items():  # each KL schedule's schema, registered beside its class
        cs.store(group="schema", name=f"kl_{name}", node=schedule.Config)
    from hydra.utils import get_object

    for name in method_names():  # each method names its own schema (`- /schema/<method>@_here_`)
        schema = find_method(name).schema
        if schema is not None:
            cs.store(group="schema", name=name, node=get_object(schema))
    register_resolvers()
