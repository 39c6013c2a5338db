import pytest

from tests.localizers.helpers import tiny_config


@pytest.fixture
def tiny():
    return tiny_config()
