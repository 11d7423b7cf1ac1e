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


def test_background_executor_runs_work_at_the_lowest_priority():
    import os
    import sys
    import threading

    from reluinv._threads import background_executor

    def nice_and_square(v: int) -> tuple[int, int]:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), v * v

    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with background_executor("test") as executor:
        nice, value = executor.submit(nice_and_square, 7).result()
    assert value == 49
    if sys.platform.startswith("linux"):
        assert nice == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller  # unchanged


def test_deferred_work_runs_on_the_caller_when_the_executor_has_not_started_it():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from reluinv.jacobian_svd import Deferred

    release = threading.Event()
    ran_on = []

    def work(tag):
        def run():
            ran_on.append((tag, threading.get_ident()))
            return np.array([float(tag)])

        return run

    with ThreadPoolExecutor(max_workers=1) as executor:
        executor.submit(release.wait)  # the only worker is busy
        queued = Deferred(executor, work(1))
        assert queued.result().tolist() == [1.0]  # not started: run here, not waited for
        assert ran_on == [(1, threading.get_ident())]
        assert queued.result().tolist() == [1.0]  # once only
        release.set()
        started = Deferred(executor, work(2))
        assert started.result().tolist() == [2.0]
    assert len(ran_on) == 2
