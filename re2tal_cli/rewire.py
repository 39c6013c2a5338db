"""`rewire`: a pretrained backbone checkpoint in, the same parameters with reversible wiring out."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from re2tal_cli import hub
from re2tal_cli.checkpoint import converted_values_equal, load_backbone, save_backbone
from re2tal_cli.errors import BadInputError, NumericalError
from re2tal_cli.fileio import atomic_dir, check_output_dir
from re2tal_cli.models.registry import get_arch
from re2tal_cli.reversible.check import CheckReport, ErrorMap, check_reversibility
from re2tal_cli.reversible.check import error_map as compute_error_map
from re2tal_cli.reversible.recompute import Outside
from re2tal_cli.reversible.stage import Coupling, Execution
from re2tal_cli.reversible.wiring import Wiring


@dataclass(frozen=True)
class RewireReport:
    arch: str
    arch_from: str  # how the architecture was chosen (given, a config.json, the keys and shapes)
    source: str
    source_sha256: str
    source_format: str
    source_tensors: int  # tensors read from the source (after dropping non-backbone parts), buffers included
    source_values: int  # their element count
    written_tensors: int
    written_values: int
    parameters: int  # learnable values among them (BatchNorm statistics and other buffers are not)
    values_equal: bool  # every written tensor equals its source tensor bit for bit
    dropped_keys: tuple[str, ...]  # source keys that belong to no backbone part (pretraining decoder, …)
    stages: tuple[int, ...]  # blocks per rewired stage
    alpha: float
    beta: float
    out: str | None  # None: nothing written (an error map only)
    check: CheckReport | None
    error_map: ErrorMap | None = None
    error_map_plot: str | None = None
    source_weights: str | None = None  # the training checkpoint's entry read (state_dict_ema: its EMA weights)

    def to_json(self) -> dict:
        data = asdict(self)
        data["dropped_keys"] = list(self.dropped_keys)
        data["stages"] = list(self.stages)
        return data


def rewire(
    src: str,
    out: Path | None,
    arch: str | None = None,
    alpha: float = 0.0,
    beta: float = 1.0,
    outside: str | None = None,
    force: bool = False,
    check: bool = False,
    check_frames: int | None = None,
    check_size: int | None = None,
    check_dtype: torch.dtype = torch.float32,
    error_map: str | os.PathLike | None = None,
    grid: int = 5,
    progress: Callable[[int, int], None] | None = None,
) -> RewireReport:
    """Read `src`, load it into its architecture (`arch`, or the one its config or layout names), rewire every
    residual stage with (α, β), write `out`. Everything that can be wrong with the input is checked before anything
    is written. `outside` (keep or recompute; default: recompute unless the wiring is plain) is saved with the
    wiring: what a training step keeps of the layers outside the residual stages. `error_map`: also Dr²Net's gradient
    error level over a `grid` × `grid` lattice of α ∈ [0, 1], β ∈ [0.1, 1] at the check's input, as numbers in the
    report and a heatmap PNG there (`out` may then be None: nothing else is written); `progress(done, total)`
    follows its points."""
    if out is None and error_map is None:
        raise BadInputError("give `out` (the rewired checkpoint) or `error_map` (or both)")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise BadInputError(f"`grid` must be an integer ≥ 2, got {grid!r}")
    if error_map is not None:
        from re2tal_cli.plotting import check_plot_path

        check_plot_path(error_map)
    try:
        coupling = Coupling(alpha, beta)
    except ValueError as error:
        raise BadInputError(str(error)) from None
    if outside is not None and outside not in tuple(Outside):
        raise BadInputError(f"`outside` must be keep or recompute, got {outside!r}")
    for name, value in (("check_frames", check_frames), ("check_size", check_size)):
        if value is not None and value <= 0:
            raise BadInputError(f"`{name}` must be positive, got {value}")
    if check and not coupling.invertible:
        raise BadInputError(f"`check` needs an invertible wiring (`beta` > 0), got `beta` {beta:g}")
    if out is not None:
        check_output_dir(out, force)
    loaded = load_backbone(src, arch)
    model, converted, spec = loaded.model, loaded.converted, get_arch(loaded.arch)
    execution = Execution.REVERSIBLE if coupling.invertible else Execution.PLAIN
    wiring = Wiring(alpha, beta, execution, outside=outside)
    stage_indices = wiring.apply(model)
    stages = model.residual_stages()

    report_check = None
    frames = check_frames or spec.input.num_frames
    size = check_size or spec.input.image_size
    video = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)).to(check_dtype)
    if check:
        report_check = check_reversibility(model, video, coupling)
        if not math.isfinite(report_check.gradient_error_level):
            raise NumericalError(
                f"{src}: the reversible gradients at alpha={alpha:g}, beta={beta:g} are not finite "
                f"(gradient error level {report_check.gradient_error_level}); nothing written"
            )

    levels = None
    if error_map is not None:
        on_point = (lambda done: progress(done, grid * grid)) if progress else (lambda done: None)
        levels = compute_error_map(model, video, grid, on_point=on_point)
        plot_error_map(levels, f"{loaded.arch}, {src}", error_map)
    digest = hub.sha256(loaded.path)
    config = {
        "arch": loaded.arch,
        "wiring": wiring.to_json(),
        "stages": [{"index": i, "blocks": len(stages[i].blocks)} for i in stage_indices],
        "num_classes": model.head.out_features if getattr(model, "head", None) is not None else 0,
        "source": {
            "uri": src,
            "sha256": digest,
            "format": converted.format,
            "weights": loaded.weights,
            "dropped_keys": list(converted.dropped),
        },  # fmt: skip
    }
    if out is not None:
        with atomic_dir(out) as tmp:
            save_backbone(model, tmp, config)
    written = model.state_dict()
    return RewireReport(
        arch=loaded.arch,
        arch_from=loaded.arch_from,
        source=src,
        source_sha256=digest,
        source_format=converted.format,
        source_tensors=len(converted.state_dict),
        source_values=sum(v.numel() for v in converted.state_dict.values()),
        written_tensors=len(written),
        written_values=sum(v.numel() for v in written.values()),
        parameters=sum(p.numel() for p in model.parameters()),
        values_equal=converted_values_equal(model, converted),
        dropped_keys=converted.dropped,
        stages=tuple(len(stages[i].blocks) for i in stage_indices),
        alpha=alpha,
        beta=beta,
        out=None if out is None else str(out),
        check=report_check,
        error_map=levels,
        error_map_plot=None if error_map is None else str(error_map),
        source_weights=loaded.weights,
    )


def plot_error_map(levels: ErrorMap, title: str, path: str | os.PathLike) -> Path:
    """Dr²Net's Fig. 3 for this network: log10 of the gradient error level, α along x, β along y (β = 0.1 at the top,
    so finetuning from the pretrained network starts top right and ends at Re²TAL's (0, 1) bottom left)."""
    import numpy as np

    from re2tal_cli.plotting import new_figure, save_figure

    values = np.log10(np.maximum(np.asarray(levels.levels, dtype=float), 1e-300))
    fig = new_figure(5.2, 4.4)
    ax = fig.subplots()
    image = ax.imshow(values, cmap="viridis", origin="upper", aspect="auto")
    ax.set_xticks(range(len(levels.alphas)), [f"{a:.2f}" for a in levels.alphas], fontsize=8)
    ax.set_yticks(range(len(levels.betas)), [f"{b:.2f}" for b in levels.betas], fontsize=8)
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            ax.text(j, i, "inf" if not np.isfinite(v) else f"{v:.1f}", ha="center", va="center", fontsize=7,
                    color="white" if v < np.nanmean(values[np.isfinite(values)]) else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label="log10 gradient error level")
    shape = "×".join(map(str, levels.input_shape[2:]))
    ax.set_title(f"{title}\ninput {shape}, {levels.dtype}", fontsize=9)
    return save_figure(fig, path)
