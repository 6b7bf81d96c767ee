"""The multi-view captioner: frozen Qwen2.5-VL + frozen OpenCLIP, fused by a trainable connector + LoRA.

`SceneCaptioner` is imported on first use, so that the light modules of this package (model_refs, the
checkpoint checks) can answer "which model, and is it there?" before torch and transformers load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clip_vlm_core.model.captioner import SceneCaptioner
    from clip_vlm_core.model.checkpoint import default_model_path

__all__ = ["SceneCaptioner", "default_model_path"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from clip_vlm_core.model import captioner

        return getattr(captioner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
