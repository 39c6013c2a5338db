"""`train-tal`: temporal action localization trained on a dataset directory, end to end on frames (Re²TAL), on a
frozen backbone's features computed on the fly, or on extracted features (the classic two-step pipeline).

    from re2tal_cli.train_tal import train_tal
    summary = train_tal("data/synth", "runs/tal", backbone="runs/rw", recipe="synthetic")

Everything the run needs is checked before it starts (recipe, dataset, subsets, labels, every video or features file,
the external scores); the run directory (`train/run.py`) then holds the resolved config, the metrics of every step,
a complete checkpoint after every epoch (`resume=True` continues from it: the same result, bit for bit on CPU, as a
run never interrupted), the predictions of the last evaluation and the summary.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from re2tal_cli.errors import BadDataError, BadInputError, BadRecipeError
from re2tal_cli.text import plural
from re2tal_cli.train.loop import Progress
from re2tal_cli.train.recipe import Mode, Recipe, Sampling
from re2tal_cli.train.run import RunDir, absolute_path


def train_tal(
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    backbone: str | None = None,
    arch: str | None = None,
    frozen: bool = False,
    features: str | os.PathLike | None = None,
    recipe: str | os.PathLike | None = None,
    sets: list[str] | tuple[str, ...] = (),
    epochs: int | None = None,
    seed: int | None = None,
    amp: str | None = None,
    device: str = "cpu",
    resume: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train and evaluate; returns the summary (also RUN/summary.json). `recipe`: a name in recipes/ or a YAML
    file; `sets`: KEY=VALUE overrides; `epochs`, `seed`, `amp`: shortcuts for train.epochs, seed, train.amp. With
    `resume`, the run continues from RUN/checkpoints/last with RUN/config.yaml, and takes no recipe options."""
    from re2tal_cli.train.loop import run_job
    from re2tal_cli.train.recipe import Recipe

    return run_job(
        out,
        kind=Recipe,
        new_recipe=lambda: new_recipe(data, backbone, arch, frozen, features, recipe, sets, epochs, seed, amp),
        build=TALJob.build,
        device=device,
        resume=resume,
        force=force,
        not_on_resume={
            "data": data,
            "backbone": backbone,
            "arch": arch,
            "frozen": frozen,
            "features": features,
            "recipe": recipe,
            "sets": sets,
            "epochs": epochs,
            "seed": seed,
            "amp": amp,
        },  # fmt: skip
        progress=progress,
    )


def new_recipe(data, backbone, arch, frozen, features, recipe, sets, epochs, seed, amp) -> Recipe:
    from re2tal_cli.train.recipe import load_recipe

    if (backbone is None) == (features is None):
        raise BadInputError("give one of `backbone` (frames: end to end, or with `frozen`) and `features`")
    if frozen and backbone is None:
        raise BadInputError("`frozen` trains on a backbone's features computed on the fly: give `backbone`")
    if arch is not None and backbone is None:
        raise BadInputError("`arch` names the architecture of `backbone`: give `backbone`")
    if data is None:
        raise BadInputError("give the dataset directory (`data`)")
    shortcuts = [f"train.epochs={epochs}"] if epochs is not None else []
    shortcuts += [f"seed={seed}"] if seed is not None else []
    shortcuts += [f"train.amp={amp}"] if amp is not None else []
    cfg = load_recipe(recipe or "synthetic", [*sets, *shortcuts])
    mode = Mode.FEATURES if features is not None else Mode.FROZEN if frozen else Mode.END_TO_END
    cfg.source = replace(cfg.source, mode=mode, data=absolute_path(data), backbone=absolute_path(backbone), arch=arch,
                         features=absolute_path(features))  # fmt: skip
    return cfg


@dataclass
class TALJob:
    """A configured run: the model, its data, and the pieces of the loop, all checked."""

    cfg: Recipe
    device: torch.device
    model: Any  # TALModel
    classes: list[str]  # label names of the localizer's classes (one "action" class when class-agnostic)
    class_names: list[str]  # names the predictions use (the external scores' classes when fused)
    train_set: Any
    val_entries: list
    val_features: Any  # FeatureDataset of the validation subset (features mode)
    ext_scores: dict[str, list[float]] | None
    arch: str | None  # the backbone's architecture (frames modes)
    fidelity: Any = None  # LoFi: the current update's train.lofi.Fidelity (None: full fidelity)
    updates_per_epoch: int = 0

    @classmethod
    def build(cls, cfg: Recipe, device: torch.device) -> TALJob:
        from re2tal_cli.data.datasets import class_names, declared_classes, load_annotations
        from re2tal_cli.train.data import subset_entries

        root = cfg.source.data
        if root is None or not Path(root).is_dir():
            raise BadDataError(f"{root}: no such dataset directory")
        annotations = load_annotations(root)
        train_entries = subset_entries(annotations, cfg.data.train_subset, root)
        val_entries = subset_entries(annotations, cfg.data.val_subset, root)
        names = declared_classes(root) or class_names({e.id: e for e in train_entries})
        classes = ["action"] if cfg.data.class_agnostic else names
        _check_labels(root, train_entries + val_entries, names)
        ext_scores, class_names_out = None, classes
        if cfg.eval.ext_scores is not None:
            ext_scores, class_names_out = _read_external_scores(cfg.eval.ext_scores, val_entries, names)
        elif cfg.data.class_agnostic:
            raise BadRecipeError(
                "data.class_agnostic detections need labels: set eval.ext_scores (an external classifier)"
            )
        if cfg.data.class_agnostic:
            train_entries = [_agnostic(e) for e in train_entries]
        arch = None
        if cfg.source.mode is Mode.FEATURES:
            if cfg.lofi.mode != "none":
                raise BadRecipeError("recipe key lofi.mode: low fidelity reduces frames; a features run has none")
            model, train_set, val_features = _features_setup(cfg, train_entries, val_entries, classes)
        else:
            model, train_set, arch = _frames_setup(cfg, root, train_entries, val_entries, classes)
            val_features = None
        return cls(cfg, device, model, classes, class_names_out, train_set, val_entries, val_features, ext_scores, arch)

    # --- the task of the shared loop (train/loop.py) ----------------------------------------------------------

    metric = "average_mAP"

    def optimizer(self) -> torch.optim.Optimizer:
        return make_tal_optimizer(self.cfg, self.model)

    def loader(self):
        """The training batches, shuffled per epoch (`loader.sampler.set_epoch`) from the recipe's seed; under
        torchrun, this process's share of them."""
        from re2tal_cli.data.datasets import make_loader
        from re2tal_cli.train.data import collate_features
        from re2tal_cli.train.distributed import current

        cfg, model = self.cfg, self.model
        collate = None
        if model.backbone is None:
            multiple, max_len = model.localizer.pad_multiple, model.localizer.config.max_seq_len

            def collate(batch):
                return collate_features(batch, multiple, max_len)

        loader = make_loader(self.train_set, cfg.train.batch_size, shuffle=True, workers=cfg.data.workers,
                             seed=cfg.seed, collate_fn=collate, shard=current().shard)  # fmt: skip
        self.updates_per_epoch = -(-len(loader) // cfg.train.accumulate)
        return loader

    def losses(self, batch, autocast) -> dict[str, torch.Tensor]:
        from re2tal_cli.train.lofi import reduce_batch
        from re2tal_cli.train.tal import losses

        model, full_length = self.model, self.model.feature_length
        if self.fidelity is not None:  # fewer frames give fewer features: T-LoFi's shorter sequences
            batch = reduce_batch(batch, self.fidelity)
            if full_length is not None:
                model.feature_length = full_length // self.fidelity.temporal
        try:
            result = losses(model, batch, self.device, autocast)
        finally:
            model.feature_length = full_length
        return {k: v for k, v in result.items() if k == "loss" or k.endswith("_loss")}  # logged per step

    def residual_stages(self) -> list:
        return self.model.backbone.residual_stages() if self.model.backbone is not None else []

    def before_update(self, step: int) -> dict[str, Any]:
        """LoFi: this update's fidelity (a function of the step: a resumed run continues the cycle)."""
        from re2tal_cli.train.lofi import fidelity_at

        if self.cfg.lofi.mode == "none":
            return {}
        self.fidelity = fidelity_at(self.cfg.lofi, step, self.updates_per_epoch)
        return {"lofi": self.fidelity.name}

    def after_update(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        """What rebuilds the model without its sources (`model_from_run`): classes, channels, backbone arch, wiring."""
        model = self.model
        described = {"classes": self.classes, "class_names": self.class_names, "channels": model.localizer.in_channels}
        if model.backbone is not None:
            from re2tal_cli.train.run import describe_backbone

            described |= describe_backbone(model.backbone, self.arch)
        return described

    # --- evaluation ---------------------------------------------------------------------------------------

    def evaluate(self, run: RunDir, ema, epoch: int, step: int, progress: Progress) -> dict[str, Any]:
        """Detections of every validation video (with the EMA weights when on) → RUN/predictions.json → mAP by the
        code of `re2tal evaluate`; logged."""
        from re2tal_cli.evaluate import evaluate
        from re2tal_cli.fileio import write_json_atomic

        model = self.model
        results = {}
        with ema.applied(model) if ema is not None else contextlib.nullcontext():
            model.eval()
            for k, entry in enumerate(self.val_entries):
                results[entry.id] = self.detect(entry)
                progress("eval", k + 1, len(self.val_entries), entry.id)
        model.train()
        write_json_atomic(run.predictions, {"version": "re2tal", "results": results}, indent=None)
        result = evaluate(self.cfg.source.data, run.predictions, protocol=self.cfg.eval.protocol.value,
                          subset=self.cfg.data.val_subset)  # fmt: skip
        record = {
            "kind": "eval", "epoch": epoch, "step": step, "average_mAP": result.average_mAP,
            "mAP": {f"{t:.2f}": float(m) for t, m in zip(result.tiou, result.mAP, strict=True)},
            "weights": "ema" if ema is not None else "model",
        }  # fmt: skip
        run.log(record)
        return record

    def detect(self, entry, **postprocess) -> list[dict[str, Any]]:
        """One validation video's detections with class names (and the external scores fused, when given)."""
        from re2tal_cli.train.tal import detect_video, fuse_external_scores, with_class_names

        cfg = self.cfg
        if self.val_features is not None:
            item = self.val_features[self.val_features.entries.index(entry)]
            found = detect_video(self.model, entry, features=item, device=self.device, amp=cfg.train.amp.value,
                                 **postprocess)  # fmt: skip
        else:
            found = detect_video(self.model, entry, source=_source(cfg.source.data, entry), frames=frames_input(cfg),
                                 device=self.device, amp=cfg.train.amp.value, **postprocess)  # fmt: skip
        if self.ext_scores is not None:
            return fuse_external_scores(found, self.ext_scores[entry.id], self.class_names, cfg.eval.ext_topk,
                                        cfg.eval.fusion.value)  # fmt: skip
        return with_class_names(found, self.classes)

    def summary(self, run: RunDir, best: dict | None, seconds: float) -> dict[str, Any]:
        evals = [r for r in run.read_metrics() if r["kind"] == "eval"]
        final = evals[-1] if evals else None
        summary = {
            "run": str(run.root),
            "mode": self.cfg.source.mode.value,
            "epochs": self.cfg.train.epochs,
            "steps": final["step"] if final else None,
            "protocol": self.cfg.eval.protocol.value,
            "subset": self.cfg.data.val_subset,
            "final": None if final is None else {k: final[k] for k in ("epoch", "average_mAP", "mAP")},
            "best": None if best is None else {k: best[k] for k in ("epoch", "average_mAP", "mAP")},
            "seconds": round(seconds, 1),
            "predictions": str(run.predictions),
        }
        run.write_summary(summary)
        run.write_epoch_table()
        return summary


def model_from_run(run: RunDir, checkpoint: str = "best"):
    """(model, recipe, meta) of a finished or running run: rebuilt from config.yaml and the checkpoint's meta alone
    (no dataset, no source checkpoint), with its weights — the EMA's when the run kept one."""
    from re2tal_cli.train.tal import TALModel

    cfg, saved, meta = _read_run(run, checkpoint)
    described = meta["model"]
    localizer = build_localizer(cfg, described["channels"], len(described["classes"]))
    if cfg.source.mode is Mode.FEATURES:
        model = TALModel(localizer)
    else:
        backbone, arch = _run_backbone(described)
        model = TALModel(localizer, backbone, arch.input, frozen=cfg.source.mode is Mode.FROZEN,
                         feature_length=cfg.backbone.feature_length)  # fmt: skip
    model.load_state_dict(saved.ema if saved.ema is not None else saved.model)
    return model.eval(), cfg, meta


def evaluate_run(root, *, checkpoint: str = "last", device: str = "cpu", progress: Progress | None = None) -> dict:
    """Evaluate a run's checkpoint on its recipe's validation subset as training does after an epoch (the EMA
    weights when kept): RUN/predictions.json, an "eval" record in RUN/metrics.jsonl; returns the record. For a run
    that was never evaluated, such as an imported one, so that `re2tal evaluate` has its predictions."""
    from re2tal_cli.train.loop import resolve_device
    from re2tal_cli.train.optim import WeightsEMA

    run = RunDir(root)
    cfg, saved, meta = _read_run(run, checkpoint)
    job = TALJob.build(cfg, resolve_device(device, cfg.train.amp.value))
    job.model.load_state_dict(saved.model)
    job.model.to(job.device)
    ema = None
    if saved.ema is not None:
        ema = WeightsEMA(job.model, 0.0)
        ema.state = {k: v.to(job.device) for k, v in saved.ema.items()}
    return job.evaluate(run, ema, meta["epoch"], meta["step"], progress or (lambda task, done, total, info: None))


def backbone_of_run(root, where_defined: dict):
    """The backbone a frames run trained (LoFi-E2E's stage 2 → the frozen encoder of stage 3), as a LoadedBackbone:
    its best checkpoint's weights (the EMA's when kept), built with the fields of `where_defined` that its
    architecture has (a new recipe's drop_path, frozen_bn)."""
    from re2tal_cli.checkpoint import LoadedBackbone
    from re2tal_cli.models.registry import ConvertedCheckpoint
    from re2tal_cli.reversible.wiring import Wiring

    run = RunDir(root)
    cfg, saved, meta = _read_run(run, "best")
    if cfg.source.mode is Mode.FEATURES:
        raise BadInputError(f"{run.root}: a features run has no backbone to train on")
    backbone, arch = _run_backbone(meta["model"], where_defined)
    weights = saved.ema if saved.ema is not None else saved.model
    state = {k.removeprefix("backbone."): v for k, v in weights.items() if k.startswith("backbone.")}
    backbone.load_state_dict(state)
    source = f"{run.root} ({meta['checkpoint']} checkpoint, epoch {meta['epoch']}, {meta['weights']} weights)"
    converted = ConvertedCheckpoint(state, "re2tal train-tal run")
    wiring = Wiring.of(backbone) or Wiring()
    return LoadedBackbone(backbone, arch.name, "train-tal run", source, run.checkpoints / meta["checkpoint"], converted,
                          wiring)  # fmt: skip


def _read_run(run: RunDir, checkpoint: str):
    """(recipe, checkpoint, meta) of a run: `checkpoint` (best or last) if written, else the last."""
    if not run.config.is_file():
        raise BadInputError(f"{run.root}: not a train-tal run (no config.yaml)")
    cfg = run.read_recipe(Recipe)
    name = run.checkpoint_to_use(checkpoint)
    saved = run.load_checkpoint(name, weights_only=True)
    meta = {**saved.meta, "checkpoint": name, "weights": "ema" if saved.ema is not None else "model"}
    return cfg, saved, meta


def _run_backbone(described: dict, where_defined: dict | None = None):
    """The backbone a checkpoint's meta describes (architecture, config as trained, wiring), and its Arch."""
    from dataclasses import fields

    from re2tal_cli.models import get_arch
    from re2tal_cli.reversible.wiring import Wiring

    spec = get_arch(described["arch"])
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in described["backbone_config"].items()}
    known = {f.name for f in fields(spec.config)}
    backbone = spec.create(**{**config, **{k: v for k, v in (where_defined or {}).items() if k in known}})
    if described["wiring"] is not None:
        Wiring.from_json(described["wiring"]).apply(backbone)
    return backbone, spec


def make_tal_optimizer(cfg: Recipe, model) -> torch.optim.Optimizer:
    """AdamW or SGD over the localizer and (unless frozen) the backbone, each part at its own learning rate."""
    from re2tal_cli.train.optim import make_optimizer

    parts = [("localizer", model.localizer, cfg.train.lr, cfg.train.weight_decay)]
    if model.backbone is not None and not model.frozen:
        parts.append(("backbone", model.backbone, cfg.backbone.lr, cfg.backbone.weight_decay))
    return make_optimizer(cfg.train.optimizer.value, parts)


def frames_input(cfg: Recipe):
    from re2tal_cli.train.tal import FramesInput

    d = cfg.data
    return FramesInput(d.sampling.value, d.num_frames, d.frame_stride, d.size)


def _source(root, entry):
    from re2tal_cli.data.datasets import find_media
    from re2tal_cli.data.video import open_video

    return open_video(find_media(root, entry.id), entry.fps)


# --- set-up -----------------------------------------------------------------------------------------------------


def build_localizer(cfg: Recipe, channels: int, num_classes: int):
    from re2tal_cli.localizers import create_localizer

    name = cfg.model.localizer
    return create_localizer(name, channels, num_classes, getattr(cfg.model, name))


def load_tal_backbone(cfg: Recipe):
    """The backbone of a frames run, wired as the recipe says (or as its checkpoint is)."""
    from re2tal_cli.checkpoint import load_backbone

    overrides = {"frozen_bn": cfg.backbone.frozen_bn}
    if cfg.backbone.drop_path is not None:
        overrides["drop_path"] = cfg.backbone.drop_path
    source = cfg.source.backbone
    if Path(source).is_dir() and (Path(source) / "config.yaml").is_file():  # a train-tal run: the backbone it trained
        if cfg.source.arch is not None:
            raise BadInputError(f"{source}: a train-tal run names its backbone's architecture; give no `arch`")
        loaded = backbone_of_run(source, overrides)
    else:
        loaded = load_backbone(source, cfg.source.arch, where_defined=overrides)
    if cfg.backbone.wiring is not None or cfg.backbone.outside is not None:
        from dataclasses import replace

        from re2tal_cli.reversible.wiring import Wiring, WiringName

        wiring = WiringName(cfg.backbone.wiring.value).wiring if cfg.backbone.wiring else Wiring.of(loaded.model)
        if wiring is not None:
            replace(wiring, outside=cfg.backbone.outside).apply(loaded.model)
    return loaded


def _frames_setup(cfg: Recipe, root, train_entries, val_entries, classes):
    from re2tal_cli.data.datasets import TALDataset
    from re2tal_cli.data.transforms import Augment
    from re2tal_cli.train.tal import TALModel

    loaded = load_tal_backbone(cfg)
    backbone, spec = loaded.model, loaded.input
    localizer = build_localizer(cfg, backbone.out_channels, len(classes))
    model = TALModel(localizer, backbone, spec, frozen=cfg.source.mode is Mode.FROZEN,
                     feature_length=cfg.backbone.feature_length)  # fmt: skip
    factor = localizer.pad_multiple
    if cfg.backbone.feature_length is not None:
        if cfg.backbone.feature_length % factor:
            raise BadRecipeError(f"recipe key backbone.feature_length ({cfg.backbone.feature_length}) must be a "
                                 f"multiple of {factor} (the localizer's coarsest stride)")  # fmt: skip
        unit = backbone.min_frames
    else:
        unit = model.unit
    if cfg.data.num_frames % unit:
        raise BadRecipeError(
            f"recipe key data.num_frames ({cfg.data.num_frames}) must be a multiple of {unit} (the backbone's "
            f"temporal stride × the localizer's downsampling)"
        )
    _check_fidelities(cfg, backbone, unit, factor)
    from re2tal_cli.data.datasets import find_media
    from re2tal_cli.data.video import check_readable

    media = {e.id: (find_media(root, e.id), e.fps) for e in train_entries + val_entries}
    check_readable(root, media, "video", hint="; see `re2tal data info`")
    a = cfg.data.augment
    augment = Augment(cfg.data.size, a.crop_scale, a.flip, a.rotation, a.brightness, a.contrast, a.saturation, a.hue,
                      a.temporal_jitter)  # fmt: skip
    uniform = cfg.data.sampling is Sampling.UNIFORM
    train_set = TALDataset(
        root, cfg.data.train_subset, num_frames=cfg.data.num_frames, sampling=cfg.data.sampling.value,
        stride=cfg.data.frame_stride, windows="random", size=cfg.data.size, augment=augment, mean=spec.mean,
        std=spec.std, classes=classes if not cfg.data.class_agnostic else None, seed=cfg.seed,
        windows_per_video=1 if uniform else cfg.data.windows_per_video, keep_fraction=cfg.data.trunc_thresh,
        in_memory=cfg.data.in_memory, entries=train_entries,
    )  # fmt: skip
    return model, train_set, loaded.arch


def _check_fidelities(cfg: Recipe, backbone, unit: int, factor: int) -> None:
    """Every LoFi configuration of the recipe gives a batch the backbone and the localizer take."""
    from re2tal_cli.train.lofi import fidelities, reduced_size

    for fidelity in fidelities(cfg.lofi):
        where = (f"recipe key lofi.mode {cfg.lofi.mode} ({fidelity.name}: r_s {fidelity.spatial:g}, "
                 f"r_t {fidelity.temporal})")  # fmt: skip
        frames, size = reduced_size(cfg.data.num_frames, cfg.data.size, fidelity)
        if cfg.data.num_frames % fidelity.temporal:
            raise BadRecipeError(f"{where}: data.num_frames {cfg.data.num_frames} does not divide by r_t")
        length = cfg.backbone.feature_length
        if length is not None and (length % fidelity.temporal or (length // fidelity.temporal) % factor):
            raise BadRecipeError(f"{where}: backbone.feature_length {length} / r_t must be a multiple of {factor}")
        if length is None and frames % unit:
            raise BadRecipeError(f"{where}: {frames} frames is not a multiple of {unit} (the backbone's temporal "
                                 f"stride × the localizer's downsampling)")  # fmt: skip
        problem = backbone.input_problem(frames, size, size)
        if problem is not None:
            raise BadRecipeError(f"{where}: {problem}")


def _features_setup(cfg: Recipe, train_entries, val_entries, classes):
    from re2tal_cli.train.data import FeatureDataset, read_feature_index
    from re2tal_cli.train.tal import TALModel

    root = cfg.source.features
    read_feature_index(root)
    common = dict(max_seq_len=getattr(cfg.model, cfg.model.localizer).max_seq_len, trunc_thresh=cfg.data.trunc_thresh,
                  crop_ratio=cfg.data.crop_ratio, resample_to=cfg.data.resample_to, seed=cfg.seed)  # fmt: skip
    train_set = FeatureDataset(root, train_entries, classes, train=True, **common)
    val_set = FeatureDataset(root, val_entries, classes, train=False, **common)
    localizer = build_localizer(cfg, train_set.channels, len(classes))
    return TALModel(localizer), train_set, val_set


def _agnostic(entry):
    return replace(entry, segments=[replace(s, label="action") for s in entry.segments])


def _check_labels(root, entries, names: list[str]) -> None:
    """Every label in the class list (the annotations' "classes", else the training subset's labels)."""
    known = set(names)
    unknown = sorted({(s.label, e.id) for e in entries for s in e.segments if s.label not in known})
    if unknown:
        shown = ", ".join(f"{label} ({vid})" for label, vid in unknown[:5]) + (", …" if len(unknown) > 5 else "")
        raise BadDataError(f"{root}: {plural(len(unknown), 'label')} not in the class list: {shown}")


def _read_external_scores(path, entries, names: list[str]) -> tuple[dict[str, list[float]], list[str]]:
    """{video id: class scores} and class names from an ActivityNet classifier's JSON ({"results": {id: [...]},
    "class": [...]}; ids with or without the "v_" prefix), checked to cover the evaluated videos."""
    from re2tal_cli.fileio import read_json

    file = Path(path)
    raw = read_json(file)
    results = raw.get("results", raw) if isinstance(raw, dict) else None
    classes = raw.get("class", names) if isinstance(raw, dict) else names
    if not isinstance(results, dict) or not isinstance(classes, list):
        raise BadDataError(f'{file}: expected {{"results": {{video: [class scores]}}, "class": [names]}}')
    scores, missing = {}, []
    for entry in entries:
        found = results.get(entry.id, results.get(entry.id.removeprefix("v_"), results.get(f"v_{entry.id}")))
        if found is None:
            missing.append(entry.id)
        elif not isinstance(found, list) or len(found) != len(classes):
            raise BadDataError(f"{file}: {entry.id} has {len(found) if isinstance(found, list) else found!r} "
                               f"scores for {len(classes)} classes")  # fmt: skip
        else:
            scores[entry.id] = [float(v) for v in found]
    if missing:
        raise BadDataError(f"{file}: no scores for {plural(len(missing), 'evaluated video')} (first: {missing[0]})")
    return scores, [str(c) for c in classes]
