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
