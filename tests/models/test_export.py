"""One image preprocessing however a folder is loaded, and exports plain transformers loads without
this project (the hub's layout)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import CACHE, compose_config, family_folder
from support.export import assert_same_inputs, inputs, noise_image

from othink_mr1.models import factory
from othink_mr1.models.factory import ModelError, load_model, load_processor
from othink_mr1.models.tiny_families import FAMILIES
from othink_mr1.runner import check_config
from othink_mr1.utils.errors import ConfigError


def test_image_backend_is_checked_before_anything_runs(monkeypatch):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as excinfo:  # an unknown name fails at composition
        compose_config(["model=tiny", "model.image_backend=opencv"])
    message = str(excinfo.value.__cause__)
    assert "Invalid value 'opencv', expected one of [pil, torchvision]" in message
    assert "full_key: model.image_backend" in message
    # The factory's own check, for a backend name passed in code.
    with pytest.raises(ModelError, match=r"model.image_backend='opencv': expected one of \['pil', 'torchvision'\]"):
        factory.image_processor_class("Qwen2VLImageProcessor", "opencv")
    # torchvision where it does not import: a clear error, never a silent fallback to PIL.
    monkeypatch.setattr(factory, "torchvision_import_error", lambda: "ModuleNotFoundError: No module named 'torchvision'")
    with pytest.raises(ConfigError, match="model.image_backend=torchvision but torchvision does not import here"):
        check_config(compose_config(["model=tiny", "model.image_backend=torchvision"]))
    with pytest.raises(ModelError, match="model.image_backend=torchvision"):
        load_model(compose_config(["model=tiny", "model.image_backend=torchvision"]).model, CACHE)


def test_torchvision_backend_here():
    """On this machine: torchvision requested fails clearly where it does not import, and where it does
    the torchvision image processor is the one used."""
    cfg = compose_config(["model=tiny", "model.image_backend=torchvision"])
    if factory.torchvision_import_error():
        with pytest.raises(ConfigError, match="model.image_backend=torchvision"):
            check_config(cfg)
    else:
        check_config(cfg)
        _, processor = load_model(cfg.model, CACHE)
        assert factory.processor_info(processor)["image_processor"] == "Qwen2VLImageProcessor"


def test_a_folder_saved_in_the_old_project_layout_still_loads(tmp_path):
    """Exports written before the hub layout (processor_config.json naming ImageOnlyQwen2VLProcessor,
    the image settings nested in it) load with the same preprocessing."""
    from transformers import ProcessorMixin

    cfg = compose_config(["model=tiny"])
    model, processor = load_model(cfg.model, CACHE)
    old = tmp_path / "old"
    model.save_pretrained(old)
    ProcessorMixin.save_pretrained(processor, old)  # transformers' own writer, under our class name
    assert json.loads((old / "processor_config.json").read_text())["processor_class"] == "ImageOnlyQwen2VLProcessor"
    assert not (old / "preprocessor_config.json").exists()
    assert_same_inputs(inputs(load_processor(str(old)), noise_image()), inputs(processor, noise_image()))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_gets_its_own_processor_class_and_saves_the_hub_layout(family, tmp_path):
    """Each family's folder loads its own transformers processor class (no torchvision, no video
    processor), with the folder's settings; saved again, plain transformers' class and settings are
    named, and the reloaded processor turns an image and a prompt into the same tensors."""
    folder = family_folder(family)
    processor = load_processor(str(folder))
    saved = json.loads((folder / "processor_config.json").read_text())
    assert processor.hub_class == saved["processor_class"] and getattr(processor, "video_processor", None) is None
    processor.save_pretrained(tmp_path / "saved")
    resaved = json.loads((tmp_path / "saved" / "processor_config.json").read_text())
    assert saved.items() <= resaved.items()  # every setting kept (defaults such as image_token written out)
    shutil.copy(folder / "config.json", tmp_path / "saved")
    again = load_processor(str(tmp_path / "saved"))
    got, want = inputs(again, noise_image()), inputs(processor, noise_image())
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_a_folder_that_is_not_an_image_text_model_is_a_clear_error(tmp_path):
    from transformers import AutoConfig

    AutoConfig.for_model("bert").save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="model_type 'bert' is not an image-text model"):
        load_processor(str(tmp_path))


def test_a_processor_without_an_image_processor_is_a_clear_error(tmp_path):
    folder = tmp_path / "no_image_processor"
    shutil.copytree(family_folder("llava"), folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match="has no image processor"):
        load_processor(str(folder))


def test_image_settings_come_from_the_folder_unless_overridden_by_name():
    """No pixel budget is forced on a processor that has none (Idefics3 tiles by edge length); its own
    keys are overridden by name, an unknown key or a pixel budget is an error naming the config key."""
    folder = str(family_folder("idefics3"))
    processor = load_processor(folder)
    assert dict(processor.image_processor.size) == {"longest_edge": 112} and processor.image_processor.do_image_splitting
    tuned = load_processor(folder, image_settings={"size": {"longest_edge": 56}, "do_image_splitting": False})
    assert dict(tuned.image_processor.size) == {"longest_edge": 56} and not tuned.image_processor.do_image_splitting
    single = inputs(tuned, noise_image())["pixel_values"]
    assert single.shape[1] == 1  # one tile: no splitting, no global view beside it
    with pytest.raises(ModelError, match="model.max_pixels: Idefics3ImageProcessorPil .* has no pixel budget"):
        load_processor(folder, max_pixels=401408)
    with pytest.raises(ModelError, match=r"model.image_processor.shortest_side: .* has no setting 'shortest_side'"):
        load_processor(folder, image_settings={"shortest_side": 56})
    with pytest.raises(ModelError, match=r"model.image_processor.size.height: .* has size keys \['longest_edge'\]"):
        load_processor(folder, image_settings={"size": {"height": 56}})
    # The Qwen families keep their pixel budget keys.
    qwen = load_processor(str(family_folder("qwen2_5_vl")), min_pixels=3136, max_pixels=401408)
    assert dict(qwen.image_processor.size) == {"shortest_edge": 3136, "longest_edge": 401408}


def test_image_settings_in_the_config_reach_the_processor():
    from othink_mr1.models.factory import load_kwargs

    cfg = compose_config(["model=pretrained", f"model.path={family_folder('idefics3')}",
                          "+model.image_processor={do_image_splitting: false, size: {longest_edge: 56}}"])
    _, processor = load_model(cfg.model, CACHE)
    assert not processor.image_processor.do_image_splitting and dict(processor.image_processor.size) == {"longest_edge": 56}
    assert load_kwargs(compose_config(["model=tiny"]).model)["image_settings"] is None
