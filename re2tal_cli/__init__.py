"""re2tal: reversible video backbones for end-to-end temporal action localization.

The core without the CLI (docs/api.md), as timm's `create_model` is used:

    import re2tal_cli as re2tal
    backbone = re2tal.load_backbone("runs/rw")           # any checkpoint; arch from its config or keys
    report = re2tal.rewire("videomae_b.pth", "runs/rw", check=True)
    re2tal.list_archs(), re2tal.create_model("swin3d-t")

Names are imported on first use, so `import re2tal_cli` (and `re2tal --help`) does not import torch. A command's
function and its module share a name (`rewire`, `memprofile`, `evaluate`): the package attribute is always the
function, so import the module's other names with `from re2tal_cli.rewire import RewireReport`.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name → the module that defines it (each command's core function lives in a module named after the command)
_API = {
    "load_backbone": "re2tal_cli.checkpoint",
    "save_backbone": "re2tal_cli.checkpoint",
    "create_model": "re2tal_cli.models",
    "get_arch": "re2tal_cli.models",
    "list_archs": "re2tal_cli.models",
    "rewire": "re2tal_cli.rewire",
    "extract_features": "re2tal_cli.extract",
    "ExtractSettings": "re2tal_cli.extract",
    "evaluate": "re2tal_cli.evaluate",
    "memprofile": "re2tal_cli.memprofile",
    "train_tal": "re2tal_cli.train_tal",
    "finetune": "re2tal_cli.finetune",
    "detect": "re2tal_cli.detect",
    "Coupling": "re2tal_cli.reversible",
    "Wiring": "re2tal_cli.reversible.wiring",
    "WiringName": "re2tal_cli.reversible.wiring",
    "demo": "re2tal_cli.demo",
    "import_checkpoint": "re2tal_cli.importing",
    "ActionFormer": "re2tal_cli.localizers",
    "ActionFormerConfig": "re2tal_cli.localizers",
    "VSGN": "re2tal_cli.localizers",
    "VSGNConfig": "re2tal_cli.localizers",
    "GTAD": "re2tal_cli.localizers",
    "GTADConfig": "re2tal_cli.localizers",
    "create_localizer": "re2tal_cli.localizers",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 're2tal_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package; for the submodules named like their function,
    the attribute stays (or becomes, on first use) the function."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
