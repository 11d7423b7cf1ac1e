"""All-prefix spectra at the paper's CIFAR size against the cost of one dense QR.

The floor: one float64 Householder QR (``torch.linalg.qr(A, mode="r")``, LAPACK ``geqrf``) of a
random 32768 x 3072 matrix, the shape of WideCIFAR's first Jacobian (3x32x32 input, 32 maps).
Against it: ``reluinv.spectra`` (every singular value of every prefix, float64) of one WideCIFAR
and one ThinCIFAR sample (Appendix A4, random initial weights, one random input).  The QR and the
spectra run back to back, alternating, in one process, so the ratios are fair on a loaded machine;
with ``--repeats N`` the medians are reported.

    python benchmarks/spectra_cifar.py                   # one repeat (a few minutes)
    python benchmarks/spectra_cifar.py --repeats 2
    python benchmarks/spectra_cifar.py --threads 2 --device cuda
    python benchmarks/spectra_cifar.py --profile         # also the time per phase (cProfile)

The target (issue: exact CIFAR-scale spectra): each network within 4x the QR.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import torch

from reluinv import zoo
from reluinv.stability import spectra

_PHASES = ("tall_factor", "_staircase_square", "band_reduce", "band_bidiagonal_svdvals", "_prefix_jacobians")


def time_qr(rows: int, cols: int, seed: int) -> float:
    A = torch.randn(rows, cols, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    torch.linalg.qr(A, mode="r")
    return time.perf_counter() - start


def time_spectra(name: str, seed: int, device: str, profile: bool) -> float:
    torch.manual_seed(seed)
    model = zoo.ARCHITECTURES[name]().eval().to(device)
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(device)
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    layers = spectra(model, x)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if profiler:
        profiler.disable()
        stats = pstats.Stats(profiler)
        for (_, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
            if function in _PHASES:
                print(f"    {name} {function}: {row[3]:.1f} s cumulative over {row[1]} calls")
    print(f"    {name}: {len(layers)} prefixes, ranks {[layer.rank for layer in layers]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds (medians reported)")
    parser.add_argument(
        "--models", nargs="+", default=["wide_cifar", "thin_cifar"], choices=["wide_cifar", "thin_cifar"]
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: leave as is)")
    parser.add_argument(
        "--device", default="cpu", help="device for the spectra (the QR floor stays on the CPU)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="print the time of each phase")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {"qr": [], **{name: [] for name in args.models}}
    for round_ in range(args.repeats):
        print(f"round {round_ + 1}/{args.repeats}", flush=True)
        for name in args.models:
            times["qr"].append(time_qr(32768, 3072, args.seed + round_))
            print(f"  QR 32768 x 3072: {times['qr'][-1]:.1f} s", flush=True)
            times[name].append(time_spectra(name, args.seed, args.device, args.profile))
            print(f"  {name} all-prefix spectra: {times[name][-1]:.1f} s", flush=True)
    qr = statistics.median(times["qr"])
    print(
        f"median QR 32768 x 3072 (float64, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads): {qr:.1f} s"
    )
    for name in args.models:
        value = statistics.median(times[name])
        print(
            f"median {name} spectra on {args.device}: {value:.1f} s = {value / qr:.2f} x the QR (target <= 4)"
        )


if __name__ == "__main__":
    main()
