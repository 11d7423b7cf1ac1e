"""Speed of ``reluinv.preimage`` on a trained layer with few active units (Figure 4's regime).

The Gaussian layer of ``benchmarks/preimage_speed.py`` has inactive rows spread evenly around
the null space, so a few of them prove a preimage bounded.  A trained layer's inactive rows
cluster, and with few active units (high nullity) that proof is where the time goes.  The layer
here is the first layer of the MLP of Table 2 (3500 x 784) trained by the quick recipe on the
Fashion-MNIST training set with the first-layer biases starting at
``reluinv.experiments.fig4.FIRST_BIAS_INIT`` (as Figure 4 does when the active counts need it),
which leaves 20-600 of the 3,500 units active on the test images.  The data is the set Debian's
``dataset-fashion-mnist`` installs under ``/usr/share/datasets/fashion-mnist`` (``make
bench-fig4`` installs it); without it the embedded digits stand in (a smaller, different layer).
Training takes about two minutes the first time and is cached (``reluinv.train``).

``--images`` test images, spread evenly over their active counts, are each decided ``--repeats``
times (median kept) and every certificate is verified (``Preimage.verify``).  The literal
Algorithm 1 of ``benchmarks/preimage_speed.py`` (two SVDs, the hull LP over every inactive row)
runs on the ``--naive`` images with the most active units, where it is fastest, and must agree.
Each image is also decided with itself as ``hint`` (the column *given x*; the verdict must not
change), as :func:`reluinv.layer_preimage` decides.  Prints one line per image and the totals per
kind.  ``--box`` decides every preimage within the pixel range ``0 <= x <= 1`` (Remark 3), where
the zero pixels of the images lie on faces of the box (the literal algorithm, which has no box,
does not run then).

    python benchmarks/preimage_trained.py [--images 58] [--repeats 1] [--naive 4] [--box]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

import reluinv
from preimage_speed import naive_algorithm1, same_verdict
from reluinv.data import load_dataset, load_embedded_digits
from reluinv.experiments.common import RunConfig, trained
from reluinv.experiments.fig4 import FIRST_BIAS_INIT
from reluinv.train import quick_recipe

FASHION = Path("/usr/share/datasets/fashion-mnist")


def trained_layer() -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """``(W, b, test images flattened, description)`` of the first layer."""
    if (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        train_set = load_dataset(str(FASHION), split="train")
        test_set = load_dataset(str(FASHION), split="test", limit=400)
        source = f"Fashion-MNIST ({FASHION})"
    else:
        train_set, test_set = load_embedded_digits("train"), load_embedded_digits("test")
        source = "embedded digits (Fashion-MNIST not installed)"
    recipe = quick_recipe("mlp_table2").replace(first_bias_init=FIRST_BIAS_INIT)
    model, _info = trained("mlp_table2", train_set, test_set, RunConfig(quick=True), recipe=recipe)
    W = model[1].weight.detach().double().numpy()
    b = model[1].bias.detach().double().numpy()
    images = test_set.images.reshape(len(test_set.images), -1).astype(np.float64)
    return W, b, images, source


def spread_over_active(Y: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` of the outputs ``Y`` (one per row), spread evenly over their active
    counts from fewest to most."""
    order = np.argsort((Y > 0).sum(axis=1), kind="stable")
    return order[np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=58)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--naive", type=int, default=4)
    parser.add_argument("--box", action="store_true", help="decide with the pixel range 0 <= x <= 1 as box")
    args = parser.parse_args()
    box = {"lower": 0.0, "upper": 1.0} if args.box else {}
    W, b, images, source = trained_layer()
    Y = np.maximum(images @ W.T + b, 0.0)
    active = (Y > 0).sum(axis=1)
    order = np.argsort(active, kind="stable")
    picked = spread_over_active(Y, args.images)
    shape = f"{W.shape[0]} x {W.shape[1]}"
    print(f"layer {shape} ({source}); {len(picked)} images, active {active.min()}-{active.max()}")
    print("active nullity  kind        seconds  margin   given x s")
    totals: dict[str, list[float]] = {}
    given: dict[str, list[float]] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for i in picked:
            times, hinted = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                r = reluinv.preimage(W, b, Y[i], **box)
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                h = reluinv.preimage(W, b, Y[i], hint=images[i], **box)
                hinted.append(time.perf_counter() - t0)
            r.verify(W, b, Y[i], **box)
            h.verify(W, b, Y[i], **box)
            if (h.kind, h.nullity) != (r.kind, r.nullity):
                raise SystemExit(f"the hint changed the verdict at image {i}: {r.kind}, {h.kind} with it")
            seconds = statistics.median(times)
            totals.setdefault(r.kind, []).append(seconds)
            given.setdefault(r.kind, []).append(statistics.median(hinted))
            print(
                f"{active[i]:6d} {r.nullity:7d}  {r.kind:10s} {seconds:8.4f}  {r.margin:.1e}  "
                f"{given[r.kind][-1]:8.4f}",
                flush=True,
            )
        print("\ntotals per kind (every certificate verified):")
        for kind, seconds in sorted(totals.items()):
            print(
                f"  {kind:10s} {len(seconds):3d} images  {sum(seconds):7.2f} s  "
                f"median {statistics.median(seconds):.4f} s  largest {max(seconds):.4f} s; "
                f"given x (the image as hint): {sum(given[kind]):7.2f} s, "
                f"median {statistics.median(given[kind]):.4f} s"
            )
        if args.naive and not args.box:  # the literal algorithm has no box
            print(f"\nliteral Algorithm 1 on the {args.naive} images with the most active units:")
            for i in order[::-1][: args.naive]:
                t0 = time.perf_counter()
                naive = naive_algorithm1(W, b, Y[i])
                naive_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                r = reluinv.preimage(W, b, Y[i])
                ours_s = time.perf_counter() - t0
                if not same_verdict(r.kind, naive):
                    raise SystemExit(f"verdicts differ at image {i}: reluinv {r.kind}, naive {naive}")
                print(
                    f"  active {active[i]:4d}: naive {naive:10s} {naive_s:8.3f} s  reluinv {r.kind:10s} "
                    f"{ours_s:7.4f} s  speed-up {naive_s / ours_s:6.1f}x"
                )


if __name__ == "__main__":
    main()
