"""Imagen in miniature, part 4: one small figure per finding, drawn from findings.json (see findings.py).

Each figure shows, per arm, the mean over seeds with the seed-to-seed std as error bars: per prompt set for
the base-stage findings (mean per-object attribute accuracy, with the level random attributes reach as a
dotted line, and all-correct), and for the SR finding the
measured seconds per step, the steps each arm got in the same minutes, and what they reached.
PNG at 72 dpi (a few tens of kB each).

Contents: `chance_attribute_accuracy`, `plot_finding`, `plot_findings`.
"""
from __future__ import annotations

from pathlib import Path

DPI = 72


def chance_attribute_accuracy() -> float:
    """Attribute accuracy of one object drawn with uniformly random attributes: the mean over colour, shape,
    size, material and position of 1 / (number of values). About 0.35 for the scenes domain."""
    from ..data.scenes_render import COLORS, MATERIALS, POSITIONS, SHAPES, SIZES
    return sum(1 / len(v) for v in (COLORS, SHAPES, SIZES, MATERIALS, POSITIONS)) / 5


def _chance(ax) -> None:
    ax.axhline(chance_attribute_accuracy(), color="0.4", ls=":", lw=1, label="random attributes")


def _bars(ax, arms: dict, names: list[str], groups: list[str], value, title: str) -> None:
    """Grouped bars: one group per entry of `groups`, one bar per arm; value(arm, group) -> stats dict."""
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        stats = [value(arms[name], g) for g in groups]
        means = [s["mean"] if s and s["mean"] is not None else 0.0 for s in stats]
        stds = [s["std"] if s and s["std"] is not None else 0.0 for s in stats]
        ax.bar([j + (i - (len(names) - 1) / 2) * width for j in range(len(groups))], means, width, yerr=stds,
               capsize=2, label=name.replace("_", " "))
    ax.set_xticks(range(len(groups)), [g.replace("_", "\n") for g in groups], fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)


def plot_finding(name: str, entry: dict, path: str | Path) -> Path | None:
    """Draw finding `name` of findings.json to `path`; None if it has no trained arms yet."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = {a: d for a, d in entry.get("arms", {}).items() if not d.get("missing")}
    if len(arms) < 2:
        return None
    names = [entry["baseline"]] + [a for a in arms if a != entry["baseline"]]
    names = [n for n in names if n in arms]
    if name == "efficient_unet":
        fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.4))
        for ax, (key, label) in zip(axes[:2], (("step_s", "seconds per step (measured)"), ("steps", "steps in "
                                                                                         "the same minutes"))):
            vals = [arms[n][key]["mean"] if isinstance(arms[n][key], dict) else arms[n][key] for n in names]
            ax.bar(range(len(names)), vals, color=["C0", "C1", "C2"][:len(names)])
            ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], fontsize=7)
            ax.set_title(label, fontsize=8)
            ax.tick_params(labelsize=7)
        sets = list(arms[names[0]]["by_set"])
        _bars(axes[2], arms, names, sets, lambda d, g: d["by_set"][g]["attributes"], "attribute accuracy of 64-px")
        _chance(axes[2])
    else:
        sets = list(arms[names[0]]["by_set"])
        fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.6))
        _bars(axes[0], arms, names, sets, lambda d, g: d["by_set"][g]["attributes"],
              "attribute accuracy (mean +- std over seeds)")
        _chance(axes[0])
        _bars(axes[1], arms, names, sets, lambda d, g: d["by_set"][g]["all_correct"], "all correct")
        axes[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{entry['title']} ({entry['paper']})", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_findings(summary: dict, out: str | Path) -> list[Path]:
    """One PNG per finding of `summary` (findings.json) in `out`, named after the finding."""
    paths = []
    for name, entry in summary["findings"].items():
        path = plot_finding(name, entry, Path(out) / f"{name}.png")
        if path is not None:
            paths.append(path)
    return paths
