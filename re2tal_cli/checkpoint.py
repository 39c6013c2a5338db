"""Backbone checkpoints: building an architecture from any known layout, and re2tal's own self-describing format.

A re2tal backbone checkpoint is a directory (or the file inside it) with `model.safetensors` and a sidecar
`config.json` naming the architecture, the wiring (α, β, execution, which stages) and the source checkpoint, so every
later command rebuilds the model from the files alone.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from re2tal_cli import hub
from re2tal_cli.errors import BadCheckpointError
from re2tal_cli.models.base import InputSpec, VideoBackbone
from re2tal_cli.models.registry import Arch, ConvertedCheckpoint, get_arch, list_archs
from re2tal_cli.reversible.stage import Coupling, Execution

FORMAT = "re2tal-backbone/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Wiring:
    """How the residual stages of a backbone are wired and executed."""

    alpha: float = 1.0
    beta: float = 0.0
    execution: Execution = Execution.AUTOGRAD
    stages: tuple[int, ...] | None = None  # indices of the rewired stages; None: all

    def apply(self, model: VideoBackbone, tolerance: float | None = None) -> list[int]:
        """Set the wiring on the model's stages; returns the indices of the stages it applied to."""
        try:
            return model.set_wiring(Coupling(self.alpha, self.beta), self.execution, tolerance, self.stages)
        except IndexError as error:
            raise BadCheckpointError(str(error)) from None

    def to_json(self) -> dict:
        return {
            **asdict(self),
            "execution": self.execution.value,
            "stages": None if self.stages is None else list(self.stages),
        }

    @classmethod
    def from_json(cls, data: Mapping) -> Wiring:
        stages = data.get("stages")
        return cls(
            float(data["alpha"]),
            float(data["beta"]),
            Execution(data["execution"]),
            None if stages is None else tuple(stages),
        )


@dataclass
class LoadedBackbone:
    model: VideoBackbone
    arch: str
    source: str  # what the user named (hf:// URI or path)
    path: Path  # the weights file read
    source_format: str  # layout the weights came in
    wiring: Wiring
    config: dict = field(default_factory=dict)  # the sidecar config.json, if any

    @property
    def input(self) -> InputSpec:
        return get_arch(self.arch).input


def build_from_state_dict(arch: Arch, state_dict: Mapping[str, torch.Tensor], src: str, **overrides):
    """Convert `state_dict` to the arch's keys and load it strictly. Returns (model, converted checkpoint)."""
    try:
        converted = arch.convert(state_dict)
    except BadCheckpointError as error:
        raise BadCheckpointError(f"{src}: {error}{_likely_arch_hint(state_dict, arch.name)}") from None
    sd = converted.state_dict
    num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
    model = arch.create(**{"num_classes": num_classes, **overrides})
    _check_keys(model.state_dict(), sd, src, arch.name, state_dict)
    model.load_state_dict(sd, strict=True)
    return model, converted


def _check_keys(expected: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], src: str, name: str, raw) -> None:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
        raise BadCheckpointError(f"{src}: does not fit --arch {name}: {'; '.join(parts)}{_likely_arch_hint(raw, name)}")
    for key, value in expected.items():
        if tuple(sd[key].shape) != tuple(value.shape):
            raise BadCheckpointError(
                f"{src}: shape mismatch for {key}: checkpoint {tuple(sd[key].shape)}, --arch {name} expects "
                f"{tuple(value.shape)}{_likely_arch_hint(raw, name)}"
            )


def guess_arch(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Architectures whose keys and shapes match the checkpoint exactly. Each family's converter runs once (it
    rejects foreign layouts at once); each candidate's expected shapes are computed once per process, on meta."""
    matches = []
    converted_by_family: dict[object, ConvertedCheckpoint | None] = {}
    for arch in list_archs():
        if arch.convert not in converted_by_family:
            try:
                converted_by_family[arch.convert] = arch.convert(state_dict)
            except Exception:  # any converter failure means "not this family": a hint must never crash the error
                converted_by_family[arch.convert] = None
        converted = converted_by_family[arch.convert]
        if converted is None:
            continue
        sd = converted.state_dict
        num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 0
        if _expected_shapes(arch.name, num_classes) == {k: tuple(v.shape) for k, v in sd.items()}:
            matches.append(arch.name)
    return matches


@functools.cache
def _expected_shapes(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = get_arch(arch).create(num_classes=num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _likely_arch_hint(state_dict: Mapping[str, torch.Tensor], tried: str) -> str:
    likely = [name for name in guess_arch(state_dict) if name != tried]
    return f"; it looks like --arch {' or '.join(likely)}" if likely else ""


def load_backbone(src: str | Path, arch: str | None = None, **overrides) -> LoadedBackbone:
    """Load a re2tal checkpoint (wiring from its config.json) or a foreign one (`arch` required)."""
    path = hub.resolve(src)
    config = _read_config(path.parent / CONFIG_FILE)
    if config is not None:
        if arch is not None and arch != config["arch"]:
            raise BadCheckpointError(f"{src}: is a {config['arch']} checkpoint (config.json), not {arch}")
        arch = config["arch"]
    elif arch is None:
        raise BadCheckpointError(f"{src}: no re2tal config.json beside it; pass --arch to name its architecture")
    spec = get_arch(arch)
    model, converted = build_from_state_dict(spec, hub.read_state_dict(path), str(src), **overrides)
    wiring = Wiring.from_json(config["wiring"]) if config else Wiring()
    wiring.apply(model)
    source = config["source"]["uri"] if config else str(src)
    return LoadedBackbone(model, arch, source, path, converted.format, wiring, config or {})


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BadCheckpointError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None  # some other library's config.json (e.g. transformers'): not ours
    for key in ("arch", "wiring", "source"):
        if key not in data:
            raise BadCheckpointError(f"{path}: re2tal config lacks {key!r}")
    return data


def save_backbone(model: VideoBackbone, out_dir: Path, config: dict) -> None:
    """Write model.safetensors and config.json (with `format` added) into an existing directory."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, out_dir / WEIGHTS_FILE, metadata={"format": "pt", "re2tal": FORMAT})
    (out_dir / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **config}, indent=2) + "\n")


def converted_values_equal(model: VideoBackbone, converted: ConvertedCheckpoint) -> bool:
    """Every tensor of the model equals the converted source tensor (in the source's dtype, so an fp16 source stored
    as fp32 still compares exactly)."""
    state = model.state_dict()
    return all(torch.equal(state[k].to(v.dtype), v) for k, v in converted.state_dict.items())
