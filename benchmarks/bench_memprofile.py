"""memprofile acceptance: estimate vs measured peak for archs × wirings × input sizes, and the big-config timing.

    .venv/bin/python benchmarks/bench_memprofile.py                       # vit-s, vit-b, swin3d-t at 16×112², 32×160²
    .venv/bin/python benchmarks/bench_memprofile.py --archs vit-s --inputs 16x112 --device cuda
    .venv/bin/python benchmarks/bench_memprofile.py --inputs 16x112 --head actionformer  # end-to-end TAL's step
    .venv/bin/python benchmarks/bench_memprofile.py --timing-only

Every measurement runs in its own subprocess (`re2tal_cli.memory.measure`): on CPU the peak of torch's CPU allocator
(profiler memory events), on CUDA `torch.cuda.max_memory_allocated`. The estimate models the same device's allocator
(CPU: exact bytes; CUDA: 512-B blocks). Then the time to estimate swin3d-b (or the largest arch there is) at
1024×224², batch 2, all three wirings, as `re2tal memprofile` does (`estimate_all`), in this process: imports
excluded and listed apart; with --timing-only the first estimate includes what FakeTensorMode imports on first use
(torch._dynamo, about 1 s), as the command's does. The wirings' steps run in parallel worker processes, so their
seconds overlap. The load average is printed beside it (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="vit-s,vit-b,swin3d-t")
    parser.add_argument("--inputs", default="16x112,32x160", help="FRAMESxSIZE, comma-separated")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--steps", type=int, default=2, help="measured steps incl. one warm-up")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--big-arch", default="swin3d-b")
    parser.add_argument("--head", default=None, choices=("actionformer",), help="localizer on the backbone")
    args = parser.parse_args()

    t0 = time.perf_counter()
    from re2tal_cli.memory.estimate import estimate, estimate_all
    from re2tal_cli.memory.measure import measure
    from re2tal_cli.memory.step import WIRINGS, StepConfig
    from re2tal_cli.models import list_archs

    import_seconds = time.perf_counter() - t0
    print(f"# machine: {os.cpu_count()} CPUs, torch {__import__('torch').__version__}, python {sys.version.split()[0]}")

    if not args.timing_only:
        print("| arch | input (B×T×S²) | wiring | estimate MiB | measured MiB | rel. error | peak phase (est/meas) |")
        print("|---|---|---|---|---|---|---|")
        errors = []
        for arch in args.archs.split(","):
            for spec in args.inputs.split(","):
                frames, size = (int(v) for v in spec.split("x"))
                for wiring in WIRINGS:
                    c = StepConfig(arch, frames, size, args.batch, wiring, device=args.device, head=args.head)
                    e = estimate(c)
                    m = measure(c, steps=args.steps)
                    err = (e.total_peak - m.peak) / m.peak
                    errors.append(abs(err))
                    meas_phase = max(m.phases, key=m.phases.get)
                    print(
                        f"| {arch} | {args.batch}×{frames}×{size}² | {wiring.value} | {e.total_peak / 2**20:.1f} | "
                        f"{m.peak / 2**20:.1f} | {100 * err:+.1f} % | {e.peak_phase} / {meas_phase} |",
                        flush=True,
                    )
        print(
            f"\nmax |error| {100 * max(errors):.1f} %, mean {100 * sum(errors) / len(errors):.1f} % over {len(errors)}"
        )

    names = {a.name for a in list_archs()}
    big = args.big_arch if args.big_arch in names else "vit-l"
    load = os.getloadavg()[0]
    start, cpu = time.perf_counter(), _cpu_seconds()
    lines = [
        f"  {e.config.wiring.value:10s} peak {e.total_peak / 2**30:7.2f} GiB ({e.peak_phase}), {e.seconds:.1f} s, "
        f"{e.operators} operators"
        for e in estimate_all([StepConfig(big, 1024, 224, 2, wiring, head=args.head) for wiring in WIRINGS])
    ]
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    with_head = f" + {args.head}" if args.head else ""
    print(
        f"\n{big}{with_head} 1024×224², batch 2, all three wirings: {wall:.1f} s wall, {cpu:.1f} s CPU with workers "
        f"(imports {import_seconds:.1f} s; load average {load:.2f} before, {os.getloadavg()[0]:.2f} after)"
    )
    print("\n".join(lines))
    print(f"max RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


def _cpu_seconds() -> float:
    """CPU time of this process and of its children that have ended (the estimate's worker processes)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
