"""Temporal action localizers on feature sequences, behind one interface (`base.Localizer`). Plain PyTorch: no
CLI, no printing.

    localizer = create_localizer("actionformer", in_channels=512, num_classes=20, config=ActionFormerConfig())
"""

from __future__ import annotations

from re2tal_cli.errors import UnknownNameError
from re2tal_cli.localizers.actionformer import ActionFormer, ActionFormerOutput
from re2tal_cli.localizers.base import Localizer, outputs_in_fp32, pad_features
from re2tal_cli.localizers.config import ActionFormerConfig
from re2tal_cli.localizers.gtad import GTAD, GTADOutput
from re2tal_cli.localizers.gtad_config import GTADConfig
from re2tal_cli.localizers.postprocess import Detections, NmsMethod, PostprocessConfig
from re2tal_cli.localizers.vsgn import VSGN, VSGNOutput
from re2tal_cli.localizers.vsgn_config import VSGNConfig

__all__ = [
    "LOCALIZERS",
    "ActionFormer",
    "ActionFormerConfig",
    "ActionFormerOutput",
    "Detections",
    "GTAD",
    "GTADConfig",
    "GTADOutput",
    "Localizer",
    "NmsMethod",
    "PostprocessConfig",
    "VSGN",
    "VSGNConfig",
    "VSGNOutput",
    "create_localizer",
    "outputs_in_fp32",
    "pad_features",
]

# name → (localizer class, its config class); recipes name a localizer and configure it in a section of that name
LOCALIZERS: dict[str, tuple[type[Localizer], type]] = {
    "actionformer": (ActionFormer, ActionFormerConfig),
    "vsgn": (VSGN, VSGNConfig),
    "gtad": (GTAD, GTADConfig),
}


def create_localizer(name: str, in_channels: int, num_classes: int, config=None) -> Localizer:
    """The localizer `name` ("actionformer", …) with `config` (None: its defaults)."""
    if name not in LOCALIZERS:
        raise UnknownNameError("localizer", name, LOCALIZERS)
    cls, config_cls = LOCALIZERS[name]
    return cls(in_channels, num_classes, config if config is not None else config_cls())
