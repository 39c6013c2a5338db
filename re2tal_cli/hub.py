"""Where checkpoints come from: `hf://org/repo[/path/in/repo][@revision]` through huggingface_hub (which honours
HF_HOME, HF_HUB_OFFLINE and HF_ENDPOINT), or a local file. Reading is safetensors first; `.pth/.pt/.bin/.pth.tar` only
through `torch.load(weights_only=True)`."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from re2tal_cli.errors import BadCheckpointError, Re2talError

HF_SCHEME = "hf://"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# Foreign checkpoints often nest the weights one level down (mmaction: state_dict, SlowFast: model_state, …). OpenTAD's
# and ActionFormer's training checkpoints hold the weights (state_dict) and their EMA (state_dict_ema), and evaluate
# the EMA: it comes first.
_NESTED_KEYS = ("state_dict_ema", "state_dict", "model_state", "model", "module", "backbone_state")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".pth.tar")  # .pth.tar: ActionFormer's release


def parse_hf_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`hf://org/repo/sub/file.safetensors@rev` → ("org/repo", "sub/file.safetensors", "rev")."""
    rest = uri.removeprefix(HF_SCHEME)
    revision = None
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
    parts = [p for p in rest.split("/") if p]
    if len(parts) < 2 or revision == "":
        raise BadCheckpointError(f"{uri}: expected hf://ORG/REPO[/FILE][@REVISION]")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None, revision


def resolve(src: str | Path) -> Path:
    """A local path to the checkpoint file named by `src` (downloading or reading the Hub cache for hf://)."""
    src = str(src)
    if src.startswith(HF_SCHEME):
        return _resolve_hf(src)
    path = Path(src)
    if not path.exists():
        raise BadCheckpointError(f"{path}: no such file")
    if path.is_dir():
        return _weights_in(path, src)
    return path


def resolve_folder(src: str | os.PathLike) -> Path:
    """A local directory named by `src`: a path, or `hf://ORG/REPO[/FOLDER][@REVISION]` downloaded whole (or that
    folder of it) into the Hub cache — how a run published by `re2tal hub push` is read."""
    src = str(src)
    if not src.startswith(HF_SCHEME):
        return Path(src)
    from huggingface_hub import snapshot_download

    repo_id, folder, revision = parse_hf_uri(src)
    with _hub_errors(src, repo_id, revision):
        root = Path(snapshot_download(repo_id, revision=revision, allow_patterns=[f"{folder}/*"] if folder else None))
    if folder and not (root / folder).is_dir():
        raise BadCheckpointError(f"{src}: no folder {folder!r} in {repo_id}")
    return root / folder if folder else root


def _resolve_hf(uri: str) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    repo_id, filename, revision = parse_hf_uri(uri)
    with _hub_errors(uri, repo_id, revision, filename):
        if filename:
            return Path(hf_hub_download(repo_id, filename, revision=revision))
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=["*.json", *(f"*{s}" for s in WEIGHT_SUFFIXES)]
        )
    return _weights_in(Path(folder), uri)


@contextlib.contextmanager
def _hub_errors(uri: str, repo_id: str, revision: str | None, filename: str | None = None) -> Iterator[None]:
    """huggingface_hub's exceptions as one-line errors naming `uri`."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except LocalEntryNotFoundError:
        raise BadCheckpointError(
            f"{uri}: not in the local Hub cache and the Hub cannot be reached (HF_HUB_OFFLINE is set or no network); "
            "download it once online or point HF_HOME at a cache that has it"
        ) from None
    except RepositoryNotFoundError:
        raise BadCheckpointError(
            f"{uri}: repository {repo_id} not found (or private: log in with `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise BadCheckpointError(f"{uri}: revision {revision!r} not found in {repo_id}") from None
    except EntryNotFoundError:
        raise BadCheckpointError(f"{uri}: no file {filename!r} in {repo_id}") from None
    except HfHubHTTPError as error:
        raise Re2talError(f"{uri}: Hub request failed: {error}") from None


def _weights_in(folder: Path, src: str) -> Path:
    """The weights file of a directory: model.safetensors if present, else its only weights file (at any depth)."""
    if (folder / "model.safetensors").is_file():
        return folder / "model.safetensors"
    candidates = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(candidates) != 1:
        found = ", ".join(str(p.relative_to(folder)) for p in candidates) or "none"
        raise BadCheckpointError(f"{src}: expected one weights file ({'/'.join(WEIGHT_SUFFIXES)}), found {found}")
    return candidates[0]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from the usual nesting; a clear error for anything unreadable."""
    return read_weights(path)[0]


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """`read_state_dict`, and the entry of the file the tensors were nested under ("state_dict_ema", "model_state",
    …, "a/b" for deeper nesting; None: at its top level)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path), None
        except Exception as error:  # safetensors raises its own error types and OSError for short files
            raise BadCheckpointError(
                f"{path}: not a readable safetensors file (corrupt or truncated?): {error}"
            ) from None
    if path.name.endswith(_TORCH_SUFFIXES):
        return _unwrap(load_torch_file(path), path)
    expected = ", ".join((".safetensors", *_TORCH_SUFFIXES))
    raise BadCheckpointError(f"{path}: unknown checkpoint type (expected one of {expected})")


def load_torch_file(path: Path) -> object:
    """What `torch.save` wrote, read with `torch.load(weights_only=True)` on the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # pickle, zip and weights_only errors all mean the same to the user
        raise BadCheckpointError(
            f"{path}: cannot be loaded with torch.load(weights_only=True): corrupt, or it pickles Python objects "
            "beyond tensors (re-save its state_dict, or convert it to safetensors)"
        ) from None


def _unwrap(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    entries = []
    while isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return {k.removeprefix("module."): v for k, v in tensors.items()}, "/".join(entries) or None
        entry = next((k for k in _NESTED_KEYS if isinstance(obj.get(k), dict)), None)
        if entry is None:
            break
        entries.append(entry)
        obj = obj[entry]
    raise BadCheckpointError(f"{path}: holds no tensors (expected a state dict)")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
