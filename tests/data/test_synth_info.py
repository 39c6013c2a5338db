"""The synthetic dataset, `data info`, and the dataset readers on top of it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from re2tal_cli.cli.app import app
from re2tal_cli.data import synth as synthetic
from re2tal_cli.data.datasets import ClipDataset, TALDataset, load_annotations, make_loader

runner = CliRunner()
SMALL = ["--videos", "4", "--classes", "3", "--max-action", "6", "--clips-per-class", "1", "--workers", "1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    r = runner.invoke(app, ["data", "synth", str(out), *SMALL, "--seed", "5", "--json"])
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def test_synth_layouts(synth):
    out, summary = synth
    assert summary["videos"] == 4 and summary["classes"] == ["circle-cw-slow", "circle-ccw-slow", "swing-h-slow"]
    entries = load_annotations(out)
    assert len(entries) == 4 and {e.subset for e in entries.values()} == {"train", "test"}
    for e in entries.values():
        assert (out / "videos" / f"{e.id}.mp4").is_file()
        segs = sorted((s.start, s.end) for s in e.segments)
        assert all(a[1] < b[0] for a, b in zip(segs, segs[1:], strict=False))  # actions never overlap
        assert all(0 <= s < t <= e.duration for s, t in segs)
    clips = sorted(p.relative_to(out / "clips").parts[:2] for p in (out / "clips").rglob("*.mp4"))
    assert clips == sorted([(sub, c) for sub in ("train", "val") for c in summary["classes"]])


def test_synth_deterministic(synth, tmp_path):
    # Every file, byte for byte, whatever the worker count and with the progress bar on (x264's output depends on
    # its process's history: each file gets a fresh process, forked from a server that does nothing else).
    import torch

    out, _ = synth
    # A training step and then a two-thread pool in the calling process (what an earlier test leaves behind) changed
    # what children forked from it encoded; they fork from a server now.
    from re2tal_cli.models import create_model

    threads = torch.get_num_threads()
    create_model("r3d-tiny", num_classes=0)(torch.randn(2, 3, 64, 32, 32)).sum().backward()  # on one thread here
    torch.set_num_threads(2)
    again = tmp_path / "again"
    r = runner.invoke(app, ["data", "synth", str(again), *SMALL, "--seed", "5", "--workers", "2"])
    assert r.exit_code == 0, r.output

    def files(root):
        return {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "synth.json"}

    torch.set_num_threads(threads)
    assert files(again) == files(out)
    r = runner.invoke(app, ["data", "synth", str(again), *SMALL, "--seed", "5"])
    assert r.exit_code == 2 and "pass --force" in r.stderr


def test_synth_lengths_fill_every_bin():
    """The default configuration's action lengths populate XS…XL (planned, not rendered: fast)."""
    cfg = synthetic.SynthConfig()
    names = synthetic.class_names(cfg.classes)
    lengths = []
    for ss in np.random.SeedSequence(0).spawn(cfg.videos):
        _, events = synthetic._plan_video(np.random.default_rng(ss), cfg, names)
        lengths += [(e.end - e.start) / cfg.fps for e in events if e.kind != "distractor"]
    counts = np.histogram(lengths, bins=[0, 3, 6, 12, 18, np.inf])[0]
    assert counts.min() >= 5, counts


def test_single_frames_do_not_tell_cw_from_ccw():
    """A clockwise and an anticlockwise circle visit the same positions: only the order differs."""
    kw = dict(start=0, end=20, colour=synthetic.PALETTE[0], radius=5.0, centre=(32.0, 32.0), phase=0.0)
    cw = synthetic._Event(kind="circle-cw-slow", **kw)
    ccw = synthetic._Event(kind="circle-ccw-slow", **kw)
    pos_cw = {(round(s[0], 3), round(s[1], 3)) for s in (synthetic._actor_state(cw, f, 10, 64) for f in range(20))}
    pos_ccw = {(round(s[0], 3), round(s[1], 3)) for s in (synthetic._actor_state(ccw, f, 10, 64) for f in range(20))}
    assert pos_cw == pos_ccw


def test_synth_bad_options(tmp_path):
    r = runner.invoke(app, ["data", "synth", str(tmp_path / "x"), "--classes", "17"])
    assert r.exit_code == 2 and r.stderr.strip() == "Error: --classes must be between 1 and 16, got 17"


def test_info_json_and_problems(synth, tmp_path):
    out, _ = synth
    r = runner.invoke(app, ["data", "info", str(out), "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.stdout)
    assert info["videos"] == 4 and info["missing"] == [] and info["unreadable"] == []
    assert info["length_bins"]["scheme"] == "thumos"
    assert sum(b["count"] for b in info["length_bins"]["bins"]) == info["instances"]
    r = runner.invoke(app, ["data", "info", str(out)])
    assert r.exit_code == 0 and "instances per length bin" in r.stdout

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    vids = sorted((broken / "videos").iterdir())
    vids[0].unlink()
    vids[1].write_bytes(b"")
    vids[2].write_bytes(vids[3].read_bytes()[:500])
    r = runner.invoke(app, ["data", "info", str(broken), "--json"])
    assert r.exit_code == 1
    info = json.loads(r.stdout)
    assert info["missing"] == [vids[0].stem]
    assert {u["id"] for u in info["unreadable"]} == {vids[1].stem, vids[2].stem}
    assert "empty file" in next(u["error"] for u in info["unreadable"] if u["id"] == vids[1].stem)
    r = runner.invoke(app, ["data", "info", str(broken)])
    assert r.exit_code == 1 and "problems" in r.stdout and "missing" in r.stdout

    r = runner.invoke(app, ["data", "info", str(tmp_path / "none")])
    assert r.exit_code == 2 and r.stderr.startswith("Error: ") and "not a directory" in r.stderr


def test_tal_dataset_and_loader(synth):
    out, summary = synth
    torch.manual_seed(0)
    from re2tal_cli.data.transforms import Augment

    ds = TALDataset(out, "train", num_frames=16, size=32, augment=Augment.re2tal(size=32), seed=1)
    item = ds[0]
    assert item["video"].shape == (3, 16, 32, 32)
    assert item["times"].shape == (16,) and torch.all(item["times"][1:] >= item["times"][:-1])
    assert item["segments"].shape[1] == 2 and len(item["labels"]) == len(item["segments"])
    again = ds[0]
    assert torch.equal(item["video"], again["video"])  # seeded per (seed, epoch, item)
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["video"], item["video"])

    windows = TALDataset(out, "test", num_frames=8, sampling="window", stride=4, windows="all", size=24)
    assert len(windows) >= len(windows.entries)
    batch = next(iter(make_loader(windows, batch_size=2, workers=1)))
    assert batch["video"].shape == (2, 3, 8, 24, 24) and len(batch["segments"]) == 2


def test_clip_dataset(synth, tmp_path):
    out, summary = synth
    ds = ClipDataset(out / "clips", subset="train", num_frames=8, frame_stride=2, size=32)
    assert ds.classes == sorted(summary["classes"]) and len(ds) == 3
    item = ds[1]
    assert item["video"].shape == (3, 8, 32, 32) and int(item["label"]) == 1
    csv = tmp_path / "clips.csv"
    vid = sorted((out / "videos").iterdir())[0]
    csv.write_text(f"path,label,start,end\n{vid},a,1.0,2.5\n{vid},b\n")
    ds = ClipDataset(csv, num_frames=4, frame_stride=1, size=16, train=False)
    assert ds.classes == ["a", "b"] and ds[0]["video"].shape == (3, 4, 16, 16)
    csv.write_text(f"{vid},a,3,1\n")
    from re2tal_cli.errors import BadDataError

    with pytest.raises(BadDataError, match="clips.csv:1: end 1.0 ≤ start 3.0"):
        ClipDataset(csv)


def test_windows_of_a_video_differ_within_an_epoch_and_across_epochs_with_workers(synth):
    """Each of a video's `windows_per_video` windows is its own draw; epoch 2 draws anew even in persistent workers
    (the loader's keys carry the epoch, which a worker's copy of the dataset would not see through set_epoch)."""
    out, _ = synth
    ds = TALDataset(out, "train", num_frames=8, sampling="window", windows="random", size=16, windows_per_video=3)
    videos = len(ds.entries)
    assert len(ds) == 3 * videos
    starts = [float(ds[k]["times"][0]) for k in range(0, 3 * videos, videos)]  # the three windows of video 0
    assert len(set(starts)) == 3, starts

    loader = make_loader(ds, batch_size=len(ds), shuffle=True, workers=2, seed=0)

    def epoch(e):
        loader.sampler.set_epoch(e)
        (batch,) = list(loader)
        return {(vid, float(t[0])) for vid, t in zip(batch["video_id"], batch["times"], strict=True)}

    first, second, first_again = epoch(0), epoch(1), epoch(0)
    assert first != second and first == first_again


def test_epoch_sampler_orders_depend_on_seed_and_epoch_only():
    from re2tal_cli.data.datasets import EpochSampler

    a, b = EpochSampler(10, shuffle=True, seed=3), EpochSampler(10, shuffle=True, seed=3)
    b.set_epoch(4)
    a.set_epoch(4)
    assert list(a) == list(b) and sorted(i for _, i in a) == list(range(10)) and {e for e, _ in a} == {4}
    a.set_epoch(5)
    assert list(a) != list(b)
    assert [i for _, i in EpochSampler(4)] == [0, 1, 2, 3]
