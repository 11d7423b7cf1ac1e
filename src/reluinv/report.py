"""Figures (matplotlib, PNG) and the HTML index of a reproduction.

Each ``plot_<fig>`` takes the JSON-serialisable numbers an experiment returned and writes one PNG;
each ``summary_<fig>`` returns the two sentences of the index: what the paper shows, and what
this run shows.  Nothing here computes maths.
"""

from __future__ import annotations

import html
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

KIND_COLOURS = {"unbounded": "#d62728", "compact": "#1f77b4", "singleton": "#2ca02c",
                "empty": "#7f7f7f"}


def _title(fig: plt.Figure, text: str, note: str = "") -> None:
    lines = textwrap.wrap(text, 100) + (textwrap.wrap(f"({note})", 110) if note else [])
    fig.suptitle("\n".join(lines), fontsize=9)


# --- Figure 1 ----------------------------------------------------------------------------------


def plot_fig1(result: dict[str, Any], path: Path) -> None:
    extent = result["grid"]["extent"]
    box = (-extent, extent, -extent, extent)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
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
    handles = [plt.Rectangle((0, 0), 1, 1, color=KIND_COLOURS[k]) for k in order[:3]]
    axes[1].legend(handles, order[:3], loc="lower left", fontsize=7)
    im = axes[2].imshow(np.asarray(result["condition"]), origin="lower", extent=box,
                        cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    axes[2].set_title("condition of the first layer's linearisation")
    _title(fig, "Figure 1: toy network, one hidden layer of 3 ReLUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig, ax = plt.subplots(figsize=(7, 4))
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
    _title(fig, f"Figure 4: preimages of the 3500-unit layer, {len(samples)} samples of "
                f"{result['data']}", result.get("recipe_change", ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


# --- index ------------------------------------------------------------------------------------

PLOTTERS: dict[str, Callable[[dict[str, Any], Path], None]] = {"fig1": plot_fig1, "fig4": plot_fig4}
SUMMARIES: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "fig1": summary_fig1, "fig4": summary_fig4}


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
