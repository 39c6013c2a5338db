"""Training checkpoints of OpenTAD and of the ActionFormer release: which of their state dicts to read, and their
keys in ours. Plain data and renaming; `checkpoint.load_backbone` reads the backbone part, `importing` the rest.

Both write `torch.save({epoch, state_dict, optimizer, scheduler, state_dict_ema})` from a DDP/DataParallel model, so
every key starts with `module.`; both evaluate the EMA (`state_dict_ema`). Keys after `module.`:

    OpenTAD (opentad/models/detectors/actionformer.py, a SingleStageDetector)
      backbone.model.backbone.*   the mmaction2 backbone inside OpenTAD's BackboneWrapper (end-to-end runs only);
                                  its Re² backbones wrap each block: Re²Swin `layers.i.blocks.j.inv_block.Fm.{norm1,
                                  attn}` / `.inv_block.Gm.{norm2,mlp}`, Re²SlowFast `layerN.blocks.j.inv_block.Fm.*`
                                  (the first, downsampling block `layerN.blocks.0.Fm.*` and `.downsample.*`)
      projection.*                Conv1DTransformerProj: embed.i (ConvModule: conv, norm), stem.i / branch.i
                                  (TransformerBlock: ln1, attn, ln2, mlp, drop_path_attn / drop_path_mlp scales)
      neck.fpn_norms.l.*          FPNIdentity: a LayerNorm per pyramid level
      rpn_head.*                  ActionFormerHead: cls_convs.i / reg_convs.i (ConvModule), cls_head, reg_head,
                                  scale.l, the loss_normalizer buffer
    ActionFormer release (libs/modeling/meta_archs.py, PtTransformer)
      backbone.*                  ConvTransformerBackbone: embd.i.conv, embd_norm.i, stem.i / branch.i (ln1, attn,
                                  ln2, mlp, drop_path_attn / drop_path_mlp), the LayerNorms' and scales' values
                                  stored as (1, C, 1)
      neck.fpn_norms.l.*          FPNIdentity
      cls_head.* / reg_head.*     head.i.conv, norm.i, cls_head.conv / offset_head.conv, scale.l (reg_head)

Our reversible wiring keeps the original blocks' parameters, so a Re² backbone's keys lose the coupling's wrapper
names and become mmaction2's, which the architecture's own converter reads.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from re2tal_cli.errors import BadCheckpointError
from re2tal_cli.models.layouts import Rule, rename_keys

EMA_ENTRY = "state_dict_ema"
MODEL_ENTRY = "state_dict"
OPENTAD_BACKBONE = "backbone.model."  # OpenTAD's BackboneWrapper holds an mmaction2 recognizer as `model`
# the recognizer's parts that are network weights (its data_preprocessor's mean and std are not)
_RECOGNIZER_PARTS = (f"{OPENTAD_BACKBONE}backbone.", f"{OPENTAD_BACKBONE}cls_head.")


class DetectorLayout(enum.StrEnum):
    OPENTAD = "opentad"
    ACTIONFORMER = "actionformer-release"


def detector_layout(sd: Mapping[str, torch.Tensor]) -> DetectorLayout | None:
    """Which detector wrote this (already unwrapped, `module.`-stripped) state dict; None: neither."""
    if any(k.startswith(("projection.", "rpn_head.", OPENTAD_BACKBONE)) for k in sd):
        return DetectorLayout.OPENTAD
    if any(k.startswith(("backbone.embd.", "reg_head.offset_head.")) for k in sd):
        return DetectorLayout.ACTIONFORMER
    return None


def training_entries(obj: object, path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of a training checkpoint (what `torch.load` returned), `module.` stripped, by entry:
    state_dict_ema first when there, then state_dict."""
    if not isinstance(obj, dict):
        raise BadCheckpointError(f"{path}: not a training checkpoint (expected a dict with {MODEL_ENTRY})")
    entries = {}
    for entry in (EMA_ENTRY, MODEL_ENTRY):
        value = obj.get(entry)
        if isinstance(value, dict):
            entries[entry] = {k.removeprefix("module."): v for k, v in value.items() if isinstance(v, torch.Tensor)}
    if not entries:
        raise BadCheckpointError(
            f"{path}: not an OpenTAD or ActionFormer training checkpoint (no {MODEL_ENTRY} or {EMA_ENTRY} entry)"
        )
    return entries


# --- the backbone ---------------------------------------------------------------------------------------------

_REVERSIBLE_WRAPPERS: list[Rule] = [
    (r"(.+\.blocks\.\d+)\.inv_block\.[FG]m\.(.+)", r"\1.\2"),  # Re²Swin: a block's two halves
    (r"(.+\.layer\d+)\.blocks\.(\d+)\.(?:inv_block\.)?Fm\.(.+)", r"\1.\2.\3"),  # Re²SlowFast: a bottleneck
    (r"(.+\.layer\d+)\.blocks\.(\d+)\.(downsample\..+)", r"\1.\2.\3"),  # Re²SlowFast: its shortcut
]


@dataclass(frozen=True)
class DetectorBackbone:
    state_dict: dict[str, torch.Tensor]  # mmaction2's recognizer layout (`backbone.*`, `cls_head.*`)
    other_keys: tuple[str, ...]  # the detector's keys outside the backbone (projection, neck, head)
    reversible: bool  # trained with Re²TAL's reversible wiring (OpenTAD's Re² backbones)


def detector_backbone(sd: Mapping[str, torch.Tensor], src: str) -> DetectorBackbone | None:
    """The video backbone of an OpenTAD detector's state dict in mmaction2's layout; None when `sd` is no
    detector's. A detector without one (trained on features) is an error: it has no backbone to read."""
    layout = detector_layout(sd)
    if layout is None:
        return None
    inside = {k.removeprefix(OPENTAD_BACKBONE): v for k, v in sd.items() if k.startswith(_RECOGNIZER_PARTS)}
    if not inside:
        raise BadCheckpointError(
            f"{src}: an {layout.value} detector trained on features holds no video backbone (import it as a run "
            "with `re2tal import`)"
        )
    reversible = any(".inv_block." in k for k in inside)
    other = tuple(k for k in sd if not k.startswith(_RECOGNIZER_PARTS))
    return DetectorBackbone(rename_keys(inside, _REVERSIBLE_WRAPPERS), other, reversible)


# --- the localizer ----------------------------------------------------------------------------------------------

_BLOCK = r"(stem|branch)\.(\d+)"
_ATTENTION = r"attn\.((?:query|key|value)_norm|query|key|value|proj)\.(weight|bias)"
_TRANSFORMER_RULES: list[Rule] = [  # the encoder's blocks, after the layout's prefix (ActionFormer's, OpenTAD's alike)
    (rf"{_BLOCK}\.ln([12])\.(weight|bias)", r"encoder.\1.\2.norm\3.\4"),
    (rf"{_BLOCK}\.attn\.(query|key|value)_conv\.conv\.weight", r"encoder.\1.\2.attn.\3_conv.weight"),
    (rf"{_BLOCK}\.{_ATTENTION}", r"encoder.\1.\2.attn.\3.\4"),
    (rf"{_BLOCK}\.mlp\.([03])\.(weight|bias)", r"encoder.\1.\2.mlp.\3.\4"),
    (rf"{_BLOCK}\.drop_path_attn\.scale", r"encoder.\1.\2.scale1.scale"),
    (rf"{_BLOCK}\.drop_path_mlp\.scale", r"encoder.\1.\2.scale2.scale"),
]


def _prefixed(prefix: str, rules: list[Rule]) -> list[Rule]:
    return [(re.escape(prefix) + pattern, target) for pattern, target in rules]


ACTIONFORMER_RULES: list[Rule] = [
    (r"backbone\.embd\.(\d+)\.conv\.(weight|bias)", r"encoder.embed_convs.\1.\2"),
    (r"backbone\.embd_norm\.(\d+)\.(weight|bias)", r"encoder.embed_norms.\1.\2"),
    *_prefixed("backbone.", _TRANSFORMER_RULES),
    (r"neck\.fpn_norms\.(\d+)\.(weight|bias)", r"neck.norms.\1.\2"),
    (r"(cls|reg)_head\.head\.(\d+)\.conv\.(weight|bias)", r"\1_head.convs.\2.\3"),
    (r"(cls|reg)_head\.norm\.(\d+)\.(weight|bias)", r"\1_head.norms.\2.\3"),
    (r"cls_head\.cls_head\.conv\.(weight|bias)", r"cls_head.output.\1"),
    (r"reg_head\.offset_head\.conv\.(weight|bias)", r"reg_head.output.\1"),
    (r"reg_head\.scale\.(\d+)\.scale", r"reg_head.scales.\1.scale"),
]
OPENTAD_RULES: list[Rule] = [
    (r"projection\.embed\.(\d+)\.conv\.(weight|bias)", r"encoder.embed_convs.\1.\2"),
    (r"projection\.embed\.(\d+)\.norm\.(weight|bias)", r"encoder.embed_norms.\1.\2"),
    *_prefixed("projection.", _TRANSFORMER_RULES),
    (r"neck\.fpn_norms\.(\d+)\.(weight|bias)", r"neck.norms.\1.\2"),
    (r"rpn_head\.(cls|reg)_convs\.(\d+)\.conv\.(weight|bias)", r"\1_head.convs.\2.\3"),
    (r"rpn_head\.(cls|reg)_convs\.(\d+)\.norm\.(weight|bias)", r"\1_head.norms.\2.\3"),
    (r"rpn_head\.(cls|reg)_head\.(weight|bias)", r"\1_head.output.\2"),
    (r"rpn_head\.scale\.(\d+)\.scale", r"reg_head.scales.\1.scale"),
    (r"rpn_head\.loss_normalizer", r"loss_normalizer"),
]
_RULES = {DetectorLayout.OPENTAD: OPENTAD_RULES, DetectorLayout.ACTIONFORMER: ACTIONFORMER_RULES}


@dataclass(frozen=True)
class DetectorLocalizer:
    state_dict: dict[str, torch.Tensor]  # our ActionFormer's keys
    source_keys: dict[str, str]  # our key → the detector's
    unmapped: tuple[str, ...]  # the detector's keys outside its backbone that have no place in our ActionFormer


def detector_localizer(sd: Mapping[str, torch.Tensor], layout: DetectorLayout) -> DetectorLocalizer:
    """The ActionFormer of a detector's state dict in our keys; per-channel values stored as (1, C, 1) (the release's
    LayerNorms, both layouts' drop-path scales) as (C,)."""
    mapped, source_keys, unmapped = {}, {}, []
    for key, value in sd.items():
        if key.startswith(_RECOGNIZER_PARTS):
            continue
        ours = next(iter(rename_keys({key: value}, _RULES[layout])))
        if ours == key:  # no rule matched
            unmapped.append(key)
        else:
            mapped[ours], source_keys[ours] = _channel_vector(ours, value), key
    return DetectorLocalizer(mapped, source_keys, tuple(unmapped))


_PER_CHANNEL = re.compile(r"(norm\d?|norms\.\d+)\.(weight|bias)|scale[12]\.scale")  # our LayerNorms and LayerScales


def _channel_vector(key: str, value: torch.Tensor) -> torch.Tensor:
    if _PER_CHANNEL.search(key) and value.ndim == 3 and value.shape[0] == value.shape[2] == 1:
        return value.reshape(-1)
    return value
