"""Convolution, BatchNorm and residual-block pieces shared by the ResNet-style families (SlowFast, ResNet-3D, TSM).

ReLU-in (Re²TAL supplementary A.2). A ResNet block computes ``h ← ReLU(h + body(h))``: the ReLU after the addition is
not invertible, so it must move inside the residual function F before a stage can be rewired. We define

    F(h) = ReLU(h + body(h)) − h

so that ``h + F(h)`` *is* the original block: at α=1, β=0 the rewired stage computes the pretrained network, Dr²Net's
α/β schedule starts from it, and at α=0, β=1 F is still a pure function of its input (Re²TAL's rewiring). F is never
computed as such: a block's forward is the original block, ``h + F(h)``, and the stage runs it that way
(`adds_input`, `re2tal_cli/reversible/stage.py`). The alternative reading of the paper's Fig. 9, ``F = ReLU∘body``, is
not the pretrained network at α=1, β=0; docs/models.md explains the choice.

Blocks keep their parts as named submodules (``conv1``, ``bn1``, …, ``shortcut``): the same block class is a block of a
`ResidualStage` or an ordinary block (the first block of each stage, which changes shape), and its checkpoint keys do
not depend on the wiring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _triple

from re2tal_cli.errors import BadCheckpointError
from re2tal_cli.models.layers import DropPath
from re2tal_cli.reversible.pieces import TimeLocality
from re2tal_cli.reversible.stage import ResidualStage

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "Conv2Plus1d",
    "ResLayer",
    "ResidualBlock",
    "Shortcut",
    "Stem",
    "TemporalShift",
    "conv3d",
    "freeze_batchnorm",
    "temporal_reach",
    "time_locality",
    "unknown_layout",
    "with_num_batches_tracked",
]

Triple = tuple[int, int, int]


def conv3d(cin: int, cout: int, kernel: Triple, stride: Triple = (1, 1, 1)) -> nn.Conv3d:
    """A bias-free Conv3d with "same" padding (k // 2 per dimension), as every ResNet video family uses."""
    return nn.Conv3d(cin, cout, kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=False)


class TemporalShift(nn.Module):
    """TSM's shift on (B, C, T, H, W): the first C/div channels take the next frame's values, the next C/div the
    previous frame's, zero at the ends; the rest stay. Same as the TSM release's shift on (B·T, C, H, W) clips of T
    segments. No parameters, no randomness: it can sit inside a reversible F."""

    def __init__(self, div: int = 8):
        super().__init__()
        self.div = div

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fold = x.shape[1] // self.div
        if fold == 0 or x.shape[2] < 2:
            return x
        left = F.pad(x[:, :fold, 1:], (0, 0, 0, 0, 0, 1))  # frame t ← t+1, last frame zero
        right = F.pad(x[:, fold : 2 * fold, :-1], (0, 0, 0, 0, 1, 0))  # frame t ← t−1, first frame zero
        return torch.cat([left, right, x[:, 2 * fold :]], dim=1)

    def extra_repr(self) -> str:
        return f"div={self.div}"


class Stem(nn.Module):
    """conv1 → bn1 → ReLU (→ conv2 → bn2 → ReLU) (→ spatial max-pool 3×3, stride 2)."""

    def __init__(self, convs: Sequence[tuple[int, int, Triple, Triple]], pool: bool):
        super().__init__()
        self.depth = len(convs)
        for i, (cin, cout, kernel, stride) in enumerate(convs, start=1):
            self.add_module(f"conv{i}", conv3d(cin, cout, kernel, stride))
            self.add_module(f"bn{i}", nn.BatchNorm3d(cout))
        self.pool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)) if pool else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.depth + 1):
            x = F.relu(self._modules[f"bn{i}"](self._modules[f"conv{i}"](x)))
        return x if self.pool is None else self.pool(x)


class Shortcut(nn.Module):
    """The projection shortcut of a stage's first block: 1×1×1 conv (strided) → BN."""

    def __init__(self, cin: int, cout: int, stride: Triple):
        super().__init__()
        self.conv = conv3d(cin, cout, (1, 1, 1), stride)
        self.bn = nn.BatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class Conv2Plus1d(nn.Module):
    """R(2+1)D's factorised 3×3×3 conv: spatial 1×3×3 → BN → ReLU → temporal 3×1×1 (torchvision's `Conv2Plus1D`)."""

    def __init__(self, cin: int, cout: int, mid: int, stride: Triple):
        super().__init__()
        self.spatial = conv3d(cin, mid, (1, 3, 3), (1, stride[1], stride[2]))
        self.bn = nn.BatchNorm3d(mid)
        self.temporal = conv3d(mid, cout, (3, 1, 1), (stride[0], 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temporal(F.relu(self.bn(self.spatial(x))))


def temporal_reach(module: nn.Module) -> int | None:
    """Frames on each side of t that output frame t of `module` reads, for layers that keep time ("same" temporal
    padding, no temporal stride): the sum of its convolutions', pools' and shifts' temporal reaches (serial layers add
    up; counting a parallel one too only widens the halo). None when one of them strides or pads otherwise in time."""
    reach = 0
    for m in module.modules():
        if isinstance(m, TemporalShift):
            reach += 1
        elif isinstance(m, (nn.Conv3d, nn.MaxPool3d, nn.AvgPool3d)):
            kernel, stride, padding = (_triple(v)[0] for v in (m.kernel_size, m.stride, m.padding))
            if stride != 1 or padding != kernel // 2:
                return None
            reach += kernel // 2
    return reach


def time_locality(module: nn.Module) -> TimeLocality | None:
    """The `TimeLocality` of a layer on (B, C, T, H, W) that keeps time, if it is local (`temporal_reach`)."""
    reach = temporal_reach(module)
    return None if reach is None else TimeLocality.same(2, reach)


class ResidualBlock(nn.Module):
    """A ResNet block: `body` (subclasses), optional projection `shortcut`, optional TSM `shift` before the body:
    ReLU(shortcut(x) + drop_path(body(shift(x)))), the shortcut the identity when absent. In a residual stage that is
    h + F(h) (ReLU-in, the module docstring)."""

    adds_input = True  # the forward is h + F(h), not F(h): the stage adds no h of its own (stage.py)

    def __init__(self, shortcut: nn.Module | None, drop_path: float, shift_div: int):
        super().__init__()
        self.shortcut = shortcut
        self.shift = TemporalShift(shift_div) if shift_div else None
        self.drop_path = DropPath(drop_path)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def time_locality(self) -> TimeLocality | None:
        """How far in time the block reaches (a residual stage recomputes it in pieces of time when BatchNorm is
        frozen)."""
        return time_locality(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return F.relu(x + self._branch(x))  # one expression: the branch is freed before the ReLU's output is made
        branch = self._branch(x)
        return F.relu(self.shortcut(x) + branch)

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path(self.body(x if self.shift is None else self.shift(x)))


class Bottleneck(ResidualBlock):
    """conv1 kt×1×1 → BN → ReLU → conv2 1×3×3 (strided) → BN → ReLU → conv3 1×1×1 → BN (SlowFast, TSM-R50)."""

    def __init__(
        self,
        cin: int,
        inner: int,
        cout: int,
        temporal_kernel: int = 1,
        stride: Triple = (1, 1, 1),
        shortcut: bool = False,
        drop_path: float = 0.0,
        shift_div: int = 0,
    ):
        super().__init__(Shortcut(cin, cout, stride) if shortcut else None, drop_path, shift_div)
        self.conv1 = conv3d(cin, inner, (temporal_kernel, 1, 1))
        self.bn1 = nn.BatchNorm3d(inner)
        self.conv2 = conv3d(inner, inner, (1, 3, 3), stride)
        self.bn2 = nn.BatchNorm3d(inner)
        self.conv3 = conv3d(inner, cout, (1, 1, 1))
        self.bn3 = nn.BatchNorm3d(cout)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.bn3(self.conv3(x))


class BasicBlock(ResidualBlock):
    """Two 3×3 convs with BN: conv1 (strided) → BN → ReLU → conv2 → BN. `conv` picks the 3×3 kind: "3d" (3×3×3,
    R3D), "2plus1d" (factorised, R(2+1)D, torchvision's midplanes) or "2d" (1×3×3, TSM-R18)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        conv: str,
        stride: Triple = (1, 1, 1),
        shortcut: bool = False,
        drop_path: float = 0.0,
        shift_div: int = 0,
    ):
        super().__init__(Shortcut(cin, cout, stride) if shortcut else None, drop_path, shift_div)
        mid = (cin * cout * 27) // (cin * 9 + 3 * cout)  # torchvision's R(2+1)D midplanes: about the 3×3×3 count
        self.conv1 = _conv3x3(conv, cin, cout, mid, stride)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = _conv3x3(conv, cout, cout, mid, (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(cout)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))


def _conv3x3(kind: str, cin: int, cout: int, mid: int, stride: Triple) -> nn.Module:
    if kind == "3d":
        return conv3d(cin, cout, (3, 3, 3), stride)
    if kind == "2plus1d":
        return Conv2Plus1d(cin, cout, mid, stride)
    if kind == "2d":
        return conv3d(cin, cout, (1, 3, 3), stride)
    raise ValueError(f"unknown conv kind {kind!r}; expected '3d', '2plus1d' or '2d'")


class ResLayer(nn.Module):
    """One ResNet stage: its blocks as submodules "0" … "n-1" (keys ``layerK.J.*``). Block 0 changes the shape and
    stays ordinary; blocks 1 … n-1 are the blocks of one `ResidualStage` (absent when the stage has a single block)."""

    def __init__(self, blocks: Sequence[ResidualBlock]):
        super().__init__()
        for i, block in enumerate(blocks):
            if i and block.shortcut is not None:
                raise ValueError("only the first block of a stage may have a projection shortcut")
            self.add_module(str(i), block)
        self.stage = ResidualStage(list(blocks[1:])) if len(blocks) > 1 else None

    @property
    def first(self) -> ResidualBlock:
        return self._modules["0"]

    def rest(self, x: torch.Tensor) -> torch.Tensor:
        """The residual stage of blocks 1 … n-1 (nothing for a single-block stage)."""
        return x if self.stage is None else self.stage(x)

    def forward(self, x: torch.Tensor, outside: Callable[..., torch.Tensor]) -> torch.Tensor:
        """`outside` calls the first block (the backbone's `run_outside`: it is not part of the residual stage)."""
        return self.rest(outside(self.first, x, locality=self.first.time_locality))


def freeze_batchnorm(module: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: running statistics used and never updated; the affine weight and bias
    still train (the usual end-to-end TAL setting, mmaction's `norm_eval`)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def with_num_batches_tracked(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dicts keep BatchNorm's `num_batches_tracked` (torch's default); a source without it (older
    checkpoints) gets a zero counter for each BatchNorm, so the strict key check sees the same keys. The counter only
    matters for momentum=None BatchNorm, which none of these families uses."""
    out = dict(sd)
    for key in sd:
        if key.endswith(".running_mean"):
            out.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0, dtype=torch.long))
    return out


def unknown_layout(sd: Mapping[str, torch.Tensor], arch: str, family: str, first_key: str, ours: tuple[str, ...]):
    """The error for a checkpoint in no layout the family knows (another family's, say), naming our first key and
    the checkpoint's first key outside our top-level prefixes, without building the model: `guess_arch` tries every
    arch on every bad checkpoint, and building each ResNet on the meta device just to reject a Swin file costs
    seconds."""
    foreign = next((k for k in sd if not k.startswith(ours)), next(iter(sd), "none"))
    return BadCheckpointError(
        f"does not fit `arch` {arch}: not a {family} checkpoint in any known layout; missing keys (first: "
        f"{first_key}); unexpected keys (first: {foreign})"
    )
