"""Throughput of the Figure 4 scan (preimage kind of the 3500-unit layer for every test image),
per sample (``reluinv.preimage``, ``fig4.classify_sample``) and batched (``reluinv.preimage_batch``
on chunks of ``fig4.SCAN_CHUNK`` images, ``fig4.classify_batch``), on each back end of
``reluinv.parallel`` and each device, in samples per second.

Data: the Fashion-MNIST test set that Debian's ``dataset-fashion-mnist`` installs under
``/usr/share/datasets/fashion-mnist`` (``make bench-fig4`` installs it), or synthetic inputs of
the same shape when it is missing.  The layer is the first layer of the MLP of Table 2 trained by
the quick recipe on 10,000 training images (cached after the first run), with the first-layer
bias start that Figure 4 documents when the active counts need it.

Serial, a two-worker Dask LocalCluster (its start included, as a scan pays it) and the batched
path with torch factorisations on the CPU run on a prefix; the local back end on all
``--samples``; the batched path with factorisations on CUDA (serial back end, the prefix) when a
CUDA device is present.  Verdicts (kind, active count, rank, nullity) must agree across every
run on the common prefix.  The default run takes about 4 minutes on two cores.

The quick model's layer has 700-1,450 active units per image (nearly all singletons).  Figure 4
in full mode uses the paper's recipe on all 60,000 training images (about an hour to train),
whose layer has 150-880 (mostly unbounded); ``--weights`` takes the first layer from such a
model's file in the weight cache (``reluinv.train``) instead, e.g. with ``--samples 256
--prefix 64`` (its samples take 10-20 times longer).

    python benchmarks/fig4_scan.py [--samples 2048] [--prefix 256] [--workers 2] [--weights FILE]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reluinv.data import load_dataset
from reluinv.experiments.common import RunConfig
from reluinv.experiments.fig4 import SCAN_CHUNK, classify_batch, classify_sample, fig4_model
from reluinv.parallel import run_samples

FASHION = Path("/usr/share/datasets/fashion-mnist")
VERDICT = ("kind", "n_active", "rank", "nullity")


def data(samples: int):
    if (FASHION / "t10k-images-idx3-ubyte.gz").exists():
        train_set = load_dataset(str(FASHION), split="train", limit=10_000)  # throughput, not accuracy
        test_set = load_dataset(str(FASHION), split="test", limit=samples)
        return train_set, test_set, test_set.images, f"Fashion-MNIST test set ({FASHION})"
    from reluinv.data import load_embedded_digits

    rng = np.random.default_rng(0)
    images = rng.random((samples, 1, 28, 28)).astype(np.float32) * (rng.random((samples, 1, 28, 28)) < 0.3)
    test_set = load_embedded_digits("test")
    return load_embedded_digits("train"), test_set, images, "synthetic inputs (Fashion-MNIST not installed)"


def timed(batched: bool, backend: str, layer, images, workers: int, store: Path, **kw):
    """``(records, seconds)`` of one scan of ``images``, per sample or in chunks."""
    items: list[Any] = (
        [images[i : i + SCAN_CHUNK] for i in range(0, len(images), SCAN_CHUNK)] if batched else list(images)
    )
    start = time.perf_counter()
    results = run_samples(
        classify_batch if batched else classify_sample,
        items,
        shared=layer,
        backend=backend,
        workers=workers if backend != "serial" else None,
        store=store,
        progress=True,
        desc=f"{backend} {'batched' if batched else 'per sample'}",
        **kw,
    )
    seconds = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} items failed on {backend}: {failed[0].error}")
    records = [s for r in results for s in r.result["samples"]] if batched else [r.result for r in results]
    bad = [s for s in records if s["kind"] == "failed"]
    if bad:
        raise SystemExit(f"{len(bad)} samples failed on {backend}: {bad[0]['error']}")
    return records, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2048, help="samples for the local back end")
    parser.add_argument("--prefix", type=int, default=256, help="samples for serial, Dask and devices")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--weights", type=Path, help="a Table 2 MLP from the weight cache (.pt)")
    args = parser.parse_args()
    train_set, test_set, images, source = data(args.samples)
    if args.weights is not None:
        cached = torch.load(args.weights, map_location="cpu", weights_only=True)
        weight, bias = cached["state_dict"]["1.weight"], cached["state_dict"]["1.bias"]
        note = f"first layer of {args.weights.name}, recipe {cached['recipe']}"
    else:
        model, _info, note = fig4_model(RunConfig(quick=True), train_set, test_set, images)
        weight, bias = model[1].weight.detach(), model[1].bias.detach()
    images = images.reshape(len(images), -1)
    layer = {"weight": weight.double().numpy(), "bias": bias.double().numpy()}
    prefix = images[: args.prefix]
    load = os.getloadavg()
    print(f"data: {source}; {len(images)} samples; layer 3500 x 784 {('(' + note + ')') if note else ''}")
    runs: list[tuple[str, str, list[dict[str, Any]], float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def scan(label: str, path: str, batched: bool, backend: str, imgs, shared=layer, **kw) -> None:
            store = folder / f"{len(runs)}.jsonl"
            records, seconds = timed(batched, backend, shared, imgs, args.workers, store, **kw)
            runs.append((label, path, records, seconds))

        for batched in (False, True):
            path = "batched" if batched else "per sample"
            scan("serial", path, batched, "serial", prefix)
            scan(
                f"dask local-cluster x{args.workers}",
                path,
                batched,
                "dask",
                prefix,
                scheduler="local-cluster",
            )
            scan(f"local x{args.workers}", path, batched, "local", images)
        scan(
            "serial, torch on the CPU",
            "batched",
            True,
            "serial",
            prefix,
            shared={**layer, "factor_device": "cpu"},
        )
        cuda = torch.cuda.is_available()
        if cuda:
            scan("serial, CUDA", "batched", True, "serial", prefix, shared={**layer, "factor_device": "cuda"})
    report(runs, load, cuda, args)


def report(runs, load, cuda: bool, args) -> None:
    reference = runs[0][2]
    same = all(
        [tuple(a[k] for k in VERDICT) for a in records[: len(reference)]]
        == [tuple(a[k] for k in VERDICT) for a in reference[: len(records)]]
        for _, _, records, _ in runs
    )
    gap = max(
        abs(a["margin"] - b["margin"])
        for _, _, records, _ in runs
        for a, b in zip(records, reference, strict=False)
    )
    local = max((r for r in runs if r[0].startswith("local")), key=lambda r: len(r[2]))[2]
    kinds = {k: sum(r["kind"] == k for r in local) for k in ("singleton", "compact", "unbounded", "empty")}
    active = np.array([r["n_active"] for r in local])
    print(
        f"\nverdicts {'identical' if same else 'DIFFERENT'} across back ends, paths and devices on the "
        f"first {len(reference)} samples (largest margin difference {gap:.1e})"
    )
    print(
        f"kinds over {len(local)} samples: {kinds}; active units {active.min()}-{active.max()} "
        f"(median {int(np.median(active))}); load average at the start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at the end "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
    )
    print(f"\n{'back end':30} {'path':11} {'samples':>8} {'seconds':>8} {'samples/s':>10}")
    rates: dict[tuple[str, str], float] = {}
    for label, path, records, seconds in runs:
        rates[label, path] = len(records) / seconds
        print(f"{label:30} {path:11} {len(records):8d} {seconds:8.1f} {len(records) / seconds:10.2f}")
    if not cuda:
        print(f"{'serial, CUDA':30} {'batched':11} no CUDA device")
    print(
        "\nbatched / per sample: "
        + ", ".join(
            f"{label} {rates[label, 'batched'] / rates[label, 'per sample']:.2f}x"
            for label, path, _, _ in runs
            if path == "per sample"
        )
    )
    for label, path, _, _ in runs:
        if label.startswith("local"):
            print(f"10,000 samples on {label}, {path}: {10_000 / rates[label, path] / 60:.1f} min")
    if not same:
        raise SystemExit("back ends, paths or devices disagree on the verdicts")


if __name__ == "__main__":
    main()
