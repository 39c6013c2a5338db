"""Recovering a rewired backbone's accuracy on the synthetic clips: Re²TAL's re2, Dr²Net's dr2 and plain finetuning
side by side, from one backbone pretrained non-reversibly, plus that backbone's gradient-error map.

    .venv/bin/python benchmarks/bench_finetune.py                  # tsm-tiny, 90 clips per class: ~35 min on 2 cores
    .venv/bin/python benchmarks/bench_finetune.py --clips-per-class 30 --pretrain-epochs 5 --epochs 2   # a quick look

Every step is the real command line, in its own process:
1. `re2tal data synth` with many clips per class (the clip-classification layout);
2. pretraining: `re2tal finetune SOURCE --schedule none --set head.new=true` from random weights — the ordinary,
   non-reversible network until it classifies clearly (the checkpoint a user would download);
3. the accuracy of that network as trained (α=1, β=0) and rewired to Re²TAL's (0, 1) without any training — the drop
   the finetune has to recover;
4. `re2tal finetune PRETRAINED --schedule re2|dr2|none`, same recipe and seed: top-1 per epoch, guard fallbacks, the
   step from which training ran fully reversible, seconds per epoch;
5. `re2tal rewire PRETRAINED --error-map`: Dr²Net's gradient error level over α × β for this backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

from commands import RE2TAL, ROOT, run  # benchmarks/commands.py: the script's folder is on sys.path

SCHEDULES = ("re2", "dr2", "none")


def common_sets(args) -> list[str]:
    sets = [f"data.num_frames={args.frames}", f"data.size={args.size}", "backbone.frozen_bn=false",
            "head.label_smoothing=0", f"train.batch_size={args.batch}"]  # fmt: skip
    return [x for s in sets for x in ("--set", s)]


def accuracy_without_training(clips: Path, backbone: Path, schedule: str, args, work: Path) -> float:
    """In its own process: the top-1 of `backbone` under `schedule`'s first coupling, evaluated without a step."""
    out = run([sys.executable, __file__, "--evaluate-only", clips, backbone, schedule, "--work", work,
               "--frames", args.frames, "--size", args.size, "--batch", args.batch], args.threads)  # fmt: skip
    return float(out.strip().splitlines()[-1])


def evaluate_only(clips: str, backbone: str, schedule: str, frames: int, size: int, batch: int) -> float:
    from re2tal_cli.finetune import clip_accuracy

    sets = [f"data.num_frames={frames}", f"data.size={size}", f"train.batch_size={batch}", "backbone.frozen_bn=false"]
    return clip_accuracy(backbone, clips, schedule=schedule, sets=sets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_finetune")
    parser.add_argument("--arch", default="tsm-tiny")
    parser.add_argument("--clips-per-class", type=int, default=90)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--pretrain-epochs", type=int, default=25)
    parser.add_argument("--pretrain-lr", type=float, default=2e-3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--evaluate-only", nargs=3, metavar=("CLIPS", "BACKBONE", "SCHEDULE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.evaluate_only:
        clips, backbone, schedule = args.evaluate_only
        print(evaluate_only(clips, backbone, schedule, args.frames, args.size, args.batch))
        return

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {args.threads} threads, "
          f"{args.arch} at {args.frames}×{args.size}², {args.clips_per_class} clips per class", flush=True)  # fmt: skip
    data = work / "data"
    if not (data / "clips").is_dir():
        run([*RE2TAL, "data", "synth", data, "--videos", 2, "--clips-per-class", args.clips_per_class, "--force"],
            args.threads)  # fmt: skip
    clips = data / "clips"
    pretrained = work / "pretrain" / "backbone"
    if not (pretrained / "config.json").is_file():
        source = work / "source.safetensors"
        run([sys.executable, ROOT / "scripts" / "make_checkpoint.py", "--arch", args.arch, "--out", source],
            args.threads)  # fmt: skip
        run([*RE2TAL, "finetune", source, "--data", clips, "--out", work / "pretrain", "--schedule", "none",
             "--epochs", args.pretrain_epochs, "--set", "head.new=true", "--set", f"train.lr={args.pretrain_lr}",
             *common_sets(args), "--force", "--json"], args.threads)  # fmt: skip
    pre = json.loads((work / "pretrain" / "summary.json").read_text())
    print(f"pretrained (ordinary training, {args.pretrain_epochs} epochs): top-1 {100 * pre['final']['top1']:.1f} %",
          flush=True)  # fmt: skip
    before = {s: accuracy_without_training(clips, pretrained, s, args, work) for s in ("none", "re2", "dr2")}
    print(f"before finetuning: original (1, 0) {100 * before['none']:.1f} %, rewired (0, 1) {100 * before['re2']:.1f} "
          f"%, Dr²Net's start (1, 0.1) {100 * before['dr2']:.1f} %", flush=True)  # fmt: skip

    results = {}
    for schedule in SCHEDULES:
        out = work / f"ft-{schedule}"
        summary = json.loads(run([*RE2TAL, "finetune", pretrained, "--data", clips, "--out", out, "--schedule",
                                  schedule, "--epochs", args.epochs, "--set", f"train.lr={args.lr}",
                                  "--set", "train.warmup_epochs=1", *common_sets(args), "--force", "--json"],
                                 args.threads))  # fmt: skip
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        results[schedule] = {
            "top1_per_epoch": [r["top1"] for r in records if r["kind"] == "eval"],
            "final_top1": summary["final"]["top1"],
            "best_top1": summary["best"]["top1"],
            "fallbacks": summary["fallbacks"],
            "fully_reversible_from_step": summary["fully_reversible_from_step"],
            "steps": summary["steps"],
            "seconds_per_epoch": statistics.median(r["seconds"] for r in records if r["kind"] == "epoch"),
        }
        r = results[schedule]
        print(f"  {schedule:5s} top-1 per epoch {' '.join(f'{100 * v:.1f}' for v in r['top1_per_epoch'])}  "
              f"fallbacks {r['fallbacks']}  reversible from step {r['fully_reversible_from_step']}  "
              f"{r['seconds_per_epoch']:.1f} s/epoch", flush=True)  # fmt: skip
    report = json.loads(run([*RE2TAL, "rewire", pretrained, "--error-map", work / "error_map.png", "--grid", 6,
                             "--check-frames", args.frames, "--check-size", args.size, "--json"],
                            args.threads))  # fmt: skip
    levels = report["error_map"]["levels"]
    print(f"error map (β rows 0.1 → 1, α columns 0 → 1), {work / 'error_map.png'}:")
    for beta, row in zip(report["error_map"]["betas"], levels, strict=True):
        print(f"  β {beta:.2f}: " + " ".join(f"{v:8.1e}" for v in row))
    original = pre["final"]["top1"]
    for schedule in ("re2", "dr2"):
        gap = 100 * (results[schedule]["final_top1"] - original)
        print(f"{schedule}: final top-1 {100 * results[schedule]['final_top1']:.1f} % vs the original's "
              f"{100 * original:.1f} % ({gap:+.1f} points)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"pretrained_top1": original, "before": before, "finetune": results,
                                         "error_map": report["error_map"]}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
