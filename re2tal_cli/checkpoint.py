"""Backbone checkpoints: building an architecture from any known layout, and re2tal's own self-describing format.

A re2tal backbone checkpoint is a directory (or the file inside it) with `model.safetensors` and a sidecar
`config.json` naming the architecture, the wiring (α, β, execution, which stages) and the source checkpoint, so every
later command rebuilds the model from the files alone.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from re2tal_cli import hub
from re2tal_cli.detector_checkpoints import detector_backbone
from re2tal_cli.errors import BadCheckpointError
from re2tal_cli.models.base import InputSpec, VideoBackbone
from re2tal_cli.models.registry import Arch, ConvertedCheckpoint, config_reader, get_arch, list_archs
from re2tal_cli.reversible.wiring import Wiring, WiringName
from re2tal_cli.text import plural

FORMAT = "re2tal-backbone/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass
class LoadedBackbone:
    model: VideoBackbone
    arch: str
    arch_from: str  # how the architecture was chosen: "given", "re2tal config.json", "transformers config.json", …
    source: str  # what the user named (hf:// URI or path)
    path: Path  # the weights file read
    converted: ConvertedCheckpoint  # the source tensors in our key names, its layout and the keys it dropped
    wiring: Wiring
    config: dict = field(default_factory=dict)  # the sidecar re2tal config.json, if any
    weights: str | None = None  # the entry of a training checkpoint read (state_dict_ema: its EMA); None: top level

    @property
    def source_format(self) -> str:
        return self.converted.format

    @property
    def input(self) -> InputSpec:
        return get_arch(self.arch).input


def build_from_state_dict(arch: Arch, state_dict: Mapping[str, torch.Tensor], src: str, **overrides):
    """Convert `state_dict` to the arch's keys and load it strictly. Returns (model, converted checkpoint).

    The model is built with what the checkpoint's layout implies (its classifier's size, a final norm, …: the
    converter's `build`), then `overrides`."""
    try:
        converted = arch.convert(state_dict)
    except BadCheckpointError as error:
        raise BadCheckpointError(f"{src}: {error}{_likely_arch_hint(state_dict, arch.name)}") from None
    sd = converted.state_dict
    model = arch.create(**{"num_classes": _num_classes(sd), **converted.build, **overrides})
    _check_keys(model.state_dict(), sd, src, arch.name, state_dict)
    model.load_state_dict(sd, strict=True)
    return model, converted


def _num_classes(sd: Mapping[str, torch.Tensor]) -> int:
    return sd["head.weight"].shape[0] if "head.weight" in sd else 0


def _check_keys(expected: Mapping[str, torch.Tensor], sd: Mapping[str, torch.Tensor], src: str, name: str, raw) -> None:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{plural(len(missing), 'missing key')} (first: {missing[0]})")
        if unexpected:
            parts.append(f"{plural(len(unexpected), 'unexpected key')} (first: {unexpected[0]})")
        raise BadCheckpointError(f"{src}: does not fit `arch` {name}: {'; '.join(parts)}{_likely_arch_hint(raw, name)}")
    for key, value in expected.items():
        if tuple(sd[key].shape) != tuple(value.shape):
            raise BadCheckpointError(
                f"{src}: shape mismatch for {key}: checkpoint {tuple(sd[key].shape)}, `arch` {name} expects "
                f"{tuple(value.shape)}{_likely_arch_hint(raw, name)}"
            )


def guess_arch(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Architectures whose keys and shapes match the checkpoint exactly. A converter rejects a foreign layout at
    once; each candidate's expected shapes are computed once per process, on meta."""
    matches = []
    for arch in list_archs():
        try:
            converted = arch.convert(state_dict)
        except Exception:  # any converter failure means "not this arch": a hint must never crash the error
            continue
        sd = converted.state_dict
        build = tuple(sorted(converted.build.items()))
        if _expected_shapes(arch.name, _num_classes(sd), build) == {k: tuple(v.shape) for k, v in sd.items()}:
            matches.append(arch.name)
    return matches


@functools.cache
def _expected_shapes(arch: str, num_classes: int, build: tuple = ()) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = get_arch(arch).create(num_classes=num_classes, **dict(build))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _likely_arch_hint(state_dict: Mapping[str, torch.Tensor], tried: str) -> str:
    likely = [name for name in guess_arch(state_dict) if name != tried]
    return f"; it looks like `arch` {' or '.join(likely)}" if likely else ""


def load_backbone(
    src: str | Path, arch: str | None = None, where_defined: dict | None = None, **overrides
) -> LoadedBackbone:
    """Load any backbone checkpoint: re2tal's (wiring from its config.json) or a foreign layout.

    The architecture is `arch` if given, else the one a config.json beside the weights names (re2tal's, or
    transformers' for VideoMAE: sizes and `use_mean_pooling`), else the only one whose keys and shapes the
    checkpoint fits; when several fit, the error lists them. `LoadedBackbone.arch_from` says which. `overrides`
    replace fields of the architecture's config; `where_defined` too, for the fields the architecture has (a
    training recipe's `frozen_bn` means nothing to a network without BatchNorm).

    An OpenTAD training checkpoint gives its EMA weights (else its weights) of the backbone inside the detector;
    the rest of the detector is reported as dropped, and a Re² backbone comes wired as it was trained (α=0, β=1,
    reversible)."""
    path = hub.resolve(src)
    config = _read_config(path.parent / CONFIG_FILE)
    state_dict, weights = hub.read_weights(path)
    detector = detector_backbone(state_dict, str(src))
    if detector is not None:
        state_dict = detector.state_dict
    if config is not None:
        if arch is not None and arch != config["arch"]:
            raise BadCheckpointError(f"{src}: is a {config['arch']} checkpoint (config.json), not `arch` {arch}")
        arch, arch_from = config["arch"], "re2tal config.json" if arch is None else "given"
    elif arch is not None:
        arch_from = "given"
    else:
        arch, arch_from, implied = _arch_of(src, path, state_dict)
        overrides = {**implied, **overrides}
    spec = get_arch(arch)
    fields = {f.name for f in dataclasses.fields(spec.config)}
    overrides = {**{k: v for k, v in (where_defined or {}).items() if k in fields}, **overrides}
    model, converted = build_from_state_dict(spec, state_dict, str(src), **overrides)
    if detector is not None:
        converted = dataclasses.replace(converted, format=f"opentad-{converted.format}",
                                        dropped=detector.other_keys + converted.dropped)  # fmt: skip
    if config:
        wiring = Wiring.from_json(config["wiring"])
    else:
        wiring = WiringName.REVERSIBLE.wiring if detector is not None and detector.reversible else Wiring()
    wiring.apply(model)
    source = config["source"]["uri"] if config else str(src)
    return LoadedBackbone(model, arch, arch_from, source, path, converted, wiring, config or {}, weights)


def _arch_of(src, path: Path, state_dict: Mapping[str, torch.Tensor]) -> tuple[str, str, dict]:
    """(architecture, how it was chosen, constructor arguments the source's config implies) of a foreign
    checkpoint with no `arch` given."""
    foreign = path.parent / CONFIG_FILE
    if foreign.is_file():
        read = config_reader(_read_json(foreign).get("model_type"))
        if read is not None:
            arch, implied = read(_read_json(foreign), foreign)
            return arch, "transformers config.json", implied
    candidates = guess_arch(state_dict)
    if len(candidates) == 1:
        return candidates[0], "checkpoint keys and shapes", {}
    if not candidates:
        raise BadCheckpointError(
            f"{src}: its keys and shapes fit no registered architecture; name one with `arch` (docs/models.md)"
        )
    raise BadCheckpointError(
        f"{src}: its keys and shapes fit {len(candidates)} architectures ({', '.join(candidates)}); name one with "
        "`arch`"
    )


def _read_json(path: Path) -> dict:
    from re2tal_cli.fileio import read_json

    data = read_json(path, BadCheckpointError)
    return data if isinstance(data, dict) else {}


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    data = _read_json(path)
    if data.get("format") != FORMAT:
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
