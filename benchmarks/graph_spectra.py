"""All-layer spectra of a traced CIFAR-style ResNet-18: reluinv.spectra against the obvious way.

The network is ResNet-18 with BasicBlocks and the CIFAR stem (3x3 stride-1 first convolution, no
max-pool), random weights, batch-norm in eval mode (the test-only copy in tests/graph_models.py,
since torchvision cannot be imported beside this torch build).  Its layers in the sense of
reluinv.graph are its 17 ReLU calls.

* obvious: for every layer separately, ``torch.func.jacrev`` of the layer's output (read by a
  forward hook on its module, the k-th call for ``name#k``) with respect to the input, then all
  singular values with ``numpy.linalg.svd(J, compute_uv=False)``;
* reluinv: ``reluinv.spectra`` (one tangent pass through the graph gives every prefix Jacobian;
  see reluinv.graph_spectra).

Both run in the same process at one random input, alternating; the script prints the seconds of
each, their ratio, and the largest disagreement of the singular values relative to the largest
one (must be <= 1e-8).  ``--memory`` runs reluinv.spectra alone in fresh processes at several
input sizes and prints each peak resident memory and time, and the projection to 24 GiB.

    python benchmarks/graph_spectra.py                       # 3x16x16, both (long: the obvious way)
    python benchmarks/graph_spectra.py --size 8              # 3x8x8, a few minutes
    python benchmarks/graph_spectra.py --memory 8 12 16      # reluinv alone: memory and time per size
    python benchmarks/graph_spectra.py --threads 1           # pin torch and BLAS to one thread each
    python benchmarks/graph_spectra.py --lanczos 64 --k 3    # beyond the dense limit: Lanczos spectra

Measured on the shared 2-core machine under load, one thread: 3x16x16, reluinv 56 s, obvious
1889 s (33.7x, singular values equal to 5.6e-15 relative); --memory 12 20: 0.98 and 3.33 GiB,
so dense spectra fit in 24 GiB up to about 3x34x34.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import graph_models  # noqa: E402
from reluinv import spectra  # noqa: E402
from reluinv.graph import prepare_graph  # noqa: E402


def model_and_input(size: int, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = graph_models.resnet18(num_classes=10, cifar=True).eval()
    return model, torch.randn(3, size, size, dtype=torch.float64)


def layer_jacobian(model64: torch.nn.Module, name: str, x: torch.Tensor, chunk_size: int) -> np.ndarray:
    """jacrev of one layer's output: the k-th output of its module (``name#k``), read by a hook."""
    path, _, call = name.partition("#")
    calls: list[torch.Tensor] = []
    handle = model64.get_submodule(path).register_forward_hook(lambda m, i, o: calls.append(o))

    def prefix(v: torch.Tensor) -> torch.Tensor:
        calls.clear()
        model64(v[None])
        return calls[int(call or 1) - 1].reshape(-1)

    try:
        return torch.func.jacrev(prefix, chunk_size=chunk_size)(x).reshape(-1, x.numel()).numpy()
    finally:
        handle.remove()


def obvious_spectra(model: torch.nn.Module, x: torch.Tensor, chunk_size: int) -> list[np.ndarray]:
    model64 = copy.deepcopy(model).double().requires_grad_(False)
    _, net = prepare_graph(model, x)
    out = []
    for layer in net.layers:
        start = time.perf_counter()
        J = layer_jacobian(model64, layer.name, x, chunk_size)
        out.append(np.linalg.svd(J, compute_uv=False))
        del J
        print(f"  obvious {layer.name}: {time.perf_counter() - start:.1f} s", flush=True)
    return out


def fast_spectra(model: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    return [layer.singular_values for layer in spectra(model, x)]


def compare(size: int, repeats: int, chunk_size: int) -> dict:
    model, x = model_and_input(size)
    times: dict[str, list[float]] = {"reluinv": [], "obvious": []}
    results = {}
    for _ in range(repeats):
        for name, run in (
            ("reluinv", lambda: fast_spectra(model, x)),
            ("obvious", lambda: obvious_spectra(model, x, chunk_size)),
        ):
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
            print(f"  {name}: {times[name][-1]:.1f} s", flush=True)
    worst = max(
        float(np.abs(a - b).max() / b[0]) for a, b in zip(results["reluinv"], results["obvious"], strict=True)
    )
    fast, slow = min(times["reluinv"]), min(times["obvious"])
    return {
        "size": size,
        "layers": len(results["reluinv"]),
        "reluinv_s": fast,
        "obvious_s": slow,
        "speedup": slow / fast,
        "max_rel_diff": worst,
    }


def one_size(size: int) -> dict:
    """reluinv.spectra alone at one size (run in a fresh process by --memory)."""
    model, x = model_and_input(size)
    start = time.perf_counter()
    fast_spectra(model, x)
    seconds = time.perf_counter() - start
    return {
        "size": size,
        "seconds": seconds,
        "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def memory_table(sizes: list[int], threads: int | None) -> None:
    threads_flag = ["--threads", str(threads)] if threads else []
    rows = []
    for size in sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one-size", str(size), *threads_flag],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(
            f"3x{size}x{size}: {rows[-1]['seconds']:.1f} s, peak {rows[-1]['peak_gib']:.2f} GiB", flush=True
        )
    if len(rows) >= 2:
        a, b = rows[-2], rows[-1]
        # Tangents and Jacobians scale with (input pixels) x (layer pixels): size^4 above a fixed base.
        per = (b["peak_gib"] - a["peak_gib"]) / (b["size"] ** 4 - a["size"] ** 4)
        base = b["peak_gib"] - per * b["size"] ** 4
        largest = ((24.0 - base) / per) ** 0.25
        p = math.log(b["seconds"] / a["seconds"]) / math.log(b["size"] / a["size"])
        side = int(largest)
        print(
            f"memory ~ {base:.2f} + {per:.3e} * size^4 GiB: dense spectra fit in 24 GiB up to 3x{side}x{side}"
        )
        projected = b["seconds"] * (32 / b["size"]) ** p
        print(f"time ~ size^{p:.1f}: projected {projected:.0f} s per sample at 3x32x32")


def lanczos_beyond(size: int, k: int, max_steps: int) -> None:
    """``spectra(method="lanczos")`` at 3 x size x size: per layer the k largest and smallest
    non-zero singular values found, the steps, convergence, the time and the peak memory."""
    model, x = model_and_input(size)
    start = time.perf_counter()
    layers = spectra(model, x, method="lanczos", k=k, max_steps=max_steps)
    seconds = time.perf_counter() - start
    for layer in layers:
        dense_gib = 8 * layer.out_dim * x.numel() / 2**30
        print(
            f"{layer.name:18s} rows {layer.out_dim:6d} (dense J {dense_gib:5.1f} GiB)  "
            f"steps {layer.steps:4d}  converged {str(layer.converged):5s}  "
            f"largest {np.round(layer.largest, 4).tolist()}  "
            f"smallest found {np.round(layer.smallest, 5).tolist()}",
            flush=True,
        )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"ResNet-18 (CIFAR stem) at 3x{size}x{size}, Lanczos k={k}: {seconds:.1f} s, peak {peak:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=16, help="input is 3 x size x size (default 16)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=512, help="jacrev chunk size of the obvious way")
    parser.add_argument(
        "--memory", type=int, nargs="*", help="reluinv alone at these sizes, one process each"
    )
    parser.add_argument("--threads", type=int, help="torch and BLAS threads (default: torch's choice)")
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lanczos", type=int, metavar="SIZE", help="Lanczos spectra alone at 3xSIZExSIZE")
    parser.add_argument("--k", type=int, default=3, help="--lanczos: largest and smallest values per layer")
    parser.add_argument("--max-steps", type=int, default=120, help="--lanczos: steps per layer at most")
    args = parser.parse_args()
    if args.threads:
        # On a loaded machine more threads than free cores make LAPACK spin: pin both implementations.
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    if args.one_size:
        print(json.dumps(one_size(args.one_size)))
        return
    if args.memory:
        memory_table(args.memory, args.threads)
        return
    if args.lanczos:
        lanczos_beyond(args.lanczos, args.k, args.max_steps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    row = compare(args.size, args.repeats, args.chunk_size)
    print(
        f"ResNet-18 (CIFAR stem) at 3x{row['size']}x{row['size']}, {row['layers']} layers: reluinv "
        f"{row['reluinv_s']:.1f} s, obvious {row['obvious_s']:.1f} s, speed-up {row['speedup']:.1f}x, "
        f"max relative difference {row['max_rel_diff']:.1e}"
    )
    assert row["max_rel_diff"] <= 1e-8, row


if __name__ == "__main__":
    main()
