"""Speed of ``reluinv.preimage`` against a naive Algorithm 1 (Appendix A3) on a Figure-4-sized layer.

The layer has 3500 units over 784 inputs, as the paper's MLP of Section 2.2.  Each case is an
input whose number of active units lies between 600 and 900 (the range Figure 4 spans).  The naive
implementation follows the appendix literally: ``numpy.linalg.matrix_rank`` for the rank,
``scipy.linalg.null_space`` for the null space and ``scipy.optimize.linprog`` on the printed LP
over all inactive rows.  Both see the same cases; the verdicts must agree (bounded vs unbounded,
singleton by rank).  Each case also times the floor: one unpivoted QR of ``A_pos^T`` (LAPACK
geqrf), which any exact decision needs.

reluinv and the floor are each timed in two states, the same for both: *cold*, right after the
naive version (other numerical work, which leaves the caches and the processor busy elsewhere),
and *warm*, right after that cold call (as in a sweep over a layer, where decisions follow each
other).  (This benchmark once timed reluinv right after the naive version and the floor right
after reluinv: reluinv cold against the floor warm.)  Per case it prints the median seconds (of ``--repeats``
interleaved runs) of reluinv and of the floor in both states, reluinv / floor in both, the
naive version's seconds and the speed-up over it (against reluinv cold), twice.  Each case is
also decided with its input x given as ``hint`` (the columns *given x*: that time over the floor's,
warm and cold; the verdict must be the same), as :func:`reluinv.layer_preimage`, the Figure 4 scan
and the graph preimages decide: they know the input that produced y, and where it holds every
inequality with slack the decision seeks no point of its own.  The passes:

* BLAS as installed: both run with the thread settings the user has.  With numpy's and scipy's
  PyPI wheels that is two OpenBLAS pools; ``reluinv.preimage`` runs them single-threaded while it
  works (see ``reluinv._threads``), the naive version does not.
* BLAS single-threaded for both (threadpoolctl around the whole pass): the same conditions for
  both, as in the worker processes of a sweep.

``--allocator keep`` tells glibc to keep freed memory in the process (``mallopt``: no trimming, no
``mmap`` for large blocks), so that neither reluinv nor the floor pays page faults for memory it
freed a moment before; the ratios then compare computation alone.  By default glibc returns large
freed blocks to the system and a later call faults them back in, a page at a time, as many times
as the heap's history makes it: in a loop alternating the two at nullity 184, 1,100-2,800 faults
per QR and 2,400 per decision before reluinv kept its largest temporaries in per-thread work
arrays (``reluinv._scratch``), 200-900 after.  In this benchmark's order the two settings gave
ratios within 0.05 of each other.

``--shift MU`` adds ``MU`` to every weight and draws non-negative, sparse inputs (as images are),
so that the inactive rows lean to one side of the null space: with ``--shift 0.02`` the preimages
of fewer than about 400 active units are unbounded, as on the paper-recipe layer of Figure 4's
full mode, where the direction search, not the factorisation, sets reluinv's time.  The literal
algorithm's hull LP over every inactive row then takes seconds per case (5.5 s at 359 active
units) and minutes further down (over 200 s at 150), hence the range below.

    python benchmarks/preimage_speed.py [--cases 24] [--repeats 1] [--seed 0] [--passes both]
                                        [--allocator default|keep]
    python benchmarks/preimage_speed.py --shift 0.02 --active 350 880 --cases 6 --passes single
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import statistics
import time

import numpy as np
import scipy.linalg
from scipy.optimize import linprog
from threadpoolctl import threadpool_info, threadpool_limits

import reluinv
from reluinv._threads import single_blas_pool


def naive_algorithm1(A, b, y) -> str:
    """Appendix A3 as printed: rank test, null space, Corollary 6, then the hull LP."""
    n = A.shape[1]
    pos = y > 0
    if np.linalg.matrix_rank(A[pos]) == n:
        return "singleton"
    O = scipy.linalg.null_space(A[pos]).T
    A_bar = A[~pos] @ O.T
    k_bar, k = A_bar.shape
    if k_bar <= k:
        return "unbounded"
    a_eq = np.vstack([A_bar.T, np.ones((1, k_bar))])
    b_eq = np.concatenate([np.zeros(k), [1.0]])
    res = linprog(np.ones(k_bar), A_eq=a_eq, b_eq=b_eq, bounds=(0, 1), method="highs")
    return "bounded" if res.status == 0 else "unbounded"


def keep_freed_memory() -> None:
    """glibc: keep freed memory in the process (``--allocator keep``)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        raise SystemExit("--allocator keep needs glibc (mallopt); this C library has none") from None
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (mallopt(m_trim_threshold, 1 << 30) and mallopt(m_mmap_threshold, 1 << 30)):
        raise SystemExit("--allocator keep: glibc refused the mallopt settings")


def make_layer(rng, m=3500, n=784, shift=0.0):
    """Gaussian rows (plus ``shift`` on every weight).  Unshifted, with 600-783 active units the
    preimages are compact (random inactive rows are omnidirectional in the null space), which is
    the costlier path for reluinv: it must prove boundedness and find a point; from 784 active
    units on they are singletons."""
    return rng.standard_normal((m, n)) / np.sqrt(n) + shift


def make_case(rng, A, n_active, nonnegative=False):
    """``(b, y, x)``: a common bias that leaves exactly ``n_active`` units on at a random input x
    (standard normal, or with ``nonnegative`` uniform on [0, 1) with half its entries 0)."""
    n = A.shape[1]
    x = rng.random(n) * (rng.random(n) < 0.5) if nonnegative else rng.standard_normal(n)
    z = A @ x
    threshold = np.sort(z)[-n_active - 1 : -n_active + 1].mean()
    b = -threshold * np.ones(A.shape[0])
    y = np.maximum(A @ x + b, 0.0)
    return b, y, x


def same_verdict(ours: str, naive: str) -> bool:
    if naive == "singleton":
        return ours == "singleton"
    if naive == "bounded":
        return ours in ("compact", "singleton")
    return ours == naive


def qr_floor(A, y) -> float:
    """Seconds of one unpivoted QR of ``A_pos^T`` (LAPACK geqrf, reflectors only): what the
    factorisation of the equalities alone costs, the floor for any exact decision.  Timed with
    BLAS single-threaded, as reluinv.preimage runs its own linear algebra (on a loaded 2-core
    machine a two-thread QR was measured 20-200x slower)."""
    with single_blas_pool():
        t0 = time.perf_counter()
        scipy.linalg.qr(A[y > 0].T, mode="raw", check_finite=False)
        return time.perf_counter() - t0


def cold_and_warm(run, before) -> tuple[float, float, object]:
    """``run()`` gives ``(seconds, result)``: its seconds right after ``before()`` and right after
    itself, and its result."""
    before()
    cold, _ = run()
    warm, result = run()
    return cold, warm, result


def time_reluinv(A, b, y, hint=None):
    t0 = time.perf_counter()
    r = reluinv.preimage(A, b, y, hint=hint)
    return time.perf_counter() - t0, r


def time_case(A, b, y, x, repeats: int) -> dict:
    """Medians of reluinv without and with the input x as its hint and of the QR floor (cold and
    warm) and of the naive Algorithm 1, interleaved, with the verdicts."""
    keys = ("ours_cold", "ours", "floor_cold", "floor", "hint_cold", "hint", "naive")
    times: dict[str, list[float]] = {k: [] for k in keys}
    verdicts = []

    def naive():
        t0 = time.perf_counter()
        verdicts.append(naive_algorithm1(A, b, y))
        times["naive"].append(time.perf_counter() - t0)

    for _ in range(repeats):
        cold, warm, r = cold_and_warm(lambda: time_reluinv(A, b, y), naive)
        times["ours_cold"].append(cold)
        times["ours"].append(warm)
        cold, warm, _ = cold_and_warm(lambda: (qr_floor(A, y), None), naive)
        times["floor_cold"].append(cold)
        times["floor"].append(warm)
        cold, warm, given = cold_and_warm(lambda: time_reluinv(A, b, y, hint=x), naive)
        times["hint_cold"].append(cold)
        times["hint"].append(warm)
        if (given.kind, given.nullity) != (r.kind, r.nullity):
            raise SystemExit(f"the hint changed the verdict: {r.kind} without, {given.kind} with it")
    out = {k: statistics.median(t) for k, t in times.items()}
    return {**out, "kind": r.kind, "nullity": r.nullity, "naive_kind": verdicts[0]}


def run_pass(A, cases, repeats: int, label: str) -> dict:
    """Time reluinv, the QR floor and the naive version on every case (median of ``repeats``
    each); returns the medians over cases of reluinv's time (warm) and the naive time, and the
    median and largest reluinv / floor, warm and cold."""
    print(f"\n-- {label}")
    print(
        "                             ---------- warm ----------   ---------- cold ----------"
        "   -- given x --\n"
        "active nullity  reluinv kind  reluinv s  floor s  /floor   reluinv s  floor s  /floor"
        "    warm    cold   naive kind  naive s  speed-up"
    )
    rows, kinds = [], {}
    for b, y, x in cases:
        t = time_case(A, b, y, x, repeats)
        active = int((y > 0).sum())
        kind, v = t["kind"], t["naive_kind"]
        if not same_verdict(kind, v):
            raise SystemExit(f"verdicts differ at {active} active units: reluinv {kind}, naive {v}")
        kinds[kind] = kinds.get(kind, 0) + 1
        rows.append(t)
        print(
            f"{active:6d} {t['nullity']:7d}  {kind:12s} {t['ours']:9.4f} {t['floor']:8.4f} "
            f"{t['ours'] / t['floor']:6.2f}x  {t['ours_cold']:9.4f} {t['floor_cold']:8.4f} "
            f"{t['ours_cold'] / t['floor_cold']:6.2f}x  {t['hint'] / t['floor']:5.2f}x "
            f"{t['hint_cold'] / t['floor_cold']:5.2f}x   {v:10s} {t['naive']:8.4f} "
            f"{t['naive'] / t['ours_cold']:7.1f}x",
            flush=True,
        )
    med = statistics.median
    summary = {
        "ours": med([t["ours"] for t in rows]),
        "naive": med([t["naive"] for t in rows]),
        "speed_up": med([t["naive"] / t["ours_cold"] for t in rows]),
    }
    for state, ours, floor in (
        ("warm", "ours", "floor"),
        ("cold", "ours_cold", "floor_cold"),
        ("given x, warm", "hint", "floor"),
        ("given x, cold", "hint_cold", "floor_cold"),
    ):
        ratios = [t[ours] / t[floor] for t in rows]
        summary[state] = (med(ratios), max(ratios))
    print(f"verdicts agree on all {len(cases)} cases: {kinds}")
    print(f"median per case: {describe(summary)}")
    return summary


def describe(summary: dict) -> str:
    """One line of a pass's :func:`run_pass` summary."""
    return (
        f"reluinv {summary['ours']:.4f}s (warm)  naive Algorithm 1 {summary['naive']:.4f}s  "
        f"speed-up {summary['speed_up']:.1f}x (against reluinv cold); reluinv / QR floor: "
        + "; ".join(
            f"{state} median {summary[state][0]:.2f}x, largest {summary[state][1]:.2f}x"
            for state in ("warm", "cold", "given x, warm", "given x, cold")
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shift", type=float, default=0.0, help="added to every weight (see above)")
    parser.add_argument("--active", type=int, nargs=2, default=(600, 900), metavar=("LO", "HI"))
    parser.add_argument(
        "--passes",
        choices=["both", "installed", "single"],
        default="both",
        help="BLAS as installed, single-threaded, or both (default)",
    )
    parser.add_argument(
        "--allocator",
        choices=["default", "keep"],
        default="default",
        help="glibc as configured, or keeping freed memory in the process (see above)",
    )
    args = parser.parse_args()
    if args.allocator == "keep":
        keep_freed_memory()
    rng = np.random.default_rng(args.seed)
    A = make_layer(rng, shift=args.shift)
    actives = np.linspace(*args.active, args.cases).round().astype(int)
    cases = [make_case(rng, A, int(n_active), nonnegative=args.shift != 0) for n_active in actives]
    pools = [f"{i['internal_api']} x{i['num_threads']}" for i in threadpool_info() if i["user_api"] == "blas"]
    results = []
    if args.passes in ("both", "installed"):
        label = f"BLAS as installed ({', '.join(pools)})"
        results.append(("BLAS as installed", run_pass(A, cases, args.repeats, label)))
    if args.passes in ("both", "single"):
        with threadpool_limits(limits=1, user_api="blas"):
            single = run_pass(A, cases, args.repeats, "BLAS single-threaded for both")
        results.append(("BLAS single-threaded", single))
    print(f"\nsummary (median per case, same cases, same run; allocator: {args.allocator})")
    for label, r in results:
        print(f"  {label:22s} {describe(r)}")


if __name__ == "__main__":
    main()
