"""Deterministic synthetic tasks, rendered with Pillow and cached as `datasets` folders on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from . import counting, counting_multi, geometry

log = logging.getLogger(__name__)

# Bump when a generator's output changes, so cached datasets are rebuilt rather than reused.
# A new source needs no bump: its name is part of the cache key, and bumping would rebuild every
# existing split (and invalidate models keyed on them).
GENERATOR_VERSION = 4

GENERATORS: dict[str, Callable[..., dict]] = {
    "synthetic_counting": counting.make_item,
    "synthetic_geometry": geometry.make_item,
    "synthetic_counting_multi": counting_multi.make_item,
}


def generate_records(source: str, split: str, num: int, seed: int, image_size: int, render: bool = True):
    """Yield `num` records of a synthetic split (images omitted when render=False)."""
    make_item = GENERATORS[source]
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
