"""Keep two BLAS thread pools from fighting over the cores during a preimage decision.

numpy and scipy wheels from PyPI each bundle their own OpenBLAS, each with its own pool of worker
threads.  After a call, OpenBLAS workers spin for a while before they sleep, so code that alternates
between numpy products and scipy factorisations -- as :func:`reluinv.preimage` does, several
times per call -- keeps up to ``2 * (threads - 1)`` spinning workers next to the calling thread.  On
a small machine that oversubscribes the cores: on a 2-core machine a Figure-4-sized preimage took
0.08-0.15 s with both pools at two threads and 0.046 s with them at one (medians over 24 cases;
``benchmarks/preimage_speed.py``).  The matrices there have at most n columns, so the threads gain
little even when they do not fight; sweeps over many samples use one process per core instead
(:mod:`reluinv.parallel`).

:func:`single_blas_pool` therefore runs every loaded BLAS library at one thread for the duration of
a decision, but only when more than one BLAS library is loaded; with a single pool the user's thread
setting is left alone.  OpenBLAS thread counts are process-wide: a call that runs concurrently in
another Python thread sees the limit too.

:func:`background_executor` runs single-threaded work (LAPACK ``dgbbrd`` of the dense spectra) on a
thread of lowest scheduling priority, so that it fills the cores the main thread leaves idle
instead of interrupting its multi-threaded matrix products.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_controller: Any = None


def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, built once (it scans the process)."""
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController().select(user_api="blas")
    return _controller


@contextlib.contextmanager
def single_blas_pool() -> Iterator[None]:
    """Run BLAS single-threaded inside the block when two or more BLAS pools are loaded."""
    blas = _blas_controller()
    if len(blas.lib_controllers) < 2 or all(c.num_threads == 1 for c in blas.lib_controllers):
        yield
        return
    with blas.limit(limits=1):
        yield


def _lowest_priority() -> None:
    """Give the calling thread the lowest scheduling priority (Linux threads have their own
    nice value); elsewhere, or where the system refuses, leave it as it is."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def background_executor(name: str) -> ThreadPoolExecutor:
    """One worker thread of lowest priority.  On the 2-core development machine WideCIFAR's
    all-prefix spectra at 3x32x32 took 27.0 s with ``dgbbrd`` there and 28.1 s with it on a
    thread of normal priority (three alternating runs each)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=name, initializer=_lowest_priority)
