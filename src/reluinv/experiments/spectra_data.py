"""Layer spectra over test samples, shared by Figures 5, 6, 8, 10 and 11.

Each sample's spectra (:func:`reluinv.stability.spectra`, every prefix of the network) are
computed once through the configured executor and kept in a resumable store, so the figures that
use the same network and samples read them back instead of recomputing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..stability import spectra
from .common import RunConfig, cnn_data, digit_data, trained

#: Samples whose spectra are medianed: the paper uses 50.
QUICK_SAMPLES, FULL_SAMPLES = 3, 50


def sample_spectra(shared: dict[str, Any], image: np.ndarray) -> dict[str, Any]:
    """All prefix spectra at one input (module-level, so worker processes can run it).

    ``shared`` holds the ``model`` and the ``device`` the spectra run on (the input is placed
    there; :func:`reluinv.stability.spectra` follows it).
    """
    x = torch.tensor(np.asarray(image, dtype=np.float32), device=shared["device"])
    entries = spectra(shared["model"], x)
    return {"layers": [{"index": e.index, "name": e.name, "out_dim": e.out_dim, "rank": e.rank,
                        "condition": e.condition, "singular_values": e.singular_values.tolist()}
                       for e in entries]}


def network_spectra(architecture: str, config: RunConfig) -> dict[str, Any]:
    """Median spectra of one of the paper's networks over test samples.

    Returns per module: name, output units, median rank, median condition, and the element-wise
    median of the descending singular-value vectors; plus the data note for titles.
    """
    if architecture == "mlp_table2":
        train_set, test_set = digit_data(config)
        note = "" if config.data_dir else f"on {test_set.source}"
    else:
        train_set, test_set, note = cnn_data(config)
    model, info = trained(architecture, train_set, test_set, config)
    count = config.samples(QUICK_SAMPLES, FULL_SAMPLES)
    images = test_set.head(count).images
    results = config.run(sample_spectra, list(images), shared={"model": model, "device": config.device},
                         name=f"spectra-{architecture}-{info['epochs']}-{len(images)}"
                              + ("" if config.device == "cpu" else f"-{config.device}"),
                         desc=f"spectra {architecture}")
    per_sample = [r.result["layers"] for r in results if r.ok]
    if not per_sample:
        raise RuntimeError(f"every spectrum of {architecture} failed: {results[0].error}")
    layers = []
    for position, first in enumerate(per_sample[0]):
        column = [sample[position] for sample in per_sample]
        values = np.array([entry["singular_values"] for entry in column])
        conditions = np.array([entry["condition"] for entry in column], dtype=float)
        layers.append({
            "index": first["index"],
            "name": first["name"],
            "out_dim": first["out_dim"],
            "rank": float(np.median([entry["rank"] for entry in column])),
            "condition": float(np.nanmedian(conditions)) if np.isfinite(conditions).any() else None,
            "singular_values": np.median(values, axis=0).tolist(),
        })
    return {"architecture": architecture, "training": info, "samples": len(per_sample),
            "note": note, "device": config.device, "layers": layers}


def pick(result: dict[str, Any], indices: list[int]) -> list[dict[str, Any]]:
    """The median spectra of the modules at ``indices`` (flattened Sequential positions)."""
    by_index = {layer["index"]: layer for layer in result["layers"]}
    return [by_index[i] for i in indices]


def relu_indices(result: dict[str, Any]) -> list[int]:
    return [layer["index"] for layer in result["layers"] if layer["name"].endswith(":ReLU")]


def effect_and_decay(result: dict[str, Any], pairs: list[tuple[int, int]]) -> dict[str, Any]:
    """Spectra just before and after chosen ReLUs, and of every ReLU output (decay over layers)."""
    return {
        "architecture": result["architecture"],
        "samples": result["samples"],
        "note": result["note"],
        "training": result["training"],
        "device": result["device"],
        "effect": [{"before": pick(result, [a])[0], "after": pick(result, [b])[0]} for a, b in pairs],
        "decay": pick(result, relu_indices(result)),
    }
