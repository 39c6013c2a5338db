"""The four arms of Re²TAL's comparison on the synthetic set, side by side: feature-based, frozen, end to end
reversible and end to end plain — same backbone, same data, same recipe (`synthetic`, or `--localizer vsgn|gtad`
with `synthetic-vsgn`, `synthetic-gtad`).

    .venv/bin/python benchmarks/bench_train_tal.py               # seeds 0 1, 30 epochs, r3d-tiny: ~40 min on 2 cores
    .venv/bin/python benchmarks/bench_train_tal.py --seeds 0 --epochs 5 --videos 12 --json out.json   # a quick look

Every arm is the real command line, in its own process: `re2tal rewire` of one randomly initialised backbone
("unrelated": it has seen nothing of this data), then per seed
- features: `re2tal extract --mode frames` of the rewired backbone (its features, computed once), then
  `re2tal train-tal --features`;
- frozen: `re2tal train-tal --backbone RW --frozen` (the same features, computed on the fly from the same windows);
- end to end, reversible: `re2tal train-tal --backbone RW` (α=0, β=1, reversible backward);
- end to end, plain: `re2tal train-tal --backbone RW --set backbone.wiring=plain` (the original residual network).
Reported per arm: average mAP (THUMOS protocol, tIoU 0.3:0.7, test subset) of the final epoch, per seed and their
mean; seconds per epoch. Then one end-to-end training step of each wiring is measured at the recipe's setting, in a
process of its own: the peak of bytes live in torch tensors (CPU allocator events, as `memprofile --measure`) and
its time — for the benchmark's backbone and for vit-tiny (`--memory-archs`): r3d-tiny's rewired stages hold one or
two blocks, where a reversible stage cannot save anything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from commands import RE2TAL, ROOT, run  # benchmarks/commands.py: the script's folder is on sys.path

ARMS = ("features", "frozen", "end_to_end reversible", "end_to_end plain")
RECIPES = {"actionformer": "synthetic", "vsgn": "synthetic-vsgn", "gtad": "synthetic-gtad"}  # each localizer's


def rewired(work: Path, arch: str, threads: int) -> Path:
    """A randomly initialised `arch` (seed 0), rewired; made once per work directory."""
    rw = work / f"rw-{arch}"
    if not (rw / "config.json").is_file():
        source = work / f"source-{arch}.safetensors"
        run([sys.executable, ROOT / "scripts" / "make_checkpoint.py", "--arch", arch, "--out", source], threads)
        run([*RE2TAL, "rewire", source, "--arch", arch, "--out", rw, "--force"], threads)
    return rw


def prepare(work: Path, args) -> tuple[Path, Path, Path]:
    """The dataset, the rewired backbone and its features, made once per work directory."""
    data, feats = work / "data", work / "feats"
    if not (data / "annotations.json").is_file():
        run([*RE2TAL, "data", "synth", data, "--videos", args.videos, "--force"], args.threads)
    rw = rewired(work, args.arch, args.threads)
    if not (feats / "index.json").is_file():
        run([*RE2TAL, "extract", rw, "--data", data, "--out", feats, "--mode", "frames", "--size", args.size,
             "--window", args.frames], args.threads)  # fmt: skip
    return data, rw, feats


def train(arm: str, seed: int, data: Path, rw: Path, feats: Path, out: Path, args) -> dict:
    source = {
        "features": ["--features", feats],
        "frozen": ["--backbone", rw, "--frozen"],
        "end_to_end reversible": ["--backbone", rw],
        "end_to_end plain": ["--backbone", rw, "--set", "backbone.wiring=plain"],
    }[arm]
    start = time.perf_counter()
    recipe = RECIPES[args.localizer]
    summary = json.loads(run([*RE2TAL, "train-tal", "--data", data, *source, "--recipe", recipe, "--seed", seed,
                              "--epochs", args.epochs, "--set", f"data.size={args.size}",
                              "--set", f"data.num_frames={args.frames}", "--out", out, "--force", "--json"],
                             args.threads))  # fmt: skip
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in epochs if r["kind"] == "epoch"]
    return {
        "average_mAP": summary["final"]["average_mAP"],
        "mAP": summary["final"]["mAP"],
        "seconds_per_epoch": statistics.median(seconds),
        "wall_seconds": round(time.perf_counter() - start, 1),
    }


def step_memory(data: str, rw: str, wiring: str, size: int, frames: int) -> dict:
    """In its own process: build the end-to-end run as train-tal does, take one batch, run a warm-up step and a
    measured step under the CPU profiler; the peak bytes live in torch tensors per phase, and the step's time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from re2tal_cli.memory.measure import allocator_peaks, mark_phase
    from re2tal_cli.train.tal import losses
    from re2tal_cli.train_tal import TALJob, new_recipe

    sets = [f"backbone.wiring={wiring}", f"data.size={size}", f"data.num_frames={frames}"]
    cfg = new_recipe(data, rw, None, False, None, "synthetic", sets, None, 0, None)
    torch.manual_seed(0)
    seconds = 0.0
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        job = TALJob.build(cfg, torch.device("cpu"))
        model = job.model.train()
        optimizer = job.optimizer()
        batch = next(iter(job.loader()))
        for step in range(2):  # step 0 warms up (optimizer state), step 1 is measured
            start = time.perf_counter()
            mark_phase(step, "zero_grad")
            optimizer.zero_grad(set_to_none=True)
            mark_phase(step, "forward")
            loss = losses(model, batch, torch.device("cpu"), contextlib.nullcontext)["loss"]
            mark_phase(step, "backward")
            loss.backward()
            mark_phase(step, "optimizer")
            optimizer.step()
            seconds = time.perf_counter() - start
    phases, before = allocator_peaks(prof)
    return {"wiring": wiring, "peak_bytes": max(phases.values()), "phases": phases, "before_step": before,
            "step_seconds": seconds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_train_tal")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--arch", default="r3d-tiny")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--localizer", default="actionformer", choices=RECIPES, help="with its synthetic recipe")
    parser.add_argument("--memory-archs", nargs="*", default=["vit-tiny"],
                        help="more backbones whose end-to-end step is measured (besides --arch)")  # fmt: skip
    parser.add_argument("--no-memory", action="store_true", help="skip the step measurements")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--step-memory", nargs=3, metavar=("DATA", "RW", "WIRING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step_memory:
        data, rw, wiring = args.step_memory
        print(json.dumps(step_memory(data, rw, wiring, args.size, args.frames)))
        return

    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {args.threads} threads, "
          f"{args.arch} at {args.frames}×{args.size}², {args.localizer}, {args.epochs} epochs, seeds {args.seeds}",
          flush=True)  # fmt: skip
    data, rw, feats = prepare(args.work, args)
    results: dict[str, dict] = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            prefix = "" if args.localizer == "actionformer" else f"{args.localizer}-"
            out = args.work / "runs" / f"{prefix}{arm.replace(' ', '-')}-seed{seed}"
            r = train(arm, seed, data, rw, feats, out, args)
            results[arm][seed] = r
            print(f"  seed {seed}  {arm:22s} avg mAP {100 * r['average_mAP']:6.2f}  "
                  f"{r['seconds_per_epoch']:5.1f} s/epoch  ({r['wall_seconds']:.0f} s)", flush=True)  # fmt: skip
    memory: dict[str, dict] = {}
    for arch in [] if args.no_memory else dict.fromkeys([args.arch, *args.memory_archs]):
        backbone = rewired(args.work, arch, args.threads)
        for wiring in ("plain", "reversible"):
            out = run([sys.executable, __file__, "--step-memory", data, backbone, wiring, "--size", args.size,
                       "--frames", args.frames], args.threads)  # fmt: skip
            memory.setdefault(arch, {})[wiring] = json.loads(out.strip().splitlines()[-1])

    print(f"\n{'arm':24s} {'avg mAP (mean)':>15s} {'per seed':>20s} {'s/epoch':>8s}")
    mean = {}
    for arm, per_seed in results.items():
        values = [per_seed[s]["average_mAP"] for s in args.seeds]
        mean[arm] = statistics.mean(values)
        seconds = statistics.mean(per_seed[s]["seconds_per_epoch"] for s in args.seeds)
        shown = " ".join(f"{100 * v:.2f}" for v in values)
        print(f"{arm:24s} {100 * mean[arm]:15.2f} {shown:>20s} {seconds:8.1f}")
    print(f"\nend-to-end step, batch 2 × {args.frames} × {args.size}²: peak bytes in torch tensors, time")
    for arch, pair in memory.items():
        plain, rev = pair["plain"], pair["reversible"]
        print(f"  {arch:12s} plain {plain['peak_bytes'] / 2**20:6.1f} MiB  reversible {rev['peak_bytes'] / 2**20:6.1f} "
              f"MiB → {rev['peak_bytes'] / plain['peak_bytes']:.2f}×;  {plain['step_seconds']:.2f} s vs "
              f"{rev['step_seconds']:.2f} s → {rev['step_seconds'] / plain['step_seconds']:.2f}×")  # fmt: skip
    if "features" in mean and "end_to_end reversible" in mean and mean["features"] > 0:
        print(f"end to end (reversible) / feature-based average mAP: "
              f"{mean['end_to_end reversible'] / mean['features']:.2f}×")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "arms": results,
                                         "step_memory": memory}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
