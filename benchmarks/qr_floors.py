"""The floor of ``preimage_speed.py`` in two LAPACKs: scipy's OpenBLAS ``geqrf`` and torch's MKL one.

``preimage_speed.py`` takes one unpivoted QR of ``A_pos^T`` as the floor of an exact decision, timed
with scipy, whose bundled OpenBLAS also runs reluinv's own factorisations.  torch's wheels bring
Intel's MKL, whose ``geqrf`` is faster on some machines.  This script times, on the same Gaussian
3500 x 784 layer and cases, in one process, single-threaded and interleaved (each timing right
after a call of the same thing): ``reluinv.preimage``, the scipy QR (``preimage_speed.qr_floor``)
and ``torch.geqrf`` of the same matrix (its gather and copy included, as the scipy floor includes
its own), and prints reluinv's time over each floor.

    python benchmarks/qr_floors.py [--active 600 650 700 800] [--repeats 7] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

import reluinv
from preimage_speed import make_case, make_layer, qr_floor, time_reluinv


def mkl_floor(A, y) -> float:
    """Seconds of ``torch.geqrf`` of ``A_pos^T`` (MKL on torch's x86 wheels), one thread."""
    t0 = time.perf_counter()
    torch.geqrf(torch.from_numpy(np.ascontiguousarray(A[y > 0].T)))
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--active", type=int, nargs="+", default=[600, 650, 700, 800])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    A = make_layer(rng)
    cases = [make_case(rng, A, n_active) for n_active in args.active]
    nullities = [reluinv.preimage(A, b, y).nullity for b, y, _x in cases]
    timers = {
        "reluinv": lambda b, y: time_reluinv(A, b, y)[0],
        "OpenBLAS": lambda b, y: qr_floor(A, y),
        "MKL": lambda b, y: mkl_floor(A, y),
    }
    times: dict[tuple[int, str], list[float]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            for _ in range(args.repeats):
                for i, (b, y, _x) in enumerate(cases):
                    for name, run in timers.items():
                        run(b, y)  # the timing below follows a call of the same thing
                        times.setdefault((i, name), []).append(run(b, y))
    finally:
        torch.set_num_threads(threads)
    print(f"medians of {args.repeats}, single-threaded, ms; the floor of preimage_speed.py is OpenBLAS's")
    print("active nullity   reluinv  QR OpenBLAS  QR MKL   reluinv / OpenBLAS QR   reluinv / MKL QR")
    for i, (_b, y, _x) in enumerate(cases):
        ours, openblas, mkl = (statistics.median(times[(i, k)]) * 1e3 for k in timers)
        print(
            f"{int((y > 0).sum()):6d} {nullities[i]:7d} {ours:9.2f} {openblas:12.2f} {mkl:7.2f} "
            f"{ours / openblas:20.2f}x {ours / mkl:17.2f}x"
        )


if __name__ == "__main__":
    main()
