"""Backbone families. Importing this package registers every architecture."""

from re2tal_cli.models import (
    resnet3d,  # noqa: F401  (registers r3d-*, r2plus1d-*, tsm-*)
    slowfast,  # noqa: F401  (registers slowfast-*)
    swin3d,  # noqa: F401  (registers swin3d-*)
    vit,  # noqa: F401  (registers vit-*)
)
from re2tal_cli.models.base import InputSpec, VideoBackbone
from re2tal_cli.models.registry import Arch, create_model, get_arch, list_archs

__all__ = ["Arch", "InputSpec", "VideoBackbone", "create_model", "get_arch", "list_archs"]
