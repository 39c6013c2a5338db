"""Architectures by name (timm's registry, strict): a name builds a backbone, converts foreign checkpoints, and knows
its preprocessing. Duplicate names raise; an unknown name suggests the closest ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from re2tal_cli.errors import UnknownNameError
from re2tal_cli.models.base import InputSpec, VideoBackbone

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ConvertedCheckpoint:
    state_dict: StateDict  # our key names
    format: str  # the layout it came in, e.g. "videomae-hf"
    dropped: tuple[str, ...] = ()  # source keys that belong to no backbone part (a pretraining decoder, say)


@dataclass(frozen=True)
class Arch:
    name: str
    family: str
    build: Callable[..., VideoBackbone]  # keyword arguments: num_classes, drop_path, … (family-specific)
    input: InputSpec
    convert: Callable[[Mapping[str, torch.Tensor]], ConvertedCheckpoint]
    description: str = ""
    test_only: bool = False  # tiny configs for tests and demos
    defaults: dict = field(default_factory=dict)

    def create(self, **overrides) -> VideoBackbone:
        return self.build(**{**self.defaults, **overrides})


_ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    if arch.name in _ARCHS:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    _ARCHS[arch.name] = arch
    return arch


def get_arch(name: str) -> Arch:
    _load_families()
    try:
        return _ARCHS[name]
    except KeyError:
        raise UnknownNameError("architecture", name, _ARCHS) from None


def list_archs(include_test: bool = True) -> list[Arch]:
    _load_families()
    return [a for a in _ARCHS.values() if include_test or not a.test_only]


def create_model(name: str, **overrides) -> VideoBackbone:
    return get_arch(name).create(**overrides)


def _load_families() -> None:
    import re2tal_cli.models  # noqa: F401  (the package imports every family module, which registers its archs)
