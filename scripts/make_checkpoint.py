"""Write a randomly initialised backbone checkpoint of any registered arch (for demos and trying the pipeline).

Usage: python scripts/make_checkpoint.py --arch vit-tiny --out runs/demo/source.safetensors [--classes N] [--seed S]
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

from re2tal_cli.models import create_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = create_model(args.arch, num_classes=args.classes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
    print(f"{args.out}: {args.arch}, {sum(p.numel() for p in model.parameters()):,} parameters (random init)")


if __name__ == "__main__":
    main()
