"""The audit's figures: rank correlation against randomisation depth (sanity), and the mean ROAD curves."""

from __future__ import annotations

from matplotlib.figure import Figure

from pneumocam.explain.audit_result import AuditResult
from pneumocam.plots import plt  # pyplot without a display, set up there for every figure


def sanity_figure(audit: AuditResult) -> Figure:
    """Median |Spearman rho| against randomisation depth: one panel per method, one line per layer.

    Every method is measured once the head is random; the deeper stages for the model's default alone.
    """
    methods = audit.methods
    stages = audit.randomisation_stages
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), sharey=True, squeeze=False)
    for ax, m in zip(axes[0], methods):
        for layer, entry in audit.sanity[m].items():
            done = [k for k, s in enumerate(stages) if s in entry.rho]
            ax.plot(done, [entry.rho[stages[k]] for k in done], marker="o", label=layer)
        ax.axhline(audit.sanity_threshold, color="grey", ls="--", lw=1)
        ax.set_xticks(range(len(stages)), [f"+{s}" for s in stages], rotation=30, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(m, fontsize=10)
    axes[0][0].set_ylabel("median |Spearman rho| with the trained map")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Cascading randomisation (head first): a faithful map changes", fontsize=10)
    fig.tight_layout()
    return fig


def audit_curves_figure(audit: AuditResult) -> Figure:
    """Mean ROAD curves of each candidate (recommended layer set) and the two baselines, both orders."""
    panels = (
        ("morf", "ROAD, most relevant first", "removed and imputed, most relevant first"),
        ("lerf", "ROAD, least relevant first", "removed and imputed, least relevant first"),
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    entries = audit.road
    for ax, (mode, title, xlabel) in zip(axes.ravel(), panels):
        for name in [*audit.methods, "random", "center"]:
            if name not in entries:  # failed sanity on every layer set: not measured
                continue
            entry = entries[name]
            source = entry["sets"][entry["layer_set"]] if "sets" in entry else entry
            curve = source[f"{mode}_curve"]
            x = [0.0, *entries["shares"]]
            style = "--" if name in ("random", "center") else "-"
            ax.plot(x, curve, style, label=f"{name} ({entry[f'{mode}_auc']:.3f})", linewidth=1.2)
        ax.set_xlabel(f"share of pixels {xlabel}")
        ax.set_ylabel("probability of the explained class")
        ax.set_ylim(0, 1)
        ax.set_title(f"{title} (area in brackets)", fontsize=10)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
