"""Layer spectra over test samples, shared by Figures 5, 6, 8, 10 and 11.

Each sample's spectra (:func:`reluinv.stability.spectra`, every prefix of the network, exact
float64) are computed once through the configured executor and kept in a resumable store, so the
figures that use the same network and samples read them back instead of recomputing.

Layer numbering is the paper's everywhere (stored with every layer, used by titles, legends,
text and claims):

* ``paper_layer``: the 1-based position of the module when "ReLU is counted as an extra
  activation layer" (legends of Figures 5, 8, 10, 11); shape-only modules (``Flatten``) are not
  counted.  WideCIFAR: convolution 1 is 1, its ReLU 2, ..., the ReLU of convolution 6 is 12.
* ``block``: the paper's "layer" in its text and in Figures 6, 10 (right), 11 (right), where "each
  layer includes the convolution and ReLU-activation": the affine map and the ReLU after it.
  Figure 8's "layer 2" is ``paper_layer`` 3 and 4; its "layer 5" is 9 and 10.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..stability import spectra
from .cifar_shaped import cnn_inputs
from .common import RunConfig, digit_data, trained

#: Samples whose spectra are medianed: the paper uses 50.
QUICK_SAMPLES, FULL_SAMPLES = 3, 50
#: Modules that only reshape: the paper's layer count skips them.
_SHAPE_ONLY = ("Flatten", "Unflatten", "Identity", "Dropout")
#: The paper's setting for the CNN figures (Section 3.2, Appendix A4).
PAPER_CNN_SETTING = {
    "mode": "full",
    "data": "CIFAR-10 test set",
    "input shape": "3x32x32",
    "training": "RMSprop lr 1e-4, batch 32, 100 epochs (Keras cifar10_cnn)",
    "test accuracy": "not stated",
    "samples": "50 (median)",
}


def sample_spectra(shared: dict[str, Any], image: np.ndarray) -> dict[str, Any]:
    """All prefix spectra at one input (module-level, so worker processes can run it).

    ``shared`` holds the ``model`` and the ``device`` the spectra run on (the input is placed
    there; :func:`reluinv.stability.spectra` follows it).
    """
    x = torch.tensor(np.asarray(image, dtype=np.float32), device=shared["device"])
    entries = spectra(shared["model"], x)
    return {
        "layers": [
            {
                "index": e.index,
                "name": e.name,
                "out_dim": e.out_dim,
                "rank": e.rank,
                "condition": e.condition,
                "singular_values": e.singular_values.tolist(),
            }
            for e in entries
        ]
    }


def paper_numbering(names: list[str]) -> list[dict[str, Any]]:
    """The paper's numbers for modules named ``"<index>:<Class>"`` (see the module docstring):
    ``paper_layer`` (None for shape-only modules), ``block`` and ``role`` (``"conv 2"``,
    ``"ReLU 2"``, ``"dense 7"``)."""
    numbers: list[dict[str, Any]] = []
    position, block = 0, 0
    for name in names:
        kind = name.split(":", 1)[-1]
        if kind in _SHAPE_ONLY:
            numbers.append({"paper_layer": None, "block": None, "role": kind})
            continue
        position += 1
        if kind in ("Conv2d", "Linear"):
            block += 1
            role = f"{'conv' if kind == 'Conv2d' else 'dense'} {block}"
        else:
            role = f"{kind} {block}"
        numbers.append({"paper_layer": position, "block": block, "role": role})
    return numbers


def data_for(architecture: str, config: RunConfig):
    """(train, test, description for titles) of one of the paper's networks: the digits (or IDX
    files) for the MLP, CIFAR-shaped inputs (:mod:`.cifar_shaped`) for the CNNs."""
    if architecture == "mlp_table2":
        train_set, test_set = digit_data(config)
        return train_set, test_set, f"{test_set.source}, 1x28x28"
    inputs = cnn_inputs(config)
    return inputs.train, inputs.test, inputs.label


def network_spectra(architecture: str, config: RunConfig, *, model_info=None) -> dict[str, Any]:
    """Median spectra of one of the paper's networks over test samples.

    Returns per module: name, the paper's numbering (:func:`paper_numbering`), output units, every
    sample's rank, median rank, median condition, and the element-wise median of the descending
    singular-value vectors; plus the data description (every title carries it), the input
    dimension and the training summary.  ``model_info``: a trained ``(model, info)`` to use
    instead of training (Figure 11 passes Figure 4's MLP, ``fig4.figure_model``).
    """
    train_set, test_set, data = data_for(architecture, config)
    model, info = model_info or trained(architecture, train_set, test_set, config)
    bias = info.get("recipe", {}).get("first_bias_init")
    count = config.samples(QUICK_SAMPLES, FULL_SAMPLES)
    images = test_set.head(count).images
    shape = "x".join(str(s) for s in test_set.input_shape)
    results = config.run(
        sample_spectra,
        list(images),
        shared={"model": model, "device": config.device},
        name=f"spectra-{architecture}-{shape}-{info['epochs']}-{len(images)}"
        + ("" if config.device == "cpu" else f"-{config.device}")
        + ("" if bias is None else f"-bias{bias}"),
        desc=f"spectra {architecture}",
    )
    per_sample = [r.result["layers"] for r in results if r.ok]
    if not per_sample:
        raise RuntimeError(f"every spectrum of {architecture} failed: {results[0].error}")
    numbering = paper_numbering([entry["name"] for entry in per_sample[0]])
    layers = []
    for position, first in enumerate(per_sample[0]):
        column = [sample[position] for sample in per_sample]
        values = np.array([entry["singular_values"] for entry in column])
        conditions = np.array([entry["condition"] for entry in column], dtype=float)
        ranks = [int(entry["rank"]) for entry in column]
        layers.append(
            {
                "index": first["index"],
                "name": first["name"],
                **numbering[position],
                "out_dim": first["out_dim"],
                "ranks": ranks,
                "rank": float(np.median(ranks)),
                "condition": float(np.nanmedian(conditions)) if np.isfinite(conditions).any() else None,
                "singular_values": np.median(values, axis=0).tolist(),
            }
        )
    return {
        "architecture": architecture,
        "training": info,
        "samples": len(per_sample),
        "note": data,
        "data": data,
        "input_shape": shape,
        "input_dim": int(np.prod(test_set.input_shape)),
        "device": config.device,
        "layers": [layer for layer in layers if layer["paper_layer"] is not None],
    }


def run_setting(config: RunConfig, results: list[dict[str, Any]], samples: int | str) -> dict[str, Any]:
    """This run's side of a figure's "setting" table (the report shows it next to the paper's)."""
    first = results[0]
    accuracy = ", ".join(
        f"{_NAMES.get(r['architecture'], r['architecture'])} {r['training']['test_accuracy']:.1%}"
        for r in results
        if r["training"].get("test_accuracy") is not None
    )
    recipe = first["training"].get("recipe", {})
    return {
        "mode": "quick" if config.quick else "full",
        "data": first["data"],
        "input shape": first["input_shape"],
        "training": f"{recipe.get('optimizer', '?')} lr {recipe.get('lr', '?')}, batch "
        f"{recipe.get('batch_size', '?')}, {first['training']['epochs']} epochs"
        + (" (quick mode)" if config.quick else ""),
        "test accuracy": accuracy or "not measured",
        "samples": str(samples),
    }


_NAMES = {"wide_cifar": "WideCIFAR", "thin_cifar": "ThinCIFAR", "mlp_table2": "MLP (Table 2)"}


def pick(result: dict[str, Any], indices: list[int]) -> list[dict[str, Any]]:
    """The median spectra of the modules at ``indices`` (flattened Sequential positions)."""
    by_index = {layer["index"]: layer for layer in result["layers"]}
    return [by_index[i] for i in indices]


def relu_indices(result: dict[str, Any]) -> list[int]:
    """Module indices of the ReLUs whose spectra make the "decay over the layers" curves: for a
    CNN those of the convolutional layers (Figure 6: "layers 1-6, after application of ReLU"),
    for an MLP every ReLU."""
    layers = result["layers"]
    relus = [layer for layer in layers if layer["name"].endswith(":ReLU")]
    convs = {layer.get("block") for layer in layers if layer.get("role", "").startswith("conv")}
    if convs:
        relus = [layer for layer in relus if layer.get("block") in convs]
    return [layer["index"] for layer in relus]


# --- what the claims read off the stored spectra -------------------------------------------


def first_rank_loss(layers: list[dict[str, Any]], input_dim: int) -> dict[str, Any] | None:
    """The first layer whose median number of non-zero singular values is below ``input_dim``."""
    return next((layer for layer in layers if layer["rank"] < input_dim), None)


def by_role(layers: list[dict[str, Any]], role: str) -> dict[str, Any]:
    """The layer with the paper's ``role`` (e.g. ``"ReLU 5"``)."""
    for layer in layers:
        if layer.get("role") == role:
            return layer
    raise KeyError(f"no layer {role!r} in the stored spectra")


def largest(layer: dict[str, Any]) -> float:
    values = layer["singular_values"]
    return float(values[0]) if values else 0.0


def smallest_nonzero(layer: dict[str, Any]) -> float:
    """Entry ``rank`` (the median number of non-zero singular values) of the median spectrum."""
    rank = int(np.floor(layer["rank"]))
    return float(layer["singular_values"][rank - 1]) if rank >= 1 else float("nan")


def describe(layer: dict[str, Any] | None) -> str:
    """``"layer 3 (ReLU 3, legend 6)"``: the paper's block number, the module, the legend number."""
    if layer is None:
        return "no layer"
    return f"layer {layer['block']} ({layer['role']}, legend {layer['paper_layer']})"


#: Fewest samples a median-based claim is decided on (``--limit`` smoke runs may have fewer).
MIN_CLAIM_SAMPLES = 3


def too_few_samples(result: dict[str, Any]) -> str | None:
    """Why a claim about medians over samples cannot be decided on ``result``, or None."""
    if result["samples"] < MIN_CLAIM_SAMPLES:
        return (
            f"a median over {result['samples']} sample(s) is not a median over test samples; "
            f"at least {MIN_CLAIM_SAMPLES} are needed (the paper uses 50)"
        )
    return None


def run_scope(result: dict[str, Any], meta: dict[str, Any]) -> str:
    """The run's scope, said in every claim's evidence: samples, input shape, epochs, data kind."""
    source = str(result.get("data", ""))
    if source.startswith("CIFAR-10"):
        data = "CIFAR-10"
    elif result.get("architecture") == "mlp_table2":
        data = source or "the MLP's data"  # the MLP runs on the digits or IDX images themselves
    else:
        data = "stand-in data"
    return (
        f"{meta.get('mode', '?')} run, {result['samples']} samples of {data} at "
        f"{result.get('input_shape', '?')}, {result['training']['epochs']} epochs"
    )


def effect_and_decay(result: dict[str, Any], pairs: list[tuple[int, int]]) -> dict[str, Any]:
    """Spectra just before and after chosen ReLUs, and of every ReLU output (decay over layers)."""
    return {
        "architecture": result["architecture"],
        "samples": result["samples"],
        "note": result["note"],
        "data": result.get("data", result["note"]),
        "input_shape": result.get("input_shape"),
        "input_dim": result.get("input_dim"),
        "training": result["training"],
        "device": result["device"],
        "effect": [{"before": pick(result, [a])[0], "after": pick(result, [b])[0]} for a, b in pairs],
        "decay": pick(result, relu_indices(result)),
    }
