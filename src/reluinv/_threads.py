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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
