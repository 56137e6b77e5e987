"""A model folder or checkpoint is checked when it is loaded: a missing, empty or damaged folder, truncated
or empty weights, NaN/inf weights and a damaged checkpoint are each one ModelError naming the path and the
file, before anything trains (end to end through run.py: tests/e2e/test_broken_inputs_e2e.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import CACHE, compose_config

from othink_mr1.models.factory import (
    check_checkpoint,
    check_model_folder,
    load_checkpoint_weights,
    load_local,
    load_model,
    looks_local,
    tiny_folder,
)
from othink_mr1.runner import resume_checkpoint
from othink_mr1.utils.errors import ModelError
from othink_mr1.utils.finite import nonfinite_tensors


@pytest.fixture(scope="module")
def tiny_saved() -> Path:
    """The tiny model's saved folder (built once per checkout), never changed: tests damage copies."""
    return tiny_folder(compose_config(["model=tiny"]).model, CACHE)


@pytest.fixture
def copy(tiny_saved, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_saved, tmp_path / "model"))


def safetensors_data_start(path: Path) -> int:
    """Where a safetensors file's tensor data begins: after its 8-byte length and its JSON header."""
    with path.open("rb") as fh:
        return 8 + int.from_bytes(fh.read(8), "little")


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ local or hub


@pytest.mark.parametrize("path, local", [
    ("Qwen/Qwen2-VL-2B-Instruct", False), ("HuggingFaceTB/SmolVLM-256M-Instruct", False), ("gpt2", False),
    ("/nowhere/model", True), ("./model", True), ("../model", True), ("~/model", True), ("a/b/c", True),
])
def test_a_path_that_means_a_folder_is_told_from_a_hub_id(path, local):
    assert looks_local(path) is local


def test_a_mistyped_folder_beside_an_existing_one_is_local(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    assert looks_local("models/typo")
    with pytest.raises(ModelError, match=r"^model folder models/typo does not exist \(read as a local path"):
        check_model_folder("models/typo")


def test_a_missing_folder_says_it_does_not_exist_not_a_hub_error(tmp_path):
    cfg = compose_config(["model=pretrained", f"model.path={tmp_path / 'nowhere'}"])
    with pytest.raises(ModelError, match=rf"^model folder {tmp_path / 'nowhere'} does not exist"):
        load_model(cfg.model, CACHE)


def test_a_hub_id_is_left_to_the_hub():
    assert check_model_folder("Qwen/Qwen2-VL-2B-Instruct") is None


# ----------------------------------------------------------------------------------- the folder


def test_an_intact_folder_passes_and_lists_its_weights(copy):
    assert check_model_folder(copy) == [str(copy / "model.safetensors")]


def test_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=rf"^model folder {tmp_path / 'empty'} is empty: expected a saved model"):
        check_model_folder(tmp_path / "empty")


def test_a_file_is_not_a_folder(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file, not a folder"):
        check_model_folder(tmp_path / "model.safetensors")


def test_no_config_json(copy):
    (copy / "config.json").unlink()
    with pytest.raises(ModelError, match=rf"^model folder {copy} has no config.json \(it holds chat_template.jinja"):
        check_model_folder(copy)


def test_a_cut_config_json(copy):
    text = (copy / "config.json").read_text()
    (copy / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(ModelError, match=rf"^{copy / 'config.json'} is not valid JSON \(.*line \d+.*\): the file is damaged"):
        check_model_folder(copy)


def test_a_config_json_without_model_type(copy):
    config = json.loads((copy / "config.json").read_text())
    del config["model_type"]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=rf"^{copy / 'config.json'} names no model_type"):
        check_model_folder(copy)


def test_no_weights(copy):
    (copy / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=rf"^model folder {copy} holds no weights: none of model.safetensors, "):
        check_model_folder(copy)


def test_empty_weights(copy):
    (copy / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match=rf"^model folder {copy}: model.safetensors is empty \(0 bytes\)"):
        check_model_folder(copy)


@pytest.mark.parametrize("keep", ["half", "all_but_one_byte", "header_only", "five_bytes"])
def test_truncated_weights(copy, keep):
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    cut = {"half": len(data) // 2, "all_but_one_byte": len(data) - 1,
           "header_only": safetensors_data_start(weights), "five_bytes": 5}[keep]
    weights.write_bytes(data[:cut])
    with pytest.raises(ModelError, match=rf"^model folder {copy}: model.safetensors is truncated.*; re-export or "
                                         "re-download the model"):
        check_model_folder(copy)


def test_a_shard_the_index_lists_is_missing(copy):
    (copy / "model.safetensors").rename(copy / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match=r"model.safetensors.index.json lists shard\(s\) the folder lacks: "
                                         "model-00002-of-00002.safetensors"):
        check_model_folder(copy)


def test_nan_weights_are_found_when_the_folder_loads(copy, tiny_saved):
    """All 0xFF over the tensor data: a valid file, every float a NaN. It loaded and scored 0.00% silently."""
    weights = copy / "model.safetensors"
    data = weights.read_bytes()
    start = safetensors_data_start(weights)
    weights.write_bytes(data[:start] + b"\xff" * (len(data) - start))
    assert check_model_folder(copy)  # the file itself is whole
    with pytest.raises(ModelError) as err:
        load_local(copy)
    message = str(err.value)
    assert message.startswith(f"model '{copy}': non-finite weights (NaN or inf) in ")
    assert "(first: model.visual.patch_embed.proj.weight, " in message and f"loaded from {weights}" in message
    assert load_local(tiny_saved)[0] is not None  # the intact folder loads


def test_one_inf_is_named(copy):
    from safetensors.torch import load_file, save_file

    tensors = load_file(copy / "model.safetensors")
    name = sorted(tensors)[-1]
    tensors[name].view(-1)[0] = float("inf")
    save_file(tensors, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"non-finite weights \(NaN or inf\) in 1 of \d+ tensors \(first: "):
        load_local(copy)


# ---------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, weights: dict[str, torch.Tensor]) -> Path:
    torch.save({"state_dict": {f"model.{k}": v for k, v in weights.items()}, "global_step": 2}, path)
    return path


def test_a_truncated_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "last.ckpt", {"w": torch.ones(64, 64)})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelError, match=rf"^resume=true: {path} is truncated or not a torch.save file \(\d+ bytes, no "
                                         r"zip directory at its end\): the checkpoint is damaged$"):
        check_checkpoint(path, "resume=true")
    with pytest.raises(ModelError, match=rf"^ckpt='{path}': {path} is truncated"):
        load_checkpoint_weights(torch.nn.Linear(2, 2), path)


def test_a_checkpoint_damaged_inside(tmp_path):
    """Whole (its zip directory intact) but its pickle overwritten: torch.load's own error, named."""
    path = save_checkpoint(tmp_path / "last.ckpt", {"w": torch.ones(8)})
    data = bytearray(path.read_bytes())
    start = data.index(b"data.pkl") + 40  # inside the pickle's local file entry
    data[start:start + 16] = b"\x00" * 16
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"^resume=true: {path} does not load as a checkpoint \(\d+ bytes; .+\): the "
                                         "file is truncated or damaged"):
        check_checkpoint(path, "resume=true")


def test_an_empty_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    path.write_bytes(b"")
    with pytest.raises(ModelError, match=rf"^resume=true: {path} is empty \(0 bytes\), not a checkpoint"):
        check_checkpoint(path, "resume=true")


def test_a_checkpoint_with_nan_weights(tmp_path):
    weights = {"a.weight": torch.ones(3), "b.weight": torch.tensor([1.0, float("nan")]), "c.weight": torch.ones(2)}
    path = save_checkpoint(tmp_path / "last.ckpt", weights)
    with pytest.raises(ModelError, match=rf"^resume=true: non-finite weights \(NaN or inf\) in 1 of 3 tensors \(first: "
                                         rf"model.b.weight\) loaded from {path}"):
        check_checkpoint(path, "resume=true")


def test_a_file_that_is_no_run_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 1}, path)
    with pytest.raises(ModelError, match="holds no model weights"):
        check_checkpoint(path, "resume=true")


def test_resume_refuses_a_damaged_last_ckpt_before_touching_the_run_folder(tmp_path):
    cfg = compose_config(["model=tiny", "resume=true"], output_dir=tmp_path)
    run_dir = Path(cfg.paths.run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 42\n")
    path = save_checkpoint(run_dir / "checkpoints" / "last.ckpt", {"w": torch.ones(64, 64)})
    assert resume_checkpoint(cfg, run_dir) == path  # intact: resumed from
    path.write_bytes(path.read_bytes()[:1000])
    before = tree_hashes(run_dir)
    with pytest.raises(ModelError, match=rf"^resume=true: {path} is truncated.*: the checkpoint is damaged; resume from "
                                         r"an intact copy \(resume=PATH\), or start the run again with resume=false"):
        resume_checkpoint(cfg, run_dir)
    # resume=auto (a re-launched sweep) refuses it too rather than starting the cell again.
    auto = compose_config(["model=tiny", "resume=auto"], output_dir=tmp_path)
    with pytest.raises(ModelError, match=rf"^resume=auto: {path} is truncated"):
        resume_checkpoint(auto, run_dir)
    assert tree_hashes(run_dir) == before


# ------------------------------------------------------------------------------------- the check


def test_nonfinite_tensors_names_each_bad_tensor_in_order_and_counts_the_checked():
    named = [("a", torch.ones(4)), ("b", torch.tensor([0.0, float("nan")])), ("ints", torch.tensor([1, 2])),
             ("none", None), ("empty", torch.ones(0)), ("c", torch.tensor([float("-inf")], dtype=torch.bfloat16)),
             ("d", torch.full((2, 3), 3.0e38) * 10)]
    assert nonfinite_tensors(named) == (["b", "c", "d"], 4)
    assert nonfinite_tensors([]) == ([], 0)

