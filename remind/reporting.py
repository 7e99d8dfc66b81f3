"""Tables and plots of accuracy against a stream position (classes seen, questions seen), shared by all experiments."""
from __future__ import annotations

import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from remind.checkpoint import atomic_write  # noqa: E402


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of string cells: the header, its rule, one line per row."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def format_table(runs: dict[str, dict], classes: list[int], metrics=("seen_classes_top1", "seen_classes_top5")) -> str:
    """Markdown table: one row per evaluation, one column per (run, metric)."""
    header = ["classes"] + [f"{name} {metric.replace('_classes', '').replace('_', ' ')}"
                            for name in runs for metric in metrics]
    rows = []
    for row, count in enumerate(classes):
        cells = [str(count)]
        for accuracies in runs.values():
            for metric in metrics:
                values = accuracies.get(metric, [])
                cells.append(f"{values[row]:.2f}" if row < len(values) else "")
        rows.append(cells)
    return markdown_table(header, rows)


def plot_accuracies(runs: dict[str, dict], classes: list[int], path: str | Path,
                    metrics=("seen_classes_top1", "seen_classes_top5"), xlabel: str = "classes seen") -> None:
    """PNG of seen-class accuracy against ``classes`` (the x values), one line per run and metric."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for name, accuracies in runs.items():
            values = accuracies.get(metric, [])
            axis.plot(classes[:len(values)], values, marker="o", label=name)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    try:  # through the one atomic writer: a full disk is one line and the previous plot stays
        atomic_write(path, lambda handle: fig.savefig(handle, dpi=120, format="png"))
    finally:
        plt.close(fig)


def git_commit() -> str:
    """The checkout's short commit hash, printed at the top of every run's log ("unknown" outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
