"""What a new user meets first: every --help, --version, checkpoints without --arch, outputs that cannot be written,
NaN gradients, bad counts, permissions and messages."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import save_file
from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from tests.helpers import tiny_checkpoint

runner = CliRunner()
CONSOLE_SCRIPT = Path(sys.executable).with_name("re2tal")
LAYOUTS = Path(__file__).resolve().parents[2].parent / "shared" / "oracles" / "checkpoint-layouts"


def _command_paths(command, prefix=()):
    """Every command and sub-command of the app, as argument lists."""
    yield list(prefix)
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*prefix, name))


ALL_COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_the_app_has_the_commands_we_document():
    names = {" ".join(c) for c in ALL_COMMANDS}
    assert {
        "rewire",
        "extract",
        "train-tal",
        "detect",
        "evaluate",
        "memprofile",
        "data convert",
        "data features",
        "data synth",
        "data info",
    } <= names


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c) or "re2tal")
def test_every_help_works_through_the_console_script(command):
    """`--help` and `-h` of every command and sub-command, as the installed script runs them (a subprocess): exit 0,
    no traceback, and no type metavars (flags take no value; options name what they take)."""
    for flag in ("--help", "-h"):
        proc = subprocess.run([str(CONSOLE_SCRIPT), *command, flag], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
        options = proc.stdout.split("Options:", 1)[-1]
        assert not re.search(r"<(bool|str|int|float|path)>", options), options
        assert "Usage:" in proc.stdout


def test_version_alone():
    proc = subprocess.run([str(CONSOLE_SCRIPT), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and re.fullmatch(r"re2tal \d+\.\d+\.\d+\n", proc.stdout), proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("src") / "vit.safetensors")


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("Error: ") and "Traceback" not in message, message
    return message


def test_arch_is_taken_from_the_checkpoint_and_reported(source, tmp_path):
    result = runner.invoke(app, ["rewire", str(source), "--out", str(tmp_path / "rw"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["arch"], report["arch_from"]) == ("vit-tiny", "checkpoint keys and shapes")
    table = runner.invoke(app, ["rewire", str(source), "--out", str(tmp_path / "rw2")])
    assert "vit-tiny (checkpoint keys and shapes)" in table.stdout


def test_extract_takes_arch_and_guesses_it(source, tmp_path, videos):
    data = tmp_path / "videos"
    data.mkdir()
    shutil.copy(videos["mp4"], data / "a.mp4")
    for extra in ([], ["--arch", "vit-tiny"]):
        out = tmp_path / f"feats{len(extra)}"
        result = runner.invoke(app, ["extract", str(source), "--data", str(data), "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        assert ("architecture: vit-tiny (from the checkpoint keys and shapes)" in result.stderr) == (not extra)
    result = runner.invoke(
        app, ["extract", str(source), "--data", str(data), "--out", str(tmp_path / "f"), "--arch", "vit-tiny-d3"]
    )
    assert "--arch vit-tiny" in _one_line_error(result)


def test_shapes_that_fit_several_archs_list_them(tmp_path):
    """SlowFast R101 8×8 and 4×16 have the same parameters: the choice is the user's, one line, exit 2."""
    src = tmp_path / "r101.safetensors"
    subprocess.run(
        [sys.executable, LAYOUTS / "make_state_dict.py", LAYOUTS / "pyslowfast_slowfast-r101.json", src],
        check=True,
        capture_output=True,
    )
    result = runner.invoke(app, ["rewire", str(src), "--out", str(tmp_path / "rw")])
    message = _one_line_error(result)
    assert "fit 2 architectures (slowfast-r101, slowfast-r101-4x16)" in message and message.endswith("--arch")
    assert not (tmp_path / "rw").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["rewire", "{src}", "--out", "/proc/re2tal/rw"],
        ["extract", "{src}", "--data", "{videos}", "--out", "/proc/re2tal/feats"],
        ["data", "synth", "/proc/re2tal/synth", "--videos", "1"],
        ["evaluate", "{gt}", "{pred}", "--plot", "/proc/re2tal/fig.png"],
        ["memprofile", "--arch", "vit-tiny", "--sweep", "frames", "--plot", "/proc/re2tal/f.png"],
        ["train-tal", "--data", "{videos}", "--backbone", "{src}", "--out", "/proc/re2tal/run"],
    ],
    ids=["rewire", "extract", "synth", "evaluate-plot", "memprofile-plot", "train-tal"],
)
def test_an_output_that_cannot_be_created_is_one_line_before_any_work(args, source, tmp_path, videos, monkeypatch):
    import re2tal_cli.memory.estimate
    import re2tal_cli.memory.sweep

    def no_estimates(*a, **k):
        raise AssertionError("estimated before checking the output path")

    # patched where it is looked up (the sweep module binds its own name at import)
    for module in (re2tal_cli.memory.estimate, re2tal_cli.memory.sweep):
        monkeypatch.setattr(module, "estimate_all", no_estimates)
    data = tmp_path / "videos"
    data.mkdir()
    shutil.copy(videos["mp4"], data / "a.mp4")
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"database": {"a": {"subset": "test", "duration": 9.0, "annotations": []}}}))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"results": {"a": []}}))
    values = {"{src}": str(source), "{videos}": str(data), "{gt}": str(gt), "{pred}": str(pred)}
    result = runner.invoke(app, [values.get(a, a) for a in args])
    assert "/proc/re2tal" in _one_line_error(result)


def test_nan_gradients_are_a_numerical_error_not_a_perfect_level(source, tmp_path, monkeypatch):
    """A block whose backward produces NaN: `rewire --check` stops with one line, exit 1, nothing written."""
    from re2tal_cli.models import vit
    from re2tal_cli.reversible.check import gradient_error_level

    assert gradient_error_level([torch.tensor([float("nan")])], [torch.tensor([0.0])]) != 0.0

    class NanBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return torch.full_like(grad, float("nan"))

    forward = vit.MlpBlock.forward
    monkeypatch.setattr(vit.MlpBlock, "forward", lambda self, x: NanBackward.apply(forward(self, x)))
    out = tmp_path / "rw"
    result = runner.invoke(app, ["rewire", str(source), "--out", str(out), "--check"])
    assert "gradients at alpha=0, beta=1 are not finite" in _one_line_error(result, code=1)
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--clip", "--stride", "--size", "--batch", "--frame-step", "--window"])
def test_extract_counts_must_be_positive_and_the_flag_is_named(flag, source, tmp_path):
    result = runner.invoke(
        app, ["extract", str(source), "--data", str(tmp_path), "--out", str(tmp_path / "f"), flag, "0"]
    )
    assert f"{flag} must be a positive integer, got 0" in _one_line_error(result)


def test_outputs_are_readable_as_the_umask_allows(source, tmp_path):
    old = os.umask(0o022)
    try:
        assert runner.invoke(app, ["rewire", str(source), "--out", str(tmp_path / "rw")]).exit_code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "rw").stat().st_mode & 0o777 == 0o755
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "rw" / name).stat().st_mode & 0o777 == 0o644


def test_extract_lists_a_failure_once_and_reports_no_rate_when_it_only_skips(source, tmp_path, videos):
    data = tmp_path / "ds"
    (data / "videos").mkdir(parents=True)
    shutil.copy(videos["mp4"], data / "videos" / "a.mp4")
    shutil.copy(videos["garbage"], data / "videos" / "bad.mp4")
    out = tmp_path / "feats"
    args = ["extract", str(source), "--data", str(data / "videos"), "--out", str(out), "--clip", "4"]
    first = runner.invoke(app, args)
    assert first.exit_code == 1 and first.output.count("failed bad") == 1, first.output
    save_file({"feats": torch.zeros(1, 1)}, out / "ignored.tmp")  # unrelated files do not matter
    (data / "videos" / "bad.mp4").unlink()
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "1 already done" in again.stdout and "nothing to extract" in again.stdout and "videos/s" not in again.stdout


def test_messages_count_properly_and_json_errors_read_well(tmp_path):
    gt = tmp_path / "gt.json"
    action = [{"segment": [1.0, 2.0], "label": "jump"}]
    gt.write_text(json.dumps({"database": {"a": {"subset": "test", "duration": 9.0, "annotations": action}}}))
    bad = tmp_path / "bad.json"
    bad.write_text('{"results": "unterminated')
    message = _one_line_error(runner.invoke(app, ["evaluate", str(gt), str(bad)]))
    assert "malformed JSON: Unterminated string starting at: line 1" in message and "at at" not in message
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"results": {"a": []}}))
    gt.write_text(
        json.dumps({"database": {"a": {"subset": "x", "duration": 9.0, "annotations": []},
                                 "b": {"subset": "y", "duration": 9.0, "annotations": []}}})
    )  # fmt: skip
    message = _one_line_error(runner.invoke(app, ["evaluate", str(gt), str(pred)]))
    assert "choose one with --subset" in message and "'x' (1 video)" in message


def test_core_errors_never_name_a_flag():
    """The error rule (re2tal_cli/errors.py): outside cli/, a raised message names parameters as `name`, never
    --flag; the CLI maps them."""
    import ast

    root = Path(__file__).resolve().parents[2] / "re2tal_cli"
    offenders = []
    for path in root.rglob("*.py"):
        if "cli" in path.relative_to(root).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for part in ast.walk(node.exc):
                    if (
                        isinstance(part, ast.Constant)
                        and isinstance(part.value, str)
                        and re.search(r"--[a-z]", part.value)
                    ):
                        offenders.append(f"{path.relative_to(root)}:{node.lineno}: {part.value!r}")
    assert not offenders, "\n".join(offenders)


def test_the_cli_maps_parameters_to_flags():
    from re2tal_cli.cli import memprofile
    from re2tal_cli.cli._errors import flags_of, one_line
    from re2tal_cli.errors import BadInputError

    flags = flags_of(memprofile.main)
    assert flags["largest"] == "--max" and flags["gpu_mem"] == "--gpu-mem" and flags["as_json"] == "--json"
    error = BadInputError("`largest` needs a GPU: give `gpu` or `gpu_mem`; `unknown` stays")
    assert one_line(error, flags) == "--max needs a GPU: give --gpu or --gpu-mem; `unknown` stays"
