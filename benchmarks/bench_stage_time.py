"""Where a training step's time goes, stage by stage: each residual stage of a backbone alone, at the input it gets
inside the whole network, forward and backward in the three wirings, side by side.

    .venv/bin/python benchmarks/bench_stage_time.py --arch slowfast-r50 --frames 32 --size 112 --rounds 15

bench_training_memory.py times whole steps, where every stage's cost is mixed with the layers between them and the
optimizer. Here each stage runs alone (its blocks only: stems, transition blocks and fusions are not timed), so its
reversible ÷ checkpoint ratio says which stages the reversible walk costs time on and which it gains on. The walk
does the same recompute as checkpointing, plus passes over the stage's activations (per block, the coupling's, the
inverse's and the stream gradients' sums of three tensors) and minus checkpointing's per-block bookkeeping: the
ratio is expected to grow with the stage's activation size against its parameter count.

The stage inputs are captured in one forward of the whole network (no graph); the gradient at a stage's output is
ones. A round runs every stage, each in the three wirings twice in a palindromic order rotating from round to round
(as bench_training_memory.py does), after two warm-up runs per stage and wiring. The table gives each stage's median
forward + backward time per wiring and the geometric mean of its per-round ratios with a 95 % bootstrap interval;
the last row is the stages together (a round's times summed over the stages).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from bench_training_memory import WIRINGS, _cuda_available, _geometric_mean_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    args = parser.parse_args()

    import torch

    from re2tal_cli.models import create_model
    from re2tal_cli.reversible import Coupling
    from re2tal_cli.reversible.wiring import WiringName

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.arch, drop_path=0.1).to(device).train()
    stages = model.residual_stages()
    names = {id(m): name for name, m in model.named_modules()}
    inputs = _stage_inputs(model, stages, torch.randn(args.batch, 3, args.frames, args.size, args.size, device=device))

    def run(k: int, wiring: str) -> float:
        """Stage k's forward and backward in `wiring`, in seconds."""
        stage, setting = stages[k], WiringName(wiring).wiring
        stage.set_wiring(Coupling(setting.alpha, setting.beta), setting.execution)
        a = inputs[k].clone().requires_grad_(True)
        start = time.perf_counter()
        out = stage(a)
        out.backward(torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        for p in stage.parameters_of_blocks():
            p.grad = None
        return seconds

    for k in range(len(stages)):
        for _ in range(2):
            for wiring in WIRINGS:
                run(k, wiring)
    # times[k][wiring]: per round, the mean of that round's two runs
    times = [{wiring: [] for wiring in WIRINGS} for _ in stages]
    for round_ in range(args.rounds):
        shift = round_ % len(WIRINGS)
        order = WIRINGS[shift:] + WIRINGS[:shift]
        for k in range(len(stages)):
            runs = {wiring: [] for wiring in WIRINGS}
            for wiring in order + order[::-1]:
                runs[wiring].append(run(k, wiring))
            for wiring in WIRINGS:
                times[k][wiring].append(statistics.fmean(runs[wiring]))

    print(f"# {args.arch}, {args.batch}×3×{args.frames}×{args.size}², {args.device}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, load {os.getloadavg()[0]:.2f}, {args.rounds} rounds")  # fmt: skip
    print("\n| stage (first block) | input | MB | blocks | parameters (M) | plain ms | checkpoint ms | reversible ms | "
          "reversible ÷ checkpoint | reversible ÷ plain |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k, stage in enumerate(stages):
        x = inputs[k]
        parameters = sum(p.numel() for p in stage.parameters_of_blocks())
        row = [names[id(stage.blocks[0])], "×".join(map(str, x.shape)), f"{x.numel() * x.element_size() / 1e6:.1f}",
               str(len(stage.blocks)), f"{parameters / 1e6:.2f}"]  # fmt: skip
        print("| " + " | ".join(row + _timing_cells(times[k])) + " |")
    together = {wiring: [sum(rounds) for rounds in zip(*(t[wiring] for t in times), strict=True)] for wiring in WIRINGS}
    print("| all stages | | | | | " + " | ".join(_timing_cells(together)) + " |")


def _stage_inputs(model, stages, video) -> list:
    """Each stage's input in a forward of the whole network on `video`."""
    import torch

    inputs = {}
    hooks = [
        stage.register_forward_pre_hook(lambda _, args, k=k: inputs.setdefault(k, args[0].detach()))
        for k, stage in enumerate(stages)
    ]
    with torch.no_grad():
        model.temporal_features(video)
    for hook in hooks:
        hook.remove()
    return [inputs[k] for k in range(len(stages))]


def _timing_cells(times: dict[str, list[float]]) -> list[str]:
    """Median ms per wiring, then reversible ÷ checkpoint and ÷ plain (geometric mean of the rounds' ratios, 95 %
    bootstrap interval)."""
    cells = [f"{statistics.median(times[wiring]) * 1e3:.1f}" for wiring in WIRINGS]
    for other in ("checkpoint", "plain"):
        ratios = [a / b for a, b in zip(times["reversible"], times[other], strict=True)]
        mean, low, high = _geometric_mean_interval([ratios])
        cells.append(f"{mean:.3f} ({low:.3f}–{high:.3f})")
    return cells


if __name__ == "__main__":
    main()
