"""A tiny synthetic TAL set, a tiny backbone (plain and rewired), a tiny recipe, and runs shared by the train tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from tests.helpers import tiny_checkpoint

runner = CliRunner()

# r3d-tiny (temporal stride 8) on 64-frame windows of 32² frames: 8 features per window, a 3-level ActionFormer
TINY_RECIPE = """
seed: 0
data: {num_frames: 64, size: 32, in_memory: true, windows_per_video: 2}
backbone: {lr: 1.0e-3, drop_path: 0.1}
model:
  actionformer: {embed_dim: 16, head_dim: 16, num_heads: 2, window_size: 5, num_embed_convs: 1, num_stem_blocks: 1,
                 num_branch_blocks: 2, regression_ranges: [[0, 4], [4, 8], [8, inf]], max_seq_len: 64,
                 dropout: 0.1, path_drop: 0.1}
train: {epochs: 2, warmup_epochs: 1, batch_size: 2, lr: 1.0e-3}
eval: {every: 1}
"""


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("Error: ") and "Traceback" not in message, message
    return message


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    from re2tal_cli.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("tal") / "synth"
    config = SynthConfig(videos=5, classes=2, size=32, min_action=1.0, max_action=6.0, actions_per_video=(1, 3),
                         clips_per_class=2, test_fraction=0.4)  # fmt: skip
    generate(root, config, workers=1)
    return root


@pytest.fixture(scope="session")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture(scope="session")
def plain_backbone(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("backbone") / "r3d.safetensors", arch="r3d-tiny")


@pytest.fixture(scope="session")
def rewired(tmp_path_factory, plain_backbone) -> Path:
    out = tmp_path_factory.mktemp("rewired") / "rw"
    ok(invoke("rewire", plain_backbone, "--out", out))
    return out


@pytest.fixture(scope="session")
def end_to_end_run(tmp_path_factory, synth, rewired, recipe) -> tuple[Path, dict]:
    """A 2-epoch reversible end-to-end run through the CLI, and its --json summary."""
    out = tmp_path_factory.mktemp("runs") / "e2e"
    result = ok(invoke("train-tal", "--data", synth, "--backbone", rewired, "--recipe", recipe, "--out", out, "--json"))
    return out, json.loads(result.stdout)


@pytest.fixture(scope="session")
def features_run(tmp_path_factory, synth, plain_backbone, recipe) -> tuple[Path, dict]:
    """Frames features of the plain backbone (`re2tal extract`), and a 3-epoch localizer trained on them."""
    root = tmp_path_factory.mktemp("features")
    ok(invoke("extract", plain_backbone, "--data", synth, "--out", root / "feats", "--mode", "frames", "--size", "32"))
    result = ok(invoke("train-tal", "--data", synth, "--features", root / "feats", "--recipe", recipe,
                       "--out", root / "run", "--json", "--set", "train.epochs=3"))  # fmt: skip
    return root / "run", json.loads(result.stdout)


TINY_FINETUNE = """
seed: 0
data: {num_frames: 8, frame_stride: 2, size: 32}
head: {new: true, label_smoothing: 0.1}
schedule: {kind: dr2, start_beta: 0.1, update_every: 1, unit: iteration, end_epoch: 2}
train: {epochs: 3, warmup_epochs: 1, batch_size: 2, lr: 1.0e-3}
"""


@pytest.fixture(scope="session")
def finetune_recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "finetune.yaml"
    path.write_text(TINY_FINETUNE)
    return path


TIMING = ("steps_per_s", "videos_per_s", "seconds", "peak_memory_bytes")


def killed_and_resumed(args: list, epochs: int, tmp_path: Path) -> tuple[Path, Path]:
    """`re2tal *args` run to the end into `whole`, and again into `killed`: SIGKILLed once its first checkpoint exists
    (so during a later epoch of `epochs`), then resumed with `re2tal <command> --out killed --resume`. Subprocesses
    on one thread each; returns (whole, killed)."""
    script = Path(sys.executable).with_name("re2tal")
    args = [str(a) for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([script, *args, "--out", whole], check=True, capture_output=True, env=env, timeout=300)
    proc = subprocess.Popen([script, *args, "--out", killed], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)  # fmt: skip
    first = killed / "checkpoints" / "last" / "meta.json"
    deadline = time.monotonic() + 300
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads(first.read_text())["epoch"] < epochs, "the run ended before it could be killed"
    resumed = subprocess.run([script, args[0], "--out", killed, "--resume", "--json"], capture_output=True, text=True,
                             env=env, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    return whole, killed


def metrics_without_timing(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (run / "metrics.jsonl").read_text().splitlines()]  # fmt: skip


def same_last_checkpoint(a: Path, b: Path) -> bool:
    return all((a / "checkpoints" / "last" / n).read_bytes() == (b / "checkpoints" / "last" / n).read_bytes()
               for n in ("model.safetensors", "state.pt"))  # fmt: skip


def records(run: Path, kind: str | None = None) -> list[dict]:
    """RUN/metrics.jsonl's records, of one kind (step, epoch, eval) or all."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if kind is None or r["kind"] == kind]
