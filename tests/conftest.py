import pytest

import strideconv  # noqa: F401  (fails loudly if the extension is not built)
from helpers import DEVICES


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: opt-in tests CI does not run (pytest -m slow)")
