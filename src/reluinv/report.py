"""The HTML index of a reproduction: the claims table, then each figure with its caption, the
paper's setting next to this run's, and the two sentences of :func:`summary_<fig>` (what the paper
shows, and what this run shows).

The figures themselves are drawn by :mod:`reluinv.report_plots`; its ``plot_<fig>`` functions and
:func:`plot_analysis` are importable from here as before.  Nothing here computes maths.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .report_plots import KIND_COLOURS as KIND_COLOURS  # re-exported with plot_analysis
from .report_plots import (
    fig4_entries,
    layer_block,
    layer_number,
    plot_fig1,
    plot_fig4,
    plot_fig5,
    plot_fig6,
    plot_fig7,
    plot_fig7x,
    plot_fig8,
    plot_fig9,
    plot_fig10,
    plot_fig11,
)
from .report_plots import plot_analysis as plot_analysis

# --- the paper's finding and this run's, per figure: Figure 1 --------------------------------


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


# --- Figure 4 --------------------------------------------------------------------------------


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
        subset = entry.get("algorithm1_samples")
        text += (
            f"; Algorithm 1 (on {subset or 'every sample'}) "
            f"{', '.join(f'{n} {k}' for k, n in comparison['paper'].items() if n)}"
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
    entries = fig4_entries(result)
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


def _describe(layer: dict[str, Any]) -> str:
    """``"layer 3 (ReLU 3, legend 6)"``."""
    role = layer.get("role") or f"legend {layer_number(layer)}"
    return f"layer {layer_block(layer)} ({role}, legend {layer_number(layer)})"


# --- spectra: Figures 5, 6, 8, 10, 11 --------------------------------------------------------


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
        f"from layer {layer_block(first)} to layer {layer_block(last)} (after the ReLU) the largest singular "
        f"value goes from {f_hi:.3g} to {l_hi:.3g} and the smallest non-zero one from {f_lo:.3g} "
        f"to {l_lo:.3g}"
    )


def summary_fig6(result: dict[str, Any]) -> tuple[str, str]:
    last = result["decay"][-1]
    n = result.get("input_dim")
    zeros = (
        ""
        if not n
        else (
            f"; layer {layer_block(last)} keeps a median of {last['rank']:g} non-zero "
            f"singular values of {n:,}"
        )
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
            f"the ReLU of layer {layer_block(pair['after'])} (legend {layer_number(pair['after'])}) "
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


# --- Figure 9 --------------------------------------------------------------------------------


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


# --- Figures 7 / 12 and 7x -------------------------------------------------------------------


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
        "sample; y: number of test samples; one curve per kind of preimage of that layer, solid "
        "for the exact engine, dashed for the literal Algorithm 1 (on the samples it decided)."
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
