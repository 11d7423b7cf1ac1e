"""Speed and scale of ``reluinv.invariance``: where does "exact" stop being practical?

Part 1 -- :func:`invariance_search` on the Table 1 MLP (784 inputs, ten ReLU layers of 100, 10
logits) at depths 1, 2, 3 and 10 (depth d = the features after the d-th ReLU), objective
"max_inner" (Appendix A7), in modes "layer" (depth 1 only: the A7 LP), "region" (one LP) and
"exact" (MILP, stopped at ``--time-limit``).  Weights: PyTorch's default initialisation (seed 0)
and an input uniform in [0, 1]^784; with ``--trained`` the quick recipe on the embedded digits
(about 10 s, not cached) and the test digit with the fewest active first-layer units.

Part 2 -- :func:`network_preimage` on MLPs with 4 inputs, two ReLU layers of growing width and 10
logits, features = logits.  There x's own linear piece is a single point, so proving "singleton"
means enumerating every activation pattern the features allow (LP-pruned); with the box
[-1, 1]^4 and without a box.  A width stops growing after its first "unknown".

Part 3 -- "exact" on Table-1-shaped MLPs (784 inputs) of growing width at depth 3: when does the
MILP still prove optimality within the time limit?

    python benchmarks/invariance_speed.py [--time-limit 20] [--trained] [--seed 0]

Prints one line per case: seconds, objective / kind, proven, the MILP's bound and the largest
feature difference measured by a float64 forward pass.  Takes about three minutes with the
default time limit on a 2-core machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from reluinv.invariance import invariance_search, network_preimage
from reluinv.zoo import mlp_table1


def relu_modules(model: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(model) if isinstance(m, nn.ReLU)]


def table1_case(trained: bool, seed: int):
    rng = np.random.default_rng(seed)
    if not trained:
        torch.manual_seed(seed)
        model = mlp_table1()
        return model, rng.random((1, 28, 28)), rng.random((1, 28, 28)), "random init, x ~ U[0,1]^784"
    from reluinv.data import load_embedded_digits
    from reluinv.experiments.fig7 import fewest_active_examples, first_layer_activity
    from reluinv.train import quick_recipe, train

    test = load_embedded_digits("test")
    model, info = train(
        quick_recipe("mlp_table1", seed=seed),
        load_embedded_digits("train"),
        test_set=test,
        progress=False,
        use_cache=False,
        num_threads=1,
    )
    images = test.images.astype(np.float64)
    active = first_layer_activity(model, images, 2, float64=True).sum(1)
    (example,) = fewest_active_examples(
        active, test.labels, n_sources=1, n_targets=1, fresh_across_sources=False
    )
    idx, other = example.source, example.targets[0]
    return (
        model,
        images[idx],
        images[other],
        f"quick-trained (test accuracy {info.test_accuracy:.3f}), test digit #{idx}",
    )


def part1(args) -> None:
    model, x, target, what = table1_case(args.trained, args.seed)
    relus = relu_modules(model)
    print(f"\n== Part 1: invariance_search on the Table 1 MLP ({what}), time limit {args.time_limit:g} s ==")
    print(
        f"{'depth':>5} {'module':>6} {'mode':>6} {'seconds':>8} {'objective':>11} {'bound':>11} "
        f"{'proven':>6} {'binaries':>8} {'feat.diff':>9} {'|x-x0|':>7}"
    )
    for depth in (1, 2, 3, 10):
        layer = relus[depth - 1]
        for mode in (("layer",) if depth == 1 else ()) + ("region", "exact"):
            r = invariance_search(model, x, target, layer=layer, mode=mode, time_limit=args.time_limit)
            print(
                f"{depth:>5} {layer:>6} {mode:>6} {r.solve_time:>8.2f} {r.objective:>11.4f} "
                f"{r.bound:>11.4f} {str(r.proven):>6} {r.n_binaries:>8} "
                f"{r.feature_max_abs_diff:>9.1e} {r.input_l2_distance:>7.2f}"
            )


def small_mlp(width: int, seed: int, n_inputs: int = 4, hidden: int = 2, outputs: int = 10):
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    previous = n_inputs
    for _ in range(hidden):
        layers += [nn.Linear(previous, width), nn.ReLU()]
        previous = width
    layers.append(nn.Linear(previous, outputs))
    return nn.Sequential(*layers).double()


def part2(args) -> None:
    print(
        f"\n== Part 2: network_preimage, 4 inputs, two ReLU layers of width w, features = 10 "
        f"logits, time limit {args.time_limit:g} s =="
    )
    print(
        f"{'box':>10} {'width':>5} {'seconds':>8} {'kind':>9} {'decided by':>11} {'pieces':>6} "
        f"{'LPs':>6} {'pruned':>6}"
    )
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-0.5, 0.5, size=4)
    for box in ((-1.0, 1.0), (None, None)):
        label = "[-1,1]^4" if box[0] is not None else "none"
        for width in (2, 4, 8, 16, 24, 32, 64):
            model = small_mlp(width, args.seed)
            t0 = time.perf_counter()
            r = network_preimage(
                model, x, len(model) - 1, lower=box[0], upper=box[1], time_limit=args.time_limit
            )
            cert = r.certificate
            print(
                f"{label:>10} {width:>5} {time.perf_counter() - t0:>8.2f} {r.kind:>9} "
                f"{cert.method:>11} {len(cert.pieces):>6} {cert.n_lp:>6} {cert.n_pruned:>6}"
            )
            if r.kind == "unknown":
                break


def part3(args) -> None:
    print(
        f"\n== Part 3: exact invariance_search, 784 inputs, ReLU layers of width w, depth 3, "
        f"time limit {args.time_limit:g} s =="
    )
    print(
        f"{'width':>5} {'seconds':>8} {'region':>10} {'exact':>10} {'bound':>10} {'proven':>6} "
        f"{'binaries':>8}"
    )
    rng = np.random.default_rng(args.seed)
    x, target = rng.random(784), rng.random(784)
    for width in (10, 25, 50, 100):
        torch.manual_seed(args.seed)
        model = mlp_table1(width=width, depth=3)
        layer = relu_modules(model)[2]
        region = invariance_search(model, x, target, layer=layer, mode="region")
        r = invariance_search(model, x, target, layer=layer, mode="exact", time_limit=args.time_limit)
        print(
            f"{width:>5} {r.solve_time:>8.2f} {region.objective:>10.4f} {r.objective:>10.4f} "
            f"{r.bound:>10.4f} {str(r.proven):>6} {r.n_binaries:>8}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-limit", type=float, default=20.0, help="seconds per solve")
    parser.add_argument("--trained", action="store_true", help="quick-train the Table 1 MLP")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    part1(args)
    part2(args)
    part3(args)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
