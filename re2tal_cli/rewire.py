"""`rewire`: a pretrained backbone checkpoint in, the same parameters with reversible wiring out."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from re2tal_cli import hub
from re2tal_cli.checkpoint import converted_values_equal, load_backbone, save_backbone
from re2tal_cli.errors import BadInputError, NumericalError
from re2tal_cli.fileio import atomic_dir, check_output_dir
from re2tal_cli.models.registry import get_arch
from re2tal_cli.reversible.check import CheckReport, check_reversibility
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
    out: str
    check: CheckReport | None

    def to_json(self) -> dict:
        data = asdict(self)
        data["dropped_keys"] = list(self.dropped_keys)
        data["stages"] = list(self.stages)
        return data


def rewire(
    src: str,
    out: Path,
    arch: str | None = None,
    alpha: float = 0.0,
    beta: float = 1.0,
    force: bool = False,
    check: bool = False,
    check_frames: int | None = None,
    check_size: int | None = None,
    check_dtype: torch.dtype = torch.float32,
) -> RewireReport:
    """Read `src`, load it into its architecture (`arch`, or the one its config or layout names), rewire every
    residual stage with (α, β), write `out`. Everything that can be wrong with the input is checked before anything
    is written."""
    try:
        coupling = Coupling(alpha, beta)
    except ValueError as error:
        raise BadInputError(str(error)) from None
    for name, value in (("check_frames", check_frames), ("check_size", check_size)):
        if value is not None and value <= 0:
            raise BadInputError(f"`{name}` must be positive, got {value}")
    if check and not coupling.invertible:
        raise BadInputError(f"`check` needs an invertible wiring (`beta` > 0), got `beta` {beta:g}")
    check_output_dir(out, force)
    loaded = load_backbone(src, arch)
    model, converted, spec = loaded.model, loaded.converted, get_arch(loaded.arch)
    execution = Execution.REVERSIBLE if coupling.invertible else Execution.PLAIN
    wiring = Wiring(alpha, beta, execution)
    stage_indices = wiring.apply(model)
    stages = model.residual_stages()

    report_check = None
    if check:
        frames = check_frames or spec.input.num_frames
        size = check_size or spec.input.image_size
        video = torch.randn(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)).to(check_dtype)
        report_check = check_reversibility(model, video, coupling)
        if not math.isfinite(report_check.gradient_error_level):
            raise NumericalError(
                f"{src}: the reversible gradients at alpha={alpha:g}, beta={beta:g} are not finite "
                f"(gradient error level {report_check.gradient_error_level}); nothing written"
            )

    digest = hub.sha256(loaded.path)
    config = {
        "arch": loaded.arch,
        "wiring": wiring.to_json(),
        "stages": [{"index": i, "blocks": len(stages[i].blocks)} for i in stage_indices],
        "num_classes": model.head.out_features if getattr(model, "head", None) is not None else 0,
        "source": {"uri": src, "sha256": digest, "format": converted.format, "dropped_keys": list(converted.dropped)},
    }
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
        out=str(out),
        check=report_check,
    )
