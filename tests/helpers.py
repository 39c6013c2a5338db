"""Small builders shared by the tests: tiny checkpoints, a seeded Hugging Face cache."""

from pathlib import Path

import torch
from safetensors.torch import save_file

from re2tal_cli.models import create_model


def tiny_checkpoint(path: Path, arch: str = "vit-tiny", num_classes: int = 5, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=num_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return path


def seed_hub_cache(hf_home: Path, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
    """Lay files out as huggingface_hub's cache does (refs → snapshot → blob), as if downloaded earlier."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    for name, data in files.items():
        target = repo_dir / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return commit


def batchnorm_state(model) -> dict:
    """Running statistics and batch counters of every BatchNorm, copied."""
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def off_the_kinks(model, seed: int = 0):
    """`model` with BatchNorm statistics and affine parameters drawn at random, as a trained network has them. A
    fresh network's BatchNorm (mean 0, variance 1, bias 0) maps 0 to exactly 0, and a ReLU after it then sits on its
    kink wherever a convolution's whole window reads zeros (after a ReLU, most of a fresh net's activations): there a
    rebuilt input's 1e-17 rounding decides the gradient, 0 or 1, and an fp64 comparison measures that coin, not the
    engine."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                    m.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return model
