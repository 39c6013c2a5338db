"""What every backbone family offers the rest of re2tal: feature maps, temporal features, and its residual stages."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from re2tal_cli.errors import BadInputError
from re2tal_cli.reversible.pieces import TimeLocality, recomputed_in_pieces
from re2tal_cli.reversible.recompute import Outside, default_outside
from re2tal_cli.reversible.stage import Coupling, Execution, ResidualStage

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """The preprocessing a pretrained backbone expects (timm's pretrained config, reduced to video)."""

    num_frames: int  # frames per clip at pretraining
    image_size: int  # square crop side, pixels
    frame_stride: int = 1  # source frames between sampled frames at pretraining (informative)
    mean: tuple[float, float, float] = IMAGENET_MEAN  # on RGB values scaled to [0, 1]
    std: tuple[float, float, float] = IMAGENET_STD


class VideoBackbone(nn.Module):
    """Base class of the backbone families. Input video: (B, 3, T, H, W), normalised with `InputSpec.mean/std`.

    Subclasses build their residual stages as `ResidualStage` modules over blocks registered in their own module tree
    and implement `feature_maps`; the classifier head (if any) is the submodule `head`. Every layer outside the
    residual stages (stems, a stage's first block, fusions, patch merging) is called through `run_outside`, which
    keeps or recomputes it as the wiring says.
    """

    out_channels: int  # C of feature_maps
    temporal_stride: int  # input frames per temporal step of feature_maps
    min_frames: int = 1  # input T must be a positive multiple of this
    min_size: int = 1  # input H and W must be at least this many pixels (a patch)
    outside: Outside = Outside.KEEP  # what a training step keeps of the layers outside the residual stages

    def feature_maps(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → (B, C, T', H', W') with T' = T / temporal_stride."""
        raise NotImplementedError

    def temporal_features(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) → (B, C, T'): feature maps averaged over space, the input of a TAL head."""
        return self.feature_maps(video).mean(dim=(-2, -1))

    def residual_stages(self) -> list[ResidualStage]:
        return [m for m in self.modules() if isinstance(m, ResidualStage)]

    def set_wiring(
        self,
        coupling: Coupling,
        execution: Execution | str,
        tolerance: float | None = None,
        stages=None,
        outside: Outside | str | None = None,
    ) -> list[int]:
        """Wire the residual stages (all, or those at the indices `stages`); returns the indices wired. `outside`:
        what a training step keeps of the other layers; None: recompute them unless the execution is plain."""
        self.outside = default_outside(execution) if outside is None else Outside(outside)
        all_stages = self.residual_stages()
        chosen = range(len(all_stages)) if stages is None else stages
        for i in chosen:
            if not 0 <= i < len(all_stages):
                raise IndexError(f"stage index {i} out of range: the model has {len(all_stages)} residual stages")
            all_stages[i].set_wiring(coupling, execution, tolerance)
        return list(chosen)

    def run_outside(
        self,
        layer: Callable[..., torch.Tensor],
        *inputs,
        modules: Sequence[nn.Module] | None = None,
        locality: TimeLocality | None = None,
        kept_below: int = 0,
    ) -> torch.Tensor:
        """layer(*inputs) for a layer outside the residual stages: its activations kept, or recomputed in the backward
        (only its inputs kept; in pieces of time when its `locality` is given) when `outside` says so and a graph is
        being recorded. `modules`: the layers it runs (default: `layer` itself). The layers that read its output make
        it again in their backward rather than keep it, unless it is smaller than `kept_below` bytes (remake.py)."""
        if self.outside is Outside.RECOMPUTE and torch.is_grad_enabled():
            modules = [layer] if modules is None else modules
            return recomputed_in_pieces(layer, inputs, modules, locality, kept_below)
        return layer(*inputs)

    def input_problem(self, frames: int, height: int, width: int) -> str | None:
        """What is wrong with an input of this size, if anything (checked before building or running a step)."""
        if frames < 1 or frames % self.min_frames:
            return f"T={frames} frames is not a multiple of {self.min_frames}, the temporal patch size"
        if min(height, width) < self.min_size:
            return f"{height}×{width} pixels is smaller than the {self.min_size}-pixel patch"
        return None

    def check_input(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise BadInputError(f"expected a video of shape (B, 3, T, H, W), got {tuple(video.shape)}")
        problem = self.input_problem(*video.shape[2:])
        if problem is not None:
            raise BadInputError(f"a video of shape {tuple(video.shape)}: {problem}")
