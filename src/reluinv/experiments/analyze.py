"""``reluinv analyze``: per-sample invariance and stability of a user's own ReLU network.

Two kinds of model.  A *chain* (an ``nn.Sequential`` of the modules :mod:`reluinv.network`
supports, :func:`reluinv.graph.is_chain`) is analysed as below, ReLU by ReLU, named
``"<index>:<Class>"``.  Any other model that ``torch.fx`` traces (residual additions,
concatenation, max-pooling, functional calls; a ``torch.export`` archive rebuilt by
:mod:`reluinv.model_export`) is analysed as a graph (:mod:`reluinv.experiments.analyze_graph`):
every activation or max-pool node is a layer, named by its module path (``layer1.0.relu#2``), its
preimage taken with respect to the affine map from the nonlinear nodes (or the input) feeding it,
its spectrum from :func:`reluinv.graph_spectra.graph_spectra`.

For every input sample and every analysed ReLU of a chain (all of them, or the module indices the
user names in the flattened ``Sequential``) this records

* the **single-layer preimage** (Theorem 4): the affine map ``z = W h + c`` that feeds the ReLU,
  taken from the previous activation ``h`` (the output of the last non-affine module before it, or
  the network input), is the composition of the affine modules between the two (``Linear``,
  ``Conv2d``, ``BatchNorm``, ``AvgPool2d``, ``Flatten``, ...; the identity when the ReLU comes
  first); :func:`reluinv.preimage.preimage` classifies ``{h : ReLU(W h + c) = y}`` for the
  sample's feature ``y`` as singleton, compact, unbounded (or empty), with the number of active
  units, the rank of their rows of ``W`` and the nullity ``dim N(W_active)``, and the margin of
  that decision;
* unless ``spectra=False``, a **spectrum summary** of the Jacobian of the network up to and
  including the ReLU (Section 3.2, :func:`reluinv.stability.spectra`): its rank, condition number
  and largest and smallest non-zero singular value.

The dense ``(W, c)`` of every analysed layer are computed once (float64) and shipped to the
workers with the model; per-sample work runs through :func:`reluinv.parallel.run_samples`, stored
in ``OUT/work/`` so that an interrupted run picks up where it stopped (the store's name carries a
fingerprint of the model, inputs and options, so a changed run never reuses stale results).

Outputs in ``OUT``: ``analysis.csv`` (one row per sample and layer), ``analysis.json`` (the same
rows plus a per-layer summary; NaN is written as ``null``), ``kinds_per_layer.png`` and, with
spectra, ``condition_rank_per_layer.png``.

Memory: a dense ``W`` needs ``8 * in_dim * out_dim`` bytes (a 3x32x32 -> 32x32x32 convolution:
0.8 GB), held once in this process and once in every worker.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from .. import stability
from ..graph import is_chain
from ..model_io import as_input_batch, load_inputs, load_model
from ..network import (
    SUPPORTED_MODULES,
    ActivationStep,
    AffineStep,
    Step,
    as_chain,
    checked_device,
    feeding_map,
    flatten_modules,
)
from ..parallel import Executor, SampleResult, add_executor_options
from ..preimage import preimage
from .analyze_graph import analyze_graph_sample, chosen_graph_layers, clear_cache, describe_graph_layer

__all__ = ["KINDS", "add_analyze_parser", "analyze", "format_summary"]

#: Preimage kinds in the order they are counted, plotted and written.
KINDS = ("singleton", "compact", "unbounded", "empty")
_FORMAT = "reluinv-analysis/1"

_PREIMAGE_COLUMNS = (
    "sample",
    "layer",
    "name",
    "units",
    "input_dim",
    "active",
    "kind",
    "rank_active_rows",
    "nullity",
    "margin",
    "near_tolerance",
)
_SPECTRUM_COLUMNS = ("jacobian_rank", "condition", "sigma_max", "sigma_min_nonzero")


# --------------------------------------------------------------------------------------------
# The analysis
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    """One analysed ReLU and the affine block that feeds it."""

    index: int
    name: str
    units: int
    input_dim: int
    feeds_from: str
    affine_modules: tuple[str, ...]


def analyze(
    model: nn.Module,
    inputs: Any,
    *,
    out: str | os.PathLike[str],
    layers: Sequence[int] | None = None,
    spectra: bool = True,
    backend: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    plots: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Preimage and spectrum of every analysed ReLU for every sample; write CSV, JSON and plots.

    Args:
        model: a supported ``nn.Sequential`` in eval mode (see :mod:`reluinv.network`), or any
            model :mod:`reluinv.graph` traces (e.g. from :func:`reluinv.model_io.load_model`).
            It is not modified.
        inputs: array or tensor of shape ``(N, *input_shape)``, floating point, finite.
        out: output folder (created); the per-sample store lives in ``out/work/``.
        layers: module indices (in the flattened ``Sequential``) of the ReLUs to analyse;
            ``None``: every ReLU.  For a traced graph: layer names (module paths) or positions
            among its layers; ``None``: every activation and max-pool layer.
        spectra: also compute the spectrum of the Jacobian up to each analysed ReLU.
        backend, workers, scheduler: where per-sample work runs, as
            :meth:`reluinv.parallel.Executor.from_options` (default: local worker processes).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"``, ...): where forward passes and spectra run.
            Preimages are linear programs and always run on the CPU.
        progress: show a progress bar.
        plots: write the PNG plots.
        provenance: recorded verbatim in ``analysis.json`` (the CLI puts the file names there).

    Returns:
        What ``analysis.json`` holds, with NaN kept as ``float("nan")``: ``"rows"`` (one dict per
        sample and layer, keys as the CSV columns), ``"layers"`` (per-layer summary: ``kinds``
        counts, ``median_active``, ``median_condition``, ...), ``"failed"`` (samples whose
        analysis raised: ``{"sample", "error"}``), ``"files"`` and the run's settings.

    Raises:
        ValueError: inputs of the wrong shape (naming the shape the model expects), NaN, an
            unsupported model, ``layers`` that are not ReLU module indices, unknown device or
            executor options.

    Example::

        from reluinv import zoo
        model = zoo.toy_circles().eval()
        result = analyze(model, np.random.rand(20, 2), out="toy-analysis", backend="serial")
        result["layers"][0]["kinds"]   # e.g. {'singleton': 19, 'compact': 0, 'unbounded': 1, 'empty': 0}
    """
    batch = as_input_batch(inputs, source="inputs")
    torch_device = checked_device(device)
    executor = Executor.from_options(backend=backend, scheduler=scheduler, workers=workers)
    spectra = bool(spectra)
    if is_chain(model):
        plain, analysed, shared, sample_fn = _chain_setup(model, batch, layers)
    else:
        plain, analysed, shared, sample_fn = _graph_setup(model, batch, layers)
    shared.update({"model": plain, "spectra": spectra, "device": str(torch_device)})

    out_dir = Path(os.fspath(out))
    work = out_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(plain, batch, [layer.index for layer in analysed], spectra)
    store = work / f"analysis-{fingerprint}.jsonl"
    try:
        results = executor.run(
            sample_fn, list(batch), shared=shared, store=store, progress=progress, desc="analyze"
        )
    finally:
        _PREPARED.clear()
        clear_cache()
    result = _collect(results, analysed, spectra)
    result.update(
        {
            "format": _FORMAT,
            "input_shape": list(batch.shape[1:]),
            "samples": int(batch.shape[0]),
            "spectra": spectra,
            "device": str(torch_device),
            "provenance": dict(provenance or {}),
        }
    )
    files = {
        "csv": str(out_dir / "analysis.csv"),
        "json": str(out_dir / "analysis.json"),
        "store": str(store),
        "plots": [],
    }
    result["files"] = files
    _write_csv(out_dir / "analysis.csv", result["rows"], spectra)
    if plots:
        from .. import report  # matplotlib only when plots are asked for

        files["plots"] = report.plot_analysis(
            out_dir, result["layers"], spectra, input_dim=math.prod(batch.shape[1:])
        )
    _write_json(out_dir / "analysis.json", result)
    return result


def _cpu_copy(model: nn.Module) -> nn.Module:
    if any(t.device.type != "cpu" for t in [*model.parameters(), *model.buffers()]):
        return copy.deepcopy(model).cpu()  # shipped to workers from the CPU; `device` says where it runs
    return model


def _chain_setup(
    model: nn.Module, batch: NDArray[np.float64], layers: Sequence[int] | None
) -> tuple[nn.Module, list[_Layer], dict[str, Any], Callable[..., dict[str, Any]]]:
    """A chain: its modules as one ``Sequential``, the analysed ReLUs and their dense ``(W, c)``."""
    modules = flatten_modules(model)
    plain = _cpu_copy(nn.Sequential(*modules))
    chain = _chain_for_inputs(plain, modules, tuple(batch.shape[1:]))
    analysed = _analysed_layers(chain, layers)
    dense = {layer.index: _feeding_map(chain, layer.index) for layer in analysed}
    return plain, analysed, {"dense": dense, "layers": [layer.index for layer in analysed]}, _analyze_sample


def _graph_setup(
    model: nn.Module, batch: NDArray[np.float64], layers: Sequence[Any] | None
) -> tuple[nn.Module, list[_Layer], dict[str, Any], Callable[..., dict[str, Any]]]:
    """A traced graph (:mod:`reluinv.experiments.analyze_graph`): its layers, by module path."""
    plain = _cpu_copy(model)
    if len(batch) == 0:
        raise ValueError("inputs hold no samples")
    chosen = chosen_graph_layers(plain, batch[0], layers)
    analysed = []
    for layer in chosen:
        described = describe_graph_layer(plain, batch[0], layer)
        analysed.append(
            _Layer(
                index=layer.index,
                name=layer.name,
                units=layer.out_dim,
                input_dim=described["input_dim"],
                feeds_from=described["feeds_from"],
                affine_modules=(),
            )
        )
    shared = {"layers": [(layer.index, layer.name) for layer in chosen]}
    return plain, analysed, shared, analyze_graph_sample


def _chain_for_inputs(plain: nn.Module, modules: list[nn.Module], input_shape: tuple[int, ...]) -> list[Step]:
    requirement = _input_requirement(modules)
    if requirement is not None and not requirement[1](input_shape):
        raise ValueError(
            f"inputs have per-sample shape {input_shape} "
            f"(file shape (N, {', '.join(map(str, input_shape))})), "
            f"but the model expects per-sample shape {requirement[0]}"
        )
    try:
        return as_chain(plain, input_shape, device="cpu")
    except ValueError as exc:
        stateful = (
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.Dropout,
            nn.Dropout1d,
            nn.Dropout2d,
            nn.Dropout3d,
            nn.AlphaDropout,
        )
        supported = all(type(m).__name__ in SUPPORTED_MODULES for m in modules)
        if supported and not any(m.training for m in modules if isinstance(m, stateful)):
            # Every module is supported, so it is the shape that does not fit somewhere inside.
            raise ValueError(f"inputs of per-sample shape {input_shape} do not fit the model: {exc}") from exc
        raise


def _input_requirement(modules: Sequence[nn.Module]) -> tuple[str, Callable[[tuple[int, ...]], bool]] | None:
    """What the first shape-fixing module wants of one sample: (description, test), or None."""
    flattened = False
    shape_preserving = (
        nn.Identity,
        nn.Dropout,
        nn.Dropout1d,
        nn.Dropout2d,
        nn.Dropout3d,
        nn.AlphaDropout,
        nn.ReLU,
        nn.LeakyReLU,
        nn.ELU,
        nn.Tanh,
    )
    for module in modules:
        if isinstance(module, shape_preserving):
            continue
        whole = isinstance(module, nn.Flatten) and module.start_dim == 1 and module.end_dim == -1
        if whole and not flattened:
            flattened = True
            continue
        if isinstance(module, nn.Linear):
            n = module.in_features
            if flattened:
                return f"with {n} entries in all (it is flattened)", lambda s, n=n: math.prod(s) == n
            return f"({n},)", lambda s, n=n: len(s) >= 1 and s[-1] == n
        if flattened:
            return None
        if isinstance(module, nn.Conv2d):
            c = module.in_channels
            return f"({c}, H, W)", lambda s, c=c: len(s) == 3 and s[0] == c
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            return f"({c}, H, W)", lambda s, c=c: len(s) == 3 and s[0] == c
        if isinstance(module, nn.BatchNorm1d):
            c = module.num_features
            return f"({c},) or ({c}, L)", lambda s, c=c: len(s) in (1, 2) and s[0] == c
        if isinstance(module, nn.AvgPool2d):
            return "(C, H, W)", lambda s: len(s) == 3
        return None
    return None


def _analysed_layers(chain: Sequence[Step], layers: Sequence[int] | None) -> list[_Layer]:
    relus = [s.index for s in chain if isinstance(s, ActivationStep) and s.kind == "relu"]
    if not relus:
        raise ValueError("the model has no ReLU modules; there is no ReLU preimage to analyse")
    if layers is None:
        chosen = relus
    else:
        chosen = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
                raise ValueError(f"layers must be module indices (integers), got {layer!r}")
            layer = int(layer)
            if not 0 <= layer < len(chain):
                raise ValueError(
                    f"layer {layer} is not a module index of the model (0..{len(chain) - 1}); "
                    f"its ReLUs are at {_listing(relus)}"
                )
            if layer not in relus:
                raise ValueError(
                    f"layer {layer} is module {chain[layer].name}, not a ReLU; "
                    f"the model's ReLUs are at {_listing(relus)}"
                )
            chosen.append(layer)
        if not chosen:
            raise ValueError(f"layers is empty; the model's ReLUs are at {_listing(relus)}")
        chosen = sorted(set(chosen))
    out = []
    for index in chosen:
        block = _feeding_block(chain, index)
        start = block[0].index if block else index
        feeds_from = "the network input" if start == 0 else f"the output of module {chain[start - 1].name}"
        out.append(
            _Layer(
                index=index,
                name=chain[index].name,
                units=chain[index].out_dim,
                input_dim=chain[start].in_dim if block else chain[index].in_dim,
                feeds_from=feeds_from,
                affine_modules=tuple(s.name for s in block),
            )
        )
    return out


def _listing(indices: Sequence[int]) -> str:
    return ", ".join(str(i) for i in indices)


def _feeding_block(chain: Sequence[Step], index: int) -> list[AffineStep]:
    """The run of affine steps right before module ``index`` (possibly empty), in order."""
    block: list[AffineStep] = []
    position = index - 1
    while position >= 0 and isinstance(chain[position], AffineStep):
        block.append(chain[position])  # type: ignore[arg-type]
        position -= 1
    return block[::-1]


def _feeding_map(chain: Sequence[Step], index: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Dense float64 ``(W, c)`` of the affine block feeding the ReLU at ``index`` (composed by
    :func:`reluinv.network.feeding_map`; the identity when no affine module changes the vector)."""
    fed = feeding_map(chain, index)
    if fed is None:
        n = chain[index].in_dim
        return np.eye(n), np.zeros(n)
    return np.ascontiguousarray(fed[0]), np.asarray(fed[1])


def _fingerprint(model: nn.Module, batch: NDArray[np.float64], layers: list[int], spectra: bool) -> str:
    digest = hashlib.sha256()
    digest.update(f"{_FORMAT}|{model!r}|{layers}|{spectra}|{batch.shape}".encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(batch.tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# One sample (runs in a worker)
# --------------------------------------------------------------------------------------------


@dataclass
class _Prepared:
    chain: list[Step]
    prefix_model: nn.Module
    device: torch.device


# id(shared) -> (shared, prepared): the chain is built once per process and run, not per sample.
# ``shared`` is kept in the entry so that its id cannot be reused by another object meanwhile.
_PREPARED: dict[int, tuple[Any, _Prepared]] = {}


def _prepared(shared: Mapping[str, Any], input_shape: tuple[int, ...]) -> _Prepared:
    entry = _PREPARED.get(id(shared))
    if entry is not None and entry[0] is shared:
        return entry[1]
    device = torch.device(shared["device"])
    last = max(shared["layers"])
    modules = flatten_modules(shared["model"])[: last + 1]
    prefix = nn.Sequential(*modules)
    if device.type != "cpu":
        prefix = copy.deepcopy(prefix).to(device)  # never move the caller's model
    chain = as_chain(prefix, input_shape, device=device)
    prepared = _Prepared(chain=chain, prefix_model=prefix, device=device)
    _PREPARED.clear()
    _PREPARED[id(shared)] = (shared, prepared)
    return prepared


def _analyze_sample(shared: Mapping[str, Any], sample: NDArray[np.float64]) -> dict[str, Any]:
    """Preimage (and spectrum) of every analysed ReLU at one sample; the ``run_samples`` function."""
    prepared = _prepared(shared, tuple(sample.shape))
    x = torch.as_tensor(np.asarray(sample, dtype=np.float64), device=prepared.device)
    wanted = set(shared["layers"])
    # Each analysed ReLU's feeding block starts at ``starts[index]``; its input there is the
    # decision's hint (a point of the preimage by construction).
    starts = {index: index - len(_feeding_block(prepared.chain, index)) for index in wanted}
    block_starts = set(starts.values())
    features: dict[int, NDArray[np.float64]] = {}
    block_inputs: dict[int, NDArray[np.float64]] = {}
    h = x.reshape(1, *x.shape)
    with torch.no_grad():
        for step in prepared.chain:
            if step.index in block_starts:
                block_inputs[step.index] = h.reshape(-1).cpu().numpy()
            h = step.apply(h)
            if step.index in wanted:
                features[step.index] = h.reshape(-1).cpu().numpy()
    layer_spectra = stability.spectra(prepared.prefix_model, x) if shared["spectra"] else None
    rows = []
    for index in shared["layers"]:
        W, c = shared["dense"][index]
        row = preimage_row(index, W, c, features[index], hint=block_inputs[starts[index]])
        if layer_spectra is not None:
            row.update(_spectrum_summary(layer_spectra[index]))
        rows.append(row)
    return {"layers": rows}


def preimage_row(
    index: int,
    A: NDArray[np.float64],
    b: NDArray[np.float64],
    y: NDArray[np.float64],
    hint: NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """One analysis row: the preimage of the layer output ``y = ReLU(A x + b)`` (Theorem 4) at
    layer ``index``, for chains and graphs alike; ``hint``: the layer's input x at the sample
    (see :func:`reluinv.preimage`)."""
    r = preimage(A, b, y, hint=hint)
    return {
        "layer": int(index),
        "active": int(np.count_nonzero(y > 0)),
        "kind": r.kind,
        "rank_active_rows": int(r.rank),
        "nullity": int(r.nullity),
        "margin": float(r.margin),
        "near_tolerance": bool(r.near_tolerance),
    }


def _spectrum_summary(spectrum: stability.LayerSpectrum) -> dict[str, Any]:
    values = np.asarray(spectrum.singular_values, dtype=np.float64)
    nonzero = values[values > spectrum.rank_tolerance]
    return {
        "jacobian_rank": spectrum.rank,
        "condition": float(spectrum.condition),
        "sigma_max": float(values[0]) if values.size else math.nan,
        "sigma_min_nonzero": float(nonzero[-1]) if nonzero.size else math.nan,
    }


# --------------------------------------------------------------------------------------------
# Collecting, summarising, writing
# --------------------------------------------------------------------------------------------


def _collect(results: Sequence[SampleResult], analysed: Sequence[_Layer], spectra: bool) -> dict[str, Any]:
    by_index = {layer.index: layer for layer in analysed}
    rows: list[dict[str, Any]] = []
    failed = []
    for sample in results:
        if not sample.ok:
            failed.append({"sample": sample.key, "error": sample.error})
            continue
        assert sample.result is not None  # an ok sample carries its result
        for entry in sample.result["layers"]:
            layer = by_index[int(entry["layer"])]
            row: dict[str, Any] = {
                "sample": sample.key,
                "layer": layer.index,
                "name": layer.name,
                "units": layer.units,
                "input_dim": layer.input_dim,
            }
            row.update({key: entry[key] for key in _PREIMAGE_COLUMNS if key in entry and key not in row})
            if spectra:
                row.update(
                    {
                        key: _as_float(entry[key]) if key != "jacobian_rank" else entry[key]
                        for key in _SPECTRUM_COLUMNS
                    }
                )
            rows.append(row)
    summaries = [
        _summarise(layer, [r for r in rows if r["layer"] == layer.index], spectra) for layer in analysed
    ]
    return {"layers": summaries, "rows": rows, "failed": failed}


def _as_float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.median(finite)) if finite else math.nan


def _summarise(layer: _Layer, rows: Sequence[Mapping[str, Any]], spectra: bool) -> dict[str, Any]:
    kinds = {kind: 0 for kind in KINDS}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    summary: dict[str, Any] = {
        "layer": layer.index,
        "name": layer.name,
        "units": layer.units,
        "input_dim": layer.input_dim,
        "feeds_from": layer.feeds_from,
        "affine_modules": list(layer.affine_modules),
        "samples": len(rows),
        "kinds": kinds,
        "near_tolerance": sum(bool(r["near_tolerance"]) for r in rows),
        "median_active": _median([r["active"] for r in rows]),
        "median_rank_active_rows": _median([r["rank_active_rows"] for r in rows]),
        "median_nullity": _median([r["nullity"] for r in rows]),
    }
    if spectra:
        conditions = [r["condition"] for r in rows]
        summary.update(
            {
                "median_jacobian_rank": _median([r["jacobian_rank"] for r in rows]),
                "median_condition": _median(conditions),
                "samples_without_condition": sum(math.isnan(v) for v in conditions),
                "median_sigma_max": _median([r["sigma_max"] for r in rows]),
                "median_sigma_min_nonzero": _median([r["sigma_min_nonzero"] for r in rows]),
            }
        )
    return summary


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]], spectra: bool) -> None:
    columns = list(_PREIMAGE_COLUMNS) + (list(_SPECTRUM_COLUMNS) if spectra else [])
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_value(row[column]) for column in columns])
    os.replace(tmp, path)


def _csv_value(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def _strict_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _write_json(path: Path, result: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_strict_json(result), indent=1, allow_nan=False), encoding="utf-8")
    os.replace(tmp, path)


def format_summary(result: Mapping[str, Any]) -> str:
    """A plain-text table of the per-layer summary of an :func:`analyze` result.

    Example::

        print(format_summary(analyze(model, x, out="out", backend="serial")))
    """
    spectra = bool(result.get("spectra"))
    width = max([14] + [len(str(layer["name"])) + 2 for layer in result["layers"]])
    header = f"{'layer':<{width}}{'units':>7}{'in':>7}" + "".join(f"{k:>11}" for k in KINDS)
    header += f"{'active':>9}"
    header += f"{'rank':>8}{'condition':>12}" if spectra else ""
    lines = [header]
    for layer in result["layers"]:
        line = f"{layer['name']:<{width}}{layer['units']:>7}{layer['input_dim']:>7}"
        line += "".join(f"{layer['kinds'].get(k, 0):>11}" for k in KINDS)
        line += f"{_fmt(layer['median_active']):>9}"
        if spectra:
            line += f"{_fmt(layer['median_jacobian_rank']):>8}{_fmt(layer['median_condition'], '.3g'):>12}"
        lines.append(line)
    lines.append("(kinds: sample counts; active, rank, condition: medians over samples)")
    return "\n".join(lines)


def _fmt(value: Any, spec: str = "g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _layer_indices(text: str) -> list[int | str]:
    """Comma-separated module indices (chains) or layer names / indices (traced graphs)."""
    out: list[int | str] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            out.append(int(part) if part.lstrip("-").isdigit() else part)
    return out


def add_analyze_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``analyze`` subcommand on an ``add_subparsers()`` object.

    The subcommand's ``run(args) -> int`` (set with ``set_defaults``) loads the model and inputs,
    runs :func:`analyze` and prints the per-layer summary; it returns 0, or 1 when some samples
    failed (they are listed and rerun by the same command).  It raises ``ValueError`` /
    ``FileNotFoundError`` for bad input, which the ``reluinv`` command reports with exit code 2.

    Example::

        parser = argparse.ArgumentParser(prog="reluinv")
        add_analyze_parser(parser.add_subparsers(dest="command"))
        args = parser.parse_args(["analyze", "net.pt", "--inputs", "x.npy", "--backend", "serial"])
        args.run(args)
    """
    parser = subparsers.add_parser(
        "analyze",
        help="per-sample preimages and spectra of your own network on your own inputs",
        description=(
            "For each sample and each ReLU layer: the single-layer preimage (Theorem 4: singleton, "
            "compact or unbounded), active units, rank and nullity, and the rank and condition of the "
            "Jacobian up to that layer. Writes OUT/analysis.csv, OUT/analysis.json and PNG plots; "
            "an interrupted run resumes from OUT/work/."
        ),
    )
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a TorchScript file (scripted or traced nn.Sequential), a torch.export "
        "archive (.pt2), or module:function that builds the nn.Module (the current "
        "folder is importable; any torch.fx-traceable model: residual, pooling, ...)",
    )
    parser.add_argument(
        "--inputs",
        required=True,
        metavar="FILE",
        help="samples of shape (N, *input_shape): .npy, .npz (array 'inputs' or the "
        "first one) or .pt (a tensor)",
    )
    parser.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="state dict (torch.save(model.state_dict(), FILE)) to load into MODEL",
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        type=_layer_indices,
        default=None,
        metavar="INDEX",
        help="module indices of the ReLUs to analyse, in the flattened Sequential "
        "(e.g. 1 3 or 1,3; default: every ReLU); for other models, layer names "
        "(module paths such as layer1.0.relu) or positions among the layers",
    )
    parser.add_argument("--out", default="reluinv-analysis", metavar="DIR", help="output folder")
    parser.add_argument(
        "--no-spectra",
        action="store_true",
        help="skip the Jacobian spectra (preimages only; faster on large inputs)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where forward passes and spectra run (preimages are LPs on the CPU)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_executor_options(parser)
    parser.set_defaults(run=_run_analyze)
    return parser


@contextmanager
def _naming(path: str) -> Iterator[None]:
    """Put ``path`` in front of a ValueError that does not name it (one line names the file)."""
    try:
        yield
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: {exc}") from exc


def _run_analyze(args: argparse.Namespace) -> int:
    from .common import check_output_folder

    layers = None if args.layers is None else [i for group in args.layers for i in group]
    executor = Executor.from_options(backend=args.backend, scheduler=args.scheduler, workers=args.workers)
    check_output_folder(Path(args.out), subfolders=("work",))
    executor.check_reachable()
    with _naming(args.model):
        model = load_model(args.model, weights=args.weights)
    with _naming(args.inputs):
        inputs = load_inputs(args.inputs)
    provenance = {"model": str(args.model), "weights": args.weights, "inputs": str(args.inputs)}
    result = analyze(
        model,
        inputs,
        out=args.out,
        layers=layers,
        spectra=not args.no_spectra,
        backend=executor.backend,
        workers=executor.workers,
        scheduler=executor.scheduler,
        device=args.device,
        progress=not args.no_progress,
        provenance=provenance,
    )
    print(format_summary(result))
    files = result["files"]
    print(f"wrote {files['csv']}, {files['json']}" + "".join(f", {p}" for p in files["plots"]))
    if result["failed"]:
        first = result["failed"][0]
        print(
            f"reluinv: {len(result['failed'])} of {result['samples']} samples failed (first: sample "
            f"{first['sample']}: {first['error']}); run the same command again to retry them",
            file=sys.stderr,
        )
        return 1
    return 0
