"""The tiny_base folder the project ships (models/tiny_base): its files are the ones its manifest hashes, it
was built from the config `model=tiny_base` composes (change one without the other and this fails), and the
factory refuses a folder whose files or config do not match."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import CACHE, ROOT, compose_config

from othink_mr1.models.factory import ModelError, load_model, tiny_base_build_config, tiny_base_folder
from othink_mr1.models.manifest import UNHASHED, sha256

FOLDER = ROOT / "models" / "tiny_base"


@pytest.fixture(scope="module")
def manifest():
    return json.loads((FOLDER / "manifest.json").read_text())


def test_the_default_config_loads_the_shipped_folder():
    assert tiny_base_folder(compose_config(["model=tiny_base"]).model) == FOLDER


def test_every_shipped_file_is_the_one_its_manifest_hashes(manifest):
    on_disk = {p.name for p in FOLDER.iterdir() if p.name not in UNHASHED}
    assert on_disk == set(manifest["files"])  # nothing unlisted, nothing missing
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "build_report.json"} <= on_disk
    for name, entry in manifest["files"].items():
        assert (sha256(FOLDER / name), (FOLDER / name).stat().st_size) == (entry["sha256"], entry["bytes"]), name


def test_the_shipped_folder_was_built_from_the_default_config(manifest):
    """conf/model/tiny_base.yaml, the tiny architecture and the generators' version as they are now: a change to
    any of them needs a rebuilt folder (make tiny-base), or every run would load weights built from another."""
    assert manifest["build_config"] == tiny_base_build_config(compose_config(["model=tiny_base"]).model)


def test_the_manifest_names_the_commit_and_the_machine_that_built_it(manifest):
    from othink_mr1.jobs.tiny_base import BUILD_NUM_THREADS

    built = manifest["built_at"]
    assert re.fullmatch(r"[0-9a-f]{40}", built["commit"]) and built["dirty"] is False
    machine = built["machine"]
    assert machine["cpu_capability"] and machine["blas"] and machine["torch"].startswith("2.13.0")
    assert machine["torch_threads"] == BUILD_NUM_THREADS


def test_the_build_report_lands_in_the_acceptance_window(manifest):
    report = json.loads((FOLDER / "build_report.json").read_text())
    low, high = manifest["build_config"]["base_build"]["min_accuracy"], manifest["build_config"]["base_build"]["max_accuracy"]
    assert report["in_window"] and all(low <= a <= high for a in report["accuracy"].values())


def test_a_config_the_folder_was_not_built_from_is_refused_naming_the_key():
    cfg = compose_config(["model=tiny_base", "model.base_build.steps=300", "model.tiny.hidden_size=64"]).model
    with pytest.raises(ModelError) as caught:
        load_model(cfg, CACHE)
    message = str(caught.value)
    assert "base_build.steps: built with 575, this config has 300" in message
    assert "tiny.hidden_size: built with 128, this config has 64" in message
    assert "python -m othink_mr1.jobs.tiny_base" in message and "model.path=DIR" in message


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_a_folder_whose_files_differ_from_its_manifest_is_refused_naming_the_file(tmp_path, damage):
    copy = tmp_path / "tiny_base"
    shutil.copytree(FOLDER, copy)
    if damage == "changed":
        (copy / "tokenizer_config.json").write_text((copy / "tokenizer_config.json").read_text() + " ")
    else:
        (copy / "generation_config.json").unlink()
    cfg = compose_config(["model=tiny_base", f"model.path={copy}"]).model
    expected = "tokenizer_config.json has sha256" if damage == "changed" else "generation_config.json is missing"
    with pytest.raises(ModelError, match=rf"{copy} does not match its manifest.json: {expected}"):
        load_model(cfg, CACHE)


def test_a_folder_without_a_manifest_or_missing_is_refused(tmp_path):
    (tmp_path / "bare").mkdir()
    for folder, expected in ((tmp_path / "bare", "no manifest.json"), (tmp_path / "nope", "does not exist")):
        with pytest.raises(ModelError, match=expected):
            load_model(compose_config(["model=tiny_base", f"model.path={folder}"]).model, CACHE)
