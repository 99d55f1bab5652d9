"""Comparing evaluation reports: side-by-side text and Markdown tables, a PNG bar chart."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from .report import EvalReport

log = logging.getLogger(__name__)


#: (section, title, metric keys in :meth:`EvalReport.flat` order, "lower is the goal")
_SECTIONS = (
    ("forgetting", "Forgetting (washed facts: lower is better)", ("facts.",)),
    ("retention", "Retention (controls, neighbourhood, fluency)", ("controls.", "fluency.")),
    ("reasoning", "Reasoning", ("reasoning.",)),
)
_RATE_METRICS = ("acc", "acc_norm", "qa_f1", "f1_positive", "exact_match", "exact_match_strict")


def _section(key: str) -> str:
    if key.startswith("facts.neighbourhood."):
        return "retention"  # neighbourhood prompts of washed facts must keep working
    for section, _, prefixes in _SECTIONS:
        if key.startswith(prefixes):
            return section
    return "other"


def _format(key: str, value: float | None) -> str:
    if value is None:
        return "—"
    if key.rsplit(".", 1)[-1] in _RATE_METRICS:
        return f"{100 * value:.1f}%"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def _rows(reports: Sequence[EvalReport]) -> list[tuple[str, str, list[float | None]]]:
    """(section, metric key, value per report) for every metric any report has, by section."""
    flats = [r.flat() for r in reports]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    order = {s: i for i, (s, _, _) in enumerate(_SECTIONS)}
    keys.sort(key=lambda k: order.get(_section(k), len(order)))
    return [(_section(k), k, [f.get(k) for f in flats]) for k in keys]


def _names(reports: Sequence[EvalReport], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(reports):
            raise ValueError(f"{len(labels)} labels for {len(reports)} reports")
        return list(labels)
    return [r.name for r in reports]


def text_table(reports: Sequence[EvalReport], labels: Sequence[str] | None = None) -> str:
    """A side-by-side plain-text table of the reports' metrics (rates in %)."""
    names = _names(reports, labels)
    rows = _rows(reports)
    width = max([len(k) for _, k, _ in rows] + [6])
    cols = [max(len(n), 8) for n in names]
    lines = [" " * width + "".join(f"  {n:>{c}}" for n, c in zip(names, cols))]
    current = None
    for section, key, values in rows:
        if section != current:
            lines.append(f"[{section}]")
            current = section
        lines.append(f"{key:<{width}}" + "".join(f"  {_format(key, v):>{c}}" for v, c in zip(values, cols)))
    return "\n".join(lines)


def markdown_table(reports: Sequence[EvalReport], labels: Sequence[str] | None = None) -> str:
    """The same table in Markdown, with the settings that shape the numbers underneath."""
    names = _names(reports, labels)
    out = ["| section | metric | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for section, key, values in _rows(reports):
        out.append(f"| {section} | `{key}` | " + " | ".join(_format(key, v) for v in values) + " |")
    out.append("")
    for name, report in zip(names, reports):
        s = report.settings
        out.append(
            f"- **{name}**: model `{report.model}`, limit {s.get('limit')}, seed {s.get('seed')}, "
            f"reasoning by {s.get('reasoning_backend')}, {report.created}"
        )
    return "\n".join(out) + "\n"


def plot_comparison(
    reports: Sequence[EvalReport], path: str | os.PathLike, labels: Sequence[str] | None = None
) -> Path:
    """A PNG bar chart: forgetting (washed facts' Acc / QA-F1), retention (controls,
    neighbourhood), reasoning (task accuracies), fluency (perplexity), one colour per report.
    Needs matplotlib (``pip install law-fast[plot]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ModuleNotFoundError("plotting needs matplotlib: pip install 'law-fast[plot]' (or matplotlib)") from err
    names = _names(reports, labels)
    rows = _rows(reports)
    panels = []
    plotted = ("acc", "acc_norm", "qa_f1", "exact_match")  # f1_positive and the strict gsm8k rate: tables only
    for section, title, _ in _SECTIONS:
        keys = [(k, v) for s, k, v in rows if s == section and k.rsplit(".", 1)[-1] in plotted]
        if keys:
            panels.append((title, keys, True))
    ppl = [(k, v) for _, k, v in rows if k == "fluency.perplexity"]
    if ppl:
        panels.append(("Perplexity (lower is better)", ppl, False))
    if not panels:
        raise ValueError("the reports hold no metric to plot")
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(6, 4.2 * len(panels)), 4.6),
        squeeze=False,
        gridspec_kw={"width_ratios": [max(2, len(k)) for _, k, _ in panels]},
    )
    bar = 0.8 / len(reports)
    for ax, (title, keys, rate) in zip(axes[0], panels):
        for j, name in enumerate(names):
            values = [(v[j] if v[j] is not None else float("nan")) * (100 if rate else 1) for _, v in keys]
            ax.bar([i + (j - (len(names) - 1) / 2) * bar for i in range(len(keys))], values, bar, label=name)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(
            [
                k.removeprefix("facts.").removeprefix("reasoning.")
                if k.startswith(("facts.", "reasoning.")) and not k.startswith("facts.neighbourhood")
                else k
                for k, _ in keys
            ],
            rotation=35,
            ha="right",
            fontsize=8,
        )
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("%" if rate else "perplexity")
        if rate:
            ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    handles, names_shown = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names_shown, loc="upper center", ncol=min(len(names), 6), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
