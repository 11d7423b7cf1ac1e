"""single_blas_pool: one thread per BLAS pool inside the block when several pools are loaded."""

import numpy as np
import scipy.linalg  # noqa: F401  (loads scipy's BLAS, a second pool with PyPI wheels)
from threadpoolctl import ThreadpoolController

from reluinv._threads import single_blas_pool


def _blas_threads():
    return [c.num_threads for c in ThreadpoolController().select(user_api="blas").lib_controllers]


def test_pools_are_limited_inside_and_restored_after():
    before = _blas_threads()
    with single_blas_pool():
        inside = _blas_threads()
        np.ones((3, 3)) @ np.ones(3)
    assert _blas_threads() == before
    if len(before) >= 2:
        assert inside == [1] * len(before)
    else:  # a single pool is left to the user's setting
        assert inside == before


def test_restored_after_an_exception():
    before = _blas_threads()
    try:
        with single_blas_pool():
            raise KeyError("boom")
    except KeyError:
        pass
    assert _blas_threads() == before
