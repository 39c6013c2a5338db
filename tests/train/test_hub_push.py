"""`re2tal hub push` against a Hub on 127.0.0.1 (tests/hub_server.py), and reading what was pushed back through
hf:// with the commands that read a checkpoint or a run (rewire, detect, evaluate)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from tests.hub_server import HubServer
from tests.train.conftest import invoke, ok, one_line_error

TOKEN = "hf_test_token"


@pytest.fixture
def hub():
    with HubServer(TOKEN) as server:
        yield server


@pytest.fixture
def hub_env(hub, tmp_path, monkeypatch) -> dict[str, str]:
    """The environment of a subprocess that talks to `hub`; the in-process API pointed at it as well."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}


def run_cli(args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "re2tal_cli", *map(str, args)], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def front_matter(card: str) -> dict:
    assert card.startswith("---\n"), card[:100]
    return yaml.safe_load(card.split("---\n", 2)[1])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_push_a_backbone_to_a_new_private_branch_and_rewire_from_it(rewired, hub, hub_env, tmp_path):
    result = run_cli(["hub", "push", rewired, "--repo", "me/r3d", "--private", "--revision", "v1", "--json"], hub_env)
    assert result.returncode == 0, result.stderr
    pushed = json.loads(result.stdout)
    files = hub.files("me/r3d", "v1")
    local = {name: (rewired / name).read_bytes() for name in ("model.safetensors", "config.json")}
    assert {name: files[name] for name in local} == local
    assert hub.repos["me/r3d"].private and hub.files("me/r3d", "main").keys() == {".gitattributes"}
    assert pushed["commit"] == hub.repos["me/r3d"].branches["v1"] and pushed["revision"] == "v1"
    assert sorted(f["path"] for f in pushed["files"]) == sorted(set(files) - {".gitattributes"})
    assert all(f["bytes"] == len(files[f["path"]]) for f in pushed["files"])

    card = files["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "re2tal" and "r3d-tiny" in meta["tags"] and "base_model" not in meta
    config = json.loads(local["config.json"])
    assert config["source"]["uri"] in card and config["source"]["sha256"] in card
    assert sha256(local["model.safetensors"]) in card and "reversible, α = 0.0, β = 1.0" in card

    out = tmp_path / "again"
    result = run_cli(["rewire", "hf://me/r3d@v1", "--out", out, "--json"], hub_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source_sha256"] == sha256(local["model.safetensors"])
    written, original = load_file(out / "model.safetensors"), load_file(rewired / "model.safetensors")
    assert written.keys() == original.keys() and all(torch.equal(written[k], original[k]) for k in written)


def _test_video(synth) -> Path:
    database = json.loads((synth / "annotations.json").read_text())["database"]
    vid = next(v for v, e in sorted(database.items()) if e["subset"] == "test")
    return synth / "videos" / f"{vid}.mp4"


def test_push_a_run_then_detect_through_hf(end_to_end_run, synth, hub, hub_env):
    run, summary = end_to_end_run
    pushed = json.loads(ok(invoke("hub", "push", run, "--repo", "me/tal", "--json")).stdout)
    files = hub.files("me/tal")
    best = run / "checkpoints" / "best"
    assert files["model.safetensors"] == (best / "model.safetensors").read_bytes()  # no EMA in this run
    for name in ("config.yaml", "summary.json", "predictions.json"):
        assert files[name] == (run / name).read_bytes()
    meta = json.loads(files["meta.json"])
    assert meta == {**json.loads((best / "meta.json").read_text()), "checkpoint": "best", "weights": "model"}
    assert "state.pt" not in " ".join(files) and pushed["kind"] == "train-tal run"

    card = files["README.md"].decode()
    assert front_matter(card)["library_name"] == "re2tal"
    assert f"{100 * summary['best']['average_mAP']:.2f}" in card and (run / "config.yaml").read_text() in card
    assert sha256(files["model.safetensors"]) in card
    backbone = yaml.safe_load(files["config.yaml"])["source"]["backbone"]
    assert f"`{backbone}`" in card and sha256((Path(backbone) / "model.safetensors").read_bytes()) in card

    video = _test_video(synth)
    local = json.loads(ok(invoke("detect", run, video, "--json")).stdout)
    result = run_cli(["detect", "hf://me/tal", video, "--json"], hub_env)
    assert result.returncode == 0, result.stderr
    remote = json.loads(result.stdout)
    assert remote["checkpoint"] == local["checkpoint"] == {"name": "best", "epoch": meta["epoch"], "weights": "model"}
    assert remote["detections"] == local["detections"] and remote["run"] == "hf://me/tal"


def test_evaluate_reads_a_published_runs_predictions_through_hf(end_to_end_run, synth, hub, hub_env):
    run, _ = end_to_end_run
    ok(invoke("hub", "push", run, "--repo", "me/tal"))
    local = json.loads(ok(invoke("evaluate", synth, run, "--json")).stdout)
    result = run_cli(["evaluate", synth, "hf://me/tal", "--json"], hub_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == local


def test_a_run_with_ema_publishes_the_ema_weights_and_reads_back_as_its_one_checkpoint(end_to_end_run, hub, hub_env,
                                                                                       tmp_path):  # fmt: skip
    """The weights published are the ones evaluation used (the EMA's); a published run read as a RunDir gives them,
    whatever checkpoint is asked for."""
    from re2tal_cli.train.run import RunDir
    from re2tal_cli.train_tal import model_from_run

    run = tmp_path / "ema-run"
    shutil.copytree(end_to_end_run[0], run)
    last = run / "checkpoints" / "last"
    ema = {k: v * 0.5 if v.is_floating_point() else v for k, v in load_file(last / "model.safetensors").items()}
    save_file(ema, last / "ema.safetensors")
    shutil.rmtree(run / "checkpoints" / "best")
    ok(invoke("hub", "push", run, "--repo", "me/ema", "--checkpoint", "best"))
    files = hub.files("me/ema")
    assert files["model.safetensors"] == (last / "ema.safetensors").read_bytes()
    assert json.loads(files["meta.json"])["checkpoint"] == "last"  # best asked, last is what the run has

    published = tmp_path / "published"
    for name, data in files.items():
        (published / name).parent.mkdir(parents=True, exist_ok=True)
        (published / name).write_bytes(data)
    model, _, meta = model_from_run(RunDir(published), "best")
    assert meta["checkpoint"] == "last" and meta["weights"] == "ema"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ema.items())


def test_push_refuses_bad_input_before_any_request(rewired, hub, hub_env, tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert "--repo must be ORG/NAME" in one_line_error(invoke("hub", "push", rewired, "--repo", "no-slash"))
    (tmp_path / "empty").mkdir()
    message = one_line_error(invoke("hub", "push", tmp_path / "empty", "--repo", "me/x"))
    assert "neither a re2tal backbone" in message and "empty" in message
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert "no Hugging Face token" in one_line_error(invoke("hub", "push", rewired, "--repo", "me/x"))
    assert not [r for r in hub.requests if r[0] == "POST"]


def test_a_token_the_hub_refuses_is_one_line(rewired, hub, hub_env, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    message = one_line_error(invoke("hub", "push", rewired, "--repo", "me/x"))
    assert "me/x" in message and "401" in message and not hub.repos


def test_push_a_finetune_run_publishes_its_backbone_recipe_and_epochs(synth, plain_backbone, finetune_recipe, hub,
                                                                       hub_env, tmp_path):  # fmt: skip
    run = tmp_path / "ft"
    ok(invoke("finetune", plain_backbone, "--data", synth / "clips", "--recipe", finetune_recipe, "--out", run,
              "--epochs", "2"))  # fmt: skip
    pushed = json.loads(ok(invoke("hub", "push", run, "--repo", "me/ft", "--json")).stdout)
    files = hub.files("me/ft")
    assert pushed["kind"] == "finetune run"
    for name in ("model.safetensors", "config.json"):
        assert files[name] == (run / "backbone" / name).read_bytes()
    for name in ("config.yaml", "summary.json", "epochs.csv"):
        assert files[name] == (run / name).read_bytes()
    summary = json.loads(files["summary.json"])
    card = files["README.md"].decode()
    assert f"{100 * summary['final']['top1']:.2f}" in card and "top-1 (%)" in card
