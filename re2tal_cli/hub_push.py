"""`re2tal hub push`: a backbone or a run as a Hugging Face Hub model repository, with a model card.

    from re2tal_cli.hub_push import push
    pushed = push("runs/tal", "org/tal-thumos", private=True)

What goes up, by what the directory is (`published_files`):

- a backbone (a `rewire` output, `finetune`'s RUN/backbone/): model.safetensors and config.json as they are;
- a finetune run: its backbone (model.safetensors, config.json) plus config.yaml, summary.json, epochs.csv;
- a train-tal run: config.yaml, the chosen checkpoint's weights as model.safetensors (the EMA's when the run kept
  them: the weights its evaluation used), meta.json (that checkpoint's meta, its name and which weights these are),
  summary.json, predictions.json and epochs.csv — the published-run layout `RunDir` reads (train/run.py).

Every repository gets a README.md: YAML front matter (library_name, tags, base_model when the source is on the Hub)
and the facts — architecture, wiring, source checkpoint and its sha256, recipe, metrics. Reading it back is hf://
(`hub.resolve` for a backbone, `hub.resolve_folder` for a run). The token is huggingface_hub's: HF_TOKEN or the one
`hf auth login` stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from re2tal_cli import hub
from re2tal_cli.checkpoint import CONFIG_FILE, FORMAT, WEIGHTS_FILE
from re2tal_cli.errors import BadInputError, Re2talError
from re2tal_cli.train.run import CONFIG, EPOCHS, PREDICTIONS, PUBLISHED_META, SUMMARY, RunDir

CARD = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class Publication:
    """What a push uploads: repository path → a local file or the bytes to write, and the facts for the card."""

    kind: str  # backbone, finetune run, train-tal run
    files: dict[str, Path | bytes]
    facts: dict[str, Any] = field(default_factory=dict)


def push(
    src: str | os.PathLike,
    repo: str,
    *,
    private: bool = False,
    revision: str | None = None,
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Upload `src` (a backbone directory or a run) to the model repository `repo` (ORG/NAME, created when absent;
    `private` applies to a new one) in one commit on `revision` (a branch, created from main when absent; default
    main). Returns {"repo", "revision", "commit", "url", "kind", "files": [{"path", "bytes"}]}."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    if not _REPO_ID.match(repo):
        raise BadInputError(f"`repo` must be ORG/NAME (letters, digits, '.', '_', '-'), got {repo!r}")
    publication = published_files(src, checkpoint)
    publication.files[CARD] = model_card(repo, publication).encode()
    if get_token() is None:
        raise BadInputError("no Hugging Face token: set HF_TOKEN, or log in once with `hf auth login`")
    api = HfApi()
    where = f"{repo}@{revision}" if revision else repo
    with _push_errors(where):
        api.create_repo(repo, private=private or None, exist_ok=True)
        if revision not in (None, "main"):
            api.create_branch(repo, branch=revision, exist_ok=True)
        operations = [CommitOperationAdd(path, content) for path, content in sorted(publication.files.items())]
        commit = api.create_commit(
            repo, operations, commit_message=f"re2tal hub push: {publication.kind} {Path(src).name}", revision=revision
        )
    return {
        "repo": repo,
        "revision": revision or "main",
        "commit": commit.oid,
        "url": commit.commit_url,
        "kind": publication.kind,
        "files": [{"path": path, "bytes": _size(content)} for path, content in sorted(publication.files.items())],
    }


def published_files(src: str | os.PathLike, checkpoint: str = "best") -> Publication:
    """The files a push of `src` uploads (the card aside) and the facts its card states; checks `src` first."""
    root = Path(src)
    if root.is_file() and root.name == WEIGHTS_FILE:
        root = root.parent
    if not root.is_dir():
        raise BadInputError(f"{src}: no such directory (a backbone directory or a run)")
    if _is_backbone(root):
        return _backbone(root, "backbone")
    if (root / CONFIG).is_file() and _is_backbone(root / "backbone"):
        publication = _backbone(root / "backbone", "finetune run")
        publication.files |= _present(root, CONFIG, SUMMARY, EPOCHS)
        publication.facts["summary"] = _json(root / SUMMARY)
        publication.facts["recipe"] = (root / CONFIG).read_text(encoding="utf-8")
        return publication
    if (root / CONFIG).is_file() and (root / "checkpoints").is_dir():
        return _tal_run(RunDir(root), checkpoint)
    raise BadInputError(
        f"{src}: neither a re2tal backbone ({WEIGHTS_FILE} + {CONFIG_FILE}) nor a train-tal or finetune run "
        f"({CONFIG} + checkpoints/)"
    )


def _is_backbone(folder: Path) -> bool:
    config = folder / CONFIG_FILE
    return (folder / WEIGHTS_FILE).is_file() and config.is_file() and _json(config).get("format") == FORMAT


def _backbone(folder: Path, kind: str) -> Publication:
    config = _json(folder / CONFIG_FILE)
    weights = folder / WEIGHTS_FILE
    facts = {
        "arch": config.get("arch"),
        "wiring": config.get("wiring"),
        "source": config.get("source", {}),
        "weights_sha256": hub.sha256(weights),
        "finetune": config.get("finetune"),
        "use": "re2tal train-tal --data DATA --backbone hf://{repo} --out RUN",
    }
    return Publication(kind, {WEIGHTS_FILE: weights, CONFIG_FILE: folder / CONFIG_FILE}, facts)


def _tal_run(run: RunDir, checkpoint: str) -> Publication:
    if checkpoint not in ("best", "last"):
        raise BadInputError(f"`checkpoint` must be best or last, got {checkpoint!r}")
    name = run.checkpoint_to_use(checkpoint)
    folder = run.checkpoints / name
    if not (folder / "meta.json").is_file():
        raise BadInputError(f"{folder}: no checkpoint (a run writes one after its first epoch)")
    ema = folder / "ema.safetensors"
    weights = ema if ema.is_file() else folder / WEIGHTS_FILE
    meta = {**_json(folder / "meta.json"), "checkpoint": name, "weights": "ema" if ema.is_file() else "model"}
    from re2tal_cli.train.recipe import read_yaml

    recipe = read_yaml(run.config)
    described = meta["model"]
    source = recipe.get("source", {})
    facts = {
        "arch": described.get("arch"),
        "wiring": described.get("wiring"),
        "mode": source.get("mode"),
        "localizer": recipe.get("model", {}).get("localizer"),
        "source": _backbone_source(source.get("backbone")),
        "weights_sha256": hub.sha256(weights),
        "checkpoint": {"name": name, "epoch": meta["epoch"], "weights": meta["weights"]},
        "summary": _json(run.summary),
        "recipe": run.config.read_text(encoding="utf-8"),
        "use": "re2tal detect hf://{repo} VIDEO.mp4",
    }
    files = {WEIGHTS_FILE: weights, PUBLISHED_META: (json.dumps(meta, indent=1) + "\n").encode()}
    files |= _present(run.root, CONFIG, SUMMARY, PREDICTIONS, EPOCHS)
    return Publication("train-tal run", files, facts)


def _backbone_source(backbone: str | None) -> dict[str, Any]:
    """The backbone a run was trained from: its URI, the sha256 of its weights when they are on this machine, and
    the checkpoint it was made from when it is a re2tal backbone (a rewire of a pretrained checkpoint)."""
    if backbone is None:
        return {}
    if backbone.startswith(hub.HF_SCHEME) or not Path(backbone).exists():
        return {"uri": backbone}  # a Hub URI pins itself (with its @revision); a moved local path cannot be hashed
    weights = hub.resolve(backbone)
    facts: dict[str, Any] = {"uri": backbone, "sha256": hub.sha256(weights)}
    config = weights.parent / CONFIG_FILE
    if config.is_file() and _json(config).get("format") == FORMAT:
        facts["made_from"] = _json(config).get("source", {})
    return facts


def _present(root: Path, *names: str) -> dict[str, Path]:
    return {name: root / name for name in names if (root / name).is_file()}


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    from re2tal_cli.fileio import read_json

    data = read_json(path, BadInputError)
    return data if isinstance(data, dict) else {}


def _size(content: Path | bytes) -> int:
    return len(content) if isinstance(content, bytes) else content.stat().st_size


@contextlib.contextmanager
def _push_errors(where: str) -> Iterator[None]:
    """huggingface_hub's exceptions during a push as one-line errors naming the repository."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        yield
    except RepositoryNotFoundError:
        raise BadInputError(f"{where}: repository not found, or not writable with this token") from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise BadInputError(f"{where}: the Hub refused the token ({status}); it needs write access") from None
        raise Re2talError(f"{where}: Hub request failed: {' '.join(str(error).split())}") from None


# --- the model card ------------------------------------------------------------------------------------------


def model_card(repo: str, publication: Publication) -> str:
    """README.md: YAML front matter for the Hub, then what the weights are, where they came from, how they were
    trained and how well they do."""
    import yaml

    facts = publication.facts
    source = facts.get("source") or {}
    origin = source.get("made_from") or source
    tags = ["re2tal", "video", "temporal-action-localization", "reversible-network"]
    if facts.get("arch"):
        tags.append(facts["arch"])
    front: dict[str, Any] = {"library_name": "re2tal", "tags": tags}
    base = _hub_repo(origin.get("uri"))
    if base is not None and base != repo:
        front["base_model"] = base
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {repo.split('/')[1]}", ""]
    lines += [_what(publication), "", "## Model", "", "| | |", "|---|---|"]
    made_from = source.get("made_from", {})
    rows = [
        ("architecture", facts.get("arch")),
        ("wiring", _wiring(facts.get("wiring"))),
        ("localizer", facts.get("localizer")),
        ("training mode", facts.get("mode")),
        ("checkpoint", _checkpoint(facts.get("checkpoint"))),
        ("weights sha256 (model.safetensors)", _code(facts.get("weights_sha256"))),
        ("backbone" if "mode" in facts else "source checkpoint", _code(source.get("uri"))),
        ("its sha256", _code(source.get("sha256"))),
        ("backbone made from (rewired)", _code(made_from.get("uri"))),
        ("whose sha256", _code(made_from.get("sha256"))),
    ]
    lines += [f"| {name} | {value} |" for name, value in rows if value]
    lines += ["", "## Metrics", "", *_metrics(facts), ""]
    if facts.get("recipe"):
        lines += ["## Recipe", "", "The resolved recipe (config.yaml):", "", "```yaml", facts["recipe"].rstrip(), "```"]
        lines.append("")
    lines += ["## Use", "", "```bash", facts["use"].format(repo=repo), "```", ""]
    lines += ["## Files", "", *(f"- `{path}`" for path in sorted([*publication.files, CARD])), ""]
    return "\n".join(lines)


def _what(publication: Publication) -> str:
    return {
        "backbone": "A reversible video backbone in re2tal's format (model.safetensors + config.json): every re2tal "
        "command that reads a checkpoint rebuilds it from these two files.",
        "finetune run": "A reversible video backbone finetuned on clip classification by `re2tal finetune` (its "
        "weights and config.json), with the run's recipe, summary and per-epoch metrics.",
        "train-tal run": "A temporal action localization model trained by `re2tal train-tal`, published as a run "
        "that `re2tal detect` and `re2tal evaluate` read through hf://.",
    }[publication.kind]


def _hub_repo(uri: str | None) -> str | None:
    if not uri or not uri.startswith(hub.HF_SCHEME):
        return None
    return hub.parse_hf_uri(uri)[0]


def _code(value: str | None) -> str | None:
    return None if value is None else f"`{value}`"


def _wiring(wiring: dict | None) -> str | None:
    if not wiring:
        return None
    stages = "all stages" if wiring.get("stages") is None else f"stages {wiring['stages']}"
    return (
        f"{wiring.get('execution')}, α = {wiring.get('alpha')}, β = {wiring.get('beta')}, {stages}, layers outside "
        f"the stages: {wiring.get('outside', 'recompute')}"
    )


def _checkpoint(checkpoint: dict | None) -> str | None:
    if not checkpoint:
        return None
    return f"{checkpoint['name']} (epoch {checkpoint['epoch']}, {checkpoint['weights']} weights)"


def _metrics(facts: dict[str, Any]) -> list[str]:
    summary = facts.get("summary") or {}
    rows = []
    for name in ("final", "best"):
        r = summary.get(name)
        if not r:
            continue
        if "average_mAP" in r:
            per_tiou = ", ".join(f"{t}: {100 * v:.2f}" for t, v in r["mAP"].items())
            rows.append(f"| {name} (epoch {r['epoch']}) | {100 * r['average_mAP']:.2f} | {per_tiou} |")
        else:
            rows.append(f"| {name} (epoch {r['epoch']}) | {100 * r['top1']:.2f} | {100 * r['top5']:.2f} |")
    if rows:
        tal = "average_mAP" in (summary.get("final") or summary.get("best"))
        columns = "average mAP (%) | mAP (%) per tIoU" if tal else "top-1 (%) | top-5 (%)"
        header = f"| evaluation | {columns} |"
        where = f"{summary.get('protocol')} protocol, subset {summary.get('subset')}" if tal else "validation clips"
        return [f"On the training data's {where}:", "", header, "|---|---|---|", *rows]
    finetune = facts.get("finetune")
    if finetune and finetune.get("top1") is not None:
        return [f"Finetuned ({finetune['schedule']} schedule, epoch {finetune['epoch']}): top-1 "
                f"{100 * finetune['top1']:.2f} % on its validation clips."]  # fmt: skip
    return ["None measured: the weights are the source checkpoint's, rewired (same parameters, new wiring)."]
