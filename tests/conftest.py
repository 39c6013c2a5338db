import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic_and_light():
    """Tests share 2 cores with each other: one intra-op thread, and a fixed seed per test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """Tiny real videos (mp4 with B-frames, mkv with a pts offset, MPEG-TS, MPEG-4 AVI) and broken files."""
    from tests.videos import make_videos

    return make_videos(tmp_path_factory)


@pytest.fixture
def pieces_at_any_size(monkeypatch):
    """Recomputes split into pieces of time whatever the tensors' size (re2tal splits from MIN_SPLIT_BYTES on,
    sizes a test cannot afford)."""
    from re2tal_cli.reversible import pieces

    monkeypatch.setattr(pieces, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(pieces, "MIN_HALO_SPLIT_BYTES", 0)
