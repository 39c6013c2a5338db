"""`finetune`: recover a rewired backbone's accuracy on clip classification, on the run machinery of train-tal.

    from re2tal_cli.finetune import finetune
    summary = finetune("runs/rw", "data/synth/clips", "runs/ft", schedule="dr2", recipe="synthetic")

Re²TAL finetunes a rewired backbone briefly on its pretraining task before TAL (`schedule` re2: α=0, β=1 from the
start). Dr²Net starts at the pretrained network (α=1, β=β₀) and moves α, β along the diagonal to (0, 1), a step every
η iterations or epochs, arriving at `schedule.end_epoch` (dr2); while the reconstruction error at the current α, β
exceeds the guard's tolerance, stages fall back to exact recompute — counted per step, and the summary says from
which step training ran fully reversible. `none` finetunes the original network (α=1, β=0) with ordinary autograd:
the baseline. The checkpoint may be a rewire output or any backbone checkpoint: its parameters are the same either
way, the schedule sets the wiring.

The run directory is train-tal's (`train/run.py`: config.yaml, metrics.jsonl, checkpoints, summary.json, exact
resume) plus RUN/backbone/: the final weights (the EMA's when on) in the rewire format, which `extract`,
`train-tal` and `rewire --check` read directly.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from re2tal_cli.errors import BadDataError, BadInputError, BadRecipeError
from re2tal_cli.reversible.stage import ORIGINAL, RE2TAL, Coupling, Execution
from re2tal_cli.text import plural
from re2tal_cli.train.loop import Progress
from re2tal_cli.train.recipe import FinetuneRecipe, ScheduleKind, ScheduleUnit
from re2tal_cli.train.run import RunDir, absolute_path

BACKBONE = "backbone"  # RUN/backbone/: the finetuned backbone in the rewire format


def finetune(
    checkpoint: str | None,
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    arch: str | None = None,
    schedule: str | None = None,
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
    """Finetune and evaluate top-1/top-5; returns the summary (also RUN/summary.json). `recipe`: a name in
    recipes/finetune/ or a YAML file (default: synthetic); `schedule`, `epochs`, `seed`, `amp`: shortcuts for
    schedule.kind, train.epochs, seed, train.amp. With `resume`, the run continues from RUN/checkpoints/last."""
    from re2tal_cli.train.loop import run_job

    return run_job(
        out,
        kind=FinetuneRecipe,
        new_recipe=lambda: _new_recipe(checkpoint, data, arch, schedule, recipe, sets, epochs, seed, amp),
        build=FinetuneJob.build,
        device=device,
        resume=resume,
        force=force,
        not_on_resume={
            "checkpoint": checkpoint,
            "data": data,
            "arch": arch,
            "schedule": schedule,
            "recipe": recipe,
            "sets": sets,
            "epochs": epochs,
            "seed": seed,
            "amp": amp,
        },  # fmt: skip
        progress=progress,
    )


def clip_accuracy(
    checkpoint: str,
    data: str | os.PathLike,
    *,
    schedule: str = "re2",
    recipe: str | os.PathLike | None = None,
    sets: list[str] | tuple[str, ...] = (),
    device: str = "cpu",
) -> float:
    """Top-1 on the validation clips of `checkpoint` at the first coupling of `schedule` (re2: α=0, β=1 — a rewired
    network as it is; none: the original network), without a training step: the accuracy a finetune starts from."""
    import tempfile

    from re2tal_cli.train.run import RunDir

    cfg = _new_recipe(checkpoint, data, None, schedule, recipe, sets, None, None, None)
    job = FinetuneJob.build(cfg, torch.device(device))
    job.model.to(job.device)
    with tempfile.TemporaryDirectory() as scratch:
        return job.evaluate(RunDir(scratch), None, 0, 0, lambda *a: None)["top1"]


def _new_recipe(checkpoint, data, arch, schedule, recipe, sets, epochs, seed, amp) -> FinetuneRecipe:
    from re2tal_cli.train.recipe import load_recipe

    if checkpoint is None or data is None:
        raise BadInputError("give the backbone `checkpoint` and the clips (`data`)")
    shortcuts = [f"schedule.kind={schedule}"] if schedule is not None else []
    shortcuts += [f"train.epochs={epochs}"] if epochs is not None else []
    shortcuts += [f"seed={seed}"] if seed is not None else []
    shortcuts += [f"train.amp={amp}"] if amp is not None else []
    cfg = load_recipe(recipe or "synthetic", [*sets, *shortcuts], kind=FinetuneRecipe)
    cfg.source = replace(cfg.source, checkpoint=absolute_path(checkpoint), arch=arch, data=absolute_path(data))
    return cfg


@dataclass
class FinetuneJob:
    """A configured finetune run (the `Task` of train/loop.py): the backbone with its classifier, the clips."""

    cfg: FinetuneRecipe
    device: torch.device
    model: Any  # the backbone, its `head` the classifier
    classes: list[str]
    train_set: Any
    val_set: Any
    arch: str
    source: dict[str, Any]  # what RUN/backbone/config.json says of the source checkpoint
    _fallbacks_before: int = 0  # the guards' count when the current update began
    metric = "top1"

    @classmethod
    def build(cls, cfg: FinetuneRecipe, device: torch.device) -> FinetuneJob:
        from re2tal_cli.checkpoint import load_backbone
        from re2tal_cli.data.datasets import ClipDataset
        from re2tal_cli.data.transforms import Augment
        from re2tal_cli.data.video import check_readable

        c = cfg.data
        overrides = {"frozen_bn": cfg.backbone.frozen_bn}
        if cfg.backbone.drop_path is not None:
            overrides["drop_path"] = cfg.backbone.drop_path
        loaded = load_backbone(cfg.source.checkpoint, cfg.source.arch, where_defined=overrides)
        spec = loaded.input
        num_frames, size = c.num_frames or spec.num_frames, c.size or spec.image_size
        problem = loaded.model.input_problem(num_frames, size, size)
        if problem is not None:
            raise BadRecipeError(f"recipe keys data.num_frames / data.size: {problem}")
        a = c.augment
        augment = Augment(size, a.crop_scale, a.flip, a.rotation, a.brightness, a.contrast, a.saturation, a.hue,
                          a.temporal_jitter)  # fmt: skip
        common = dict(num_frames=num_frames, frame_stride=c.frame_stride, size=size, mean=spec.mean, std=spec.std,
                      seed=cfg.seed)  # fmt: skip
        root = cfg.source.data
        train_set = ClipDataset(root, subset=c.train_subset, augment=augment, train=True, **common)
        classes = train_set.classes
        val_set = ClipDataset(root, subset=c.val_subset, classes=classes, train=False, **common)
        for subset, dataset in ((c.train_subset, train_set), (c.val_subset, val_set)):
            if len(dataset) == 0:
                raise BadDataError(f"{root}: no clips in subset {subset!r}")
        check_readable(root, {str(s.path): (s.path, None) for s in train_set.samples + val_set.samples}, "clip")
        model = _with_classifier(loaded, classes, cfg.head.new, cfg.source.checkpoint)
        from re2tal_cli import hub

        source = {"uri": loaded.source, "format": loaded.source_format, "finetuned_from": cfg.source.checkpoint,
                  "sha256": hub.sha256(loaded.path)}  # fmt: skip
        job = cls(cfg, device, model, classes, train_set, val_set, loaded.arch, source)
        first = job.coupling_at(0)
        model.set_wiring(first, job.execution, cfg.schedule.tolerance)
        return job

    # --- the schedule ------------------------------------------------------------------------------------------

    @property
    def execution(self) -> Execution:
        return Execution.PLAIN if self.cfg.schedule.kind is ScheduleKind.NONE else Execution.REVERSIBLE

    def coupling_at(self, update: int) -> Coupling:
        """α, β in force during optimizer update `update` (0-based)."""
        from re2tal_cli.reversible.schedule import DualResidualSchedule

        s = self.cfg.schedule
        if s.kind is ScheduleKind.NONE:
            return ORIGINAL
        if s.kind is ScheduleKind.RE2:
            return RE2TAL
        end_epoch = s.end_epoch or max(1.0, self.cfg.train.epochs / 4)
        per_epoch = self.updates_per_epoch
        if s.unit is ScheduleUnit.EPOCH:
            path = DualResidualSchedule(max(1, round(end_epoch)), s.update_every, Coupling(1.0, s.start_beta))
            return path.coupling_at(update // per_epoch)
        path = DualResidualSchedule(max(1, round(end_epoch * per_epoch)), s.update_every, Coupling(1.0, s.start_beta))
        return path.coupling_at(update)

    @property
    def updates_per_epoch(self) -> int:
        from re2tal_cli.train.distributed import current

        per_process = math.ceil(len(self.train_set) / current().world_size)  # as the sampler shares them out
        batches = math.ceil(per_process / self.cfg.train.batch_size)
        return math.ceil(batches / self.cfg.train.accumulate)

    # --- the task of the shared loop (train/loop.py) ----------------------------------------------------------

    def optimizer(self) -> torch.optim.Optimizer:
        from re2tal_cli.train.optim import make_optimizer

        train = self.cfg.train
        return make_optimizer(train.optimizer.value, [("model", self.model, train.lr, train.weight_decay)])

    def loader(self):
        from re2tal_cli.data.datasets import make_loader
        from re2tal_cli.train.distributed import current

        return make_loader(self.train_set, self.cfg.train.batch_size, shuffle=True, workers=self.cfg.data.workers,
                           seed=self.cfg.seed, shard=current().shard)  # fmt: skip

    def losses(self, batch, autocast) -> dict[str, torch.Tensor]:
        video, labels = batch["video"].to(self.device, non_blocking=True), batch["label"].to(self.device)
        targets = soft_targets(labels, len(self.classes), self.cfg.head.label_smoothing)
        video, targets = mix(video, targets, self.cfg.data.mixup, self.cfg.data.cutmix)
        with autocast():
            logits = self.model(video)
        loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return {"loss": loss}

    def residual_stages(self) -> list:
        return self.model.residual_stages()

    def before_update(self, step: int) -> dict[str, Any]:
        """Set α, β for this update (they change only under dr2) and note the guard's count to tell this update's
        fallbacks."""
        coupling = self.coupling_at(step)
        for stage in self.model.residual_stages():
            if stage.coupling != coupling:
                stage.set_wiring(coupling, self.execution, self.cfg.schedule.tolerance)
        self._fallbacks_before = self._fallbacks()
        return {"alpha": coupling.alpha, "beta": coupling.beta}

    def after_update(self) -> dict[str, Any]:
        return {"fallbacks": self._fallbacks() - self._fallbacks_before}

    def _fallbacks(self) -> int:
        return sum(stage.guard.fallbacks for stage in self.model.residual_stages())

    @torch.no_grad()
    def evaluate(self, run: RunDir, ema, epoch: int, step: int, progress: Progress) -> dict[str, Any]:
        """Top-1 and top-5 accuracy on the validation clips (centred, with the EMA weights when on); logged."""
        from re2tal_cli.data.datasets import make_loader

        model = self.model
        loader = make_loader(self.val_set, self.cfg.train.batch_size, workers=self.cfg.data.workers)
        correct = {1: 0, 5: 0}
        seen = 0
        k5 = min(5, len(self.classes))
        with ema.applied(model) if ema is not None else contextlib.nullcontext():
            model.eval()
            for n, batch in enumerate(loader):
                logits = model(batch["video"].to(self.device)).float()
                labels = batch["label"].to(self.device)
                top = logits.topk(k5, dim=-1).indices
                correct[1] += int((top[:, 0] == labels).sum())
                correct[5] += int((top == labels[:, None]).any(-1).sum())
                seen += len(labels)
                progress("eval", n + 1, len(loader), "")
        model.train()
        record = {"kind": "eval", "epoch": epoch, "step": step, "top1": correct[1] / seen, "top5": correct[5] / seen,
                  "weights": "ema" if ema is not None else "model"}  # fmt: skip
        run.log(record)
        return record

    def describe(self) -> dict[str, Any]:
        from re2tal_cli.train.run import describe_backbone

        return {"classes": self.classes, **describe_backbone(self.model, self.arch)}

    def summary(self, run: RunDir, best: dict | None, seconds: float) -> dict[str, Any]:
        records = run.read_metrics()
        evals = [r for r in records if r["kind"] == "eval"]
        final = evals[-1] if evals else None
        steps = [r for r in records if r["kind"] == "step"]
        reversible_from = None
        if self.execution is Execution.REVERSIBLE and steps:
            last_fallback = max((r["step"] for r in steps if r["fallbacks"]), default=0)
            reversible_from = last_fallback + 1 if last_fallback < steps[-1]["step"] else None
        backbone = self._write_backbone(run, final)
        summary = {
            "run": str(run.root),
            "schedule": self.cfg.schedule.kind.value,
            "epochs": self.cfg.train.epochs,
            "steps": steps[-1]["step"] if steps else 0,
            "final": None if final is None else {k: final[k] for k in ("epoch", "top1", "top5")},
            "best": None if best is None else {k: best[k] for k in ("epoch", "top1", "top5")},
            "fallbacks": sum(r["fallbacks"] for r in steps),
            "fully_reversible_from_step": reversible_from,
            "final_coupling": {"alpha": steps[-1]["alpha"], "beta": steps[-1]["beta"]} if steps else None,
            "seconds": round(seconds, 1),
            "backbone": str(backbone),
        }
        run.write_summary(summary)
        run.write_epoch_table()
        return summary

    def _write_backbone(self, run: RunDir, final: dict | None) -> Path:
        """RUN/backbone/: the last checkpoint's weights (the EMA's when kept) in the rewire format."""
        import copy

        from re2tal_cli.checkpoint import save_backbone
        from re2tal_cli.fileio import atomic_dir
        from re2tal_cli.reversible.wiring import Wiring

        saved = run.load_checkpoint("last", weights_only=True)
        model = copy.deepcopy(self.model).cpu()
        model.load_state_dict(saved.ema if saved.ema is not None else saved.model)
        stages = model.residual_stages()
        config = {
            "arch": self.arch,
            "wiring": (Wiring.of(model) or Wiring()).to_json(),
            "stages": [{"index": i, "blocks": len(s.blocks)} for i, s in enumerate(stages)],
            "num_classes": len(self.classes),
            "classes": self.classes,
            "source": self.source,
            "finetune": {
                "run": str(run.root),
                "epoch": saved.meta["epoch"],
                "schedule": self.cfg.schedule.kind.value,
                "top1": None if final is None else final["top1"],
                "weights": "ema" if saved.ema is not None else "model",
            },  # fmt: skip
        }
        with atomic_dir(run.root / BACKBONE) as tmp:
            save_backbone(model, tmp, config)
        return run.root / BACKBONE


def _with_classifier(loaded, classes: list[str], new: bool, where: str):
    """The loaded backbone with a classifier for `classes`: its own when it has one of that size (and, if its
    config names its classes, those), else a new one — which `new` asks for, and a mismatched head requires."""
    model = loaded.model
    own = model.head.out_features if getattr(model, "head", None) is not None else 0
    own_names = loaded.config.get("classes")
    matches = own == len(classes) and (own_names is None or own_names == classes)
    if matches and not new:
        return model
    if own and not new:
        names = f" ({', '.join(own_names[:3])}, …)" if own_names else ""
        raise BadInputError(f"{where}: its classifier has {plural(own, 'class')}{names}, the clips "
                            f"{plural(len(classes), 'class')}; set head.new=true to train a new one")  # fmt: skip
    fresh = type(model)(replace(model.cfg, num_classes=len(classes)))
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = fresh.load_state_dict(kept, strict=False)
    assert not unexpected and all(k.startswith(("head.", "fc_norm.")) for k in missing), (missing, unexpected)
    return fresh


def soft_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing: 1 − ε on the label, ε / K spread over all K classes."""
    return F.one_hot(labels, num_classes).float() * (1.0 - smoothing) + smoothing / num_classes


def mix(video: torch.Tensor, targets: torch.Tensor, mixup: float, cutmix: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix of a batch with itself reversed (timm's convention), λ ~ Beta(a, a) from torch's generator (so
    a resumed run draws the same); with both on, one of them per batch at random. Cutmix cuts one box from every
    frame and sets λ to the area kept."""
    if not (mixup or cutmix) or len(video) < 2:
        return video, targets
    use_cutmix = cutmix > 0 and (mixup == 0 or bool(torch.rand(()) < 0.5))
    a = cutmix if use_cutmix else mixup
    lam = float(torch.distributions.Beta(a, a).sample())
    other = video.flip(0)
    if use_cutmix:
        h, w = video.shape[-2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        top, left = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
        video = video.clone()
        video[..., top : top + ch, left : left + cw] = other[..., top : top + ch, left : left + cw]
        lam = 1.0 - ch * cw / (h * w)
    else:
        video = lam * video + (1.0 - lam) * other
    return video, lam * targets + (1.0 - lam) * targets.flip(0)
