import os
import sys

import pytest
import torch
from hypothesis import settings
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(__file__))  # tests/problems.py holds the shared oracles

# Property tests draw the same examples on every run ("repeatable"), so that `make test` passes or
# fails on the code alone: with fresh examples each run, a fresh clone once drew a system with
# singular values over 6 decades that a too-strict test tolerance rejected.  HYPOTHESIS_PROFILE=
# explore draws new ones each run, to look for more.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


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
