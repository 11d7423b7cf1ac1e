"""The figures of a reproduction as PNG files (matplotlib, without pyplot).

Each ``plot_<fig>`` takes the JSON-serialisable numbers an experiment returned and writes one PNG;
:func:`plot_analysis` draws the plots of ``reluinv analyze``.  The readers of a result shared with
the index's sentences (:func:`fig4_entries`, :func:`layer_number`, :func:`layer_block`) live here
too.  Nothing here computes maths.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

KIND_COLOURS = {"unbounded": "#d62728", "compact": "#1f77b4", "singleton": "#2ca02c", "empty": "#7f7f7f"}


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kw: Any):
    """``(figure, axes)`` like ``pyplot.subplots``, but without pyplot: no global backend or
    figure registry is touched, so plotting works the same in scripts, notebooks and workers."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig: Figure, path: Path, text: str, note: str = "", *, dpi: int = 110) -> None:
    """Title (with the run's caveat underneath), lay out and write the PNG."""
    _title(fig, text, note)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)


def _title(fig: Figure, text: str, note: str = "") -> None:
    lines = textwrap.wrap(text, 100) + (textwrap.wrap(f"({note})", 110) if note else [])
    fig.suptitle("\n".join(lines), fontsize=9)


# --- reluinv analyze ---------------------------------------------------------------------------


def plot_analysis(
    out_dir: Path, layers: Sequence[Mapping[str, Any]], spectra: bool, *, input_dim: int
) -> list[str]:
    """The plots of ``reluinv analyze``: preimage kinds per ReLU layer, and (with spectra) the median
    condition number and rank of the Jacobian up to each layer.  Returns the paths written."""
    names = [layer["name"] for layer in layers]
    positions = np.arange(len(layers))
    written = []

    fig, ax = _subplots(figsize=(max(5.0, 0.9 * len(layers) + 2.5), 4.0))
    bottom = np.zeros(len(layers))
    for kind in ("singleton", "compact", "unbounded", "empty"):
        counts = np.array([layer["kinds"].get(kind, 0) for layer in layers], dtype=float)
        if counts.any():
            ax.bar(positions, counts, bottom=bottom, color=KIND_COLOURS[kind], label=kind)
        bottom += counts
    ax.set_xticks(positions, names, rotation=30, ha="right")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    path = out_dir / "kinds_per_layer.png"
    _save(fig, path, "preimage of each ReLU layer (Theorem 4)")
    written.append(str(path))

    if spectra:
        fig, (ax_cond, ax_rank) = _subplots(1, 2, figsize=(max(8.0, 1.6 * len(layers) + 4.0), 4.0))
        conditions = np.array([layer["median_condition"] for layer in layers], dtype=float)
        shown = np.isfinite(conditions) & (conditions > 0)
        ax_cond.plot(positions[shown], conditions[shown], "o-", color="#1f77b4")
        if shown.any():
            ax_cond.set_yscale("log")
        ax_cond.set_ylabel("median condition number")
        ax_cond.set_title("condition of the Jacobian up to the layer", fontsize=10)
        ranks = np.array([layer["median_jacobian_rank"] for layer in layers], dtype=float)
        ax_rank.plot(positions, ranks, "o-", color="#2ca02c", label="median rank")
        ax_rank.plot(positions, [layer["units"] for layer in layers], "k--", lw=0.8, label="units")
        ax_rank.axhline(input_dim, color="grey", ls=":", lw=0.8, label="network input dimension")
        ax_rank.set_ylabel("rank")
        ax_rank.set_title("rank of the Jacobian up to the layer", fontsize=10)
        ax_rank.legend(fontsize=8)
        for ax in (ax_cond, ax_rank):
            ax.set_xticks(positions, names, rotation=30, ha="right")
            ax.set_xlim(-0.5, len(layers) - 0.5)
        path = out_dir / "condition_rank_per_layer.png"
        _save(fig, path, "spectra of the network up to each ReLU layer (Section 3)")
        written.append(str(path))
    return written


# --- Figure 1 ----------------------------------------------------------------------------------


def plot_fig1(result: dict[str, Any], path: Path) -> None:
    """Prediction, preimage kind and condition over the plane for the shown seed, and the share of
    the plane of each kind for every seed trained (Figure 1 over seeds)."""
    extent = result["grid"]["extent"]
    box = (-extent, extent, -extent, extent)
    fig, axes = _subplots(1, 4, figsize=(17, 4.4))
    pts = np.asarray(result["train_points"])
    labels = np.asarray(result["train_labels"])
    axes[0].imshow(np.asarray(result["prediction"]), origin="lower", extent=box, cmap="coolwarm", alpha=0.6)
    axes[0].scatter(pts[:, 0], pts[:, 1], c=labels, cmap="coolwarm", s=6, edgecolors="k", linewidths=0.2)
    axes[0].set_title("prediction", fontsize=10)
    codes = result["kind_codes"]
    order = sorted(codes, key=codes.get)
    cmap = ListedColormap([KIND_COLOURS[k] for k in order])
    axes[1].imshow(
        np.asarray(result["kind"]),
        origin="lower",
        extent=box,
        cmap=cmap,
        vmin=-0.5,
        vmax=len(order) - 0.5,
        interpolation="nearest",
    )
    axes[1].set_title("preimage of the first layer", fontsize=10)
    handles = [Rectangle((0, 0), 1, 1, color=KIND_COLOURS[k]) for k in order[:3]]
    axes[1].legend(handles, order[:3], loc="lower left", fontsize=7)
    im = axes[2].imshow(
        np.asarray(result["condition"]), origin="lower", extent=box, cmap="viridis", interpolation="nearest"
    )
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[2].set_title("condition of the first layer's linearisation", fontsize=10)
    seeds = result.get("seeds", [])
    positions = np.arange(len(seeds))
    bottom = np.zeros(len(seeds))
    for kind in order:
        share = np.array([s["share"].get(kind, 0.0) for s in seeds])
        if share.any():
            axes[3].bar(positions, share, bottom=bottom, color=KIND_COLOURS[kind], label=kind)
        bottom += share
    axes[3].set_xticks(
        positions, [f"{s['seed']}{'*' if s['seed'] == result.get('seed') else ''}" for s in seeds]
    )
    axes[3].set_xlabel("seed (* shown)")
    axes[3].set_ylabel("share of the plane")
    axes[3].set_title("kinds over the plane, per seed", fontsize=10)
    axes[3].legend(fontsize=7)
    _save(
        fig,
        path,
        f"Figure 1: toy network, one hidden layer of 3 ReLUs; seed {result.get('seed', 0)} shown",
        f"shown: {result['rule']}" if "rule" in result else "",
    )


# --- Figure 4 ----------------------------------------------------------------------------------


def fig4_entries(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every data set Figure 4 scanned, the main one last."""
    return [*result.get("other_data", []), result]


def _fig4_axes(ax, entry: dict[str, Any]) -> None:
    samples = [s for s in entry["samples"] if s["kind"] != "failed"]
    active = np.array([s["n_active"] for s in samples])
    if active.size:
        bins = np.arange(active.min() - 0.5, active.max() + 1.5, max(1, int(np.ptp(active) + 1) // 40))
        for key, style, who in (("kind", "-", "exact engine"), ("paper_kind", "--", "Algorithm 1")):
            verdicts = [s.get(key) for s in samples]
            if key == "paper_kind" and not any(verdicts):
                continue
            if key == "paper_kind" and not all(verdicts):
                who += f", {sum(v is not None for v in verdicts):,} samples"
            bounded = np.array([v in ("singleton", "compact") for v in verdicts])
            unbounded = np.array([v == "unbounded" for v in verdicts])
            for mask, colour, label in (
                (bounded, KIND_COLOURS["compact"], "bounded"),
                (unbounded, KIND_COLOURS["unbounded"], "unbounded"),
            ):
                if mask.any():
                    ax.hist(
                        active[mask],
                        bins=bins,
                        histtype="step",
                        color=colour,
                        linestyle=style,
                        linewidth=1.5,
                        label=f"{label} ({who})",
                    )
    ax.axvspan(723, 784, color="#fff0b3", zorder=0, label="the paper's strip 723-784")
    n = entry["input_dim"]
    ax.axvline(n, color="k", linestyle=":", label=f"input dimension {n}")
    accuracy = entry["training"].get("test_accuracy")
    ax.set_title(
        f"{entry.get('data_name', entry['data'])}: {len(samples):,} test samples"
        + (f", test accuracy {accuracy:.1%}" if accuracy is not None else ""),
        fontsize=9,
    )
    ax.set_xlabel("number of active units (positive outputs)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=7)


def plot_fig4(result: dict[str, Any], path: Path) -> None:
    """Both verdicts (exact engine solid, the paper's Algorithm 1 dashed) against active units,
    one panel per data set trained."""
    entries = fig4_entries(result)
    fig, axes = _subplots(1, len(entries), figsize=(7 * len(entries), 4.6), squeeze=False)
    for ax, entry in zip(axes[0], entries, strict=True):
        _fig4_axes(ax, entry)
    changes = "; ".join(
        f"{e.get('data_name', e['data'])}: {e['recipe_change']}" for e in entries if e.get("recipe_change")
    )
    _save(
        fig,
        path,
        "Figure 4: preimages of the 3500-unit first layer of the MLP of Table 2, "
        "exact engine (solid) and the paper's Algorithm 1 (dashed)",
        changes,
    )


# --- spectra: Figures 5, 6, 8, 10, 11 ----------------------------------------------------------


def _run_setting(result: dict[str, Any]) -> dict[str, Any]:
    setting = result.get("setting")
    return setting.get("run", {}) if isinstance(setting, Mapping) else {}


def layer_number(layer: dict[str, Any]) -> int:
    """The paper's legend number of a layer (1-based, a ReLU counts as its own layer; stored by
    the experiment, else the module index + 1 as for the CNNs)."""
    number = layer.get("paper_layer")
    return int(number) if number is not None else int(layer["index"]) + 1


def _layer_role(layer: dict[str, Any]) -> str:
    return str(layer.get("role") or layer["name"].split(":", 1)[-1])


def layer_block(layer: dict[str, Any]) -> int:
    """The paper's "layer" in its text (an affine map with its ReLU)."""
    block = layer.get("block")
    return int(block) if block is not None else (layer_number(layer) + 1) // 2


def _samples_note(result: dict[str, Any]) -> str:
    """The run's caveat under a spectra figure's title: samples, data (with its shape), mode."""
    samples = result["samples"]
    parts = [f"median over {samples} test samples" if samples != 1 else "one test sample"]
    data = result.get("data") or result.get("note")
    if data:
        parts.append(str(data))
    if _run_setting(result).get("mode") == "quick":
        parts.append(f"QUICK MODE, {result['training']['epochs']} training epoch(s)")
    return "; ".join(parts)


def plot_fig5(result: dict[str, Any], path: Path) -> None:
    fig, axes = _subplots(3, 1, figsize=(9, 9), sharex=True)
    for key, colour, label in (("wide", "tab:blue", "WideCIFAR"), ("thin", "tab:red", "ThinCIFAR")):
        layers = result[key]["layers"]
        x = [layer_number(layer) for layer in layers]
        axes[0].semilogy(x, [layer["out_dim"] for layer in layers], "o-", color=colour, label=label)
        axes[1].plot(x, [layer["rank"] for layer in layers], "o-", color=colour, label=label)
        cond = [np.nan if layer["condition"] is None else layer["condition"] for layer in layers]
        axes[2].semilogy(x, cond, "o-", color=colour, label=label)
    n = result.get("input_dim") or result["wide"].get("input_dim")
    if n:
        axes[1].axhline(n, color="0.4", ls=":", lw=1, label=f"input dimension {n:,}")
    paper = result.get("paper_loss_layer", 5)
    for ax in axes:
        ax.axvspan(2 * paper - 1.5, 2 * paper + 0.5, color="0.92", zorder=0)
    axes[1].text(
        2 * paper - 0.5,
        axes[1].get_ylim()[1],
        f"the paper's layer {paper}",
        ha="center",
        va="bottom",
        fontsize=7,
        color="0.35",
    )
    axes[0].set_ylabel("output units")
    axes[1].set_ylabel("non-zero singular values")
    axes[2].set_ylabel("condition number")
    layers = result["wide"]["layers"]
    axes[2].set_xticks(
        [layer_number(layer) for layer in layers],
        [f"{layer_number(layer)}: {_layer_role(layer)}" for layer in layers],
        rotation=60,
        ha="right",
        fontsize=7,
    )
    axes[2].set_xlabel("layer, numbered as the paper's legend (a convolution and its ReLU count separately)")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    _save(
        fig,
        path,
        "Figure 5: WideCIFAR vs ThinCIFAR, output units, rank and condition of the Jacobian up to each layer",
        _samples_note(result["wide"] | {"setting": result.get("setting", {})}),
    )


def _decay_axes(ax, layers: list[dict[str, Any]]) -> None:
    colours = colormaps["viridis"](np.linspace(0, 0.9, max(1, len(layers))))
    for colour, layer in zip(colours, layers, strict=True):
        values = np.asarray(layer["singular_values"])
        values = values[values > 0]
        ax.semilogy(
            np.arange(1, values.size + 1),
            values,
            color=colour,
            label=f"layer {layer_block(layer)} (after {_layer_role(layer)})",
        )
    ax.set_xlabel("index of singular value (descending)")
    ax.set_ylabel("singular value (median over samples)")
    ax.legend(fontsize=7)


def plot_fig6(result: dict[str, Any], path: Path) -> None:
    fig, ax = _subplots(figsize=(8, 5))
    _decay_axes(ax, result["decay"])
    _save(
        fig,
        path,
        "Figure 6: decay of singular values over WideCIFAR's layers 1-6 (convolution and "
        "ReLU; spectrum after each ReLU)",
        _samples_note(result),
    )


def _effect_and_decay(result: dict[str, Any], path: Path, title: str) -> None:
    fig, (left, right) = _subplots(1, 2, figsize=(12, 5))
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for n, pair in enumerate(result["effect"]):
        for m, (key, style) in enumerate((("before", "-"), ("after", "--"))):
            layer = pair[key]
            values = np.asarray(layer["singular_values"])
            values = values[values > 0]
            left.semilogy(
                np.arange(1, values.size + 1),
                values,
                style,
                color=colours[(2 * n + m) % 4],
                label=f"legend {layer_number(layer)}: {_layer_role(layer)} "
                f"({key} the ReLU of layer {layer_block(pair['after'])})",
            )
    left.set_xlabel("index of singular value (descending)")
    left.set_ylabel("singular value (median over samples)")
    left.set_title("just before and after a ReLU", fontsize=10)
    left.legend(fontsize=7)
    _decay_axes(right, result["decay"])
    right.set_title("decay over the layers (after each ReLU)", fontsize=10)
    _save(fig, path, title, _samples_note(result))


def plot_fig8(result: dict[str, Any], path: Path) -> None:
    _effect_and_decay(
        result, path, "Figure 8: effect of ReLU on the singular values of WideCIFAR, layers 2 and 5"
    )


def plot_fig10(result: dict[str, Any], path: Path) -> None:
    _effect_and_decay(
        result, path, "Figure 10: ThinCIFAR, effect of ReLU in layers 2 and 5, and decay over the layers"
    )


def plot_fig11(result: dict[str, Any], path: Path) -> None:
    title = "Figure 11: MLP of Table 2 (Figure 4's network), effect of ReLU and decay over layers"
    if result.get("recipe_change"):
        title += f"; {result['recipe_change']}"
    _effect_and_decay(result, path, title)


# --- Figure 9 ----------------------------------------------------------------------------------


def plot_fig9(result: dict[str, Any], path: Path) -> None:
    fig, ax = _subplots(figsize=(8, 4.5))
    cs, counts = np.asarray(result["cs"]), np.asarray(result["counts"])
    c_star = result["c_star"]
    if c_star is not None and np.isfinite(c_star):
        keep = cs <= 1.15 * c_star
        cs, counts = cs[keep], counts[keep]
    ax.plot(cs, counts, color="tab:blue", label="rows a_i satisfying (3) for the best removed row a_k")
    ax.axhline(result["remaining"], color="tab:red", label=f"all remaining rows, M = {result['remaining']:,}")
    if c_star is not None and np.isfinite(c_star):
        ax.axvline(c_star, color="0.5", linestyle=":", label=f"c* = {c_star:.3g} (all M satisfy (3))")
    if result.get("sigma_max_after"):
        ax.axvline(
            result["sigma_max_after"],
            color="tab:green",
            linestyle="--",
            label=f"largest singular value after the ReLU = {result['sigma_max_after']:.3g}",
        )
    ax.set_xlabel("constant c of condition (3) of Lemma 9")
    ax.set_ylabel("number of remaining rows")
    ax.legend(fontsize=8)
    where = f"layer 4 (ReLU 4, legend {result.get('paper_layer', result['layer'] + 1)})"
    _save(
        fig,
        path,
        f"Figure 9: Lemma 9's condition (3) at WideCIFAR's {where}, one test sample",
        _samples_note(result),
    )


# --- Figures 7 / 12 and 7x ---------------------------------------------------------------------


def _image(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    side = int(round(np.sqrt(arr.size)))
    return arr.reshape(side, side) if side * side == arr.size else arr.reshape(1, -1)


def plot_fig7(result: dict[str, Any], path: Path) -> None:
    examples = result["examples"]
    fig, axes = _subplots(len(examples), 3, figsize=(6.5, 2.2 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples, strict=True):
        for ax, key, title in zip(
            row,
            ("source", "target", "found"),
            (
                f"source {ex['source_label']} ({ex['source_active_units']} active)",
                f"target {ex['target_label']}",
                f"found: |dF| = {ex['feature_max_abs_diff']:.1e}",
            ),
            strict=True,
        ):
            ax.imshow(_image(ex[key]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    _save(
        fig,
        path,
        f"Figures 7/12: identical first-layer features ({result['units']} ReLUs) of the Table 1 MLP",
        result["data"],
    )


def plot_fig7x(result: dict[str, Any], path: Path) -> None:
    examples = result["examples"]
    depths = result["depths"]
    fig = Figure(figsize=(2.0 * (len(depths) + 2), 2.3 * len(examples) + 3))
    grid = fig.add_gridspec(len(examples) + 1, len(depths) + 2)
    for r, ex in enumerate(examples):
        ax = fig.add_subplot(grid[r, 0])
        ax.imshow(_image(ex["image"]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"source {ex['label']}", fontsize=8)
        ax.axis("off")
        ax = fig.add_subplot(grid[r, 1])
        ax.imshow(_image(ex["target"]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"target {ex['target_label']}", fontsize=8)
        ax.axis("off")
        for c, depth in enumerate(ex["depths"]):
            search = depth["searches"].get("exact") or depth["searches"].get("region")
            if not search or search.get("image") is None:
                continue
            ax = fig.add_subplot(grid[r, c + 2])
            ax.imshow(_image(search["image"]), cmap="gray", vmin=0, vmax=1)
            proven = "proven" if search["proven"] else "not proven"
            ax.set_title(f"depth {depth['depth']}, {search['mode']}\n{proven}", fontsize=7)
            ax.axis("off")
    ax = fig.add_subplot(grid[len(examples), :])
    for ex in examples:
        xs = [str(d["depth"]) for d in ex["depths"]]
        l1 = [np.nan if not d.get("extent") else (d["extent"].get("l1") or np.nan) for d in ex["depths"]]
        ax.plot(xs, l1, "o-", label=f"source {ex['label']}: largest L1 move in the box")
    ax.set_xlabel("depth whose features are kept")
    ax.set_ylabel("distance")
    ax.legend(fontsize=7)
    _save(
        fig,
        path,
        "Figure 7x: identical features at deeper layers of the Table 1 MLP",
        result["data"],
        dpi=100,
    )
