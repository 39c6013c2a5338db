"""Shared by the localizer tests."""

import math

from re2tal_cli.localizers import ActionFormerConfig


def tiny_config(**changes) -> ActionFormerConfig:
    """Three pyramid levels (strides 1, 2, 4), 16 channels, window 5: fast enough for many tests on one thread."""
    fields = dict(
        embed_dim=16,
        num_heads=2,
        window_size=5,
        num_embed_convs=1,
        num_stem_blocks=1,
        num_branch_blocks=2,
        head_dim=16,
        regression_ranges=((0, 4), (4, 8), (8, math.inf)),
        max_seq_len=64,
        dropout=0.0,
        path_drop=0.0,
    )
    fields.update(changes)
    return ActionFormerConfig(**fields)
