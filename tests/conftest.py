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
