"""Checkpoint layouts as tables: each foreign layout is a list of (pattern → target) rules that `rename_keys` applies
to every key (timm's `checkpoint_filter_fn`, written as data). A family file holds one table per layout it reads,
plus the few value changes a layout needs (a fused qkv split, a 2-D kernel's temporal axis)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch

# (regex that must match the whole source key, target): a template with \\1 … groups, or a function of the match
# for targets that need arithmetic (torchvision's `features.2s` is stage s).
Rule = tuple[str, str | Callable[[re.Match], str]]


def rename_keys(sd: Mapping[str, torch.Tensor], rules: Sequence[Rule]) -> dict[str, torch.Tensor]:
    """Each key renamed by the first rule whose pattern matches it whole; a key no rule matches is kept as is (the
    strict key check then names it)."""
    compiled = [(re.compile(pattern), target) for pattern, target in rules]
    out = {}
    for key, value in sd.items():
        for pattern, target in compiled:
            if m := pattern.fullmatch(key):
                key = target(m) if callable(target) else m.expand(target)
                break
        out[key] = value
    return out
