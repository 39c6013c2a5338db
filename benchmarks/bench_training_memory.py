"""Training-step activation memory and step time: plain vs per-block checkpointing vs reversible, side by side.

Example (issue #2's figure: one ViT at three depths):
    python benchmarks/bench_training_memory.py --arch vit-s --depths 6 12 24 --frames 16 --size 224
Backbone families at their own depth (Re²TAL Fig. 7):
    python benchmarks/bench_training_memory.py --arch swin3d-t swin3d-s --frames 32 --size 112

Each (arch, depth, wiring) runs in its own process. Activation memory ("step peak") is the peak during one training
step (forward, backward, AdamW step) minus what was held just before it, with model, optimizer state and input
already allocated, so it includes the parameter gradients (which grow with depth in every wiring: the summary also
gives the peak less them); "held for backward" is what the forward leaves allocated for the backward (the stored
activations). Measured on CUDA with torch.cuda.max_memory_allocated / memory_allocated;
on CPU with the process's peak / current resident set (VmHWM reset through /proc/self/clear_refs, VmRSS) with
glibc's mmap threshold pinned low so that freed tensors go back to the OS at once. Step time is measured in another
process with the normal allocator, which holds the three wirings' models and alternates their steps: --steps rounds
after three warm-up steps each, a round being two steps of each wiring in a palindromic order (A B C C B A, the order
rotating from round to round), so that a drift of the machine's speed within a round weighs the same on every
wiring. On a shared, noisy machine each wiring meets the same load, so the per-round ratios are steadier than times
taken one process after another. With --processes K the timing runs in K fresh processes one after another, each
--steps rounds: whatever sets one process's speed moves every step in it alike (SlowFast-R50's reversible ÷ plain
ranged from 1.28 to 1.37 from process to process on one CPU), so rounds of one process are not independent draws,
and the interval resamples processes too. The summary gives the median step per wiring and, per pair of wirings,
the geometric mean of the per-round ratios with a 95 % bootstrap interval (the processes resampled, then the rounds
within each), and their median and quartiles. Ratios are to the plain wiring of the same arch and depth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time

WIRINGS = ("plain", "checkpoint", "reversible")


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _training_step(spec: dict, wiring: str):
    """A model of spec's arch and depth in `wiring`, and its training step (forward, backward, AdamW step)."""
    import torch

    from re2tal_cli.models import create_model
    from re2tal_cli.reversible.wiring import WiringName

    torch.manual_seed(0)
    overrides = {"depth": spec["depth"]} if spec["depth"] else {}
    model = create_model(spec["arch"], drop_path=0.1, **overrides).to(spec["device"]).train()
    WiringName(wiring).wiring.apply(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(video, after_forward=None):
        loss = model.temporal_features(video).float().square().mean()
        if after_forward is not None:
            after_forward()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def worker(spec: dict) -> dict:
    import torch

    device = torch.device(spec["device"])
    video = torch.randn(spec["batch"], 3, spec["frames"], spec["size"], spec["size"], device=device)
    if spec["measure"] == "time":
        steps = {wiring: _training_step(spec, wiring)[1] for wiring in WIRINGS}
        # Warm-up at full size, three steps of each wiring: on a CPU a wiring's first steps in a process are slower
        # (the plain SlowFast-R50 step's second and third by about 30 %); timed, they put the ratios to plain 1–2 %
        # low (docs/benchmarks.md).
        for _ in range(3):
            for step in steps.values():
                step(video)
        times: dict[str, list[float]] = {wiring: [] for wiring in WIRINGS}
        for round_ in range(spec["steps"]):
            k = round_ % len(WIRINGS)  # the order rotates: no wiring always runs right after the same other one
            order = WIRINGS[k:] + WIRINGS[:k]
            for wiring in order + order[::-1]:
                start = time.perf_counter()
                steps[wiring](video)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[wiring].append(time.perf_counter() - start)
        return times

    model, step = _training_step(spec, spec["wiring"])
    gradient_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    # Warm-up on a small frame size: creates the optimizer state and starts autograd's and the kernels' one-time
    # machinery, so the measured step holds only what the step itself needs.
    step(torch.randn(spec["batch"], 3, spec["frames"], 32, 32, device=device))
    held = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(video, lambda: held.append(torch.cuda.memory_allocated() - before))
        torch.cuda.synchronize()
        activation = torch.cuda.max_memory_allocated() - before
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set to the current one
        before = _rss_bytes("VmRSS")
        step(video, lambda: held.append(_rss_bytes("VmRSS") - before))
        activation = _rss_bytes("VmHWM") - before
    params = sum(p.numel() for p in model.parameters())
    return {
        "activation_bytes": activation,
        "held_bytes": held[0],
        "gradient_bytes": gradient_bytes,
        "parameters": params,
    }


def _run_worker(spec: dict, env: dict | None = None) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"worker failed for {spec}:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measured_rows(spec: dict) -> list[dict]:
    """The three wirings' rows for one (arch, depth): memory each in a fresh process, which pins glibc's mmap
    threshold so that the resident set follows live tensors (that makes every large allocation fault its pages in),
    then time in one more process, wirings alternating, with the normal allocator."""
    rows = []
    for wiring in WIRINGS:
        env = dict(os.environ)
        if spec["device"] == "cpu":
            env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
        rows.append({**spec, "wiring": wiring, **_run_worker({**spec, "wiring": wiring, "measure": "memory"}, env)})
    timings = [_run_worker({**spec, "measure": "time"}) for _ in range(spec["processes"])]
    for row in rows:
        steps = [timing[row["wiring"]] for timing in timings]
        row["step_seconds"] = statistics.median(t for process in steps for t in process)
        # per process, a round's mean (its two steps of this wiring)
        row["round_seconds"] = [[(a + b) / 2 for a, b in zip(p[::2], p[1::2], strict=True)] for p in steps]
    return rows


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", required=True)
    parser.add_argument("--depths", nargs="*", type=int, default=[], help="override the depth (ViT family)")
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2, help="timed rounds of the three wirings' steps")
    parser.add_argument("--processes", type=int, default=1, help="fresh processes the timing runs in, one by one")
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    parser.add_argument("--json", dest="json_out", help="also write the rows to this JSON file")
    args = parser.parse_args()

    rows = []
    for arch in args.arch:
        for depth in args.depths or [0]:
            spec = dict(arch=arch, depth=depth, frames=args.frames, size=args.size)
            spec.update(batch=args.batch, steps=args.steps, processes=args.processes, device=args.device)
            rows += measured_rows(spec)
            for row in rows[-len(WIRINGS) :]:
                print(_format_row(row, rows), flush=True)
    _print_summary(rows)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)


def _plain_of(row: dict, rows: list[dict]) -> dict:
    return next(r for r in rows if (r["arch"], r["depth"], r["wiring"]) == (row["arch"], row["depth"], "plain"))


def _format_row(row: dict, rows: list[dict]) -> str:
    plain = _plain_of(row, rows)
    peak, held = row["activation_bytes"] / 2**20, row["held_bytes"] / 2**20
    return (
        f"{row['arch']:<10} depth={row['depth'] or '-':<3} {row['wiring']:<11} "
        f"held for backward {held:8.1f} MiB ({row['held_bytes'] / plain['held_bytes']:.3f})  "
        f"step peak {peak:8.1f} MiB ({row['activation_bytes'] / plain['activation_bytes']:.3f} of plain)  "
        f"step {row['step_seconds']:7.2f} s ({row['step_seconds'] / plain['step_seconds']:.2f} of plain)"
    )


def _print_summary(rows: list[dict]) -> None:
    reversible = [r for r in rows if r["wiring"] == "reversible"]
    print("\nreversible, relative to the first configuration (step peak; step peak less parameter gradients; held):")
    first = reversible[0]
    for r in reversible:
        peak = r["activation_bytes"] / first["activation_bytes"]
        working = (r["activation_bytes"] - r["gradient_bytes"]) / (first["activation_bytes"] - first["gradient_bytes"])
        held = r["held_bytes"] / first["held_bytes"]
        print(f"  {r['arch']:<10} depth={r['depth'] or '-':<3} {peak:.3f}; {working:.3f}; {held:.3f}")
    print("reversible / checkpoint: ", end="")
    for r in reversible:
        ckpt = next(c for c in rows if (c["arch"], c["depth"], c["wiring"]) == (r["arch"], r["depth"], "checkpoint"))
        print(
            f"{r['arch']} d={r['depth'] or '-'} memory {r['activation_bytes'] / ckpt['activation_bytes']:.2f}, "
            f"time {r['step_seconds'] / ckpt['step_seconds']:.2f};  ",
            end="",
        )
    print(
        "\nstep time, reversible ÷ the other wiring in the same round: geometric mean (95 % bootstrap interval); "
        "median [quartiles]"
    )
    for r in reversible:
        cells = []
        for other in ("plain", "checkpoint"):
            o = next(c for c in rows if (c["arch"], c["depth"], c["wiring"]) == (r["arch"], r["depth"], other))
            ratios = [
                [a / b for a, b in zip(mine, theirs, strict=True)]
                for mine, theirs in zip(r["round_seconds"], o["round_seconds"], strict=True)
            ]
            mean, low, high = _geometric_mean_interval(ratios)
            pooled = [ratio for process in ratios for ratio in process]
            q1, median, q3 = statistics.quantiles(pooled, n=4) if len(pooled) > 1 else pooled * 3
            cells.append(f"÷ {other} {mean:.3f} ({low:.3f}–{high:.3f}); {median:.3f} [{q1:.3f}, {q3:.3f}]")
        print(f"  {r['arch']:<10} depth={r['depth'] or '-':<3} " + ", ".join(cells))


def _geometric_mean_interval(ratios: list[list[float]], resamples: int = 10_000) -> tuple[float, float, float]:
    """The geometric mean of per-round ratios (a list per process) and a 95 % percentile bootstrap interval for it:
    the processes resampled with replacement, then the rounds of each drawn process, with a fixed seed so that the
    same rounds give the same interval. With one process this is the rounds' bootstrap."""
    logs = [[math.log(r) for r in process] for process in ratios]
    draw = random.Random(0)

    def resampled_mean() -> float:
        processes = draw.choices(logs, k=len(logs))
        return statistics.fmean(x for process in processes for x in draw.choices(process, k=len(process)))

    means = sorted(resampled_mean() for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
    return math.exp(statistics.fmean(x for process in logs for x in process)), math.exp(low), math.exp(high)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
