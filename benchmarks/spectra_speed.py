"""Layer spectra: reluinv.spectra against the obvious implementation.

The obvious way, for every prefix of the network separately: the float64 Jacobian with
``torch.autograd.functional.jacobian`` (vectorised reverse mode), then all singular values with
``numpy.linalg.svd(J, compute_uv=False)``.  reluinv.spectra builds every prefix Jacobian in one
forward pass, drops rows a ReLU zeroed, reuses spectra of steps that do not change the Jacobian,
and factorises the sparse convolutional Jacobians with a banded (staircase) QR before a
values-only SVD (see reluinv.stability).

Both run on ThinCIFAR and WideCIFAR (Appendix A4, random weights) at one random 3x32x32 input, in
the same process, alternating; the script prints the median seconds of each, their ratio, and the
largest disagreement of the singular values relative to the largest one (must be <= 1e-8).

    python benchmarks/spectra_speed.py                 # both networks, 1 repeat (several minutes)
    python benchmarks/spectra_speed.py --repeats 3
    python benchmarks/spectra_speed.py --quick         # 16x16 inputs: a smoke test in seconds
    python benchmarks/spectra_speed.py --threads 1     # pin torch and BLAS to one thread each
    python benchmarks/spectra_speed.py --cuda --no-obvious   # reluinv on CPU against CUDA

On the shared 2-core development machine the full run takes about half an hour, nearly all of it
in the obvious implementation; ``--quick`` takes under a minute.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from functools import partial

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from reluinv import zoo
from reluinv.stability import spectra


def obvious_spectra(model: torch.nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    model64 = copy.deepcopy(model).double()
    x64 = x.double()
    out = []
    for depth in range(1, len(model64) + 1):
        prefix = model64[:depth]
        J = torch.autograd.functional.jacobian(
            lambda inp, prefix=prefix: prefix(inp[None]).reshape(-1), x64, vectorize=True
        )
        J = J.reshape(-1, x64.numel()).numpy()
        out.append(np.linalg.svd(J, compute_uv=False))
        del J
    return out


def fast_spectra(model: torch.nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    return [layer.singular_values for layer in spectra(model, x)]


def cuda_spectra(model: torch.nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    out = [layer.singular_values for layer in spectra(model, x)]
    torch.cuda.synchronize()
    return out


def disagreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    worst = 0.0
    for sa, sb in zip(a, b, strict=True):
        scale = max(float(sa[0]) if sa.size else 0.0, 1e-300)
        worst = max(worst, float(np.max(np.abs(sa - sb))) / scale)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each method (median reported)")
    parser.add_argument("--quick", action="store_true", help="16x16 inputs instead of 32x32")
    parser.add_argument(
        "--models", nargs="+", default=["thin_cifar", "wide_cifar"], choices=["thin_cifar", "wide_cifar"]
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and BLAS threads (default: leave as is)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-obvious", action="store_true", help="skip the obvious implementation")
    parser.add_argument("--cuda", action="store_true", help="also run reluinv on the GPU and compare")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    size = 16 if args.quick else 32
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads, input 3x{size}x{size}, "
        f"repeats {args.repeats}"
    )
    for name in args.models:
        torch.manual_seed(args.seed)
        model = zoo.ARCHITECTURES[name](in_channels=3, image_size=size).eval()
        x = torch.rand(3, size, size, generator=torch.Generator().manual_seed(args.seed + 1))
        runs = {} if args.no_obvious else {"obvious": partial(obvious_spectra, model, x)}
        runs["reluinv"] = partial(fast_spectra, model, x)
        if args.cuda:
            runs["reluinv-cuda"] = partial(cuda_spectra, copy.deepcopy(model).cuda(), x.cuda())
        times: dict[str, list[float]] = {key: [] for key in runs}
        worst: dict[str, float] = {key: 0.0 for key in runs}
        for _ in range(args.repeats):
            results = {}
            for key, run in runs.items():
                start = time.perf_counter()
                results[key] = run()
                times[key].append(time.perf_counter() - start)
            reference = results[next(iter(runs))]
            for key in runs:
                worst[key] = max(worst[key], disagreement(reference, results[key]))
        medians = {key: statistics.median(values) for key, values in times.items()}
        line = f"{name:11s}" + "".join(f"  {key} {medians[key]:8.2f} s/sample" for key in runs)
        if "obvious" in medians:
            line += f"   ratio obvious/reluinv {medians['obvious'] / medians['reluinv']:5.2f}x"
        if "reluinv-cuda" in medians:
            line += f"   ratio reluinv/cuda {medians['reluinv'] / medians['reluinv-cuda']:5.2f}x"
        deviation = max(worst.values())
        verdict = "agree" if deviation <= 1e-8 else "DISAGREE"
        line += f"   max |diff|/sigma_max {deviation:.1e} ({verdict})"
        print(line, flush=True)


if __name__ == "__main__":
    main()
