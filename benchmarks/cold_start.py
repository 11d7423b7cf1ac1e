"""What the *cold* columns of ``preimage_speed.py`` measure: the cost of using code and memory again
after a pause, apart from the work itself.

``preimage_speed.py`` times reluinv and its floor (one unpivoted QR of ``A_pos^T``) *cold*, right
after the literal Algorithm 1, and *warm*, right after a call of the same thing.  This script
separates what makes the cold calls slower.  It times, single-threaded and interleaved,

* a **small** decision (a 60 x 30 layer, compact at nullity 5: microseconds of arithmetic, the
  same Python and library code as a large one) and the QR of its active rows;
* the **large** decision of ``preimage_speed.py`` at 600 active units (nullity 184) and its floor;
* the sum of 1 MiB of numbers, in 4 KiB pages and inside a transparent huge page;

each warm, right after the literal algorithm on the large case (as ``preimage_speed.py`` does),
and right after a pause of a pure-Python busy loop (no numerical work, nothing else touched) of
``--pauses`` seconds.  Where the small decision's cold penalty (cold minus warm) is close to the
large one's, the penalty is a cost of first use (code, small arrays), not of the arithmetic or
of the layer's data, and it grows with the pause even when nothing ran in between.

    python benchmarks/cold_start.py [--repeats 5] [--pauses 0.05 0.3 1.0]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits

import reluinv
from preimage_speed import make_case, make_layer, naive_algorithm1, qr_floor


def small_case(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 60 x 30 Gaussian layer and an output with 25 active units (a compact preimage)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((60, 30))
    b = -0.5 * np.ones(60)
    return A, b, np.maximum(A @ rng.standard_normal(30) + b, 0.0)


def mebibyte_arrays() -> tuple[np.ndarray, np.ndarray]:
    """1 MiB of random numbers twice: an array of its own (4 KiB pages) and a slice of a 2 MiB
    aligned block inside an 8 MiB array (numpy asks Linux for transparent huge pages from 4 MiB
    on; whether it gets them depends on the system's THP setting)."""
    rng = np.random.default_rng(2)
    small_pages = rng.random(1 << 17)
    big = rng.random(1 << 20)
    start = (-big.ctypes.data % (2 << 20)) // 8
    return small_pages, big[start : start + (1 << 17)]


def busy_wait(seconds: float) -> None:
    """A pause that keeps the core busy in the interpreter's own loop and touches nothing else."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def milliseconds(run: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) * 1e3


def measure(runs: dict[str, Callable[[], object]], states: dict[str, Callable[[], None]], repeats: int):
    """``times[state][name]``: for each repeat, each state and each run, ``before()`` of the state
    then the run timed (the warm state runs it once more first)."""
    times: dict[str, dict[str, list[float]]] = {s: {n: [] for n in runs} for s in states}
    for _ in range(repeats):
        for state, before in states.items():
            for name, run in runs.items():
                before()
                if state == "warm":
                    run()
                times[state][name].append(milliseconds(run))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--pauses", type=float, nargs="+", default=[0.05, 0.3, 1.0])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    A = make_layer(rng)
    b, y, _ = make_case(rng, A, 600)
    As, bs, ys = small_case()
    small_pages, huge_page = mebibyte_arrays()
    runs = {
        "small decision": lambda: reluinv.preimage(As, bs, ys),
        "small QR": lambda: scipy.linalg.qr(As[ys > 0].T, mode="raw", check_finite=False),
        "large decision": lambda: reluinv.preimage(A, b, y),
        "large QR (floor)": lambda: qr_floor(A, y),
        "sum, 1 MiB": small_pages.sum,
        "sum, 1 MiB huge page": huge_page.sum,
    }
    states: dict[str, Callable[[], None]] = {
        "warm": lambda: None,
        "after Algorithm 1": lambda: naive_algorithm1(A, b, y),
    }
    for pause in args.pauses:
        states[f"after a {pause:g} s pause"] = lambda pause=pause: busy_wait(pause)
    with threadpool_limits(limits=1, user_api="blas"):
        for run in runs.values():
            run()
        kinds = reluinv.preimage(As, bs, ys), reluinv.preimage(A, b, y)
        for label, r in zip(("small", "large"), kinds, strict=True):
            print(f"{label}: {r.kind} at nullity {r.nullity}")
        times = measure(runs, states, args.repeats)
    med = {s: {n: statistics.median(t) for n, t in row.items()} for s, row in times.items()}
    print(f"\nmedian ms of {args.repeats} (BLAS single-threaded); below each, the same minus warm")
    print(f"{'':22s}" + "".join(f"{state:>22s}" for state in med))
    for name in runs:
        print(f"{name:22s}" + "".join(f"{med[state][name]:22.2f}" for state in med))
        print(f"{'':22s}" + "".join(f"{med[state][name] - med['warm'][name]:+22.2f}" for state in med))
    ratios = (med[state]["large decision"] / med[state]["large QR (floor)"] for state in med)
    print(f"{'large / floor':22s}" + "".join(f"{r:21.2f}x" for r in ratios))


if __name__ == "__main__":
    main()
