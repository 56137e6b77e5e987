"""User-facing errors: bad config, bad data, a model that cannot load, a run that exists.

run.py prints these as one clear line (no traceback) and exits with status 2; each message names
the config key, file, row or directory at fault.
"""

from __future__ import annotations

from ..data.records import DataError


class ConfigError(ValueError):
    """A composed config that is well-typed but inconsistent; the message names the key."""


class ModelError(ValueError):
    """A model config or checkpoint that cannot be loaded; the message names the key or path."""


class RunExistsError(RuntimeError):
    """The run directory already holds a finished run."""


class RunLockedError(RuntimeError):
    """Another live process holds the run directory (its run.lock); nothing was touched."""


USER_ERRORS = (ConfigError, DataError, ModelError, RunExistsError, RunLockedError)
