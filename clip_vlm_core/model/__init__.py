"""The multi-view captioner: frozen Qwen2.5-VL + frozen OpenCLIP, fused by a trainable connector + LoRA."""

from clip_vlm_core.model.captioner import SceneCaptioner, default_model_path

__all__ = ["SceneCaptioner", "default_model_path"]
