"""`re2tal import`: an ActionFormer release or OpenTAD training checkpoint made a train-tal run directory.

    report = import_checkpoint("epoch_035.pth.tar", "runs/af", recipe="actionformer-thumos-i3d", data="thumos14/")

The run holds what train-tal writes (train/run.py): RUN/config.yaml (the recipe, its source filled in) and
RUN/checkpoints/last/ as after an epoch 0 — the source's weights as model.safetensors, its EMA as ema.safetensors,
a fresh optimizer state, meta.json describing the model — so `model_from_run`, `re2tal detect` and
`re2tal train-tal --resume` (further training, from epoch 1 of the recipe) read it like any run.

The localizer's hyperparameters are the recipe's (most, such as the attention window or the regression ranges, leave
no trace in the weights); every tensor the recipe's model has must be in the checkpoint with its shape, except the
loss normaliser the release does not save. Source tensors with no place in the model are listed, not dropped
silently. An OpenTAD detector with its video backbone becomes a frames run (end_to_end) whose `source.backbone` is
the file itself; any other detector a features run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from re2tal_cli import hub
from re2tal_cli.detector_checkpoints import (
    EMA_ENTRY,
    MODEL_ENTRY,
    DetectorLayout,
    detector_backbone,
    detector_layout,
    detector_localizer,
    training_entries,
)
from re2tal_cli.errors import BadCheckpointError, BadInputError
from re2tal_cli.text import plural

# recipes whose localizer is the one OpenTAD's and the release's THUMOS-14 configs train
DEFAULT_RECIPES = {"features": "actionformer-thumos-i3d", "end_to_end": "re2tal-thumos-swin3d-t"}
# our tensors that a source may lack: the release keeps its loss normaliser as a Python float, not in the state dict
_OPTIONAL = ("localizer.loss_normalizer",)


@dataclass(frozen=True)
class ImportReport:
    source: str
    source_sha256: str
    layout: str  # opentad, actionformer-release
    entries: tuple[str, ...]  # the source's state dicts imported (state_dict_ema, state_dict)
    evaluated: str  # the one `detect` and evaluation use: state_dict_ema when there (the run's EMA)
    mode: str  # features, or end_to_end (an OpenTAD detector with its video backbone)
    arch: str | None  # the backbone's architecture (end_to_end)
    wiring: dict | None  # the backbone's wiring (Re² backbones: α=0, β=1, reversible)
    recipe: str
    channels: int  # the localizer's input channels
    classes: tuple[str, ...]
    classes_from: str  # "classes file", "dataset" or "checkpoint" (unnamed: class_0, …)
    localizer_tensors: int
    backbone_tensors: int
    unmapped: tuple[str, ...]  # source keys with no place in the run's model
    not_in_source: tuple[str, ...]  # the model's tensors the source lacks, kept at the recipe's initial value
    out: str
    average_mAP: float | None = None  # with `evaluate`: on the recipe's validation subset

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def import_checkpoint(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    recipe: str | os.PathLike | None = None,
    sets: list[str] | tuple[str, ...] = (),
    classes: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    features: str | os.PathLike | None = None,
    arch: str | None = None,
    evaluate: bool = False,
    force: bool = False,
    progress=None,
) -> ImportReport:
    """Write the train-tal run `out` from the training checkpoint `src` (see the module docstring). `recipe`: a name
    in recipes/ or a YAML file (default: DEFAULT_RECIPES by mode), with `sets` KEY=VALUE overrides; class names from
    `classes` (a text file, one per line) or the dataset directory `data` (recorded, so the run can train further),
    else unnamed; `features`: the features directory of a features run (recorded, for `detect` and training);
    `arch`: the backbone's architecture when its keys fit several. `evaluate`: then evaluate the run on the
    recipe's validation subset of `data` (RUN/predictions.json, for `re2tal evaluate`; the average mAP in the
    report). Everything is checked before anything is written, and the directory appears whole or not at all."""
    from re2tal_cli.fileio import atomic_dir, check_output_dir
    from re2tal_cli.train.recipe import Mode, dump_yaml, load_recipe
    from re2tal_cli.train.run import Checkpoint, RunDir, absolute_path, describe_backbone, rng_state
    from re2tal_cli.train.tal import TALModel
    from re2tal_cli.train_tal import build_localizer, load_tal_backbone, make_tal_optimizer

    if classes is not None and data is not None:
        raise BadInputError("give `classes` or `data` (whose class list a run uses), not both")
    if evaluate and data is None:
        raise BadInputError("`evaluate` runs the detector on a dataset's validation videos: give `data`")
    check_output_dir(out, force)
    path = hub.resolve(src)
    if path.suffix == ".safetensors":
        raise BadCheckpointError(f"{src}: a training checkpoint is a torch.save file (.pth, .pth.tar), not safetensors")
    entries = training_entries(hub.load_torch_file(path), path)
    evaluated = EMA_ENTRY if EMA_ENTRY in entries else MODEL_ENTRY
    layout = detector_layout(entries[evaluated])
    if layout is None:
        first = next(iter(entries[evaluated]), "none")
        raise BadCheckpointError(
            f"{src}: {evaluated} is neither an OpenTAD detector's nor the ActionFormer release's (first key: {first})"
        )
    localizers = {entry: detector_localizer(sd, layout) for entry, sd in entries.items()}
    has_backbone = layout is DetectorLayout.OPENTAD and _holds_backbone(entries[evaluated], src)
    mode = Mode.END_TO_END if has_backbone else Mode.FEATURES
    if mode is Mode.END_TO_END and features is not None:
        raise BadInputError(f"{src}: an OpenTAD detector with its video backbone reads frames: give no `features`")
    if mode is Mode.FEATURES and arch is not None:
        raise BadInputError(f"{src}: a detector trained on features has no backbone: give no `arch`")

    cfg = load_recipe(recipe or DEFAULT_RECIPES[mode.value], sets)
    cfg.source = replace(cfg.source, mode=mode, data=absolute_path(data), features=absolute_path(features),
                         backbone=absolute_path(src) if has_backbone else None, arch=arch)  # fmt: skip
    evaluated_localizer = localizers[evaluated].state_dict
    names, classes_from = _class_names(classes, data, cfg, _checkpoint_classes(evaluated_localizer, src))
    backbone = loaded = None
    if has_backbone:
        loaded = load_tal_backbone(cfg)
        backbone = loaded.model
        cfg.source = replace(cfg.source, arch=loaded.arch)
        channels = backbone.out_channels
    else:
        channels = _checkpoint_channels(evaluated_localizer, src)
    localizer = build_localizer(cfg, channels, len(names))
    model = TALModel(localizer, backbone, loaded.input if loaded else None, feature_length=cfg.backbone.feature_length)
    initial = model.state_dict()
    states = {}
    for entry, sd in entries.items():
        state = {f"localizer.{k}": v for k, v in localizers[entry].state_dict.items()}
        if backbone is not None:
            state |= _backbone_state(loaded, sd, src)
        source_keys = {f"localizer.{k}": v for k, v in localizers[entry].source_keys.items()}
        states[entry] = _fitted(state, initial, src, entry, source_keys)
    model.load_state_dict(states[evaluated])

    described = {"classes": names, "class_names": names, "channels": channels}
    if backbone is not None:
        described |= describe_backbone(backbone, loaded.arch)
    digest = hub.sha256(path)
    not_in_source = tuple(k for k in _OPTIONAL if k not in {f"localizer.{k}" for k in evaluated_localizer})
    report = ImportReport(
        source=str(src), source_sha256=digest, layout=layout.value, entries=tuple(entries), evaluated=evaluated,
        mode=mode.value, arch=loaded.arch if loaded else None,
        wiring=described.get("wiring"), recipe=str(recipe or DEFAULT_RECIPES[mode.value]), channels=channels,
        classes=tuple(names), classes_from=classes_from, localizer_tensors=len(localizer.state_dict()),
        backbone_tensors=len(backbone.state_dict()) if backbone is not None else 0,
        unmapped=localizers[evaluated].unmapped, not_in_source=not_in_source, out=str(out),
    )  # fmt: skip
    fp16 = cfg.train.amp.value == "fp16"  # train-tal's gradient scaler: enabled (its state non-empty) only in fp16
    state = {
        "optimizer": make_tal_optimizer(cfg, model).state_dict(),
        "scaler": torch.amp.GradScaler("cpu").state_dict() if fp16 else {},
        "rng": rng_state(),
    }
    imported = {k: getattr(report, k) for k in ("source", "source_sha256", "layout", "entries", "evaluated")}
    meta = {"epoch": 0, "step": 0, "best": None, "model": described, "imported": {**imported,
            "unmapped": list(report.unmapped), "not_in_source": list(not_in_source)}}  # fmt: skip
    both = len(states) == 2  # the weights and their EMA: the run's model and EMA, as train-tal keeps them
    model_state, ema_state = (states[MODEL_ENTRY], states[EMA_ENTRY]) if both else (states[evaluated], None)
    checkpoint = Checkpoint(model_state, ema_state, state, meta)
    with atomic_dir(out) as tmp:
        run = RunDir(tmp)
        run.write_config(dump_yaml(cfg))
        run.save_checkpoint("last", checkpoint)
    if evaluate:
        from re2tal_cli.train_tal import evaluate_run

        report = replace(report, average_mAP=evaluate_run(out, progress=progress)["average_mAP"])
    return report


def _holds_backbone(sd: dict[str, torch.Tensor], src) -> bool:
    """Whether an OpenTAD detector's state dict holds its video backbone."""
    try:
        return detector_backbone(sd, str(src)) is not None
    except BadCheckpointError:  # a detector trained on features
        return False


def _backbone_state(loaded, sd: dict[str, torch.Tensor], src) -> dict[str, torch.Tensor]:
    """The backbone tensors of one entry in the run model's keys (`backbone.…`), converted by the architecture's
    converter as `load_backbone` converted the evaluated entry."""
    from re2tal_cli.models.registry import get_arch

    converted = get_arch(loaded.arch).convert(detector_backbone(sd, str(src)).state_dict)
    return {f"backbone.{k}": v for k, v in converted.state_dict.items()}


def _fitted(state: dict, initial: dict, src, entry: str, source_keys: dict[str, str]) -> dict[str, torch.Tensor]:
    """`state` checked against the model's own tensors: every one present (the optional ones filled with their
    initial value) with its shape, nothing beyond them."""

    def named(key: str) -> str:
        return f"{source_keys[key]} (our {key})" if key in source_keys else key

    extra = [k for k in state if k not in initial]
    if extra:
        raise BadCheckpointError(
            f"{src}: {entry} has {plural(len(extra), 'tensor')} the recipe's model lacks (first: {named(extra[0])}): "
            "the recipe's model.actionformer sizes (num_embed_convs, num_stem_blocks, num_branch_blocks, "
            "head_num_layers, …) differ from the checkpoint's"
        )
    missing = [k for k in initial if k not in state and k not in _OPTIONAL]
    if missing:
        raise BadCheckpointError(
            f"{src}: {entry} lacks {plural(len(missing), 'tensor')} of the recipe's model (first: {missing[0]}): its "
            "model.actionformer settings (layer_scale_init, embed_layer_norm, head_layer_norm, …) differ from the "
            "checkpoint's"
        )
    for key, value in state.items():
        if tuple(value.shape) != tuple(initial[key].shape):
            raise BadCheckpointError(
                f"{src}: shape mismatch for {named(key)}: checkpoint {tuple(value.shape)}, the recipe's model "
                f"{tuple(initial[key].shape)}"
            )
    return {k: state.get(k, initial[k]).to(initial[k].dtype) for k in initial}


def _checkpoint_classes(localizer: dict[str, torch.Tensor], src) -> int:
    if "cls_head.output.weight" not in localizer:
        raise BadCheckpointError(f"{src}: no classification output (cls_head / rpn_head.cls_head) in the detector")
    return localizer["cls_head.output.weight"].shape[0]


def _checkpoint_channels(localizer: dict[str, torch.Tensor], src) -> int:
    if "encoder.embed_convs.0.weight" not in localizer:
        raise BadCheckpointError(f"{src}: no first projection conv (backbone.embd.0 / projection.embed.0)")
    return localizer["encoder.embed_convs.0.weight"].shape[1]


def _class_names(classes, data, cfg, num_classes: int) -> tuple[list[str], str]:
    """The class names and where they came from; their number must be the checkpoint's."""
    if classes is not None:
        file = Path(classes)
        try:
            names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise BadInputError(f"{file}: cannot be read as a text file of class names ({error})") from None
        where, source = str(file), "classes file"
    elif data is not None:
        from re2tal_cli.data.datasets import class_names, declared_classes, load_annotations
        from re2tal_cli.train.data import subset_entries

        if cfg.data.class_agnostic:
            names = ["action"]
        else:
            train = subset_entries(load_annotations(data), cfg.data.train_subset, data)
            names = declared_classes(data) or class_names({e.id: e for e in train})
        where, source = str(data), "dataset"
    else:
        return [f"class_{i}" for i in range(num_classes)], "checkpoint"
    if len(names) != num_classes:
        raise BadInputError(f"{where}: {plural(len(names), 'class')}, the checkpoint's classifier has {num_classes}")
    return names, source
