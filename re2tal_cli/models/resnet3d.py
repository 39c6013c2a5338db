"""ResNet-3D family: R3D-18 and R(2+1)D-18 (Tran et al., CVPR 2018; torchvision's video ResNets) and TSM-ResNet
(Lin et al., ICCV 2019: a 2-D ResNet whose residual branches shift 1/8 of the channels one frame back and 1/8 one
frame forward), LoFi-E2E's encoder.

Rewiring as in SlowFast (`resnet_blocks`, ReLU-in): in each stage the blocks after the first form one
`ResidualStage`; TSM's shift is the first operation of the residual branch, so it lies inside F (the shortcut sees
the unshifted input, as in TSM's "blockres" placement). All frames of the input are one temporal sequence: TSM
shifts across the whole clip, which for frames-input TAL is the whole video.

Checkpoint layouts: ours, torchvision's video ResNets (`stem.0`, `layer1.0.conv1.0`, …, `fc`), the TSM release
(`module.base_model.*`, `conv1.net`, `new_fc`) and torchvision's 2-D ResNets (ImageNet, TSM's initialisation; 2-D
kernels gain a temporal axis of 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn

from re2tal_cli.models.base import IMAGENET_MEAN, IMAGENET_STD, InputSpec, VideoBackbone
from re2tal_cli.models.layers import drop_path_rates
from re2tal_cli.models.layouts import Rule, rename_keys
from re2tal_cli.models.registry import Arch, ConvertedCheckpoint, register_family
from re2tal_cli.models.resnet_blocks import (
    BasicBlock,
    Bottleneck,
    ResLayer,
    Stem,
    freeze_batchnorm,
    time_locality,
    unknown_layout,
    with_num_batches_tracked,
)

__all__ = ["ResNet3d", "ResNet3dConfig", "convert_resnet3d"]


@dataclass(frozen=True)
class ResNet3dConfig:
    block: str = "basic"  # "basic" (two 3×3 convs) or "bottleneck" (1×1, 3×3, 1×1 with 4× expansion)
    conv: str = "3d"  # kind of 3×3 conv: "3d" (R3D), "2plus1d" (R(2+1)D) or "2d" (1×3×3, TSM)
    stem: str = "3d"  # "3d": 3×7×7 conv; "2plus1d": 1×7×7 to 45 channels then 3×1×1; "2d": 1×7×7 + max-pool
    layers: tuple[int, ...] = (2, 2, 2, 2)  # blocks per stage
    widths: tuple[int, ...] = (64, 128, 256, 512)  # inner width per stage (output ×4 for bottlenecks)
    temporal_strides: tuple[int, ...] = (1, 2, 2, 2)  # per stage; R3D/R(2+1)D halve time with space, TSM never
    shift_div: int = 0  # TSM: 1/shift_div of the channels shift each way in every residual branch; 0: no shift
    num_classes: int = 0  # classifier outputs; 0 = no head
    dropout: float = 0.0  # dropout before the classifier
    drop_path: float = 0.0  # stochastic depth on each block's body, linear from 0 over the network's blocks
    frozen_bn: bool = True  # BatchNorm stays in eval mode even when the model trains (affine parameters still train)


class ResNet3d(VideoBackbone):
    def __init__(self, cfg: ResNet3dConfig):
        super().__init__()
        if cfg.block not in ("basic", "bottleneck"):
            raise ValueError(f"unknown block {cfg.block!r}; expected 'basic' or 'bottleneck'")
        self.cfg = cfg
        self.stem = _stem(cfg.stem, cfg.widths[0])
        rates = iter(drop_path_rates(cfg.drop_path, sum(cfg.layers)))
        expansion = 4 if cfg.block == "bottleneck" else 1
        cin = cfg.widths[0]
        for k, (n, width, ts) in enumerate(zip(cfg.layers, cfg.widths, cfg.temporal_strides, strict=True)):
            cout = width * expansion
            ss = 1 if k == 0 else 2
            stride = (ts, ss, ss)
            blocks = []
            for i in range(n):
                first = i == 0
                common = dict(drop_path=next(rates), shift_div=cfg.shift_div)
                shortcut = first and (stride != (1, 1, 1) or cin != cout)
                if cfg.block == "basic":
                    block = BasicBlock(cin, cout, cfg.conv, stride if first else (1, 1, 1), shortcut, **common)
                else:
                    block = Bottleneck(cin, width, cout, 1, stride if first else (1, 1, 1), shortcut, **common)
                blocks.append(block)
                cin = cout
            self.add_module(f"layer{k + 1}", ResLayer(blocks))
        self.out_channels = cin
        self.temporal_stride = 1
        for ts in cfg.temporal_strides:
            self.temporal_stride *= ts
        self.min_frames = self.temporal_stride
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else None
        self.head = nn.Linear(self.out_channels, cfg.num_classes) if cfg.num_classes else None
        self.train()  # applies frozen_bn

    def train(self, mode: bool = True) -> ResNet3d:
        super().train(mode)
        if self.cfg.frozen_bn:
            freeze_batchnorm(self)
        return self

    def feature_maps(self, video: torch.Tensor) -> torch.Tensor:
        self.check_input(video)
        x = self.run_outside(self.stem, video, locality=time_locality(self.stem))
        for k in range(len(self.cfg.layers)):
            x = self.get_submodule(f"layer{k + 1}")(x, self.run_outside)
        return x  # (B, C, T / temporal_stride, H/16 or H/32, …)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) with a head (TSM: the mean of per-frame logits, which is the same), else the
        pooled (B, C) feature."""
        pooled = self.feature_maps(video).mean((2, 3, 4))
        if self.head is None:
            return pooled
        return self.head(pooled if self.dropout is None else self.dropout(pooled))


def _stem(kind: str, width: int) -> Stem:
    if kind == "3d":
        return Stem([(3, width, (3, 7, 7), (1, 2, 2))], pool=False)
    if kind == "2plus1d":
        return Stem([(3, 45, (1, 7, 7), (1, 2, 2)), (45, width, (3, 1, 1), (1, 1, 1))], pool=False)
    if kind == "2d":
        return Stem([(3, width, (1, 7, 7), (1, 2, 2))], pool=True)
    raise ValueError(f"unknown stem {kind!r}; expected '3d', '2plus1d' or '2d'")


# --- checkpoint layouts -----------------------------------------------------------------------------------------

_TV_VIDEO_STEM = {"0": "conv1", "1": "bn1", "3": "conv2", "4": "bn2"}
_TV_VIDEO_CONV = {"0": "spatial", "1": "bn", "3": "temporal"}
_OURS = ("stem.conv1.", "stem.bn1.")  # marks our layout (torchvision's is stem.0, the 2-D one conv1)

TORCHVISION_VIDEO_RULES: list[Rule] = [  # torchvision.models.video r3d_18 / r2plus1d_18
    (r"stem\.([0134])\.(\w+)", lambda m: f"stem.{_TV_VIDEO_STEM[m[1]]}.{m[2]}"),
    (  # R(2+1)D: the conv builder is a Sequential (spatial, bn, relu, temporal)
        r"(layer\d\.\d+)\.conv(\d)\.0\.([013])\.(\w+)",
        lambda m: f"{m[1]}.conv{m[2]}.{_TV_VIDEO_CONV[m[3]]}.{m[4]}",
    ),
    (r"(layer\d\.\d+)\.conv(\d)\.0\.(\w+)", r"\1.conv\2.\3"),
    (r"(layer\d\.\d+)\.conv(\d)\.1\.(\w+)", r"\1.bn\2.\3"),
    (r"(layer\d\.\d+)\.downsample\.0\.(\w+)", r"\1.shortcut.conv.\2"),
    (r"(layer\d\.\d+)\.downsample\.1\.(\w+)", r"\1.shortcut.bn.\2"),
    (r"fc\.(\w+)", r"head.\1"),
]
TWO_D_RULES: list[Rule] = [  # torchvision's 2-D ResNets (ImageNet) and the TSM release (after `module.base_model.`)
    (r"(conv1|bn1)\.(\w+)", r"stem.\1.\2"),
    (r"(layer\d\.\d+)\.downsample\.0\.(\w+)", r"\1.shortcut.conv.\2"),
    (r"(layer\d\.\d+)\.downsample\.1\.(\w+)", r"\1.shortcut.bn.\2"),
    (r"(?:fc|new_fc)\.(\w+)", r"head.\1"),
]


def convert_resnet3d(sd: Mapping[str, torch.Tensor], arch: Arch) -> ConvertedCheckpoint:
    """Map a torchvision video ResNet, a TSM release or a torchvision 2-D ResNet checkpoint to our keys. Values are
    untouched except 2-D conv kernels, which gain a temporal axis of size 1. Our own layout is passed to the strict key
    check as is; any other layout raises, naming our first key and the checkpoint's first foreign one."""
    if any(k.startswith("stem.0.") for k in sd):
        return ConvertedCheckpoint(
            with_num_batches_tracked(rename_keys(sd, TORCHVISION_VIDEO_RULES)), "torchvision-video"
        )
    keys = {k.removeprefix("module.").removeprefix("base_model.") for k in sd}
    if "conv1.weight" in keys and "bn1.weight" in keys:
        fmt = "tsm" if any(k.startswith(("module.base_model.", "base_model.")) for k in sd) else "torchvision-2d"
        return ConvertedCheckpoint(with_num_batches_tracked(rename_keys(_as_3d(sd), TWO_D_RULES)), fmt)
    if any(k.startswith(_OURS) for k in sd):
        return ConvertedCheckpoint(with_num_batches_tracked(sd), "re2tal")
    raise unknown_layout(sd, arch.name, "ResNet-3D/TSM", "stem.conv1.weight", ("stem.", "layer", "head."))


def _as_3d(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A 2-D ResNet's keys without the TSM release's wrappers (`module.base_model.`, `conv1.net`), its 2-D conv
    kernels (out, in, kh, kw) as (out, in, 1, kh, kw)."""
    out = {}
    for key, value in sd.items():
        key = key.removeprefix("module.").removeprefix("base_model.").replace(".net.", ".")
        out[key] = value.unsqueeze(2) if value.ndim == 4 else value
    return out


# --- architectures ----------------------------------------------------------------------------------------------


_register = register_family("resnet3d", ResNet3d, convert_resnet3d)

# torchvision's Kinetics-400 video ResNets: 16-frame clips at 112² (frames resampled to 15 fps: stride 2 at 30 fps).
_TV_KINETICS = InputSpec(
    num_frames=16, image_size=112, frame_stride=2, mean=(0.43216, 0.394666, 0.37645), std=(0.22803, 0.22145, 0.216989)
)
# TSM Kinetics models: 8 frames at 224², ImageNet normalisation (dense 8×8 sampling; TSN-style models take one frame
# per segment instead).
_TSM_INPUT = InputSpec(num_frames=8, image_size=224, frame_stride=8, mean=IMAGENET_MEAN, std=IMAGENET_STD)
_TSM = ResNet3dConfig(conv="2d", stem="2d", temporal_strides=(1, 1, 1, 1), shift_div=8)

_register("r3d-18", ResNet3dConfig(), _TV_KINETICS, "R3D-18 (torchvision r3d_18), 16×112²")
_register(
    "r2plus1d-18", ResNet3dConfig(conv="2plus1d", stem="2plus1d"), _TV_KINETICS, "R(2+1)D-18 (torchvision), 16×112²"
)
_register("tsm-r18", _TSM, _TSM_INPUT, "TSM-ResNet18 (LoFi-E2E's encoder), 8×224²")
_register("tsm-r50", replace(_TSM, block="bottleneck", layers=(3, 4, 6, 3)), _TSM_INPUT, "TSM-ResNet50, 8×224²")

_TINY = dict(layers=(2, 3, 1, 2), widths=(4, 8, 8, 16))  # rewired blocks per stage: 1, 2, 0, 1 (odd, even, none)
_TINY_VIDEO = InputSpec(num_frames=8, image_size=32, mean=_TV_KINETICS.mean, std=_TV_KINETICS.std)
_TINY_TSM = InputSpec(num_frames=4, image_size=32)
_register("r3d-tiny", ResNet3dConfig(**_TINY), _TINY_VIDEO, "test model: R3D, widths 4-16", test_only=True)
_register(
    "r2plus1d-tiny",
    ResNet3dConfig(conv="2plus1d", stem="2plus1d", **_TINY),
    _TINY_VIDEO,
    "test model: R(2+1)D, widths 4-16",
    test_only=True,
)
_register("tsm-tiny", replace(_TSM, **_TINY), _TINY_TSM, "test model: TSM basic blocks, widths 4-16", test_only=True)
_register(
    "tsm-tiny-bottleneck",
    replace(_TSM, block="bottleneck", **_TINY),
    _TINY_TSM,
    "test model: TSM bottlenecks, widths 4-16",
    test_only=True,
)
