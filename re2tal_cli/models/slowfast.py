"""SlowFast (Feichtenhofer et al., ICCV 2019): a slow pathway on every α-th frame and a fast, thin pathway on every
frame, joined by time-strided lateral fusions from fast to slow; bottleneck ResNet stages in both.

Rewiring (Re²TAL): in every stage of both pathways, the blocks after the first form one `ResidualStage`, with the
ReLU after each addition moved inside F (`resnet_blocks`, "ReLU-in"). The first block of each stage (it changes the
channel count, and strides space from stage 2 on) and the lateral fusions stay ordinary.

Input: the whole clip (B, 3, T, H, W) at the fast rate; the slow pathway takes frames 0, α, 2α, … (mmaction2's
`resample_rate`; PySlowFast's loader picks `linspace(0, T−1, T/α)`, which differs by up to α−1 frames). Feature
maps: the final slow map and the final fast map average-pooled over each α frames, concatenated on channels
(slow first, as PySlowFast's head concatenates): (B, C_slow + C_fast, T/α, H/32, W/32).

Checkpoint layouts: ours, facebookresearch/SlowFast (`s1.pathway0_stem.*`, …, `head.projection`), pytorchvideo's hub
models (`blocks.N.*`) and mmaction2's `ResNet3dSlowFast` (`backbone.slow_path.*`, `backbone.fast_path.*`,
`cls_head.fc_cls`). mmaction2's lateral connections are a bare convolution (no BatchNorm, no ReLU): a different
network, registered as the `…-mmaction` archs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from re2tal_cli.errors import BadCheckpointError
from re2tal_cli.models.base import InputSpec, VideoBackbone
from re2tal_cli.models.layers import drop_path_rates
from re2tal_cli.models.layouts import Rule, rename_keys
from re2tal_cli.models.registry import Arch, ConvertedCheckpoint, register_family
from re2tal_cli.models.resnet_blocks import (
    Bottleneck,
    ResLayer,
    Stem,
    conv3d,
    freeze_batchnorm,
    temporal_reach,
    time_locality,
    unknown_layout,
    with_num_batches_tracked,
)
from re2tal_cli.reversible.pieces import PIECE_BYTES, TimeLocality

__all__ = ["SlowFast", "SlowFastConfig", "convert_slowfast"]

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


@dataclass(frozen=True)
class SlowFastConfig:
    slow_layers: tuple[int, ...] = DEPTHS[50]  # bottlenecks per stage, slow pathway (R50: 3, 4, 6, 3)
    fast_layers: tuple[int, ...] = DEPTHS[50]  # bottlenecks per stage, fast pathway
    width: int = 64  # slow stem channels; stage k has inner width width·2^k and output 4× that
    alpha: int = 4  # frame-rate ratio fast/slow (8×8 models: 4, 4×16 models: 8)
    beta_inv: int = 8  # channel ratio slow/fast
    fusion_ratio: int = 2  # lateral fusion output channels = fusion_ratio × fast channels
    fusion_kernel: int = 7  # temporal kernel of the lateral convs (PySlowFast R50 8×8: 7, R101 and 4×16: 5)
    lateral_norm: bool = True  # BN + ReLU after each lateral conv (PySlowFast, pytorchvideo); False: mmaction2
    slow_temporal_kernels: tuple[int, ...] = (1, 1, 3, 3)  # conv1 temporal kernel per stage (res2…res5)
    fast_temporal_kernels: tuple[int, ...] = (3, 3, 3, 3)
    fast_stem_kernel: int = 5  # temporal kernel of the fast stem conv (the slow stem's is 1)
    num_classes: int = 0  # classifier outputs; 0 = no head
    dropout: float = 0.0  # dropout before the classifier (PySlowFast trains with 0.5)
    drop_path: float = 0.0  # stochastic depth on each bottleneck's body, linear from 0 over each pathway's blocks
    frozen_bn: bool = True  # BatchNorm stays in eval mode even when the model trains (affine parameters still train)


class Pathway(nn.Module):
    """One pathway: stem, then stages layer1…layer4 (res2…res5). `lateral[k]` extra input channels (the fused fast
    features) widen stage k's first block."""

    def __init__(self, cfg: SlowFastConfig, width: int, layers, temporal_kernels, stem_kernel: int, lateral):
        super().__init__()
        self.stem = Stem([(3, width, (stem_kernel, 7, 7), (1, 2, 2))], pool=True)
        rates = iter(drop_path_rates(cfg.drop_path, sum(layers)))
        cin = width
        for k, (n, kt, extra) in enumerate(zip(layers, temporal_kernels, lateral, strict=True)):
            inner, cout = width * 2**k, width * 2**k * 4
            stride = (1, 1, 1) if k == 0 else (1, 2, 2)
            blocks = [Bottleneck(cin + extra, inner, cout, kt, stride, shortcut=True, drop_path=next(rates))]
            blocks += [Bottleneck(cout, inner, cout, kt, drop_path=next(rates)) for _ in range(n - 1)]
            self.add_module(f"layer{k + 1}", ResLayer(blocks))
            cin = cout
        self.out_channels = cin
        self.num_stages = len(layers)

    def layer(self, k: int) -> ResLayer:
        """Stage k (0-based: res2 is 0), the submodule `layer{k+1}`."""
        return self.get_submodule(f"layer{k + 1}")


class Fusion(nn.Module):
    """Fast → slow lateral connection: conv (fusion_kernel × 1 × 1, temporal stride α) (→ BN → ReLU)."""

    def __init__(self, cin: int, cfg: SlowFastConfig):
        super().__init__()
        cout = cin * cfg.fusion_ratio
        self.conv = conv3d(cin, cout, (cfg.fusion_kernel, 1, 1), (cfg.alpha, 1, 1))
        self.bn = nn.BatchNorm3d(cout) if cfg.lateral_norm else None

    @property
    def reach(self) -> int:
        """Fast frames on each side of its window that an output frame reads."""
        return self.conv.kernel_size[0] // 2

    def forward(self, fast: torch.Tensor) -> torch.Tensor:
        x = self.conv(fast)
        return x if self.bn is None else F.relu(self.bn(x))


class SlowFast(VideoBackbone):
    def __init__(self, cfg: SlowFastConfig):
        super().__init__()
        if len(cfg.slow_layers) != len(cfg.fast_layers):
            raise ValueError(f"slow and fast pathways need the same number of stages, got {cfg.slow_layers}, "
                             f"{cfg.fast_layers}")  # fmt: skip
        if cfg.width % cfg.beta_inv:
            raise ValueError(f"width {cfg.width} is not divisible by beta_inv {cfg.beta_inv}")
        self.cfg = cfg
        n = len(cfg.slow_layers)
        fast_width = cfg.width // cfg.beta_inv
        fast_in = [fast_width] + [fast_width * 2**k * 4 for k in range(n - 1)]  # fast channels entering stage k
        lateral = [c * cfg.fusion_ratio for c in fast_in]
        self.slow = Pathway(cfg, cfg.width, cfg.slow_layers, cfg.slow_temporal_kernels, 1, lateral)
        self.fast = Pathway(cfg, fast_width, cfg.fast_layers, cfg.fast_temporal_kernels, cfg.fast_stem_kernel, [0] * n)
        self.fuse = nn.ModuleList(Fusion(c, cfg) for c in fast_in)  # fuse[k]: fast → slow before stage k
        self.out_channels = self.slow.out_channels + self.fast.out_channels
        self.temporal_stride = cfg.alpha
        self.min_frames = cfg.alpha
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout else None
        self.head = nn.Linear(self.out_channels, cfg.num_classes) if cfg.num_classes else None
        self.train()  # applies frozen_bn

    def train(self, mode: bool = True) -> SlowFast:
        super().train(mode)
        if self.cfg.frozen_bn:
            freeze_batchnorm(self)
        return self

    def pathways(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, T, H, W) → slow (B, C_slow, T/α, H/32, W/32) and fast (B, C_fast, T, H/32, W/32) final maps."""
        self.check_input(video)
        alpha = self.cfg.alpha
        # The stems' outputs are kept for the layers that read them (the fast one has two) rather than made again by
        # each, a 3-channel convolution's forward per reader (5 % of a CPU step at 32×112²) — up to PIECE_BYTES: on
        # long clips memory comes first (at 1024 frames they are 0.2 GB in float32).
        slow = self.run_outside(
            self._slow_stem,
            video,
            modules=[self.slow.stem],
            locality=TimeLocality((2,), 2, 0, (alpha,), alpha),
            kept_below=PIECE_BYTES,
        )
        fast = self.run_outside(self.fast.stem, video, locality=time_locality(self.fast.stem), kept_below=PIECE_BYTES)
        for k in range(self.slow.num_stages):
            slow_layer, fast_layer = self.slow.layer(k), self.fast.layer(k)
            reach = temporal_reach(slow_layer.first)  # in slow frames, and the fusion's in fast frames:
            fused = (
                None if reach is None else TimeLocality((2, 2), 2, reach - (-self.fuse[k].reach // alpha), (1, alpha))
            )
            slow = self.run_outside(
                partial(self._fused_first_block, k),
                slow,
                fast,
                modules=(slow_layer.first, self.fuse[k]),
                locality=fused,
            )
            fast = self.run_outside(fast_layer.first, fast, locality=time_locality(fast_layer.first))
            slow, fast = slow_layer.rest(slow), fast_layer.rest(fast)
        return slow, fast

    def _slow_stem(self, video: torch.Tensor) -> torch.Tensor:
        return self.slow.stem(video[:, :, :: self.cfg.alpha])

    def _fused_first_block(self, k: int, slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
        """Stage k's first slow block on the slow features with the fused fast features appended to their channels
        (one layer outside the stages, so a recompute keeps `slow` and `fast`, not their concatenation)."""
        return self.slow.layer(k).first(torch.cat([slow, self.fuse[k](fast)], dim=1))

    def feature_maps(self, video: torch.Tensor) -> torch.Tensor:
        slow, fast = self.pathways(video)
        b, c, t, h, w = fast.shape
        fast = fast.view(b, c, t // self.cfg.alpha, self.cfg.alpha, h, w).mean(3)  # (B, C_fast, T/α, H', W')
        return torch.cat([slow, fast], dim=1)  # (B, C_slow + C_fast, T/α, H/32, W/32)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) with a head (no softmax, unlike PySlowFast's eval mode), else the pooled feature."""
        slow, fast = self.pathways(video)
        pooled = torch.cat([slow.mean((2, 3, 4)), fast.mean((2, 3, 4))], dim=1)  # (B, C_slow + C_fast)
        if self.head is None:
            return pooled
        return self.head(pooled if self.dropout is None else self.dropout(pooled))


# --- checkpoint layouts -----------------------------------------------------------------------------------------

_PYSLOWFAST_BLOCK = {
    "branch1": "shortcut.conv",
    "branch1_bn": "shortcut.bn",
    "branch2.a": "conv1",
    "branch2.a_bn": "bn1",
    "branch2.b": "conv2",
    "branch2.b_bn": "bn2",
    "branch2.c": "conv3",
    "branch2.c_bn": "bn3",
}
_PYTORCHVIDEO_BLOCK = {
    "branch1_conv": "shortcut.conv",
    "branch1_norm": "shortcut.bn",
    "branch2.conv_a": "conv1",
    "branch2.norm_a": "bn1",
    "branch2.conv_b": "conv2",
    "branch2.norm_b": "bn2",
    "branch2.conv_c": "conv3",
    "branch2.norm_c": "bn3",
}
_PATHWAY = ("slow", "fast")
_OURS = ("slow.", "fast.", "fuse.")  # our top-level prefixes (and `head.`, shared with PySlowFast)

PYSLOWFAST_RULES: list[Rule] = [  # facebookresearch/SlowFast: s1 stems, s2…s5 stages, s1…s4_fuse, head.projection
    (r"s1\.pathway(\d)_stem\.(conv|bn)\.(\w+)", lambda m: f"{_PATHWAY[int(m[1])]}.stem.{m[2]}1.{m[3]}"),
    (r"s(\d)_fuse\.conv_f2s\.(\w+)", lambda m: f"fuse.{int(m[1]) - 1}.conv.{m[2]}"),
    (r"s(\d)_fuse\.bn\.(\w+)", lambda m: f"fuse.{int(m[1]) - 1}.bn.{m[2]}"),
    (
        r"s(\d)\.pathway(\d)_res(\d+)\.(branch1|branch1_bn|branch2\.[abc]|branch2\.[abc]_bn)\.(\w+)",
        lambda m: f"{_PATHWAY[int(m[2])]}.layer{int(m[1]) - 1}.{m[3]}.{_PYSLOWFAST_BLOCK[m[4]]}.{m[5]}",
    ),
    (r"head\.projection\.(\w+)", r"head.\1"),
]
PYTORCHVIDEO_RULES: list[Rule] = [  # pytorchvideo's hub models: blocks.0 stems, blocks.1…4 stages, blocks.5/6 head
    (
        r"blocks\.0\.multipathway_blocks\.(\d)\.(conv|norm)\.(\w+)",
        lambda m: f"{_PATHWAY[int(m[1])]}.stem.{'conv' if m[2] == 'conv' else 'bn'}1.{m[3]}",
    ),
    (r"blocks\.(\d)\.multipathway_fusion\.conv_fast_to_slow\.(\w+)", r"fuse.\1.conv.\2"),
    (r"blocks\.(\d)\.multipathway_fusion\.norm\.(\w+)", r"fuse.\1.bn.\2"),
    (
        r"blocks\.(\d)\.multipathway_blocks\.(\d)\.res_blocks\.(\d+)\.(branch1_conv|branch1_norm|branch2\.(?:conv|norm)_[abc])\.(\w+)",
        lambda m: f"{_PATHWAY[int(m[2])]}.layer{m[1]}.{m[3]}.{_PYTORCHVIDEO_BLOCK[m[4]]}.{m[5]}",
    ),
    (r"blocks\.\d+\.proj\.(\w+)", r"head.\1"),
]
MMACTION_RULES: list[Rule] = [  # mmaction2's ResNet3dSlowFast (bare lateral convs: the …-mmaction archs)
    (r"backbone\.(slow|fast)_path\.conv1\.(conv|bn)\.(\w+)", r"\1.stem.\g<2>1.\3"),
    (r"backbone\.slow_path\.conv1_lateral\.conv\.(\w+)", r"fuse.0.conv.\1"),
    (r"backbone\.slow_path\.layer(\d)_lateral\.conv\.(\w+)", r"fuse.\1.conv.\2"),
    (r"backbone\.(slow|fast)_path\.(layer\d\.\d+)\.downsample\.(conv|bn)\.(\w+)", r"\1.\2.shortcut.\3.\4"),
    (r"backbone\.(slow|fast)_path\.(layer\d\.\d+)\.conv(\d)\.conv\.(\w+)", r"\1.\2.conv\3.\4"),
    (r"backbone\.(slow|fast)_path\.(layer\d\.\d+)\.conv(\d)\.bn\.(\w+)", r"\1.\2.bn\3.\4"),
    (r"cls_head\.fc_cls\.(\w+)", r"head.\1"),
]


def convert_slowfast(sd: Mapping[str, torch.Tensor], arch: Arch) -> ConvertedCheckpoint:
    """Map a SlowFast checkpoint in any known layout to our keys; values untouched except mmaction2's classifier,
    whose input columns are reordered (mmaction2 concatenates fast before slow). Our own layout is passed to the
    strict key check as is; any other layout raises, naming our first key and the checkpoint's first foreign one."""
    if any(k.startswith("s1.pathway0_stem.") for k in sd):
        out, fmt = rename_keys(sd, PYSLOWFAST_RULES), "pyslowfast"
    elif any(k.startswith("blocks.0.multipathway_blocks.") for k in sd):
        out, fmt = rename_keys(sd, PYTORCHVIDEO_RULES), "pytorchvideo"
    elif any(k.startswith("backbone.slow_path.") for k in sd):
        out, fmt = _slow_first_classifier(rename_keys(sd, MMACTION_RULES)), "mmaction2"
    elif any(k.startswith(_OURS) for k in sd):
        return ConvertedCheckpoint(with_num_batches_tracked(sd), "re2tal")
    else:
        raise unknown_layout(sd, arch.name, "SlowFast", "slow.stem.conv1.weight", (*_OURS, "head."))
    has_lateral_norm = any(re.fullmatch(r"fuse\.\d+\.bn\.weight", k) for k in out)
    if has_lateral_norm != arch.config.lateral_norm:
        kind = "with" if has_lateral_norm else "without"
        other = "a non-mmaction SlowFast arch (slowfast-r50, …)" if has_lateral_norm else "a …-mmaction arch"
        raise BadCheckpointError(
            f"a {fmt} SlowFast checkpoint has lateral connections {kind} BatchNorm+ReLU: use {other}"
        )
    return ConvertedCheckpoint(with_num_batches_tracked(out), fmt)


def _slow_first_classifier(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmaction2's SlowFastHead concatenates (fast, slow): its classifier's columns reordered to (slow, fast)."""
    if "head.weight" in sd:
        fast = _fast_channels(sd)
        w = sd["head.weight"]
        sd["head.weight"] = torch.cat([w[:, fast:], w[:, :fast]], dim=1)
    return sd


def _fast_channels(sd: Mapping[str, torch.Tensor]) -> int:
    last = max(int(m[1]) for k in sd if (m := re.fullmatch(r"fast\.layer(\d)\.0\.bn3\.weight", k)))
    return sd[f"fast.layer{last}.0.bn3.weight"].shape[0]


# --- architectures ----------------------------------------------------------------------------------------------

_KINETICS = dict(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225))  # PySlowFast's Kinetics normalisation


_register = register_family("slowfast", SlowFast, convert_slowfast)

# fusion kernels: PySlowFast SLOWFAST_8x8_R50 7, SLOWFAST_8x8_R101_101_101 5, SLOWFAST_4x16_R50 5;
# mmaction2 8×8 configs 7, 4×16 configs 5. R152 has no official PySlowFast config: it follows R101.
for _depth in (50, 101, 152):
    for _alpha, _suffix in ((4, ""), (8, "-4x16")):
        _layers = DEPTHS[_depth]
        _slow = 32 // _alpha
        _input = InputSpec(num_frames=32, image_size=224, frame_stride=2, **_KINETICS)
        _kernel = 7 if (_alpha, _depth) == (4, 50) else 5
        _register(
            f"slowfast-r{_depth}{_suffix}",
            SlowFastConfig(slow_layers=_layers, fast_layers=_layers, alpha=_alpha, fusion_kernel=_kernel),
            _input,
            f"SlowFast R{_depth} {_slow}×{64 // _slow} (PySlowFast/pytorchvideo layout), 32×224² at stride 2",
        )
        _register(
            f"slowfast-r{_depth}{_suffix}-mmaction",
            SlowFastConfig(
                slow_layers=_layers, fast_layers=_layers, alpha=_alpha, fusion_kernel=7 if _alpha == 4 else 5,
                lateral_norm=False,
            ),
            _input,
            f"SlowFast R{_depth} {_slow}×{64 // _slow} as mmaction2 builds it (bare lateral convs), 32×224²",
        )  # fmt: skip

_TINY = SlowFastConfig(
    slow_layers=(2, 3, 1, 2), fast_layers=(2, 3, 1, 2), width=8, alpha=2, beta_inv=4, fusion_kernel=3
)  # rewired blocks per stage: 1, 2, 0, 1 (odd, even, none)
_TINY_INPUT = InputSpec(num_frames=4, image_size=32, **_KINETICS)
_register("slowfast-tiny", _TINY, _TINY_INPUT, "test model: SlowFast, width 8, stages 2-3-1-2", test_only=True)
_register(
    "slowfast-tiny-mmaction",
    replace(_TINY, lateral_norm=False),
    _TINY_INPUT,
    "test model: mmaction2-style SlowFast (bare lateral convs), width 8",
    test_only=True,
)
