"""Exports of trained runs load in plain transformers (a fresh interpreter that never imports the project)
with the run's preprocessing and logits; LoRA exports are merged (unit tests: tests/models/test_export.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import CACHE, compose_config
from support.export import PROMPT, assert_same_inputs, inputs, noise_image

from othink_mr1.models import factory
from othink_mr1.models.export import export_model
from othink_mr1.models.factory import load_checkpoint_weights, load_model, load_processor, tiny_folder
from othink_mr1.runner import run

LORA = ["model.lora.enabled=true", "model.lora.rank=4", "model.lora.alpha=8", "model.lora.dropout=0.0"]


# Runs in a fresh interpreter that never imports the project: plain transformers only.
LOAD_WITH_PLAIN_TRANSFORMERS = textwrap.dedent("""
    import sys
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    folder, image_path, out_path, prompt = sys.argv[1:5]
    image = Image.open(image_path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    out = {}
    try:
        processor = AutoProcessor.from_pretrained(folder)
    except ImportError as exc:  # where torchvision is missing: the video processor needs it
        out["auto_processor"] = f"ImportError: {exc}"
        image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        vision = image_processor(images=[image], return_tensors="pt")
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        tokens = int(vision["image_grid_thw"][0].prod()) // image_processor.merge_size ** 2
        text = text.replace("<|image_pad|>", "<|image_pad|>" * tokens)
        batch = {**tokenizer([text], return_tensors="pt"), **vision}
        # Image tokens are modality 1 (what the processor adds for M-RoPE).
        image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        batch["mm_token_type_ids"] = (batch["input_ids"] == image_token).long()
        out["image_processor"] = type(image_processor).__name__
    else:
        out["auto_processor"] = type(processor).__name__
        out["image_processor"] = type(processor.image_processor).__name__
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        batch = processor(text=[text], images=[image], return_tensors="pt")
    batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        out["logits"] = model(**batch).logits
    out.update({k: batch[k] for k in ("pixel_values", "image_grid_thw", "input_ids", "mm_token_type_ids")})
    out["project_imported"] = any(name.split(".")[0] == "othink_mr1" for name in sys.modules)
    torch.save(out, out_path)
""")


def load_in_plain_transformers(folder: Path, tmp_path: Path) -> dict:
    image_path, out_path = tmp_path / "image.png", tmp_path / "plain.pt"
    noise_image(image_path)
    done = subprocess.run([sys.executable, "-c", LOAD_WITH_PLAIN_TRANSFORMERS, str(folder), str(image_path),
                           str(out_path), PROMPT], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out_path, weights_only=False)


def check_plain_load(plain: dict, folder: Path, run_processor, run_model) -> float:
    """The export's processor outputs equal the run's and its logits match; returns max |logit diff|."""
    assert not plain["project_imported"]
    if factory.torchvision_import_error():
        # transformers' own behaviour on a Qwen2-VL folder without torchvision, never a bare tokenizer.
        assert plain["auto_processor"].startswith("ImportError") and "orchvision" in plain["auto_processor"]
        assert plain["image_processor"] == "Qwen2VLImageProcessorPil"
        backend = "pil"
    else:
        # AutoProcessor works, with the backend transformers picks (torchvision where it imports).
        assert plain["auto_processor"] == "Qwen2VLProcessor"
        backend = "pil" if plain["image_processor"].endswith("Pil") else "torchvision"
    image = noise_image()
    reference = inputs(load_processor(str(folder), backend), image)
    assert_same_inputs(plain, reference)
    # With the run's backend (pil) the export preprocesses exactly as the run did.
    assert_same_inputs(inputs(load_processor(str(folder), "pil"), image), inputs(run_processor, image))
    with torch.no_grad():
        logits = run_model.eval()(**reference).logits
    assert torch.allclose(plain["logits"], logits, atol=1e-5, rtol=0)
    return float((plain["logits"] - logits).abs().max())


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A short SFT run on the tiny model with save_model=true: (config, run dir, results)."""
    out = tmp_path_factory.mktemp("outputs")
    cfg = compose_config(["model=tiny", "method=sft", "save_model=true", "eval.row_zero=false"], output_dir=out)
    results = run(cfg)
    return cfg, Path(cfg.paths.run_dir), results


def test_the_same_image_gives_the_same_inputs_however_the_folder_is_loaded(sft_run, tmp_path):
    from transformers import AutoTokenizer, Qwen2VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    cfg, run_dir, _ = sft_run
    tiny = tiny_folder(cfg.model, CACHE)
    # The hub's own layout written by plain transformers: the image processor's and the tokenizer's
    # save_pretrained, a legacy chat_template.json, the model config; no processor_config.json.
    hub = tmp_path / "hub"
    Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12544}).save_pretrained(hub)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokenizer.save_pretrained(hub)
    (hub / "chat_template.json").write_text(json.dumps({"chat_template": tokenizer.chat_template}))
    Qwen2VLConfig.from_pretrained(tiny).save_pretrained(hub)
    loaded = {
        "factory": load_model(cfg.model, CACHE)[1],
        "tiny folder": load_processor(str(tiny), "pil", cfg.model.min_pixels, cfg.model.max_pixels),
        "export": load_processor(str(run_dir / "model"), "pil", cfg.model.min_pixels, cfg.model.max_pixels),
        "hub layout": load_processor(str(hub), "pil", cfg.model.min_pixels, cfg.model.max_pixels),
    }
    image = noise_image()
    reference = inputs(loaded["factory"], image)
    assert reference["image_grid_thw"].tolist() == [[1, 6, 10]]  # 97x150 resized to 84x140: 6x10 patches
    for name, processor in loaded.items():
        assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil", name
        assert_same_inputs(inputs(processor, image), reference)
    # The run used (and recorded) the same preprocessing.
    assert sft_run[2]["processing"] == {"image_backend": "pil", "image_processor": "Qwen2VLImageProcessorPil",
                                        "processor": "ImageOnlyQwen2VLProcessor"}
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["processing"]["image_backend"] == "pil"


@pytest.mark.slow
def test_a_lora_model_is_exported_merged_and_loads_in_plain_transformers(tmp_path):
    from othink_mr1.models.adapters import apply_lora

    cfg = compose_config(["model=tiny", *LORA])
    model, processor = load_model(cfg.model, CACHE)
    model = apply_lora(model, cfg.model.lora)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # adapters that change the model, as training would
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=generator)
    folder = tmp_path / "model"
    export_model(model, processor, folder)
    assert (folder / "adapter" / "adapter_config.json").is_file()
    assert not any("lora" in k for k in json.loads((folder / "config.json").read_text()))
    plain = load_in_plain_transformers(folder, tmp_path)
    # The unmerged adapters give the logits the merged export gives.
    diff = check_plain_load(plain, folder, processor, model)
    with torch.no_grad():
        base = load_model(cfg.model, CACHE)[0].eval()(**inputs(processor, noise_image())).logits
    assert not torch.allclose(plain["logits"], base, atol=1e-3)  # the adapters are in the export
    print(f"LoRA export: max |logit difference| = {diff:.3g}")


def test_an_export_is_in_the_hubs_layout(sft_run):
    _, run_dir, _ = sft_run
    for folder in (run_dir / "model", tiny_folder(sft_run[0].model, CACHE)):
        assert json.loads((folder / "processor_config.json").read_text()) == {"processor_class": "Qwen2VLProcessor"}
        image_config = json.loads((folder / "preprocessor_config.json").read_text())
        assert image_config["image_processor_type"] == "Qwen2VLImageProcessor"
        assert json.loads((folder / "tokenizer_config.json").read_text())["processor_class"] == "Qwen2VLProcessor"
        assert (folder / "chat_template.jinja").is_file()
        assert "ImageOnly" not in "".join(p.read_text() for p in folder.glob("*.json"))


def test_a_trained_export_loads_in_plain_transformers_with_the_runs_logits(sft_run, tmp_path):
    cfg, run_dir, _ = sft_run
    model, processor = load_model(cfg.model, CACHE)
    model = load_checkpoint_weights(model, run_dir / "checkpoints" / "last.ckpt")  # the run's final weights
    plain = load_in_plain_transformers(run_dir / "model", tmp_path)
    diff = check_plain_load(plain, run_dir / "model", processor, model)
    print(f"full export: max |logit difference| = {diff:.3g}")
