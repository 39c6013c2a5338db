"""Frozen, unrelated features vs end-to-end training on the synthetic set (issue #4: "a localizer on frozen,
unrelated features scores clearly lower than one trained end to end").

    .venv/bin/python benchmarks/bench_synthetic_gap.py --threads 1           # r3d-tiny at 32², default set, 30 epochs
    .venv/bin/python benchmarks/bench_synthetic_gap.py --arch vit-tiny --size 64 --json gap.json

Both arms start from the same randomly initialised backbone ("unrelated": it has seen nothing of this data) and the
same ActionFormer, and train with the same windows, schedule and seed (re2tal_cli/train/tal.py). The only
difference: the frozen arm never updates the backbone. Reported: THUMOS-protocol mAP at tIoU 0.3:0.7 on the test
subset for each arm, and their ratio.

Why r3d-tiny: its temporal stride is 8 (0.8 s of video per feature at 10 fps), so the motion that tells the classes
apart happens *inside* a snippet and only a backbone that has learnt it keeps it; backbones with one feature per
frame or two (tsm-tiny, vit-tiny) hand the localizer a sequence in which it can follow the disc itself, frozen or
not (docs/synthetic.md has the runs). Frames are resized to 32² so that a CPU arm takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from re2tal_cli.data.datasets import class_names, load_annotations  # noqa: E402
from re2tal_cli.data.synth import SynthConfig, generate  # noqa: E402
from re2tal_cli.evaluate import evaluate  # noqa: E402
from re2tal_cli.localizers.actionformer import ActionFormer  # noqa: E402
from re2tal_cli.localizers.config import ActionFormerConfig  # noqa: E402
from re2tal_cli.models.registry import get_arch  # noqa: E402
from re2tal_cli.train.tal import TALModel, TALTrainConfig, predict_dataset, train_tal, training_set  # noqa: E402

# ActionFormer sized for the synthetic videos at 10 fps: 5 levels, narrower than THUMOS's.
LOCALIZER = ActionFormerConfig(
    embed_dim=64,
    head_dim=64,
    num_heads=4,
    window_size=9,
    num_branch_blocks=4,
    regression_ranges=((0, 4), (4, 8), (8, 16), (16, 32), (32, 1e4)),
    max_seq_len=256,
    dropout=0.0,
    path_drop=0.0,
)


def run_arm(arch: str, data: Path, train: TALTrainConfig, out: Path) -> dict:
    torch.manual_seed(train.seed)
    spec = get_arch(arch)
    backbone = spec.create(num_classes=0)
    classes = class_names(load_annotations(data))
    localizer = ActionFormer(backbone.out_channels, len(classes), LOCALIZER)
    model = TALModel(backbone, localizer, spec.input, train.freeze_backbone)
    dataset = training_set(data, model, train)
    start = time.perf_counter()
    history = []
    for stats in train_tal(model, dataset, train):
        history.append(round(stats.loss, 4))
        print(f"  epoch {stats.epoch:3d}  loss {stats.loss:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    train_seconds = time.perf_counter() - start
    results = predict_dataset(model, data, dataset.classes, train)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predictions.json").write_text(json.dumps({"results": results}))
    result = evaluate(data, out, protocol="thumos", subset="test")
    return {
        "mAP": [round(float(v), 4) for v in result.mAP],
        "average_mAP": round(float(result.mAP.mean()), 4),
        "train_seconds": round(train_seconds, 1),
        "loss_per_epoch": history,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="r3d-tiny")
    parser.add_argument("--data", type=Path, help="a synthetic dataset directory (default: generate the default set)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--frames", type=int, default=256, help="frames per training window")
    parser.add_argument("--size", type=int, default=32, help="frames are resized to size² (TALTrainConfig.size)")
    parser.add_argument("--windows-per-video", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "synth"
            generate(data, SynthConfig(), workers=min(os.cpu_count() or 1, 4))
        arms = {}
        for name, freeze in (("frozen", True), ("end-to-end", False)):
            print(f"{name}:", flush=True)
            config = TALTrainConfig(
                num_frames=args.frames,
                size=args.size,
                epochs=args.epochs,
                windows_per_video=args.windows_per_video,
                lr=args.lr,
                backbone_lr=args.lr,
                freeze_backbone=freeze,
                seed=args.seed,
                in_memory=True,  # decoded once: both arms train at compute speed (a window's decode is ~5× a step)
            )
            arms[name] = run_arm(args.arch, data, config, Path(tmp) / name)

    print(
        f"\n{args.arch} at {args.size}², {args.epochs} epochs, THUMOS protocol mAP on the test subset"
        " (tIoU 0.3 0.4 0.5 0.6 0.7)"
    )
    for name, r in arms.items():
        print(
            f"  {name:11s} {' '.join(f'{v:.3f}' for v in r['mAP'])}   average {r['average_mAP']:.3f}"
            f"   train {r['train_seconds']:.0f} s"
        )
    ratio = arms["end-to-end"]["average_mAP"] / max(arms["frozen"]["average_mAP"], 1e-9)
    print(f"  end-to-end / frozen average mAP: {ratio:.1f}×")
    if args.json:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        report = {"arch": args.arch, "size": args.size, "epochs": args.epochs, "machine": machine, **arms}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
