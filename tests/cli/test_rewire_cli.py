"""`re2tal rewire` end to end through the Typer app, and every kind of bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from tests.helpers import seed_hub_cache, tiny_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("src") / "vit.safetensors")


def rewire(*args):
    return runner.invoke(app, ["rewire", *map(str, args)])


def assert_bad_input(result, out: Path, *fragments: str):
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("Error: "), message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()


def test_rewire_writes_same_parameters_and_reports_check(source, tmp_path):
    out = tmp_path / "rw"
    result = rewire(source, "--arch", "vit-tiny", "--out", out, "--check", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["values_equal"] and report["source_tensors"] == report["written_tensors"] == 36
    assert report["source_values"] == report["written_values"]
    assert report["stages"] == [4] and (report["alpha"], report["beta"]) == (0.0, 1.0)
    assert report["check"]["gradient_error_level"] < 1e-5 and report["check"]["fallbacks"] == 0
    written, original = load_file(out / "model.safetensors"), load_file(source)
    assert written.keys() == original.keys() and all(torch.equal(written[k], original[k]) for k in written)
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "vit-tiny" and config["wiring"]["execution"] == "reversible"
    assert config["source"]["uri"] == str(source) and len(config["source"]["sha256"]) == 64
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_rewire_table_output_and_pth_input(source, tmp_path):
    pth = tmp_path / "vit.pth"
    torch.save({"state_dict": load_file(source)}, pth)  # nested, as mmaction saves
    result = rewire(pth, "--arch", "vit-tiny", "--out", tmp_path / "rw", "--alpha", "0.5", "--beta", "0.5")
    assert result.exit_code == 0, result.output
    assert "tensors reused" in result.stdout and "α=0.5" in result.stdout


def test_unknown_arch(source, tmp_path):
    out = tmp_path / "rw"
    assert_bad_input(
        rewire(source, "--arch", "vit-tni", "--out", out), out, "unknown architecture 'vit-tni'", "vit-tiny"
    )


def test_missing_and_unexpected_keys_name_the_first_and_the_likely_arch(source, tmp_path):
    out = tmp_path / "rw"
    result = rewire(source, "--arch", "vit-tiny-d3", "--out", out)
    assert_bad_input(result, out, str(source), "missing keys (first: blocks.2.", "--arch vit-tiny")
    extra = tmp_path / "extra.safetensors"
    save_file({**load_file(source), "blocks.0.attn.extra.weight": torch.zeros(2)}, extra)
    assert_bad_input(
        rewire(extra, "--arch", "vit-tiny", "--out", out), out, "unexpected key (first: blocks.0.attn.extra"
    )


def test_shape_mismatch(source, tmp_path):
    sd = load_file(source)
    sd["blocks.0.mlp.fc1.weight"] = torch.zeros(65, 32)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, bad)
    out = tmp_path / "rw"
    assert_bad_input(rewire(bad, "--arch", "vit-tiny", "--out", out), out, "shape mismatch for blocks.0.mlp.fc1.weight")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_files(source, tmp_path, damage):
    data = source.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(1000), "empty": b""}[damage])
    out = tmp_path / "rw"
    assert_bad_input(rewire(bad, "--arch", "vit-tiny", "--out", out), out, str(bad), "corrupt or truncated")


def test_pickle_that_is_not_weights_only(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "optimizer": torch.optim.SGD}, bad)
    out = tmp_path / "rw"
    assert_bad_input(rewire(bad, "--arch", "vit-tiny", "--out", out), out, "weights_only=True")


def test_missing_file_and_unknown_suffix(tmp_path):
    out = tmp_path / "rw"
    assert_bad_input(rewire(tmp_path / "nope.safetensors", "--arch", "vit-tiny", "--out", out), out, "no such file")
    other = tmp_path / "weights.npz"
    other.write_bytes(b"x")
    assert_bad_input(rewire(other, "--arch", "vit-tiny", "--out", out), out, "unknown checkpoint type")


def test_existing_output_needs_force(source, tmp_path):
    out = tmp_path / "rw"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = rewire(source, "--arch", "vit-tiny", "--out", out)
    assert result.exit_code == 2 and "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    assert rewire(source, "--arch", "vit-tiny", "--out", out, "--force").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_bad_coefficients(source, tmp_path):
    out = tmp_path / "rw"
    assert_bad_input(rewire(source, "--arch", "vit-tiny", "--out", out, "--beta", "-1"), out, "beta")
    result = rewire(source, "--arch", "vit-tiny", "--out", out, "--alpha", "1", "--beta", "0", "--check")
    assert_bad_input(result, out, "--check needs an invertible wiring")


def test_outside_is_saved_with_the_wiring_and_read_back(source, tmp_path):
    """The layers outside the stages are recomputed by default; --outside keep is saved and applies when the
    backbone is loaded again; an old config.json without the key gets the default."""
    from re2tal_cli.checkpoint import load_backbone
    from re2tal_cli.reversible.recompute import Outside

    for flag, expected in (((), "recompute"), (("--outside", "keep"), "keep")):
        out = tmp_path / expected
        assert rewire(source, "--arch", "vit-tiny", "--out", out, *flag).exit_code == 0
        assert json.loads((out / "config.json").read_text())["wiring"]["outside"] == expected
        assert load_backbone(str(out)).model.outside is Outside(expected)
    config = tmp_path / "keep" / "config.json"
    data = json.loads(config.read_text())
    del data["wiring"]["outside"]
    config.write_text(json.dumps(data))
    assert load_backbone(str(tmp_path / "keep")).model.outside is Outside.RECOMPUTE
    assert_bad_input(rewire(source, "--out", tmp_path / "bad", "--outside", "maybe"), tmp_path / "bad", "--outside")


def run_cli(args, env):
    return subprocess.run(
        [sys.executable, "-m", "re2tal_cli", *map(str, args)], env={**os.environ, **env}, capture_output=True, text=True
    )


def test_hf_uri_from_a_seeded_cache_offline(source, tmp_path):
    """The real huggingface_hub code path, offline: HF_HOME points at a cache that already has the file."""
    hf_home = tmp_path / "hf"
    seed_hub_cache(hf_home, "someone/vit-tiny", {"weights/model.safetensors": source.read_bytes()})
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "rw"
    result = run_cli(
        [
            "rewire",
            "hf://someone/vit-tiny/weights/model.safetensors@main",
            "--arch",
            "vit-tiny",
            "--out",
            out,
            "--json",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["source"] == "hf://someone/vit-tiny/weights/model.safetensors@main"
    # the whole repository (no file named) resolves to its only weights file too
    result = run_cli(["rewire", "hf://someone/vit-tiny", "--arch", "vit-tiny", "--out", tmp_path / "rw2"], env)
    assert result.returncode == 0, result.stderr


def test_hf_uri_not_cached_while_offline(tmp_path):
    env = {"HF_HOME": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "rw"
    result = run_cli(["rewire", "hf://someone/absent/model.safetensors", "--arch", "vit-tiny", "--out", out], env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not in the local Hub cache" in result.stderr
    assert not out.exists()
