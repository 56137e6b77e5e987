"""The grid files in sweeps/: every cell grid gets its shared settings from sweeps/_base/grid.yaml and
states only its own name, params and cells; the composed config carries exactly what the files say."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import CONF, ROOT
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.othink_mr1_sweeper import cell_sweeper

SWEEPS = ROOT / "sweeps"
BASE = SWEEPS / "_base" / "grid.yaml"
# How a grid names the base in its defaults list, and the choice Hydra records for it.
BASE_ENTRY = {"_base@_global_": "grid"}
BASE_CHOICE = "sweeps/_base@_global_"
# Grids that are not cell grids (Hydra's plain sweeper) and so do not include the base.
PLAIN_SWEEPS = {"seeds"}
GRIDS = sorted(p.stem for p in SWEEPS.glob("*.yaml") if p.stem not in PLAIN_SWEEPS)


def read(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def compose_sweep(name: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"sweeps={name}"], return_hydra_config=True)


def parent_grids(spec: dict) -> list[str]:
    """The other grids a grid file builds on (smoke: paper_grid), named as plain defaults entries."""
    return [d for d in spec.get("defaults", []) if isinstance(d, str) and d != "_self_"]


def includes_base(name: str) -> bool:
    spec = read(SWEEPS / f"{name}.yaml")
    return BASE_ENTRY in spec.get("defaults", []) or any(includes_base(p) for p in parent_grids(spec))


def declared_sweeper(name: str) -> dict:
    """params and cells as the grid file (and the grids it builds on) state them: a grid's own params
    and cells replace its parent's of the same name, new ones come after (OmegaConf's merge)."""
    spec = read(SWEEPS / f"{name}.yaml")
    params: dict = {}
    cells: dict = {}
    for parent in parent_grids(spec):
        inherited = declared_sweeper(parent)
        params.update(inherited["params"])
        cells.update(inherited["cells"])
    own = spec.get("hydra", {}).get("sweeper", {})
    params.update({k: str(v) for k, v in (own.get("params") or {}).items()})
    cells.update(own.get("cells") or {})
    return {"params": params, "cells": cells}


def test_the_base_is_no_sweeps_option():
    # The base sits in a subfolder: never one of the `sweeps=NAME` options; every grid file is one.
    assert BASE.exists() and "_base" not in {p.stem for p in SWEEPS.glob("*.yaml")}
    assert "paper_grid" in GRIDS and "smoke" in GRIDS


def test_the_base_holds_the_shared_settings_and_is_no_grid():
    base = read(BASE)
    assert base["defaults"] == [{"override /hydra/sweeper": "cells"}]
    assert base["resume"] == "auto"
    assert base["eval"] == {"row_zero": False}
    assert base["hydra"] == {"mode": "MULTIRUN", "sweep": {"dir": "${paths.output_dir}/sweeps/${sweep}"}}
    assert "sweep" not in base  # each grid names itself
    assert BASE.read_text().startswith("# @package _global_\n")


@pytest.mark.parametrize("name", GRIDS)
def test_grid_file_states_only_its_deltas(name):
    spec = read(SWEEPS / f"{name}.yaml")
    assert includes_base(name)
    assert "resume" not in spec
    assert "row_zero" not in spec.get("eval", {})
    assert "mode" not in spec.get("hydra", {}) and "sweep" not in spec.get("hydra", {})
    assert not any(isinstance(d, dict) and "override /hydra/sweeper" in d for d in spec.get("defaults", []))
    assert spec["sweep"] == name
    assert "sweeps/README.md" in (SWEEPS / f"{name}.yaml").read_text()


@pytest.mark.parametrize("name", GRIDS)
def test_composed_grid_has_the_base_settings_and_its_own_params_and_cells(name):
    cfg = compose_sweep(name)
    hydra = cfg.hydra
    # From the base.
    assert hydra.runtime.choices[BASE_CHOICE] == "grid"
    assert hydra.runtime.choices["hydra/sweeper"] == "cells"
    assert hydra.sweeper._target_ == "hydra_plugins.othink_mr1_sweeper.cell_sweeper.CellSweeper"
    assert str(hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.resume == "auto"
    assert cfg.eval.row_zero is False
    assert hydra.sweep.dir == f"{cfg.paths.output_dir}/sweeps/{name}"
    # From the grid file.
    assert cfg.sweep == name
    declared = declared_sweeper(name)
    assert OmegaConf.to_container(hydra.sweeper.params) == declared["params"]
    cells = OmegaConf.to_container(hydra.sweeper.cells)
    assert cells == declared["cells"]
    assert list(cells) == list(declared["cells"])  # cell order is job order
    assert cells["base"] == ["mode=eval"]  # every grid has its row zero


def test_plain_sweep_is_untouched_by_the_base():
    cfg = compose_sweep("seeds")
    assert BASE_CHOICE not in cfg.hydra.runtime.choices
    assert cfg.hydra.runtime.choices["hydra/sweeper"] == "basic"
    assert cfg.resume is False and cfg.eval.row_zero is True
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def test_selecting_the_base_alone_stops_with_an_error_that_says_so():
    cfg = compose_sweep("_base/grid")
    assert cfg.hydra.sweeper.cells is None
    with pytest.raises(HydraException, match="only their shared base"):
        cell_sweeper.CellSweeper(params=None, cells=cfg.hydra.sweeper.cells)


def test_every_optional_defaults_entry_names_an_existing_group():
    """A dead `optional GROUP: ...` entry (a group with no folder) would be skipped silently."""
    optional = {}
    for path in sorted(CONF.glob("**/*.yaml")):
        for entry in read(path).get("defaults") or []:
            key = next(iter(entry)) if isinstance(entry, dict) else ""
            if key.startswith("optional "):
                group = key.removeprefix("optional ").split("@")[0]
                base = CONF if group.startswith("/") else path.parent
                optional[f"{path.relative_to(CONF)}: {key}"] = base / group.lstrip("/")
    assert sorted(optional) == ["method/grpo.yaml: optional /budget/grpo@_global_",
                                "method/sft.yaml: optional /budget/sft@_global_"]
    for entry, folder in optional.items():
        assert folder.is_dir(), entry
