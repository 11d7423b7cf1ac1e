"""Work arrays kept per thread between decisions, for the largest temporaries of one decision.

A decision on a 3500 x 784 layer gathers arrays of several megabytes (the active rows it
factorises, rows it checks) and frees them again.  glibc hands freed memory at the top of its heap
back to the system, and the next decision takes it back a page at a time: on the layer of
``benchmarks/preimage_speed.py`` at 600 active units that was about 2,400 page faults per decision,
about 3 ms of 26.  An array gathered here lands in the calling thread's work array of that name
instead, allocated once (and grown when a larger one is asked for).

A work array is valid until the next call with the same name in the same thread: callers use it
only as a temporary inside one decision and never return it.  Arrays over :data:`MAX_KEPT` bytes
are allocated afresh each time, so at most that much stays allocated per name and thread (two
names: 32 MiB per thread at most, 4.6 MiB after a decision on the 3500 x 784 layer).  The active
rows and the rows later restricted to the null space share one work array ("layer rows"): the
first is dead before the second is gathered.  Two separate arrays made a decision there about 1 ms
slower even with no page faults at stake, as more memory then competes for the caches.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.typing import NDArray

#: Largest work array, in bytes, kept between calls (per name and thread).
MAX_KEPT = 16 << 20

_local = threading.local()


def work_array(name: str, shape: tuple[int, int], order: str = "C") -> NDArray[np.float64]:
    """An uninitialised float64 array of ``shape`` in the work array ``name``."""
    size = shape[0] * shape[1]
    if size * 8 > MAX_KEPT:
        return np.empty(shape, order=order)  # type: ignore[call-overload]
    arrays: dict[str, NDArray[np.float64]] = _local.__dict__.setdefault("arrays", {})
    work = arrays.get(name)
    if work is None or work.size < size:
        work = arrays[name] = np.empty(size)
    flat = work[:size]
    return flat.reshape(shape[::-1]).T if order == "F" else flat.reshape(shape)


def gathered_rows(M: NDArray[np.float64], rows: NDArray[np.intp], name: str) -> NDArray[np.float64]:
    """``M[rows]`` (C-contiguous float64; ``rows`` valid indices), in the work array ``name``."""
    out = work_array(name, (rows.size, M.shape[1]))
    # mode="clip" writes straight into out (the default mode buffers it, three times slower)
    np.take(M, rows, axis=0, out=out, mode="clip")
    return out
