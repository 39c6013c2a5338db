"""GPUs users train on, with the memory a training process can actually use.

A GPU's usable memory is less than its nominal size: the CUDA context (driver, kernels of torch/cuDNN/cuBLAS
loaded into the device) takes ~0.5–1 GiB before the first tensor, and the caching allocator keeps some reserved but
unallocated memory (fragmentation). `usable_gib` is the nominal memory less `CONTEXT_GIB`; the verdict then keeps a
`FRAGMENTATION` margin below it. `--gpu-mem GiB` names any other device (give what `nvidia-smi` shows as free).
"""

from __future__ import annotations

from dataclasses import dataclass

from re2tal_cli.errors import BadInputError, UnknownNameError

GiB = 2**30
CONTEXT_GIB = 0.75  # CUDA context + library handles, typical for torch 2.x on Ampere/Hopper
FRAGMENTATION = 0.05  # share of usable memory kept free for the caching allocator's fragmentation


@dataclass(frozen=True)
class Gpu:
    name: str
    nominal_gib: float  # as sold (GB on the box is GiB-ish for NVIDIA's memory sizes)
    description: str

    @property
    def usable_bytes(self) -> int:
        return int((self.nominal_gib - CONTEXT_GIB) * GiB)


_CATALOGUE = [
    Gpu("gtx-1080-ti", 11, "GeForce GTX 1080 Ti, 11 GB (Re²TAL's Fig. 7 limit)"),
    Gpu("rtx-2080-ti", 11, "GeForce RTX 2080 Ti, 11 GB"),
    Gpu("titan-rtx", 24, "TITAN RTX, 24 GB"),
    Gpu("rtx-3090", 24, "GeForce RTX 3090, 24 GB"),
    Gpu("rtx-4090", 24, "GeForce RTX 4090, 24 GB"),
    Gpu("rtx-a6000", 48, "RTX A6000, 48 GB"),
    Gpu("l4", 24, "L4, 24 GB"),
    Gpu("l40s", 48, "L40S, 48 GB"),
    Gpu("t4", 16, "Tesla T4, 16 GB"),
    Gpu("v100-16gb", 16, "Tesla V100, 16 GB"),
    Gpu("v100-32gb", 32, "Tesla V100, 32 GB"),
    Gpu("a10", 24, "A10, 24 GB"),
    Gpu("a100-40gb", 40, "A100, 40 GB"),
    Gpu("a100-80gb", 80, "A100, 80 GB"),
    Gpu("h100-80gb", 80, "H100, 80 GB (SXM/PCIe)"),
    Gpu("h200", 141, "H200, 141 GB"),
    Gpu("b200", 180, "B200, 180 GB"),
]
GPUS: dict[str, Gpu] = {g.name: g for g in _CATALOGUE}
_ALIASES = {"1080ti": "gtx-1080-ti", "3090": "rtx-3090", "4090": "rtx-4090", "a100": "a100-80gb", "h100": "h100-80gb"}


def get_gpu(name: str) -> Gpu:
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key not in GPUS:
        raise UnknownNameError("GPU", name, list(GPUS) + list(_ALIASES), param="gpu")
    return GPUS[key]


def custom_gpu(gib: float) -> Gpu:
    """GiB the process can use, taken as given (no context subtracted)."""
    if not gib > 0:
        raise BadInputError(f"`gpu_mem` must be a positive number of GiB, got {gib}")
    return Gpu(f"{gib:g} GiB", gib + CONTEXT_GIB, f"custom: {gib:g} GiB usable")


@dataclass(frozen=True)
class Verdict:
    fits: bool
    tight: bool  # fits the usable memory but not with the fragmentation margin
    headroom: int  # usable − peak, bytes (negative: short by that much)
    usable: int

    @property
    def label(self) -> str:
        return "does not fit" if not self.fits else ("tight" if self.tight else "fits")


def verdict(peak: int, gpu: Gpu) -> Verdict:
    usable = gpu.usable_bytes
    return Verdict(peak <= usable, peak > usable * (1 - FRAGMENTATION), usable - peak, usable)
