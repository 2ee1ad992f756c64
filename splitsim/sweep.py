"""`splitsim sweep`: one scenario, a grid of overrides, one row per point.

`--grid key=v1,v2` gives a key its values (each parsed as YAML, as `--set` parses them); a bracketed value
is a YAML flow list, for values that hold commas (`--grid 'workload.output_tokens=[64, {dist: uniform,
low: 1, high: 128}]'`). Points are the product of the grids in the order given (the first key slowest).
Each point is a full simulation, in a process pool or on a Ray cluster (tasks carry the point's scenario
with its model and cluster specs resolved here); a point the simulator refuses is a row with its `error`.
`sweep.csv` holds only figures that depend on the scenario and seed (wall time goes to run.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from splitsim.errors import ScenarioError
from splitsim.files import cut, parse_yaml_text
from splitsim.workers import add_workers_flags, workers_for
from splitsim.writing import check_out_path, replace_folder


def parse_grid(items: list[str]) -> list[tuple[str, list[Any]]]:
    """`key=v1,v2` or `key=[v1, v2]` items as (key, values), each value parsed as YAML."""
    grid: list[tuple[str, list[Any]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw.strip():
            raise ScenarioError(f"--grid {cut(repr(item))}: expected key.path=v1,v2 or key.path=[v1, v2]")
        if raw.strip().startswith("["):
            values = parse_yaml_text(raw, f"--grid {cut(key)}")
            if not isinstance(values, list) or not values:
                raise ScenarioError(f"--grid {cut(key)}: {cut(raw)} is not a non-empty YAML flow list")
        else:
            values = [parse_yaml_text(text, f"--grid {cut(key)}") for text in raw.split(",")]
        if key in {k for k, _ in grid}:
            raise ScenarioError(f"--grid {cut(key)}: given twice (give every value in one --grid)")
        grid.append((key, values))
    return grid


def points(grid: list[tuple[str, list[Any]]]) -> list[dict[str, Any]]:
    keys = [key for key, _ in grid]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(values for _, values in grid))]


def point_task(path: str | Path, point: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """What a worker needs for one point: its grid values and its scenario, resolved (or why it has none)."""
    from splitsim.scenario import load_scenario
    from splitsim.sim.plan import resolve_inputs

    try:
        scenario = load_scenario(path, [f"{key}={json.dumps(value)}" for key, value in point.items()])
        return point, resolve_inputs(scenario)
    except ScenarioError as err:
        return point, str(err)


def run_point(task: tuple[dict[str, Any], Any]) -> dict[str, Any]:
    """One point's row: its grid values, then every summary figure (flattened), or its error."""
    from splitsim.api import simulate
    from splitsim.sim.result import flatten

    point, scenario = task
    row: dict[str, Any] = {key: _cell(value) for key, value in point.items()}
    if isinstance(scenario, str):  # refused when its scenario was read
        return {**row, "error": scenario}
    try:
        result = simulate(scenario, trace_window_s=0.0)
    except ScenarioError as err:
        return {**row, "error": str(err)}
    return {**row, "error": "", **flatten({k: v for k, v in result.summary.items() if k != "scenario"})}


def _cell(value: Any) -> Any:
    return value if isinstance(value, int | float | str) and not isinstance(value, bool) else json.dumps(value)


def sweep(path: str | Path, grid: list[tuple[str, list[Any]]], jobs: int | None = None, ray: str | None = None,
          on_done: Callable[[], None] | None = None) -> Any:
    """The grid's points simulated (in `jobs` processes, default every core; or on the Ray cluster at `ray`),
    as a DataFrame in grid order."""
    import pandas as pd

    tasks = [point_task(path, point) for point in points(grid)]
    rows: list[dict[str, Any]] = []
    with workers_for(min(jobs or os.cpu_count() or 1, len(tasks)), ray) as workers:
        futures = [workers.submit(run_point, task) for task in tasks]
        for future in futures:
            rows.append(future.result())
            if on_done is not None:
                on_done()
    return pd.DataFrame(rows)


def add_parser(sub: argparse._SubParsersAction, positive_int: Any) -> None:
    parser = sub.add_parser("sweep", help="simulate a scenario over a grid of overrides",
                            description="One row per point of the grid (the product of every --grid, the first "
                                        "slowest) in sweep.csv, with a plot of output throughput.")
    parser.add_argument("scenario", type=Path, help="scenario YAML")
    parser.add_argument("--grid", action="append", required=True, metavar="KEY=V1,V2",
                        help="a key's values; a bracketed value is a YAML flow list: key=[a, {b: 1, c: 2}]")
    add_workers_flags(parser, positive_int)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--out", type=Path, help="output folder (default: runs/sweep-<scenario>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from splitsim.csvfile import write_csv
    from splitsim.scenario import load_scenario

    grid = parse_grid(args.grid)
    load_scenario(args.scenario)  # the base scenario itself reads, before any point runs
    out_dir = args.out or Path("runs") / f"sweep-{args.scenario.stem}"
    check_out_path(out_dir)
    started = time.perf_counter()
    with tqdm(total=math.prod(len(values) for _, values in grid), unit="point", desc="simulating", leave=False,
              disable=args.quiet or None, file=sys.stderr) as bar:
        table = sweep(args.scenario, grid, args.jobs, args.ray, on_done=bar.update)
    wall = time.perf_counter() - started

    keys = [key for key, _ in grid]
    written = ["sweep.csv", "run.json"]
    if importlib.util.find_spec("pyarrow") is not None:
        written.append("sweep.parquet")
    if "throughput_tokens_per_s" in table:
        written += ["sweep.png", "sweep-heatmap.png"] if len(keys) > 1 else ["sweep.png"]

    def write(folder: Path) -> None:
        from splitsim.plots import save_figure  # matplotlib: only when a figure is written

        write_csv(table, folder / "sweep.csv")
        (folder / "run.json").write_text(json.dumps({"scenario": str(args.scenario), "grid": args.grid,
                                                     "points": len(table), "wall_time_s": wall}, indent=2) + "\n")
        if "sweep.parquet" in written:
            parquet_table(table, keys).to_parquet(folder / "sweep.parquet", index=False)
        if "sweep.png" in written:
            save_figure(sweep_figure(table, keys), folder / "sweep.png")
        if "sweep-heatmap.png" in written:
            save_figure(heatmap_figure(table, keys), folder / "sweep-heatmap.png")

    replace_folder(out_dir, write)
    failed = int((table["error"] != "").sum())
    print(f"{len(table)} points in {wall:.1f} s ({failed} refused: see the error column); "
          f"wrote {out_dir}/: {', '.join(written)}")
    return 0


def parquet_table(table: Any, keys: list[str]) -> Any:
    """The table for Parquet, whose columns hold one type: a grid column mixing numbers and other values
    (e.g. 64 and a distribution) as text, as sweep.csv shows them."""
    mixed = [key for key in keys if table[key].map(type).nunique() > 1]
    return table.astype({key: str for key in mixed})


def heatmap_figure(table: Any, keys: list[str]) -> Any:
    """Output throughput over the first two grid keys, one panel per value of the others (up to six); a
    refused point is a blank cell."""
    from matplotlib.figure import Figure

    from splitsim.plots import any_text

    rest = keys[2:]
    groups = list(table.groupby(rest, sort=False)) if rest else [("", table)]
    shown = groups[:6]
    fig = Figure(figsize=(5 * len(shown), 4.2))
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    for ax, (label, part) in zip(axes, shown):
        grid = part.pivot_table(index=keys[1], columns=keys[0], values="throughput_tokens_per_s", sort=False,
                                aggfunc="first", dropna=False)
        image = ax.imshow(grid.to_numpy(dtype=float), cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(grid.shape[1]), [str(v) for v in grid.columns], rotation=30, fontsize=8)
        ax.set_yticks(range(grid.shape[0]), [str(v) for v in grid.index], fontsize=8)
        ax.set_xlabel(keys[0])
        ax.set_ylabel(keys[1])
        for (i, j), value in np.ndenumerate(grid.to_numpy(dtype=float)):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7, color="white")
        values = label if isinstance(label, tuple) else (label,)
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(rest, values, strict=False)) or "output tokens/s",
                     fontsize=9)
        fig.colorbar(image, ax=ax, label="output tokens/s")
    if len(groups) > len(shown):
        fig.suptitle(f"first {len(shown)} of {len(groups)} panels (every point is in sweep.csv)", fontsize=9)
    with any_text():
        fig.tight_layout()
    return fig


def sweep_figure(table: Any, keys: list[str]) -> Any:
    """Output throughput and TPOT p50 against the first grid key, one line per value of the others."""
    from matplotlib.figure import Figure

    from splitsim.plots import any_text

    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    ok = table[table["error"] == ""]
    groups = ok.groupby(keys[1:], sort=False) if len(keys) > 1 else [("", ok)]
    for label, part in groups:
        name = ", ".join(f"{k}={v}" for k, v in zip(keys[1:], label if isinstance(label, tuple) else (label,),
                                                    strict=False)) or "all"
        x = [str(v) for v in part[keys[0]]]
        axes[0].plot(x, part["throughput_tokens_per_s"], "o-", label=name)
        axes[1].plot(x, [1e3 * v if isinstance(v, float) and not math.isnan(v) else None
                         for v in part["tpot_s.p50"]], "o-", label=name)
    axes[0].set_ylabel("output tokens/s")
    axes[1].set_ylabel("TPOT p50 (ms)")
    for ax in axes:
        ax.set_xlabel(keys[0])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    with any_text():
        fig.tight_layout()
    return fig
