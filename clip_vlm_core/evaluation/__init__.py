"""Evaluation of captioners: caption metrics, synthetic-fact accuracy, the HTML report."""

from clip_vlm_core.evaluation.facts import fact_accuracy
from clip_vlm_core.evaluation.metrics import METRIC_KEYS, CaptionScorer, caption_metrics

__all__ = ["METRIC_KEYS", "CaptionScorer", "caption_metrics", "fact_accuracy"]
