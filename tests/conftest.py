import os
import sys

import pytest
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(__file__))  # tests/problems.py holds the shared oracles


@pytest.fixture(scope="module")
def one_thread():
    """Torch and BLAS on one thread for a module: tiny tensors run far faster so, and a shared
    2-core machine is easily oversubscribed."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(previous)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` (registered in pyproject.toml) are skipped where no CUDA device is
    present; the marker is the only place that condition is stated."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
