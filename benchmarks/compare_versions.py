"""Two versions of reluinv on the same preimages in one process: do they decide alike, which is faster?

A change to the decision must leave its verdicts alone, and its speed should be measured against
the code before it under the same conditions.  Separate processes differ by 0.5-1 ms per decision
at nullity 184 on a 2-core machine from the process alone, more than most changes move it; in one
process, alternating call by call, two copies of the same code agree to about 0.1 ms.  So this
script imports the other version's ``src/reluinv`` under another name (a copy in a temporary
folder, as ``reluinv_other``), decides every case with both, the order alternating from one
repeat to the next, verifies every certificate of both, and reports:

* each case whose kind, nullity or near-tolerance flag differs (there must be none; the exit
  status is then 1), or whose margin differs by more than ``--margin-rtol`` relative (iterative
  certificates may take another path from products that differ in the last bits and report other,
  equally valid multipliers);
* the median milliseconds of each version on every case, and per set the sums of the medians.

The sets: ``gauss``, the Gaussian 3500 x 784 layer of ``preimage_speed.py`` (seed 0; 8 cases with
600-900 active units, compact and singletons); ``shifted``, its layers with every weight shifted by
0.02 and non-negative inputs (seeds 0-2; 10 cases each with 200-880 active units, unbounded below
about 400); ``strip``, the shifted layers of seeds 0-5 at 380-440 active units (7 cases each), where
the preimages turn from unbounded to compact and the decisions are slowest (about a minute per
repeat; not in the default sets); ``trained``, the 58 images of ``preimage_trained.py`` on its
trained layer (trained and cached on first use, about two minutes).

    python benchmarks/compare_versions.py OTHER [--sets gauss,shifted,strip,trained] [--repeats 3]

``OTHER`` is a git revision of this repository (exported with ``git archive``) or the path of
another checkout.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import reluinv
from preimage_speed import make_case, make_layer

ROOT = Path(__file__).resolve().parents[1]
Case = tuple[str, np.ndarray, np.ndarray, np.ndarray]


def import_other(other: str, folder: Path):
    """The package ``src/reluinv`` of ``other`` (a revision or a checkout), as ``reluinv_other``."""
    target = folder / "reluinv_other"
    checkout = Path(other)
    if (checkout / "src" / "reluinv").is_dir():
        shutil.copytree(checkout / "src" / "reluinv", target)
    else:
        archive = subprocess.run(
            ["git", "archive", other, "src/reluinv"], cwd=ROOT, capture_output=True, check=False
        )
        if archive.returncode != 0:
            raise SystemExit(
                f"{other!r} is neither a checkout nor a revision: {archive.stderr.decode().strip()}"
            )
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
        (folder / "src" / "reluinv").rename(target)
    sys.path.insert(0, str(folder))
    return importlib.import_module("reluinv_other")


def gaussian_cases() -> Iterator[Case]:
    rng = np.random.default_rng(0)
    A = make_layer(rng)
    for n_active in np.linspace(600, 900, 8).round().astype(int):
        b, y, _ = make_case(rng, A, int(n_active))
        yield "gauss", A, b, y


def shifted_layer_cases(label: str, seeds: int, lo: int, hi: int, count: int) -> Iterator[Case]:
    """``count`` cases with ``lo``-``hi`` active units on each shifted layer of seeds 0 .. seeds-1."""
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        A = make_layer(rng, shift=0.02)
        for n_active in np.linspace(lo, hi, count).round().astype(int):
            b, y, _ = make_case(rng, A, int(n_active), nonnegative=True)
            yield f"{label}{seed}", A, b, y


def shifted_cases() -> Iterator[Case]:
    return shifted_layer_cases("shifted", 3, 200, 880, 10)


def strip_cases() -> Iterator[Case]:
    return shifted_layer_cases("strip", 6, 380, 440, 7)


def trained_cases() -> Iterator[Case]:
    from preimage_trained import spread_over_active, trained_layer

    W, b, images, _source = trained_layer()
    Y = np.maximum(images @ W.T + b, 0.0)
    for i in spread_over_active(Y, 58):
        yield "trained", W, b, Y[i]


SETS: dict[str, Callable[[], Iterator[Case]]] = {
    "gauss": gaussian_cases,
    "shifted": shifted_cases,
    "strip": strip_cases,
    "trained": trained_cases,
}


def decide_both(versions: dict, case: Case, repeats: int, first: int = 0) -> dict:
    """Median seconds and the result of each version on one case, the order alternating from
    call to call, version ``first`` first.  (The first call on a case follows the last case's
    checks, which leave other data in the caches: with one call each and the same version always
    first, that version came out 2-3 ms slower per decision at nullity 184.)"""
    _label, A, b, y = case
    names = list(versions)
    times: dict[str, list[float]] = {name: [] for name in names}
    results = {}
    for r in range(repeats):
        for name in names if (r + first) % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            results[name] = versions[name].preimage(A, b, y)
            times[name].append(time.perf_counter() - t0)
    for result in results.values():
        result.verify(A, b, y)
    return {name: (statistics.median(times[name]), results[name]) for name in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", help="a git revision of this repository, or another checkout")
    parser.add_argument("--sets", default="gauss,shifted,trained")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--margin-rtol", type=float, default=1e-6)
    args = parser.parse_args()
    sets = args.sets.split(",")
    unknown = [s for s in sets if s not in SETS]
    if unknown:
        raise SystemExit(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    folder = Path(tempfile.mkdtemp(prefix="reluinv-compare-"))
    try:
        versions = {"this": reluinv, "other": import_other(args.other, folder)}
        different = run(versions, sets, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if different else 0)


def run(versions: dict, sets: list[str], args) -> int:
    """Every case of ``sets`` with both versions; returns the number of differing verdicts."""
    print(f"this: {Path(reluinv.__file__).parent}; other: {args.other}; median of {args.repeats} calls each")
    print("  set       active nullity  kind        this ms  other ms  this/other")
    different = 0
    with threadpool_limits(limits=1, user_api="blas"):
        for name in sets:
            sums = {v: 0.0 for v in versions}
            cases = list(SETS[name]())
            for case in cases[:1]:  # each version's first call pays for imports and caches
                decide_both(versions, case, 1)
            for i, case in enumerate(cases):
                out = decide_both(versions, case, args.repeats, first=i % 2)
                (t_this, a), (t_other, o) = out["this"], out["other"]
                sums["this"] += t_this
                sums["other"] += t_other
                line = (
                    f"  {case[0]:9s} {a.n_active:6d} {a.nullity:7d}  {a.kind:10s} {1e3 * t_this:9.1f} "
                    f"{1e3 * t_other:9.1f} {t_this / t_other:6.2f}x"
                )
                if (a.kind, a.nullity, a.near_tolerance) != (o.kind, o.nullity, o.near_tolerance):
                    different += 1
                    line += f"  VERDICTS DIFFER: other {o.kind}, nullity {o.nullity}, near {o.near_tolerance}"
                elif abs(a.margin - o.margin) > args.margin_rtol * max(abs(a.margin), abs(o.margin)):
                    line += f"  margin {a.margin:.3g}, other {o.margin:.3g}"
                print(line, flush=True)
            print(
                f"{name}: {len(cases)} cases, sum of medians this {sums['this']:.3f} s, "
                f"other {sums['other']:.3f} s ({sums['this'] / sums['other']:.3f}x)",
                flush=True,
            )
    print("verdicts: " + ("all the same" if different == 0 else f"{different} cases differ"))
    return different


if __name__ == "__main__":
    main()
