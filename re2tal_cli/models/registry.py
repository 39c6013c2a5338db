"""Architectures by name (timm's registry, strict): a name builds a backbone, converts foreign checkpoints, and knows
its preprocessing. Duplicate names raise; an unknown name suggests the closest ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from re2tal_cli.errors import UnknownNameError
from re2tal_cli.models.base import InputSpec, VideoBackbone

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ConvertedCheckpoint:
    state_dict: StateDict  # our key names
    format: str  # the layout it came in, e.g. "videomae-hf"
    dropped: tuple[str, ...] = ()  # source keys that belong to no backbone part (a pretraining decoder, say)
    build: dict = field(default_factory=dict)  # constructor arguments the layout implies (e.g. a final norm)


@dataclass(frozen=True)
class Arch:
    name: str
    family: str
    config: Any  # the family's config dataclass (ViTConfig, Swin3dConfig, …): sizes and defaults
    model: Callable[[Any], VideoBackbone]  # config → model
    converter: Callable[[Mapping[str, torch.Tensor], Arch], ConvertedCheckpoint]  # (state dict, this arch) → ours
    input: InputSpec
    description: str = ""
    test_only: bool = False  # tiny configs for tests and demos

    def create(self, **overrides) -> VideoBackbone:
        """The model, with config fields replaced by `overrides` (num_classes, drop_path, …)."""
        return self.model(replace(self.config, **overrides))

    def convert(self, state_dict: Mapping[str, torch.Tensor]) -> ConvertedCheckpoint:
        return self.converter(state_dict, self)


_ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    if arch.name in _ARCHS:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    _ARCHS[arch.name] = arch
    return arch


def register_family(
    family: str,
    model: Callable[[Any], VideoBackbone],
    converter: Callable[[Mapping[str, torch.Tensor], Arch], ConvertedCheckpoint],
) -> Callable[..., Arch]:
    """The `register(name, config, input, description, test_only=False)` of one backbone family."""

    def register(name: str, config: Any, input: InputSpec, description: str, test_only: bool = False) -> Arch:
        return register_arch(Arch(name, family, config, model, converter, input, description, test_only))

    return register


def get_arch(name: str) -> Arch:
    _load_families()
    try:
        return _ARCHS[name]
    except KeyError:
        raise UnknownNameError("architecture", name, _ARCHS, param="arch") from None


def list_archs(include_test: bool = True) -> list[Arch]:
    _load_families()
    return [a for a in _ARCHS.values() if include_test or not a.test_only]


def create_model(name: str, **overrides) -> VideoBackbone:
    return get_arch(name).create(**overrides)


# model_type of a foreign config.json (transformers') → the family's reader: (config, its path) → (arch name, the
# constructor arguments the config implies).
_CONFIG_READERS: dict[str, Callable[[dict, Path], tuple[str, dict]]] = {}


def register_config_reader(model_type: str, reader: Callable[[dict, Path], tuple[str, dict]]) -> None:
    if model_type in _CONFIG_READERS:
        raise ValueError(f"a config reader for model_type {model_type!r} is already registered")
    _CONFIG_READERS[model_type] = reader


def config_reader(model_type: object) -> Callable[[dict, Path], tuple[str, dict]] | None:
    _load_families()
    return _CONFIG_READERS.get(model_type) if isinstance(model_type, str) else None


def _load_families() -> None:
    import re2tal_cli.models  # noqa: F401  (the package imports every family module, which registers its archs)
