"""Deterministic synthetic tasks, rendered with Pillow and cached as `datasets` folders on disk.

A task's `source: synthetic_<module>` names its generator: this package's module `<module>.py`, imported by
name (like a `_target_`). A generator module defines

    make_item(split, index, seed, image_size, render=True) -> dict

one record of "train", "validation" or "test" in R1-V's schema, a pure function of its arguments; and may
define `check_config(synthetic_cfg, key)`, which raises a ValueError naming `key` (the task's `synthetic`
node, e.g. "task.synthetic") for settings its items cannot be drawn with (the config checks call it before
any data is built). Adding a synthetic task is its generator module, its conf/task/<name>.yaml, its entry in
conf/config.yaml's `tasks`, and a test; modules whose name starts with "_" are helpers, not sources.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import pkgutil
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

from ..records import DataError

log = logging.getLogger(__name__)

#: A synthetic task's `source` is this prefix and its generator module's name.
SOURCE_PREFIX = "synthetic_"

# Bump when a generator's output changes, so cached datasets are rebuilt rather than reused.
# A new source needs no bump: its name is part of the cache key, and bumping would rebuild every
# existing split (and invalidate models keyed on them).
GENERATOR_VERSION = 4


def synthetic_sources() -> list[str]:
    """Every synthetic `source`: `synthetic_<module>` for each generator module of this package, sorted."""
    return sorted(SOURCE_PREFIX + m.name for m in pkgutil.iter_modules(__path__)
                  if not m.ispkg and not m.name.startswith("_"))


def generator(source: str) -> ModuleType:
    """The generator module `source` (`synthetic_<module>`) names; a DataError listing the synthetic sources
    when there is none."""
    if source not in synthetic_sources():
        raise DataError(f"source '{source}' names no synthetic generator (a module data/synthetic/<module>.py "
                        f"for source synthetic_<module>); synthetic sources: {synthetic_sources()}")
    module = importlib.import_module(f"{__package__}.{source[len(SOURCE_PREFIX):]}")
    if not callable(getattr(module, "make_item", None)):
        raise DataError(f"source '{source}': {module.__name__} defines no make_item(split, index, seed, "
                        f"image_size, render=True)")
    return module


def generate_records(source: str, split: str, num: int, seed: int, image_size: int, render: bool = True):
    """Yield `num` records of a synthetic split (images omitted when render=False)."""
    make_item = generator(source).make_item
    for index in range(num):
        yield make_item(split, index, seed, image_size, render=render)


def synthetic_split(source: str, split: str, num: int, seed: int, image_size: int, cache_dir: str | os.PathLike):
    """The split as a `datasets.Dataset`, generated once and then loaded from `cache_dir`."""
    import datasets

    key = {"source": source, "split": split, "num": num, "seed": seed, "image_size": image_size,
           "version": GENERATOR_VERSION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cache_dir) / "datasets" / f"{source}-{split}-{num}-{digest}"
    if (folder / "dataset_info.json").exists():
        return datasets.load_from_disk(str(folder))
    log.info("generating %s/%s: %d items (%dpx) into %s", source, split, num, image_size, folder)
    ds = datasets.Dataset.from_list(list(generate_records(source, split, num, seed, image_size)))
    if "images" in ds.column_names:  # a list of images per record (counting_multi)
        ds = ds.cast_column("images", datasets.List(datasets.Image()))
    else:
        ds = ds.cast_column("image", datasets.Image())
    # Write beside the final folder and rename: concurrent jobs never see a half-written dataset.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    ds.save_to_disk(str(tmp))
    try:
        tmp.rename(folder)
    except OSError:  # another process finished first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(folder))
