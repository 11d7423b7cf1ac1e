"""Figures (matplotlib, PNG) and the HTML index of a reproduction.

Each ``plot_<fig>`` takes the JSON-serialisable numbers an experiment returned and writes one PNG;
each ``summary_<fig>`` returns the two sentences of the index: what the paper shows, and what
this run shows.  Nothing here computes maths.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

KIND_COLOURS = {"unbounded": "#d62728", "compact": "#1f77b4", "singleton": "#2ca02c",
                "empty": "#7f7f7f"}


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


def plot_analysis(out_dir: Path, layers: Sequence[Mapping[str, Any]], spectra: bool, *,
                  input_dim: int) -> list[str]:
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
    extent = result["grid"]["extent"]
    box = (-extent, extent, -extent, extent)
    fig, axes = _subplots(1, 3, figsize=(13, 4.2))
    pts = np.asarray(result["train_points"])
    labels = np.asarray(result["train_labels"])
    axes[0].imshow(np.asarray(result["prediction"]), origin="lower", extent=box, cmap="coolwarm",
                   alpha=0.6)
    axes[0].scatter(pts[:, 0], pts[:, 1], c=labels, cmap="coolwarm", s=6, edgecolors="k",
                    linewidths=0.2)
    axes[0].set_title("prediction")
    codes = result["kind_codes"]
    order = sorted(codes, key=codes.get)
    cmap = ListedColormap([KIND_COLOURS[k] for k in order])
    axes[1].imshow(np.asarray(result["kind"]), origin="lower", extent=box, cmap=cmap,
                   vmin=-0.5, vmax=len(order) - 0.5, interpolation="nearest")
    axes[1].set_title("preimage of the first layer")
    handles = [Rectangle((0, 0), 1, 1, color=KIND_COLOURS[k]) for k in order[:3]]
    axes[1].legend(handles, order[:3], loc="lower left", fontsize=7)
    im = axes[2].imshow(np.asarray(result["condition"]), origin="lower", extent=box,
                        cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[2].set_title("condition of the first layer's linearisation")
    _save(fig, path, "Figure 1: toy network, one hidden layer of 3 ReLUs")


def summary_fig1(result: dict[str, Any]) -> tuple[str, str]:
    kinds = np.asarray(result["kind"])
    cond = np.asarray(result["condition"])
    codes = result["kind_codes"]
    share = {k: float(np.mean(kinds == v)) for k, v in codes.items()}
    singleton_cond = cond[kinds == codes["singleton"]]
    return (
        "The paper shows the plane cut into polytopes where the first layer's preimage is unbounded, "
        "compact or a single point, with condition numbers of 0 or 1 on the non-singleton regions "
        "and above 1 where the preimage is a point.",
        f"Here {share['singleton']:.0%} of the grid has singleton, {share['compact']:.0%} compact "
        f"and {share['unbounded']:.0%} unbounded preimages; singleton points have condition "
        f"{singleton_cond.min() if singleton_cond.size else float('nan'):.2f} to "
        f"{singleton_cond.max() if singleton_cond.size else float('nan'):.2f}.",
    )


# --- Figure 4 ----------------------------------------------------------------------------------


def plot_fig4(result: dict[str, Any], path: Path) -> None:
    samples = [s for s in result["samples"] if s["kind"] != "failed"]
    n = result["input_dim"]
    active = np.array([s["n_active"] for s in samples])
    bounded = np.array([s["kind"] in ("singleton", "compact") for s in samples])
    fig, ax = _subplots(figsize=(7, 4))
    if active.size:
        bins = np.arange(active.min() - 0.5, active.max() + 1.5, max(1, int(np.ptp(active) + 1) // 40))
        ax.hist(active[bounded], bins=bins, histtype="step", color=KIND_COLOURS["compact"],
                label="bounded (singleton or compact)", linewidth=1.5)
        ax.hist(active[~bounded], bins=bins, histtype="step", color=KIND_COLOURS["unbounded"],
                label="unbounded", linewidth=1.5)
        both = _overlap(active, bounded)
        if both is not None:
            ax.axvspan(both[0], both[1], color="0.85", zorder=0, label="both kinds occur")
    ax.axvline(n, color="k", linestyle="--", label=f"input dimension {n}")
    ax.set_xlabel("number of active units (positive outputs)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    _save(fig, path, f"Figure 4: preimages of the 3500-unit layer, {len(samples)} samples of "
                f"{result['data']}", result.get("recipe_change", ""))


def _overlap(active: np.ndarray, bounded: np.ndarray) -> tuple[float, float] | None:
    if not bounded.any() or bounded.all():
        return None
    lo, hi = active[bounded].min(), active[~bounded].max()
    return (float(lo), float(hi)) if lo <= hi else None


def summary_fig4(result: dict[str, Any]) -> tuple[str, str]:
    samples = [s for s in result["samples"] if s["kind"] != "failed"]
    active = np.array([s["n_active"] for s in samples])
    bounded = np.array([s["kind"] in ("singleton", "compact") for s in samples])
    both = _overlap(active, bounded)
    strip = f"both kinds occur between {both[0]:.0f} and {both[1]:.0f} active units" if both else \
        "no active count shows both kinds"
    change = f" ({result['recipe_change']})" if result.get("recipe_change") else ""
    return (
        "The paper's MNIST network has about 784 active units per test sample; all samples with at "
        "least 784 are bounded, and bounded and unbounded preimages meet in a strip from 723 to 784.",
        f"Here {bounded.sum()} of {len(samples)} samples are bounded and {(~bounded).sum()} "
        f"unbounded; {strip}{change}.",
    )


# --- spectra: Figures 5, 6, 8, 10, 11 ----------------------------------------------------------


def _samples_note(result: dict[str, Any]) -> str:
    parts = [f"median over {result['samples']} test samples"]
    if result.get("note"):
        parts.append(result["note"])
    return "; ".join(parts)


def plot_fig5(result: dict[str, Any], path: Path) -> None:
    fig, axes = _subplots(3, 1, figsize=(8, 8), sharex=True)
    for key, colour, label in (("wide", "tab:blue", "WideCIFAR"), ("thin", "tab:red", "ThinCIFAR")):
        layers = result[key]["layers"]
        x = [layer["index"] + 1 for layer in layers]
        axes[0].plot(x, [layer["out_dim"] for layer in layers], "o-", color=colour, label=label)
        axes[1].plot(x, [layer["rank"] for layer in layers], "o-", color=colour, label=label)
        cond = [np.nan if layer["condition"] is None else layer["condition"] for layer in layers]
        axes[2].semilogy(x, cond, "o-", color=colour, label=label)
    axes[0].set_ylabel("output units")
    axes[1].set_ylabel("non-zero singular values")
    axes[2].set_ylabel("condition number")
    axes[2].set_xlabel("layer (convolution and ReLU counted separately)")
    axes[0].legend(fontsize=8)
    _save(fig, path, "Figure 5: WideCIFAR vs ThinCIFAR", _samples_note(result["wide"]))


def _decay_axes(ax, layers: list[dict[str, Any]]) -> None:
    colours = colormaps["viridis"](np.linspace(0, 0.9, max(1, len(layers))))
    for colour, layer in zip(colours, layers):
        values = np.asarray(layer["singular_values"])
        values = values[values > 0]
        ax.semilogy(np.arange(1, values.size + 1), values, color=colour, label=layer["name"])
    ax.set_xlabel("index of singular value")
    ax.set_ylabel("singular value")
    ax.legend(fontsize=7)


def plot_fig6(result: dict[str, Any], path: Path) -> None:
    fig, ax = _subplots(figsize=(7, 4.5))
    _decay_axes(ax, result["decay"])
    _save(fig, path, "Figure 6: decay of singular values over the layers of WideCIFAR (after each ReLU)",
           _samples_note(result))


def _effect_and_decay(result: dict[str, Any], path: Path, title: str) -> None:
    fig, (left, right) = _subplots(1, 2, figsize=(12, 4.5))
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    for n, pair in enumerate(result["effect"]):
        for m, (key, style) in enumerate((("before", "-"), ("after", "--"))):
            layer = pair[key]
            values = np.asarray(layer["singular_values"])
            values = values[values > 0]
            left.semilogy(np.arange(1, values.size + 1), values, style, color=colours[2 * n + m],
                          label=f"layer {layer['index'] + 1} ({layer['name'].split(':')[1]})")
    left.set_xlabel("index of singular value")
    left.set_ylabel("singular value")
    left.set_title("just before and after a ReLU")
    left.legend(fontsize=7)
    _decay_axes(right, result["decay"])
    right.set_title("decay over the layers")
    _save(fig, path, title, _samples_note(result))


def plot_fig8(result: dict[str, Any], path: Path) -> None:
    _effect_and_decay(result, path, "Figure 8: effect of ReLU on the singular values of WideCIFAR")


def plot_fig10(result: dict[str, Any], path: Path) -> None:
    _effect_and_decay(result, path, "Figure 10: ThinCIFAR, effect of ReLU and decay over layers")


def plot_fig11(result: dict[str, Any], path: Path) -> None:
    _effect_and_decay(result, path, "Figure 11: MLP of Table 2, effect of ReLU and decay over layers")


def _condition_range(layers: list[dict[str, Any]]) -> str:
    conds = [layer["condition"] for layer in layers if layer["condition"] is not None]
    return f"{min(conds):.3g} to {max(conds):.3g}" if conds else "undefined"


def summary_fig5(result: dict[str, Any]) -> tuple[str, str]:
    wide, thin = result["wide"]["layers"], result["thin"]["layers"]
    return (
        "The paper shows that ThinCIFAR loses singular values (invariance directions appear) from "
        "layer 5 on, which cuts off the smallest ones and lowers its condition number, while "
        "WideCIFAR keeps more non-zero singular values and grows a larger condition number.",
        f"Here the last convolutional ReLU keeps a median of {wide[11]['rank']:.0f} non-zero "
        f"singular values in WideCIFAR and {thin[11]['rank']:.0f} in ThinCIFAR; condition numbers "
        f"range over {_condition_range(wide)} (Wide) and {_condition_range(thin)} (Thin).",
    )


def _decay_sentence(decay: list[dict[str, Any]]) -> str:
    first, last = decay[0], decay[-1]
    def top_bottom(layer):
        values = np.asarray(layer["singular_values"])
        values = values[values > 0]
        return values.max(), values.min()
    (f_hi, f_lo), (l_hi, l_lo) = top_bottom(first), top_bottom(last)
    return (f"from {first['name']} to {last['name']} the largest singular value goes from "
            f"{f_hi:.3g} to {l_hi:.3g} and the smallest non-zero one from {f_lo:.3g} to {l_lo:.3g}")


def summary_fig6(result: dict[str, Any]) -> tuple[str, str]:
    return (
        "The paper shows, over WideCIFAR's convolutional layers, the largest singular value growing "
        "while the small ones decrease significantly.",
        f"Here {_decay_sentence(result['decay'])}.",
    )


def _effect_sentence(result: dict[str, Any]) -> str:
    parts = []
    for pair in result["effect"]:
        b = np.asarray(pair["before"]["singular_values"])
        a = np.asarray(pair["after"]["singular_values"])
        parts.append(f"{pair['after']['name']} keeps {np.count_nonzero(a > 0)} of "
                     f"{np.count_nonzero(b > 0)} non-zero singular values, smallest "
                     f"{b[b > 0].min():.3g} -> {a[a > 0].min():.3g}")
    return "; ".join(parts)


def summary_fig8(result: dict[str, Any]) -> tuple[str, str]:
    return ("The paper shows that in WideCIFAR the ReLU of layers 2 and 5 changes the spectrum "
            "only mildly: the remaining situation is redundant (M = 5120 rows).",
            f"Here {_effect_sentence(result)}.")


def summary_fig10(result: dict[str, Any]) -> tuple[str, str]:
    return ("The paper shows a stronger effect of ReLU in ThinCIFAR's layer 2, where fewer rows "
            "remain, and singular values decaying over the layers.",
            f"Here {_effect_sentence(result)}; {_decay_sentence(result['decay'])}.")


def summary_fig11(result: dict[str, Any]) -> tuple[str, str]:
    return ("The paper shows the effect of ReLU in the two hidden layers of the MNIST MLP and the "
            "decay of singular values over its layers.",
            f"Here {_effect_sentence(result)}; {_decay_sentence(result['decay'])}.")


# --- Figure 9 ----------------------------------------------------------------------------------


def plot_fig9(result: dict[str, Any], path: Path) -> None:
    fig, ax = _subplots(figsize=(7, 4))
    cs, counts = np.asarray(result["cs"]), np.asarray(result["counts"])
    if result["c_star"] is not None and np.isfinite(result["c_star"]):
        keep = cs <= 1.15 * result["c_star"]
        cs, counts = cs[keep], counts[keep]
    ax.plot(cs, counts, color="tab:blue", label="rows satisfying (3)")
    ax.axhline(result["remaining"], color="tab:red", label=f"remaining rows M = {result['remaining']}")
    if result["c_star"] is not None and np.isfinite(result["c_star"]):
        ax.axvline(result["c_star"], color="0.5", linestyle=":", label=f"c* = {result['c_star']:.3g}")
    if result.get("sigma_max_after"):
        ax.axvline(result["sigma_max_after"], color="tab:green", linestyle="--",
                   label=f"largest singular value after ReLU = {result['sigma_max_after']:.3g}")
    ax.set_xlabel("c")
    ax.set_ylabel("number of rows")
    ax.legend(fontsize=8)
    _save(fig, path, f"Figure 9: Lemma 9 condition at the ReLU of WideCIFAR module {result['layer']}, one "
                f"test sample", result.get("note", ""))


def summary_fig9(result: dict[str, Any]) -> tuple[str, str]:
    c_star = result["c_star"]
    return ("The paper finds that all 5120 remaining rows satisfy condition (3) only from c of about 6, "
            "while even the largest singular value after ReLU is below 2.5: the bound of Lemma 9 is "
            "far off in this redundant situation.",
            f"Here M = {result['remaining']} rows remain, all satisfy (3) from c = {c_star:.3g}, and "
            f"the singular values after the ReLU lie between {result['sigma_min_after']:.3g} and "
            f"{result['sigma_max_after']:.3g}.")


# --- Figures 7 / 12 and 7x ---------------------------------------------------------------------


def _image(values: Any) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    side = int(round(np.sqrt(arr.size)))
    return arr.reshape(side, side) if side * side == arr.size else arr.reshape(1, -1)


def plot_fig7(result: dict[str, Any], path: Path) -> None:
    examples = result["examples"]
    fig, axes = _subplots(len(examples), 3, figsize=(6.5, 2.2 * len(examples)), squeeze=False)
    for row, ex in zip(axes, examples):
        for ax, key, title in zip(row, ("source", "target", "found"),
                                  (f"source {ex['source_label']} ({ex['source_active_units']} active)",
                                   f"target {ex['target_label']}",
                                   f"found: |dF| = {ex['feature_max_abs_diff']:.1e}")):
            ax.imshow(_image(ex[key]), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    _save(fig, path, f"Figures 7/12: identical first-layer features ({result['units']} ReLUs) of the "
                f"Table 1 MLP", result["data"])


def summary_fig7(result: dict[str, Any]) -> tuple[str, str]:
    ex = result["examples"]
    worst = max(e["feature_max_abs_diff"] for e in ex)
    dist = [e["input_l2_distance"] for e in ex]
    return ("The paper finds, inside the preimage of a '3' and a '4' under the first layer, inputs "
            "that look like a '6' or a '4' and have exactly the same 100 first-layer features.",
            f"Here {len(ex)} source/target pairs give inputs with first-layer features equal to "
            f"within {worst:.1e} (solver precision), at L2 distance {min(dist):.2f} to "
            f"{max(dist):.2f} from their sources.")


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
    _save(fig, path, "Figure 7x: identical features at deeper layers of the Table 1 MLP", result["data"], dpi=100)


def summary_fig7x(result: dict[str, Any]) -> tuple[str, str]:
    rows = result["rows"]
    proven = sum(1 for r in rows if r["mode"] == "exact" and r["proven"])
    exact = sum(1 for r in rows if r["mode"] == "exact")
    worst = max((r["feature_max_abs_diff"] for r in rows if r["feature_max_abs_diff"] is not None),
                default=float("nan"))
    return ("The paper keeps only first-layer features identical and calls the multi-layer case open.",
            f"Here {len(rows)} searches keep the features of layers 1, 2, 5 and the logits (largest "
            f"feature difference {worst:.1e}); {proven} of {exact} exact searches were proven "
            f"optimal within the time limit.")


# --- index ------------------------------------------------------------------------------------

PLOTTERS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "fig1": plot_fig1, "fig4": plot_fig4, "fig5": plot_fig5, "fig6": plot_fig6, "fig7": plot_fig7,
    "fig7x": plot_fig7x, "fig8": plot_fig8,
    "fig9": plot_fig9, "fig10": plot_fig10, "fig11": plot_fig11}
SUMMARIES: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "fig1": summary_fig1, "fig4": summary_fig4, "fig5": summary_fig5, "fig6": summary_fig6,
    "fig7": summary_fig7, "fig7x": summary_fig7x,
    "fig8": summary_fig8, "fig9": summary_fig9, "fig10": summary_fig10, "fig11": summary_fig11}


def write_figure(key: str, result: dict[str, Any], out: Path) -> Path:
    path = out / f"{key}.png"
    PLOTTERS[key](result, path)
    return path


def write_index(results: dict[str, Any], out: Path, *, title: str = "reluinv reproduction") -> Path:
    """``out/index.html``: every figure with its two sentences, in figure order."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "img{max-width:100%}section{margin-bottom:2em}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    meta = results.get("meta", {})
    if meta:
        parts.append(f"<p>{html.escape(meta.get('description', ''))}</p>")
    for key in sorted((k for k in results if k in PLOTTERS), key=_figure_order):
        paper, ours = SUMMARIES[key](results[key])
        parts.append(f"<section id='{key}'><h2>{key}</h2><img src='{key}.png' alt='{key}'>"
                     f"<p><b>Paper:</b> {html.escape(paper)}</p>"
                     f"<p><b>This run:</b> {html.escape(ours)}</p></section>")
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path


def _figure_order(key: str) -> tuple[int, str]:
    digits = "".join(ch for ch in key if ch.isdigit())
    return (int(digits) if digits else 999, key)
