"""LoFi-E2E's comparison (its Table 1) on the synthetic set, and the memory of each low-fidelity configuration.

    .venv/bin/python benchmarks/bench_lofi.py                       # tsm-tiny, ~20 min on 2 cores
    .venv/bin/python benchmarks/bench_lofi.py --epochs 3 --head-epochs 3 --pretrain-epochs 3   # a quick look

Every step is the real command line, in its own process:
1. `re2tal data synth` (TAL videos and the clip-classification layout);
2. stage 1, the "classification-pretrained encoder" a user would download: `re2tal finetune SOURCE --schedule none`
   on the clips from random weights (ordinary autograd);
3. baseline: the localizer trained at full fidelity on that encoder, frozen (`train-tal --backbone PRE --frozen`);
4. LoFi, per mode of `--modes`: stage 2, `train-tal --backbone PRE --set lofi.mode=MODE` (encoder and localizer end
   to end on reduced batches), then stage 3, `train-tal --backbone STAGE2_RUN --frozen` (a new localizer at full
   fidelity on the LoFi-trained encoder, frozen) — same recipe, seed and epochs as the baseline; with
   `--full-fidelity` the same two stages end to end at full fidelity (what LoFi approximates);
5. memory: `re2tal memprofile` of one training step at the full-fidelity input and at each configuration's reduced
   input (CUDA allocator model, a real arch and ActionFormer), so the per-video memory of s, t, st sits side by side.
Reported: average mAP (THUMOS protocol, tIoU 0.3:0.7, test subset) of the last epoch, per seed and their mean.
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

SQRT2 = 2**0.5


def sets(*pairs: str) -> list[str]:
    return [x for s in pairs for x in ("--set", s)]


def pretrained_encoder(work: Path, data: Path, args) -> Path:
    """Stage 1: the clip classifier, trained non-reversibly from random weights (made once per work directory)."""
    backbone = work / "pretrain" / "backbone"
    if not (backbone / "config.json").is_file():
        source = work / "source.safetensors"
        run([sys.executable, ROOT / "scripts" / "make_checkpoint.py", "--arch", args.arch, "--out", source],
            args.threads)  # fmt: skip
        run([*RE2TAL, "finetune", source, "--data", data / "clips", "--out", work / "pretrain", "--schedule", "none",
             "--epochs", args.pretrain_epochs, "--force", "--json",
             *sets("head.new=true", "train.lr=2e-3", "data.num_frames=16", "data.size=32", "backbone.frozen_bn=false",
                   "head.label_smoothing=0", "train.batch_size=8")], args.threads)  # fmt: skip
    return backbone


def train_tal(data: Path, backbone: Path, out: Path, epochs: int, seed: int, threads: int, *extra) -> dict:
    if not (out / "summary.json").is_file():
        run([*RE2TAL, "train-tal", "--data", data, "--backbone", backbone, "--recipe", "synthetic", "--out", out,
             "--epochs", epochs, "--seed", seed, "--force", "--json", *extra], threads)  # fmt: skip
    return json.loads((out / "summary.json").read_text())


def last_map(summary: dict) -> float:
    return summary["final"]["average_mAP"]


def memory(args) -> list[dict]:
    """memprofile's peak of one step at full fidelity and at each configuration's reduced input."""
    frames, size = args.memory_frames, args.memory_size
    configs = [
        ("full", frames, size),
        ("s (r_s 2)", frames, round(size / 2)),
        ("t (r_t 4)", frames // 4, size),
        ("st (r_s √2, r_t 2)", frames // 2, round(size / SQRT2)),
    ]
    rows = []
    for name, f, s in configs:
        report = json.loads(run([*RE2TAL, "memprofile", "--arch", args.memory_arch, "--frames", f, "--size", s,
                                 "--wiring", "all", "--head", "actionformer", "--amp", "fp16", "--json"],
                                args.threads))  # fmt: skip
        peaks = {w["wiring"]: w["estimate"]["bytes"]["peak"] / 2**30 for w in report["wirings"]}
        rows.append({"config": name, "frames": f, "size": s, "pixels": f * s * s, "peak_gib": peaks})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_lofi")
    parser.add_argument("--arch", default="tsm-tiny")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--clips-per-class", type=int, default=30)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=15, help="LoFi stage 2 epochs")
    parser.add_argument("--head-epochs", type=int, default=15, help="baseline and stage 3 epochs")
    parser.add_argument("--modes", nargs="+", default=["cyclic-long"], help="LoFi modes, one arm each")
    parser.add_argument("--full-fidelity", action="store_true", help="also an arm end to end at full fidelity")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-arch", default="tsm-r50")
    parser.add_argument("--memory-frames", type=int, default=256)
    parser.add_argument("--memory-size", type=int, default=224)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {args.threads} threads, "
          f"{args.arch}, LoFi {' '.join(args.modes)}", flush=True)  # fmt: skip
    data = work / "data"
    if not (data / "annotations.json").is_file():
        run([*RE2TAL, "data", "synth", data, "--videos", args.videos, "--clips-per-class", args.clips_per_class,
             "--force"], args.threads)  # fmt: skip
    pre = pretrained_encoder(work, data, args)
    top1 = json.loads((work / "pretrain" / "summary.json").read_text())["final"]["top1"]
    print(f"stage 1: {args.arch} classification-pretrained on the clips, top-1 {100 * top1:.1f} %", flush=True)
    arms = [f"lofi {mode}" for mode in args.modes] + (["full fidelity"] if args.full_fidelity else [])
    results: dict[str, dict] = {"baseline": {}} | {arm: {} for arm in arms} | {f"{arm}, stage 2": {} for arm in arms}
    for seed in args.seeds:
        base = train_tal(data, pre, work / f"frozen-s{seed}", args.head_epochs, seed, args.threads, "--frozen")
        results["baseline"][seed] = last_map(base)
        print(f"seed {seed}: classification-pretrained encoder, frozen: {last_map(base):.4f}", flush=True)
        for arm in arms:
            name = arm.replace("lofi ", "").replace(" ", "-")
            stage2 = work / f"e2e-{name}-s{seed}"
            lofi = sets(f"lofi.mode={arm.removeprefix('lofi ')}") if arm != "full fidelity" else []
            s2 = train_tal(data, pre, stage2, args.epochs, seed, args.threads, *lofi)
            s3 = train_tal(data, stage2, work / f"head-{name}-s{seed}", args.head_epochs, seed, args.threads,
                           "--frozen")  # fmt: skip
            results[arm][seed], results[f"{arm}, stage 2"][seed] = last_map(s3), last_map(s2)
            print(f"seed {seed}: {arm}: end to end (evaluated at full fidelity) {last_map(s2):.4f} → its encoder "
                  f"frozen, a new localizer {last_map(s3):.4f}", flush=True)  # fmt: skip
    for arm, per_seed in results.items():
        values = list(per_seed.values())
        print(f"{arm:28s} mean average mAP {statistics.mean(values):.4f}  ({' '.join(f'{v:.4f}' for v in values)})")
    rows = [] if args.skip_memory else memory(args)
    for row in rows:
        peaks = "  ".join(f"{w} {v:.2f}" for w, v in row["peak_gib"].items())
        print(f"memory {args.memory_arch} + actionformer, fp16, {row['config']}: {row['frames']}×{row['size']}² "
              f"({row['pixels'] / 1e6:.1f} Mpx/video): peak GiB {peaks}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"results": results, "memory": rows, "top1": top1}, indent=2))


if __name__ == "__main__":
    main()
