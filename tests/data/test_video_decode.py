"""Decoding and seeking: timestamps, counts, and seek == decode-all, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from re2tal_cli.data import video
from re2tal_cli.errors import BadDataError
from tests.videos import write_video

GOOD = ("mp4", "offset_mkv", "ts", "mpeg4_avi")


@pytest.fixture(scope="module")
def decoded(videos):
    return {name: video.decode_all(videos[name]) for name in GOOD}


@pytest.mark.parametrize("name", GOOD)
def test_probe_counts_and_timestamps(videos, decoded, name):
    index = video.probe(videos[name])
    frames, pts = decoded[name]
    assert index.seekable
    assert index.num_frames == len(frames)
    assert np.array_equal(index.pts, pts)  # the demux index lists the decoder's frames, in order
    # timestamps come from pts × time_base, relative to the first frame: 10 fps here
    assert index.times[0] == 0.0
    np.testing.assert_allclose(np.diff(index.times), 0.1, atol=1e-6)
    assert index.fps == pytest.approx(10.0, rel=1e-6)
    assert index.duration == pytest.approx(len(frames) / 10.0, rel=1e-6)
    assert len(index.key_pts) >= 3 and index.key_pts[0] == index.pts[0]


def test_first_pts_not_zero(videos):
    mkv = video.probe(videos["offset_mkv"])
    assert mkv.start_time == pytest.approx(3.7)  # written with pts starting at 37 at 1/10 s
    assert mkv.times[0] == 0.0 and mkv.times[5] == pytest.approx(0.5)
    ts = video.probe(videos["ts"])
    assert ts.pts[0] != 0  # MPEG-TS streams start late; times are still relative to the first frame
    assert ts.times[3] == pytest.approx(0.3)


@pytest.mark.parametrize("name", GOOD)
@pytest.mark.parametrize("strategy", ["seek", "sequential", "auto"])
def test_read_frames_equals_decode_all(videos, decoded, name, strategy):
    frames, _ = decoded[name]
    n = len(frames)
    rng = np.random.default_rng(1)
    requests = [
        np.arange(n),
        np.array([n - 1, 0, n // 2, n // 2, 1]),  # unsorted, repeated, both ends
        np.sort(rng.choice(n, size=7, replace=False)),
        np.arange(0, n, 13),  # sparser than the keyframes: exercises the seeks
        np.array([2]),  # a B-frame right after the first keyframe
    ]
    for idx in requests:
        got = video.read_frames(videos[name], idx, strategy=strategy)
        assert got.dtype == np.uint8 and got.shape == (len(idx), 48, 64, 3)
        assert np.array_equal(got, frames[idx]), (name, strategy, idx)


def test_frames_are_the_right_ones(videos):
    from tests.videos import frame_image

    got = video.read_frames(videos["mp4"], [0, 17, 44, 89], strategy="seek")
    for frame, i in zip(got, [0, 17, 44, 89], strict=True):
        level = frame[:, 40:48].astype(int) if (i * 3) % 64 < 30 else frame[:, 0:8].astype(int)
        assert abs(np.median(level) - frame_image(i)[0, 0 if (i * 3) % 64 >= 30 else 40, 0]) <= 4


def test_out_of_range_index(videos):
    with pytest.raises(ValueError, match="frame indices"):
        video.read_frames(videos["mp4"], [0, 90])


def test_seek_decodes_fewer_frames_than_decode_all(tmp_path):
    """A sparse request on a long video seeks and skips: far fewer frames decoded, the same bits."""
    path = write_video(tmp_path / "long.mp4", 240, options={"g": "24", "bf": "2"})
    idx = np.array([5, 100, 200])
    frames, _ = video.decode_all(path)
    stats: dict = {}
    got = video.read_frames(path, idx, strategy="seek", stats=stats)
    assert np.array_equal(got, frames[idx])
    assert stats["seeks"] == 3
    assert stats["decoded"] < 240 // 3


@pytest.mark.parametrize(
    ("name", "message"),
    [("zero", "empty file"), ("garbage", "not a readable video"), ("truncated", "not a readable video")],
)
def test_bad_files(videos, name, message):
    # (the truncated MP4 lost its index, written at the end: it cannot be opened)
    path = videos[name]
    with pytest.raises(BadDataError, match=message) as error:
        video.probe(path)
    assert str(error.value).startswith(str(path))
    with pytest.raises(BadDataError):
        video.decode_all(path)


def test_missing_file(tmp_path):
    with pytest.raises(BadDataError, match="no such video file"):
        video.probe(tmp_path / "nope.mp4")


def test_truncated_stream_with_index_at_front(tmp_path):
    """A file cut mid-stream still opens (MPEG-TS): the readable frames are indexed and read exactly."""
    path = write_video(tmp_path / "cut.ts", 60, options={"g": "12"}, fmt="mpegts")
    data = path.read_bytes()
    cut = tmp_path / "cut_half.ts"
    cut.write_bytes(data[: len(data) // 2])
    index = video.probe(cut)
    assert 0 < index.num_frames < 60
    frames, _ = video.decode_all(cut)
    n = min(len(frames), index.num_frames)
    idx = np.arange(0, n, 5)
    assert np.array_equal(video.read_frames(cut, idx, index=index, strategy="seek"), frames[idx])


def test_frame_folder(tmp_path):
    from PIL import Image

    from tests.videos import frame_image

    folder = tmp_path / "frames" / "vid"
    folder.mkdir(parents=True)
    for i in range(12):
        Image.fromarray(frame_image(i)).save(folder / f"img_{i:05d}.png")
    source = video.open_video(folder, fps=4)
    assert isinstance(source, video.FrameFolder)
    assert source.num_frames == 12 and source.times[4] == pytest.approx(1.0) and source.duration == 3.0
    assert np.array_equal(source.read([3, 3, 0]), np.stack([frame_image(3), frame_image(3), frame_image(0)]))
    with pytest.raises(BadDataError, match="no .jpg"):
        video.FrameFolder(tmp_path)


def test_variable_frame_rate(tmp_path):
    """Timestamps come from the stream: irregular frame times survive, and seeking still returns the same bits."""
    from fractions import Fraction

    import av

    from re2tal_cli.data.sampling import fps_indices
    from tests.videos import frame_image

    times_ms = np.cumsum([0] + [40, 40, 120, 40, 200, 40, 40, 80] * 8)[:60]  # gaps of 40–200 ms
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"g": "10", "bf": "2"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    index = video.probe(path)
    assert index.num_frames == 60
    np.testing.assert_allclose(index.times, times_ms / 1000.0, atol=1e-6)
    frames, _ = video.decode_all(path)
    idx = fps_indices(index.times, fps=2.0)  # one frame per half second, on the real timestamps
    assert np.all(np.abs(index.times[idx] - np.arange(len(idx)) * 0.5) <= 0.1)
    assert np.array_equal(video.read_frames(path, idx, index=index, strategy="seek"), frames[idx])
