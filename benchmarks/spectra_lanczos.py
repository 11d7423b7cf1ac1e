"""Lanczos spectra of a 3x224x224 input through a few convolutions, within a small machine.

The dense Jacobian of the first convolution alone would be 200,704 x 150,528 float64 numbers
(about 225 GiB).  ``spectra(..., method="lanczos")`` never forms it: Golub-Kahan bidiagonalisation
only needs Jacobian-vector products (a forward pass through the masked network) and
vector-Jacobian products (one backward pass), plus ``max_steps * (rows + columns)`` numbers of
Krylov basis per layer.  The script prints, per layer, the largest and smallest singular values
found, the steps taken, whether they converged and whether the row space was exhausted, then the
wall time and the peak resident memory of the process.

    python benchmarks/spectra_lanczos.py                    # k=3, 120 steps per layer
    python benchmarks/spectra_lanczos.py --k 5 --max-steps 300 --threads 2
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from threadpoolctl import threadpool_limits
from torch import nn

from reluinv.stability import spectra


def imagenet_stem(seed: int) -> nn.Sequential:
    """Three strided 3x3 convolutions with ReLUs, as at the start of an ImageNet CNN."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
    ).eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--k", type=int, default=3, help="largest and smallest singular values per layer")
    parser.add_argument("--max-steps", type=int, default=120, help="Lanczos steps per layer at most")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch and BLAS threads (default: leave as is)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    model = imagenet_stem(args.seed)
    x = torch.rand(3, args.size, args.size, generator=torch.Generator().manual_seed(args.seed + 1))
    in_dim = x.numel()
    print(
        f"input 3x{args.size}x{args.size} ({in_dim} coordinates), k={args.k}, max_steps={args.max_steps}, "
        f"{torch.get_num_threads()} torch threads"
    )
    start = time.perf_counter()
    layers = spectra(model, x, method="lanczos", k=args.k, max_steps=args.max_steps)
    elapsed = time.perf_counter() - start
    for layer in layers:
        dense_gib = 8 * layer.out_dim * in_dim / 2**30
        print(
            f"{layer.name:10s} rows {layer.out_dim:7d} (dense J {dense_gib:6.1f} GiB)  "
            f"steps {layer.steps:4d}  complete {str(layer.complete):5s}  "
            f"converged {str(layer.converged):5s}  largest {layer.largest.round(5).tolist()}  "
            f"smallest found {layer.smallest.round(5).tolist()}"
        )
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux
    print(f"time {elapsed:.1f} s   peak RSS {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
