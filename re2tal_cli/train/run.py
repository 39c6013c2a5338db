"""A training run's directory: what it holds, written so that a killed run can always be resumed.

    RUN/config.yaml            the resolved recipe (every field), source included
    RUN/metrics.jsonl          one JSON object per optimizer step ("kind": "step"), epoch and evaluation
    RUN/checkpoints/last/      after every epoch: model.safetensors, ema.safetensors (with EMA), state.pt, meta.json
    RUN/checkpoints/best/      the same, for the best validation average mAP so far
    RUN/predictions.json       the last evaluation's detections (ActivityNet results format)
    RUN/summary.json           final and best mAPs, written when the run ends
    RUN/epochs.csv             metrics.jsonl summarised per epoch (`epoch_table`), written when the run ends
    RUN/tb/                    the scalars again, for TensorBoard, when it is installed

A checkpoint directory is written under a temporary name and renamed, so `last/` is always complete. `state.pt`
holds what resume needs besides the weights — optimizer, gradient scaler, the torch generators, epoch and step —
and is read back with `torch.load(weights_only=True)`.

A run published by `re2tal hub push` carries one checkpoint, flat: RUN/model.safetensors (the weights its evaluation
used: the EMA's when kept) and RUN/meta.json (that checkpoint's meta, with its name and which weights these are),
beside config.yaml and summary.json, and no checkpoints/. `RunDir` reads it as a run with that one checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from re2tal_cli.errors import BadInputError, OutputExistsError
from re2tal_cli.fileio import atomic_dir, atomic_path, check_creatable, write_json_atomic

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions.json"
SUMMARY = "summary.json"
EPOCHS = "epochs.csv"
PUBLISHED_META = "meta.json"  # a published run's one checkpoint (see the module docstring)


@dataclass
class Checkpoint:
    """What a checkpoint directory holds, read back."""

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any]  # optimizer, scaler, rng, epoch, step, best
    meta: dict[str, Any]


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    config = property(lambda self: self.root / CONFIG)
    metrics = property(lambda self: self.root / METRICS)
    predictions = property(lambda self: self.root / PREDICTIONS)
    summary = property(lambda self: self.root / SUMMARY)
    checkpoints = property(lambda self: self.root / "checkpoints")
    epochs = property(lambda self: self.root / EPOCHS)

    @property
    def published(self) -> bool:
        """A run as `re2tal hub push` publishes it: one flat checkpoint, no checkpoints/."""
        return (self.root / PUBLISHED_META).is_file() and not self.checkpoints.is_dir()

    def checkpoint_to_use(self, preferred: str) -> str:
        """`preferred` (best or last) when the run has it, else last; a published run's own one."""
        if self.published:
            return self._published_meta()["checkpoint"]
        return preferred if (self.checkpoints / preferred / "meta.json").is_file() else "last"

    def _published_meta(self) -> dict[str, Any]:
        from re2tal_cli.fileio import read_json

        meta = read_json(self.root / PUBLISHED_META, BadInputError)
        if not isinstance(meta, dict) or not {"checkpoint", "weights", "model"} <= meta.keys():
            raise BadInputError(f"{self.root / PUBLISHED_META}: not a published run's checkpoint meta")
        return meta

    def prepare(self, resume: bool, force: bool) -> None:
        """Refuse an existing run unless resumed or replaced; a resumed run must have a complete checkpoint."""
        check_creatable(self.root, directory=True)
        exists = self.root.is_dir() and any(self.root.iterdir())
        if resume:
            if not (self.checkpoints / "last" / "meta.json").is_file() or not self.config.is_file():
                raise BadInputError(f"{self.root}: no complete checkpoint to resume from (checkpoints/last/)")
            return
        if exists and not force:
            raise OutputExistsError(
                f"{self.root}: a run is there; pass `resume` to continue it or `force` to replace it"
            )
        if exists:
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def read_recipe(self, kind: type):
        """config.yaml read back as a `kind` of recipe (resume, detect)."""
        from re2tal_cli.train.recipe import read_yaml, recipe_from_mapping

        return recipe_from_mapping(read_yaml(self.config), str(self.config), kind)

    def write_config(self, text: str) -> None:
        with atomic_path(self.config) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int, epoch: int) -> None:
        """On resume: drop what the interrupted epoch logged after the checkpoint (its steps, a partial evaluation)."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if record.get("step", 0) <= step and record.get("epoch", 0) <= epoch:
                kept.append(line)
        with atomic_path(self.metrics) as tmp:
            tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        return [json.loads(line) for line in self.metrics.read_text(encoding="utf-8").splitlines() if line.strip()]

    def save_checkpoint(self, name: str, checkpoint: Checkpoint) -> None:
        from safetensors.torch import save_file

        with atomic_dir(self.checkpoints / name) as tmp:
            save_file(_contiguous(checkpoint.model), tmp / "model.safetensors")
            if checkpoint.ema is not None:
                save_file(_contiguous(checkpoint.ema), tmp / "ema.safetensors")
            torch.save(checkpoint.state, tmp / "state.pt")
            write_json_atomic(tmp / "meta.json", checkpoint.meta)

    def load_checkpoint(self, name: str = "last", weights_only: bool = False) -> Checkpoint:
        """A checkpoint directory; `weights_only`: the model and EMA weights and meta.json (detect, evaluation)."""
        from safetensors.torch import load_file

        if self.published:
            meta = self._published_meta()
            if meta["checkpoint"] != name:
                raise BadInputError(f"{self.root}: a published run carries its {meta['checkpoint']} checkpoint only")
            weights = load_file(self.root / "model.safetensors")
            return Checkpoint(model=weights, ema=weights if meta["weights"] == "ema" else None, state={}, meta=meta)
        folder = self.checkpoints / name
        if not (folder / "meta.json").is_file():
            raise BadInputError(f"{folder}: no checkpoint (a run writes one after its first epoch)")
        ema = folder / "ema.safetensors"
        state = {} if weights_only else torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        return Checkpoint(
            model=load_file(folder / "model.safetensors"),
            ema=load_file(ema) if ema.is_file() else None,
            state=state,
            meta=json.loads((folder / "meta.json").read_text(encoding="utf-8")),
        )

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary, summary, indent=2)

    def write_epoch_table(self) -> None:
        """RUN/epochs.csv: metrics.jsonl summarised per epoch (`epoch_table`)."""
        from re2tal_cli.fileio import write_table_atomic

        write_table_atomic(self.epochs, epoch_table(self.read_metrics()))


def epoch_table(records: list[dict[str, Any]]):
    """metrics.jsonl summarised per epoch as a pandas DataFrame, a row per epoch: its epoch record (last step, mean
    losses, seconds, the guard's backward passes, fallbacks and worst error), from its step records the learning
    rates at its end, the mean steps/s and the highest peak memory, and its evaluation when it had one (train-tal:
    average_mAP and mAP@<tIoU>; finetune: top1, top5) — empty cells otherwise."""
    import pandas as pd

    def flat(record: dict[str, Any], drop: tuple[str, ...], nested: str, prefix: str) -> dict[str, Any]:
        kept = {k: v for k, v in record.items() if k not in (*drop, nested)}
        return kept | {f"{prefix}{k}": v for k, v in record.get(nested, {}).items()}

    epochs = pd.DataFrame.from_records([flat(r, ("kind",), "guard", "guard_") for r in records if r["kind"] == "epoch"])
    if epochs.empty:
        return epochs
    steps = pd.DataFrame.from_records([r for r in records if r["kind"] == "step"])
    if not steps.empty:
        rates = [c for c in steps.columns if c == "lr" or c.endswith("_lr")]
        per_epoch = steps.groupby("epoch").agg(
            {**dict.fromkeys(rates, "last"), "steps_per_s": "mean", "peak_memory_bytes": "max"}
        )
        epochs = epochs.merge(per_epoch.reset_index(), on="epoch", how="left")
    evals = [flat(r, ("kind", "step", "weights"), "mAP", "mAP@") for r in records if r["kind"] == "eval"]
    if evals:
        epochs = epochs.merge(pd.DataFrame.from_records(evals), on="epoch", how="left")
    return epochs


def describe_backbone(backbone, arch: str) -> dict[str, Any]:
    """What a checkpoint's meta.json says of a run's backbone so that it can be rebuilt without its source: the
    architecture, the family's config as trained, the wiring."""
    from re2tal_cli.reversible.wiring import Wiring
    from re2tal_cli.train.recipe import to_mapping

    wiring = Wiring.of(backbone)
    return {"arch": arch, "backbone_config": to_mapping(backbone.cfg), "wiring": wiring and wiring.to_json()}


def absolute_path(path) -> str | None:
    """A path as an absolute one for config.yaml, so a run resumes and detects from any directory (hf:// stays)."""
    if path is None or str(path).startswith("hf://"):
        return None if path is None else str(path)
    return str(Path(path).resolve())


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def rng_state() -> dict[str, Any]:
    """The torch generators (CPU and every CUDA device): dropout and drop-path draw from them."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
