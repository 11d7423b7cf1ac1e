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


def summary_fig1(result: dict[str, Any]) -> tuple[str, str]:
    kinds = np.asarray(result["kind"])
    cond = np.asarray(result["condition"])
    codes = result["kind_codes"]
    share = {k: float(np.mean(kinds == v)) for k, v in codes.items()}
    singleton_cond = cond[kinds == codes["singleton"]]
    seeds = result.get("seeds", [])
    per_seed = "; ".join(
        f"seed {s['seed']}: "
        + ", ".join(
            f"{s['share'][k]:.0%} {k}"
            for k in ("unbounded", "compact", "singleton", "empty")
            if s["share"].get(k)
        )
        for s in seeds
    )
    return (
        "The paper shows the plane cut into polytopes where the first layer's preimage is unbounded, "
        "compact or a single point, with condition numbers of 0 or 1 on the non-singleton regions "
        "and above 1 where the preimage is a point.",
        f"Shown: seed {result.get('seed', 0)} ({result.get('rule', 'the only seed trained')}). "
        f"On it {share['singleton']:.0%} of the grid has singleton, {share['compact']:.0%} compact "
        f"and {share['unbounded']:.0%} unbounded preimages; singleton points have condition "
        f"{singleton_cond.min() if singleton_cond.size else float('nan'):.2f} to "
        f"{singleton_cond.max() if singleton_cond.size else float('nan'):.2f}. Over the "
        f"{len(seeds)} seeds trained: {per_seed}.",
    )


# --- Figure 4 ----------------------------------------------------------------------------------


def _fig4_entries(result: dict[str, Any]) -> list[dict[str, Any]]:
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
    entries = _fig4_entries(result)
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


def _overlap(active: np.ndarray, bounded: np.ndarray) -> tuple[float, float] | None:
    if not bounded.any() or bounded.all():
        return None
    lo, hi = active[bounded].min(), active[~bounded].max()
    return (float(lo), float(hi)) if lo <= hi else None


def _fig4_sentence(entry: dict[str, Any]) -> str:
    samples = [s for s in entry["samples"] if s["kind"] != "failed"]
    active = np.array([s["n_active"] for s in samples])
    bounded = np.array([s["kind"] in ("singleton", "compact") for s in samples])
    both = _overlap(active, bounded)
    strip = (
        f"both kinds occur between {both[0]:.0f} and {both[1]:.0f} active units"
        if both
        else "no active count shows both kinds"
    )
    text = (
        f"{entry.get('data_name', entry['data'])}: {bounded.sum()} of {len(samples)} samples "
        f"bounded and {(~bounded).sum()} unbounded by the exact engine "
        f"(active units {active.min() if active.size else '-'}-"
        f"{active.max() if active.size else '-'}); {strip}"
    )
    comparison = entry.get("comparison")
    if comparison:
        reasons = "; ".join(f"{n} x {r}" for r, n in comparison["reasons"].items())
        text += (
            f"; Algorithm 1 {', '.join(f'{n} {k}' for k, n in comparison['paper'].items() if n)}"
            f"; {comparison['disagreements']} disagreements in kind "
            f"({comparison['bounded_disagreements']} on boundedness)" + (f": {reasons}" if reasons else "")
        )
    checked = [s["direction_check"] for s in samples if "direction_check" in s]
    if checked:
        text += (
            f"; every unbounded verdict's direction d was rechecked: max|A_pos d| <= "
            f"{max(c['max_abs_active'] for c in checked):.2g}, max(A_zero d) <= "
            f"{max(c['max_inactive'] for c in checked):.2g}"
        )
    if entry.get("recipe_change"):
        text += f" ({entry['recipe_change']})"
    return text


def summary_fig4(result: dict[str, Any]) -> tuple[str, str]:
    entries = _fig4_entries(result)
    conclusion = result.get("conclusion", {}).get("text", "")
    return (
        "The paper's MNIST network has about 784 active units per test sample; all samples with at "
        "least 784 are bounded, and bounded and unbounded preimages meet in a strip from 723 to "
        "784, below which preimages are unbounded (decided by Algorithm 1, Appendix A3).",
        "Here "
        + ". ".join(_fig4_sentence(e) for e in entries)
        + "."
        + (f" Conclusion: {conclusion}" if conclusion else ""),
    )


# --- spectra: Figures 5, 6, 8, 10, 11 ----------------------------------------------------------


def _run_setting(result: dict[str, Any]) -> dict[str, Any]:
    setting = result.get("setting")
    return setting.get("run", {}) if isinstance(setting, Mapping) else {}


def _layer_number(layer: dict[str, Any]) -> int:
    """The paper's legend number of a layer (1-based, a ReLU counts as its own layer; stored by
    the experiment, else the module index + 1 as for the CNNs)."""
    number = layer.get("paper_layer")
    return int(number) if number is not None else int(layer["index"]) + 1


def _layer_role(layer: dict[str, Any]) -> str:
    return str(layer.get("role") or layer["name"].split(":", 1)[-1])


def _block(layer: dict[str, Any]) -> int:
    """The paper's "layer" in its text (an affine map with its ReLU)."""
    block = layer.get("block")
    return int(block) if block is not None else (_layer_number(layer) + 1) // 2


def _describe(layer: dict[str, Any]) -> str:
    """``"layer 3 (ReLU 3, legend 6)"``."""
    role = layer.get("role") or f"legend {_layer_number(layer)}"
    return f"layer {_block(layer)} ({role}, legend {_layer_number(layer)})"


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
        x = [_layer_number(layer) for layer in layers]
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
        [_layer_number(layer) for layer in layers],
        [f"{_layer_number(layer)}: {_layer_role(layer)}" for layer in layers],
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
            label=f"layer {_block(layer)} (after {_layer_role(layer)})",
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
                label=f"legend {_layer_number(layer)}: {_layer_role(layer)} "
                f"({key} the ReLU of layer {_block(pair['after'])})",
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


def _condition_range(layers: list[dict[str, Any]]) -> str:
    conds = [layer["condition"] for layer in layers if layer["condition"] is not None]
    return f"{min(conds):.3g} to {max(conds):.3g}" if conds else "undefined"


def summary_fig5(result: dict[str, Any]) -> tuple[str, str]:
    wide, thin = result["wide"]["layers"], result["thin"]["layers"]
    n = result.get("input_dim") or result["wide"].get("input_dim")
    paper = result.get("paper_loss_layer", 5)

    def loss(key: str) -> str:
        first = result[key].get("first_rank_loss")
        if first is None:
            return f"never falls below {n:,}" if n else "is not recorded"
        return f"first falls below {n:,} at {_describe(first)}, median {first['rank']:g}"

    return (
        f"The paper finds that ThinCIFAR's number of non-zero singular values decreases in layer "
        f"{paper} (legend {2 * paper - 1}-{2 * paper}), which cuts off the smallest singular values "
        "and lowers its condition number, while WideCIFAR keeps them; on CIFAR-10's 3,072 inputs "
        "ThinCIFAR's last convolution has only 2,048 units.",
        f"Here the number of non-zero singular values {loss('thin')} in ThinCIFAR and {loss('wide')} "
        f"in WideCIFAR (the paper: layer {paper} in ThinCIFAR).{_around(thin, paper)} Condition "
        f"numbers range over {_condition_range(wide)} (Wide) and {_condition_range(thin)} (Thin).",
    )


def _around(layers: list[dict[str, Any]], block: int) -> str:
    """ " ThinCIFAR has 758 after ReLU 4 and 597 after ReLU 5 (condition ...)." or ""."""
    roles = {layer.get("role"): layer for layer in layers}
    before, conv, after = (
        roles.get(f"ReLU {block - 1}"),
        roles.get(f"conv {block}"),
        roles.get(f"ReLU {block}"),
    )
    if before is None or conv is None or after is None:
        return ""
    cond = (
        ""
        if conv["condition"] is None or after["condition"] is None
        else f"; its condition number goes from {conv['condition']:.3g} at conv {block} to "
        f"{after['condition']:.3g} after ReLU {block}"
    )
    return (
        f" ThinCIFAR keeps a median of {before['rank']:g} non-zero singular values after ReLU "
        f"{block - 1} and {after['rank']:g} after ReLU {block}{cond}."
    )


def _decay_sentence(decay: list[dict[str, Any]]) -> str:
    first, last = decay[0], decay[-1]

    def top_bottom(layer):
        values = np.asarray(layer["singular_values"])
        values = values[values > 0]
        return values.max(), values.min()

    (f_hi, f_lo), (l_hi, l_lo) = top_bottom(first), top_bottom(last)
    return (
        f"from layer {_block(first)} to layer {_block(last)} (after the ReLU) the largest singular "
        f"value goes from {f_hi:.3g} to {l_hi:.3g} and the smallest non-zero one from {f_lo:.3g} "
        f"to {l_lo:.3g}"
    )


def summary_fig6(result: dict[str, Any]) -> tuple[str, str]:
    last = result["decay"][-1]
    n = result.get("input_dim")
    zeros = (
        ""
        if not n
        else (f"; layer {_block(last)} keeps a median of {last['rank']:g} non-zero singular values of {n:,}")
    )
    return (
        "The paper shows, over WideCIFAR's convolutional layers 1-6 (after each ReLU), the largest "
        "singular value growing while the small ones decrease significantly, and zero singular "
        "values (invariance directions) in layer 6.",
        f"Here {_decay_sentence(result['decay'])}{zeros}.",
    )


def _effect_sentence(result: dict[str, Any]) -> str:
    parts = []
    for pair in result["effect"]:
        b = np.asarray(pair["before"]["singular_values"])
        a = np.asarray(pair["after"]["singular_values"])
        parts.append(
            f"the ReLU of layer {_block(pair['after'])} (legend {_layer_number(pair['after'])}) "
            f"keeps {np.count_nonzero(a > 0)} of {np.count_nonzero(b > 0)} non-zero singular "
            f"values, smallest {b[b > 0].min():.3g} -> {a[a > 0].min():.3g}"
        )
    return "; ".join(parts)


def summary_fig8(result: dict[str, Any]) -> tuple[str, str]:
    return (
        "The paper shows WideCIFAR's spectra just before and after the ReLU of layer 2 (legend 3 "
        "and 4) and of layer 5 (legend 9 and 10); Appendix A5 adds that even the largest "
        "singular value after ReLU is below 2.5, and that ReLU acts more strongly in ThinCIFAR "
        "(Figure 10), which has fewer remaining rows.",
        f"Here {_effect_sentence(result)}.",
    )


def summary_fig10(result: dict[str, Any]) -> tuple[str, str]:
    return (
        "The paper shows a stronger effect of ReLU in ThinCIFAR's layer 2 than in WideCIFAR's, "
        "explained by fewer remaining rows, and singular values decaying over the layers.",
        f"Here {_effect_sentence(result)}; {_decay_sentence(result['decay'])}.",
    )


def summary_fig11(result: dict[str, Any]) -> tuple[str, str]:
    change = (
        f" The network is Figure 4's ({result['recipe_change']})."
        if result.get("recipe_change")
        else " The network is Figure 4's."
    )
    return (
        "The paper shows, for the MLP of Section 2.2 (Figure 4's network), the effect of ReLU "
        "in its two hidden layers (legend 1-2 and 3-4) and the decay of the singular values "
        "over the layers; the second ReLU keeps only its active rows of a 784-wide map.",
        f"Here {_effect_sentence(result)}; {_decay_sentence(result['decay'])}.{change}",
    )


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


def summary_fig9(result: dict[str, Any]) -> tuple[str, str]:
    c_star = result["c_star"]
    units = result.get("units", result["remaining"] + result["removed"])
    return (
        "The paper takes WideCIFAR's layer 4 at one CIFAR-10 test sample: all M = 5,120 remaining "
        "rows satisfy condition (3) only from c of about 6, while even the largest singular "
        "value after ReLU is below 2.5, so the bound of Lemma 9 is far off in this redundant "
        "situation.",
        f"Here, at the same layer (layer 4: convolution 4 and its ReLU, legend "
        f"{result.get('paper_layer', result['layer'] + 1)}, chosen because the paper's Figure 9 "
        f"uses it), the ReLU keeps M = {result['remaining']:,} of {units:,} rows at one sample; "
        f"all satisfy (3) from c* = {c_star:.3g}, and the non-zero singular values after the ReLU "
        f"lie between {result['sigma_min_after']:.3g} and {result['sigma_max_after']:.3g}.",
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


def summary_fig7(result: dict[str, Any]) -> tuple[str, str]:
    ex = result["examples"]
    worst = max(e["feature_max_abs_diff"] for e in ex)
    dist = [e["input_l2_distance"] for e in ex]
    return (
        "The paper finds, inside the preimage of a '3' and a '4' under the first layer, inputs "
        "that look like a '6' or a '4' and have exactly the same 100 first-layer features.",
        f"Here {len(ex)} source/target pairs give inputs with first-layer features equal to "
        f"within {worst:.1e} (solver precision), at L2 distance {min(dist):.2f} to "
        f"{max(dist):.2f} from their sources.",
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


def summary_fig7x(result: dict[str, Any]) -> tuple[str, str]:
    rows = result["rows"]
    proven = sum(1 for r in rows if r["mode"] == "exact" and r["proven"])
    exact = sum(1 for r in rows if r["mode"] == "exact")
    worst = max(
        (r["feature_max_abs_diff"] for r in rows if r["feature_max_abs_diff"] is not None),
        default=float("nan"),
    )
    return (
        "The paper keeps only first-layer features identical and calls the multi-layer case open.",
        f"Here {len(rows)} searches keep the features of layers 1, 2, 5 and the logits (largest "
        f"feature difference {worst:.1e}); {proven} of {exact} exact searches were proven "
        f"optimal within the time limit.",
    )


# --- index ------------------------------------------------------------------------------------

PLOTTERS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "fig1": plot_fig1,
    "fig4": plot_fig4,
    "fig5": plot_fig5,
    "fig6": plot_fig6,
    "fig7": plot_fig7,
    "fig7x": plot_fig7x,
    "fig8": plot_fig8,
    "fig9": plot_fig9,
    "fig10": plot_fig10,
    "fig11": plot_fig11,
}
SUMMARIES: dict[str, Callable[[dict[str, Any]], tuple[str, str]]] = {
    "fig1": summary_fig1,
    "fig4": summary_fig4,
    "fig5": summary_fig5,
    "fig6": summary_fig6,
    "fig7": summary_fig7,
    "fig7x": summary_fig7x,
    "fig8": summary_fig8,
    "fig9": summary_fig9,
    "fig10": summary_fig10,
    "fig11": summary_fig11,
}


#: The paper's figure number and a one-line subject, heading each section of the index.
HEADINGS: dict[str, tuple[str, str]] = {
    "fig1": ("Figure 1", "preimage kinds and conditioning of a toy network's first layer"),
    "fig4": ("Figure 4", "bounded and unbounded preimages against active units, MLP of Table 2"),
    "fig5": ("Figure 5", "rank and conditioning, WideCIFAR vs ThinCIFAR"),
    "fig6": ("Figure 6", "decay of singular values over WideCIFAR's layers"),
    "fig7": ("Figures 7 and 12", "different inputs with identical first-layer features, MLP of Table 1"),
    "fig7x": ("Beyond Figure 7", "identical features at deeper layers (open in the paper)"),
    "fig8": ("Figure 8", "effect of ReLU on WideCIFAR's singular values"),
    "fig9": ("Figure 9", "Lemma 9's correlation condition at WideCIFAR's layer 4"),
    "fig10": ("Figure 10", "effect of ReLU and decay of singular values, ThinCIFAR"),
    "fig11": ("Figure 11", "effect of ReLU and decay of singular values, MLP of Table 2"),
}

_EFFECT_AXES = (
    "Left: x is the index of a singular value (descending), y the singular value (median "
    "over samples, log scale), just before (solid) and just after (dashed) the ReLU of "
    "the layers shown; legend numbers count a ReLU as its own layer, as the paper's do. "
    "Right: the same axes, the spectrum after the ReLU of every {what}. Zero singular "
    "values are not drawn."
)

#: What the axes of each figure are (the caption under the image).
CAPTIONS: dict[str, str] = {
    "fig1": (
        "Three panels over the input plane (x and y: the two input coordinates): the network's "
        "prediction with the training points; the kind of the first layer's preimage of each "
        "point's features; the condition number of the first layer's linearisation there."
    ),
    "fig4": (
        "x: number of active units (positive outputs of the 3,500-unit first layer) of a test "
        "sample; y: number of test samples; one curve per kind of preimage of that layer."
    ),
    "fig5": (
        "x: layer, numbered as the paper's legend (a convolution and its ReLU count separately; "
        "tick labels name the module; shaded: the paper's layer 5). Top: output units (log "
        "scale). Middle: median number of non-zero singular values of the Jacobian of the "
        "network up to that layer, with the input dimension dotted. Bottom: median condition "
        "number (largest over smallest non-zero singular value, log scale)."
    ),
    "fig6": (
        "x: index of a singular value (descending); y: singular value of the Jacobian up to the "
        "layer, median over samples (log scale); one curve per layer 1-6 (a convolution and "
        "its ReLU, after the ReLU). Zero singular values are not drawn, so a shorter curve "
        "means fewer non-zero singular values."
    ),
    "fig7": (
        "Each row: a source image, a target image of another class, and the input found in the "
        "source's first-layer preimage nearest the target (grey levels, 0 black to 1 white)."
    ),
    "fig7x": (
        "Top rows: source, target and the inputs found that keep the features of deeper layers; "
        "bottom: x the layer whose features are kept, y the largest L1 move inside the box."
    ),
    "fig8": _EFFECT_AXES.format(what="convolutional layer (1-6)"),
    "fig9": (
        "x: the constant c of condition (3) of Lemma 9; y: how many remaining rows a_i satisfy "
        "|<a_i, a_k>| <= c ||a_k|| / sqrt(M) for the removed row a_k that the most rows satisfy. "
        "Red: all M remaining rows; dotted: c*, the smallest c at which all satisfy it (Lemma "
        "9's bound on the smallest singular value); green dashed: the largest singular value "
        "after the ReLU."
    ),
    "fig10": _EFFECT_AXES.format(what="convolutional layer (1-6)"),
    "fig11": _EFFECT_AXES.format(what="hidden layer"),
}

QUICK_NOTE = (
    "Quick mode: fewer samples (3 instead of 50 for the spectra) and training epochs than "
    "the paper, and the CNNs on 3x16x16 inputs; every figure says so. Run with --full for "
    "the paper's counts."
)

#: Rows of the setting tables in this order (results.json stores keys sorted); others follow.
_SETTING_ORDER = ("mode", "data", "input shape", "training", "test accuracy", "samples")

_VERDICT_CLASS = {"reproduced": "ok", "not reproduced": "bad", "not testable": "na"}

_CSS = (
    "body{font-family:sans-serif;max-width:1150px;margin:auto;padding:0 1em;line-height:1.4}"
    "img{max-width:100%;border:1px solid #ddd}section{margin:2.5em 0}"
    "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:4px 7px;"
    "vertical-align:top;text-align:left}th{background:#f3f3f3}"
    ".ok{background:#d8f0d8}.bad{background:#f6d5d5}.na{background:#ececec;color:#555}"
    ".verdict{font-weight:bold;white-space:nowrap}.quick{background:#fff4cc;padding:6px 10px;"
    "border-left:4px solid #e0b000}.tag{font-size:60%;background:#fff4cc;padding:2px 6px;"
    "vertical-align:middle;margin-left:.6em}.row{display:flex;gap:1.5em;align-items:flex-start}"
    ".row>div{flex:1}.row>table{flex:0 0 38%}figcaption{color:#333;font-size:92%}"
)


def _claims_table(claims: Sequence[Mapping[str, Any]]) -> str:
    """The claims table (figure, claim, verdict, evidence), verdict coloured."""
    if not claims:
        return "<h2 id='claims'>Claims</h2><p>No claims were evaluated in this run.</p>"
    counts = {v: sum(1 for c in claims if c.get("verdict") == v) for v in _VERDICT_CLASS}
    rows = []
    for c in sorted(claims, key=lambda c: _figure_order(str(c.get("figure", "")))):
        figure = str(c.get("figure", ""))
        name = HEADINGS.get(figure, (figure, ""))[0]
        verdict = str(c.get("verdict", ""))
        rows.append(
            f"<tr><td><a href='#{html.escape(figure)}'>{html.escape(name)}</a></td>"
            f"<td>{html.escape(str(c.get('claim', '')))}</td>"
            f"<td class='verdict {_VERDICT_CLASS.get(verdict, 'na')}'>{html.escape(verdict)}</td>"
            f"<td>{html.escape(str(c.get('evidence', '')))}</td></tr>"
        )
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    return (
        "<h2 id='claims'>Claims of the paper, checked on this run</h2>"
        f"<p>{html.escape(summary)}. Each verdict is computed from this run's results.json.</p>"
        "<table class='claims'><tr><th>figure</th><th>claim</th><th>verdict</th><th>evidence</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _setting_table(result: Mapping[str, Any]) -> str:
    """The paper's setting next to this run's, from ``result["setting"]`` (``{"paper": {...},
    "run": {...}}``); empty when the figure carries none."""
    setting = result.get("setting")
    if not isinstance(setting, Mapping):
        return ""
    paper, run = setting.get("paper") or {}, setting.get("run") or {}
    keys = list(paper) + [k for k in run if k not in paper]
    keys.sort(key=lambda k: _SETTING_ORDER.index(k) if k in _SETTING_ORDER else len(_SETTING_ORDER))
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(paper.get(k, '-')))}</td>"
        f"<td>{html.escape(str(run.get(k, '-')))}</td></tr>"
        for k in keys
    )
    return f"<table class='setting'><tr><th></th><th>paper</th><th>this run</th></tr>{rows}</table>"


def _section(key: str, result: dict[str, Any], out: Path, quick: bool) -> str:
    number, subject = HEADINGS.get(key, (key, ""))
    heading = f"{number} - {subject}" if subject else number
    tag = "<span class='tag'>quick mode</span>" if quick else ""
    image = (
        f"<img src='{key}.png' alt='{html.escape(heading)}'>"
        if (out / f"{key}.png").exists()
        else "<p><i>(the figure's image is missing: rerun the figure)</i></p>"
    )
    try:
        paper, ours = SUMMARIES[key](result)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        paper, ours = "", f"(this result cannot be summarised: {type(exc).__name__}: {exc})"
    text = (
        f"<div><figcaption>{html.escape(CAPTIONS.get(key, ''))}</figcaption>"
        f"<p><b>Paper:</b> {html.escape(paper)}</p><p><b>This run:</b> {html.escape(ours)}</p></div>"
    )
    return (
        f"<section id='{html.escape(key)}'><h2>{html.escape(heading)}{tag}</h2><figure>{image}"
        f"</figure><div class='row'>{text}{_setting_table(result)}</div></section>"
    )


def write_figure(key: str, result: dict[str, Any], out: Path) -> Path:
    path = out / f"{key}.png"
    PLOTTERS[key](result, path)
    return path


def write_index(results: dict[str, Any], out: Path, *, title: str = "reluinv reproduction") -> Path:
    """``out/index.html``: the claims table first (``results["claims"]``, verdict coloured), then
    every figure in the paper's order, headed with the paper's figure number and subject, with a
    caption saying what the axes are, the paper's setting next to this run's, and the paper's
    finding next to this run's."""
    meta = results.get("meta", {})
    quick = meta.get("mode") == "quick"
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><link rel='icon' href='data:,'>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if meta.get("description"):
        parts.append(f"<p>{html.escape(meta['description'])}</p>")
    if quick:
        parts.append(f"<p class='quick'>{html.escape(QUICK_NOTE)}</p>")
    parts.append(_claims_table(results.get("claims", [])))
    for key in sorted(
        (k for k in results if k in PLOTTERS and isinstance(results[k], Mapping)), key=_figure_order
    ):
        parts.append(_section(key, results[key], out, quick))
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path


def _figure_order(key: str) -> tuple[int, str]:
    digits = "".join(ch for ch in key if ch.isdigit())
    return (int(digits) if digits else 999, key)
