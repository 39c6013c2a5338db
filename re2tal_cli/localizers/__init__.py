"""Temporal action localizers on feature sequences; ActionFormer first. Plain PyTorch: no CLI, no printing."""

from re2tal_cli.localizers.actionformer import ActionFormer, LocalizerOutput, pad_features
from re2tal_cli.localizers.config import ActionFormerConfig
from re2tal_cli.localizers.postprocess import Detections, NmsMethod, PostprocessConfig

__all__ = [
    "ActionFormer",
    "ActionFormerConfig",
    "Detections",
    "LocalizerOutput",
    "NmsMethod",
    "PostprocessConfig",
    "pad_features",
]
