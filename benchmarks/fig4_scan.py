"""Throughput of the Figure 4 scan (preimage kind of the 3500-unit layer for every test image)
on each back end of ``reluinv.parallel``, and the time of the whole 10,000-sample scan.

Data: the Fashion-MNIST test set that Debian's ``dataset-fashion-mnist`` installs under
``/usr/share/datasets/fashion-mnist`` (``make bench-fig4`` installs it), or 10,000 synthetic
inputs of the same shape when it is missing.  The layer is the first layer of the MLP of Table 2
trained by the quick recipe on 10,000 training images (cached after the first run), with the
first-layer bias start that Figure 4 documents when the active counts need it.  Serial and a
two-worker Dask LocalCluster run on a prefix, the local back end on everything; results on the
common prefix must agree.

    python benchmarks/fig4_scan.py [--samples 10000] [--prefix 300] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from reluinv.data import load_dataset
from reluinv.experiments.common import RunConfig
from reluinv.experiments.fig4 import classify_sample, fig4_model
from reluinv.parallel import run_samples

FASHION = Path("/usr/share/datasets/fashion-mnist")


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


def timed(backend: str, layer, images, workers: int, store: Path, **kw):
    start = time.perf_counter()
    results = run_samples(
        classify_sample,
        list(images),
        shared=layer,
        backend=backend,
        workers=workers if backend != "serial" else None,
        store=store,
        progress=True,
        desc=backend,
        **kw,
    )
    seconds = time.perf_counter() - start
    failed = [r for r in results if not r.ok]
    if failed:
        raise SystemExit(f"{len(failed)} samples failed on {backend}: {failed[0].error}")
    return [r.result for r in results], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--prefix", type=int, default=300, help="samples for serial and Dask")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    train_set, test_set, images, source = data(args.samples)
    model, info, note = fig4_model(RunConfig(quick=True), train_set, test_set, images)
    images = images.reshape(len(images), -1)
    layer = {
        "weight": model[1].weight.detach().double().numpy(),
        "bias": model[1].bias.detach().double().numpy(),
    }
    prefix = images[: args.prefix]
    print(f"data: {source}; {len(images)} samples; layer 3500 x 784 {('(' + note + ')') if note else ''}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        serial, t_serial = timed("serial", layer, prefix, 1, tmp / "serial.jsonl")
        dask, t_dask = timed(
            "dask", layer, prefix, args.workers, tmp / "dask.jsonl", scheduler="local-cluster"
        )
        local, t_local = timed("local", layer, images, args.workers, tmp / "local.jsonl")
    # Verdicts must match exactly; margins are floats that may differ in the last bits between a
    # process with two BLAS threads (serial) and single-threaded workers.
    verdict = ("kind", "n_active", "rank", "nullity")
    same = all(
        tuple(a[k] for k in verdict) == tuple(b[k] for k in verdict) == tuple(c[k] for k in verdict)
        for a, b, c in zip(serial, dask, local, strict=False)  # local covers more than the prefix
    )
    margin_gap = max(abs(a["margin"] - c["margin"]) for a, c in zip(serial, local, strict=False))
    kinds = {k: sum(r["kind"] == k for r in local) for k in ("singleton", "compact", "unbounded", "empty")}
    active = np.array([r["n_active"] for r in local])
    print(
        f"\nverdicts {'identical' if same else 'DIFFERENT'} across back ends on the first "
        f"{len(prefix)} samples (largest margin difference {margin_gap:.1e})"
    )
    print(
        f"kinds over {len(local)} samples: {kinds}; active units {active.min()}-{active.max()} "
        f"(median {int(np.median(active))})"
    )
    print(
        f"serial                 {len(prefix) / t_serial:7.2f} samples/s  "
        f"({len(prefix)} samples, {t_serial:.1f} s)"
    )
    print(
        f"dask local-cluster x{args.workers}  {len(prefix) / t_dask:7.2f} samples/s  "
        f"({len(prefix)} samples, {t_dask:.1f} s, includes cluster start)"
    )
    print(
        f"local x{args.workers}               {len(images) / t_local:7.2f} samples/s  "
        f"({len(images)} samples, {t_local:.1f} s)"
    )
    print(f"\nfull scan of {len(images)} samples on the local back end: {t_local / 60:.1f} min")
    if not same:
        raise SystemExit("back ends disagree on the verdicts")


if __name__ == "__main__":
    main()
