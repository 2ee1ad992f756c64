"""Pictures of a Result: the pipeline timeline (bubbles visible) and the latency CDFs.

Figures are built without pyplot, so importing this module never changes a notebook's backend, and
saving a file needs no display.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch

from splitsim.sim.result import Result, layout_label

COLORS = {"compute": "#2b7bba", "tp_comm": "#e8a33d", "pp_comm": "#8e5bb5", "ep_comm": "#3c9d5d",
          "bubble": "#d9534f", "idle": "#e6e6e6"}


@contextmanager
def any_text() -> Iterator[None]:
    """Lay out and draw text holding characters the font lacks (a scenario's name, a sweep's values: users type
    anything) as boxes, without matplotlib's warning for each missing glyph."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        yield


def save_figure(fig: Figure, path: Path) -> None:
    with any_text():
        fig.savefig(path, dpi=110)


def timeline_figure(result: Result) -> Figure:
    """One row per GPU over the recorded window, coloured by what the GPU was doing."""
    intervals = result.gpu_intervals
    gpus = sorted(intervals["gpu"].unique())
    fig = Figure(figsize=(11, 0.45 * len(gpus) + 1.6))
    ax = fig.subplots()
    for row, gpu in enumerate(gpus):
        mine = intervals[intervals["gpu"] == gpu]
        for category, part in mine.groupby("category"):
            spans = list(zip(part["start_s"] * 1e3, (part["end_s"] - part["start_s"]) * 1e3))
            ax.broken_barh(spans, (row - 0.4, 0.8), facecolors=COLORS[str(category)], linewidth=0)
    ax.set_yticks(range(len(gpus)), [f"GPU {g}" for g in gpus])
    ax.invert_yaxis()
    ax.set_xlabel("simulated time (ms)")
    ax.set_xlim(result.window[0] * 1e3, result.window[1] * 1e3)
    s = result.summary["parallel"]
    ax.set_title(f"{result.scenario_name}: {layout_label(s)}, "
                 f"{result.window[0]:g}–{result.window[1]:g} s")
    ax.legend(handles=[Patch(color=c, label=k) for k, c in COLORS.items()], ncol=6,
              loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    with any_text():
        fig.tight_layout()
    return fig


def latency_cdf_figure(result: Result) -> Figure:
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    for ax, (column, label) in zip(axes, (("ttft_s", "TTFT (s)"), ("tpot_s", "TPOT (s)"), ("e2e_s", "E2E (s)"))):
        data = result.requests[column].dropna().sort_values()
        ax.plot(data.to_numpy(), [(i + 1) / len(data) for i in range(len(data))], label=result.scenario_name)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    with any_text():
        fig.tight_layout()
    return fig


def save_timeline(result: Result, path: Path) -> None:
    save_figure(timeline_figure(result), path)
