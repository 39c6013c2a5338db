"""`demo`: the whole pipeline on the built-in synthetic data, offline, on CPU — what `make demo` runs.

    from re2tal_cli.demo import demo
    table = demo("runs/demo", quick=True)

Each step is a command's core function with its own output under OUT, in the order a user runs them:

    data/          re2tal data synth          TAL videos and action clips
    pretrain/      re2tal finetune --schedule none   a small backbone trained briefly on the clips, non-reversibly:
                                              the "pretrained" checkpoint a user would have downloaded
    rewired/       re2tal rewire --check      the same parameters, reversible; reconstruction and gradient errors
    finetune/      re2tal finetune            Re²TAL's short recovery of the rewired network on the clips
    features/      re2tal extract             features of the finetuned backbone (frames mode)
    tal-features/  re2tal train-tal --features     the localizer on those features
    tal-e2e/       re2tal train-tal --backbone     backbone and localizer end to end, reversible
    evaluate.json  re2tal evaluate            the end-to-end run's predictions against the annotations
    detect/        re2tal detect              one test video: detections and a timeline PNG
    memprofile.json re2tal memprofile         one end-to-end step's memory, plain vs reversible

The summary table compares clip accuracy (pretrained / rewired without training / finetuned), average mAP (features
vs end to end), step memory (plain vs reversible) and the reversible gradient error level. OUT/demo.json records
each finished step: running again skips them (a step interrupted halfway is redone).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from re2tal_cli.fileio import read_json, write_json_atomic

__all__ = ["DemoSize", "demo"]

ARCH = "tsm-tiny"  # TSM basic blocks, widths 4-16: learns the synthetic clip task on 2 cores in minutes


@dataclass(frozen=True)
class DemoSize:
    videos: int  # untrimmed TAL videos
    classes: int
    clips_per_class: int  # training clips per class for the clip task
    pretrain_epochs: int
    finetune_epochs: int
    tal_epochs: int


FULL = DemoSize(videos=40, classes=4, clips_per_class=60, pretrain_epochs=16, finetune_epochs=6, tal_epochs=25)
QUICK = DemoSize(videos=6, classes=2, clips_per_class=8, pretrain_epochs=1, finetune_epochs=1, tal_epochs=2)
CLIP_SETS = ("data.num_frames=16", "data.size=32", "train.batch_size=8")
STEPS = ("data", "pretrain", "rewire", "finetune", "extract", "tal-features", "tal-e2e", "evaluate", "detect",
         "memprofile")  # fmt: skip

# progress(task, done, total, info): "demo" counts the steps; the running step reports under its own name
Progress = Callable[[str, int, int | None, str], None]


def demo(out: str | os.PathLike = "runs/demo", *, quick: bool = False, progress: Progress | None = None) -> dict:
    """Run (or resume) the demo in `out`; returns {"steps": each step's result, "table": the summary rows}."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    record = root / "demo.json"
    size = QUICK if quick else FULL
    done = read_json(record) if record.is_file() else {}
    if done.get("quick", quick) != quick:
        done = {}  # a demo of the other size: start over (each step's output is overwritten)
    notify = progress or (lambda task, done, total, info: None)
    steps = _steps(root, size, notify)
    results = done.get("steps", {})
    for number, name in enumerate(STEPS):
        notify("demo", number, len(STEPS), name)
        if name not in results:
            start = time.perf_counter()
            results[name] = {**steps[name](results), "seconds": round(time.perf_counter() - start, 1)}
            write_json_atomic(record, {"quick": quick, "steps": results})
    notify("demo", len(STEPS), len(STEPS), "")
    return {"out": str(root), "quick": quick, "steps": results, "table": _table(results)}


def _steps(root: Path, size: DemoSize, notify: Progress) -> dict[str, Callable[[dict], dict]]:
    data, pretrain, rewired, finetuned = root / "data", root / "pretrain", root / "rewired", root / "finetune"

    def loop_progress(step: str):
        return lambda task, done, total, info: notify(f"{step}: {task}", done, total, info)

    def make_data(results) -> dict:
        from re2tal_cli.data.synth import SynthConfig, generate

        config = SynthConfig(videos=size.videos, classes=size.classes, clips_per_class=size.clips_per_class)
        generate(data, config, workers=2, force=True)
        return {"videos": size.videos, "classes": size.classes, "clips_per_class": size.clips_per_class}

    def make_pretrained(results) -> dict:
        from re2tal_cli.finetune import finetune

        source = root / "source.safetensors"
        _random_backbone(source)
        sets = [*CLIP_SETS, "head.new=true", "train.lr=2e-3"]
        summary = finetune(str(source), data / "clips", pretrain, schedule="none", sets=sets,
                           epochs=size.pretrain_epochs, force=True, progress=loop_progress("pretrain"))  # fmt: skip
        return {"top1": summary["final"]["top1"], "backbone": str(pretrain / "backbone")}

    def make_rewired(results) -> dict:
        from re2tal_cli.finetune import clip_accuracy
        from re2tal_cli.rewire import rewire

        report = rewire(str(pretrain / "backbone"), rewired, check=True, force=True)
        check = report.check
        return {
            "top1_without_training": clip_accuracy(str(rewired), data / "clips", sets=CLIP_SETS),
            "gradient_error_level": check.gradient_error_level,
            "reconstruction_error": check.reconstruction_error,
            "fallbacks": check.fallbacks,
        }

    def make_finetuned(results) -> dict:
        from re2tal_cli.finetune import finetune

        summary = finetune(str(rewired), data / "clips", finetuned, schedule="re2", sets=CLIP_SETS,
                           epochs=size.finetune_epochs, force=True, progress=loop_progress("finetune"))  # fmt: skip
        return {"top1": summary["final"]["top1"]}

    def make_features(results) -> dict:
        from re2tal_cli.extract import ExtractSettings, extract_features

        settings = ExtractSettings(mode="frames", size=32)
        result = extract_features(finetuned / "backbone", data, root / "features", settings, force=True)
        return {"videos": len(result.written)}

    def train(name: str, **source) -> dict:
        from re2tal_cli.train_tal import train_tal

        summary = train_tal(data, root / name, epochs=size.tal_epochs, force=True, progress=loop_progress(name),
                            **source)  # fmt: skip
        return {"average_mAP": summary["final"]["average_mAP"]}

    def make_evaluation(results) -> dict:
        from re2tal_cli.evaluate import evaluate

        result = evaluate(data, root / "tal-e2e", protocol="thumos")
        write_json_atomic(root / "evaluate.json", result.to_dict())
        return {"average_mAP": result.average_mAP}

    def make_detection(results) -> dict:
        from re2tal_cli.data.datasets import find_media, load_annotations
        from re2tal_cli.detect import detect

        video = next(e for e in load_annotations(data).values() if e.subset == "test")
        (root / "detect").mkdir(exist_ok=True)
        found = detect(root / "tal-e2e", find_media(data, video.id), out=root / "detect" / "detections.json",
                       plot=root / "detect" / "timeline.png", gt=data, top_k=10)  # fmt: skip
        return {"video": video.id, "detections": len(found["detections"]), "timeline": str(root / "detect")}

    def make_memory_profile(results) -> dict:
        from re2tal_cli.memprofile import memprofile

        report = memprofile(ARCH, frames=256, size=32, wiring="all", head="actionformer", device="cpu")
        write_json_atomic(root / "memprofile.json", report)
        return {w["wiring"]: w["estimate"]["bytes"]["peak"] for w in report["wirings"]}

    return {
        "data": make_data,
        "pretrain": make_pretrained,
        "rewire": make_rewired,
        "finetune": make_finetuned,
        "extract": make_features,
        "tal-features": lambda results: train("tal-features", features=root / "features"),
        "tal-e2e": lambda results: train("tal-e2e", backbone=str(finetuned / "backbone")),
        "evaluate": make_evaluation,
        "detect": make_detection,
        "memprofile": make_memory_profile,
    }


def _random_backbone(path: Path) -> None:
    """A randomly initialised backbone checkpoint (seed 0): where the demo's "pretraining" starts."""
    import torch
    from safetensors.torch import save_file

    from re2tal_cli.models import create_model

    torch.manual_seed(0)
    model = create_model(ARCH, num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def _table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary rows: what each comparison measured."""
    memory = results["memprofile"]
    return [
        {"what": "clip top-1: pretrained (α=1, β=0)", "value": results["pretrain"]["top1"]},
        {"what": "clip top-1: rewired (α=0, β=1), no training", "value": results["rewire"]["top1_without_training"]},
        {"what": "clip top-1: rewired, finetuned", "value": results["finetune"]["top1"]},
        {"what": "average mAP: features (frozen finetuned backbone)", "value": results["tal-features"]["average_mAP"]},
        {"what": "average mAP: end to end, reversible", "value": results["tal-e2e"]["average_mAP"]},
        {"what": "step memory (MiB): plain", "value": memory["plain"] / 2**20},
        {"what": "step memory (MiB): reversible", "value": memory["reversible"] / 2**20},
        {"what": "reversible gradient error level", "value": results["rewire"]["gradient_error_level"]},
    ]
