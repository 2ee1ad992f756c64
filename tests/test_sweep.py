"""`splitsim sweep`: the grid's points in order, each a row of its run's figures or its error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from helpers import error_line
from splitsim import load_scenario, simulate
from splitsim.cli import main
from splitsim.sweep import parse_grid, points

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "h100-nvlink-70b.yaml"


def test_grid_values_parse_as_yaml_and_brackets_hold_commas():
    grid = parse_grid(["parallel.tp=2,4", "workload.output_tokens=[64, {dist: uniform, low: 1, high: 8}]"])
    assert grid == [("parallel.tp", [2, 4]),
                    ("workload.output_tokens", [64, {"dist": "uniform", "low": 1, "high": 8}])]
    assert points(grid) == [  # the first key slowest
        {"parallel.tp": 2, "workload.output_tokens": 64},
        {"parallel.tp": 2, "workload.output_tokens": {"dist": "uniform", "low": 1, "high": 8}},
        {"parallel.tp": 4, "workload.output_tokens": 64},
        {"parallel.tp": 4, "workload.output_tokens": {"dist": "uniform", "low": 1, "high": 8}},
    ]


def test_sweep_rows_are_the_runs_of_their_points_in_grid_order(tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", str(SCENARIO), "--grid", "parallel.tp=3,8", "--grid",
                 "workload.num_requests=30,60", "--jobs", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out / "sweep.csv", keep_default_na=False)
    assert table[["parallel.tp", "workload.num_requests"]].values.tolist() == [[3, 30], [3, 60], [8, 30], [8, 60]]
    assert table["error"].iloc[0].startswith("parallel.tp = 3") and table["error"].iloc[1] != ""  # 64 heads
    assert (table["error"].iloc[2:] == "").all()
    direct = simulate(load_scenario(SCENARIO, ["parallel.tp=8", "workload.num_requests=60"])).summary
    assert float(table["throughput_tokens_per_s"].iloc[3]) == direct["throughput_tokens_per_s"]  # %.17g: exact
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "sweep-heatmap.png", "sweep.csv", "sweep.parquet",
                                                     "sweep.png"]
    parquet = pd.read_parquet(out / "sweep.parquet")  # the same table, typed
    assert parquet["throughput_tokens_per_s"].iloc[3] == direct["throughput_tokens_per_s"]
    assert parquet["error"].tolist() == table["error"].tolist() and list(parquet.columns) == list(table.columns)


def test_a_grid_mixing_numbers_and_mappings_is_text_in_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "sweep"
    assert main(["sweep", str(SCENARIO), "--grid", "workload.output_tokens=[16, {dist: uniform, low: 8, high: 24}]",
                 "--grid", "workload.num_requests=20", "--jobs", "1", "--out", str(out), "-q"]) == 0
    column = pd.read_parquet(out / "sweep.parquet")["workload.output_tokens"]
    assert column.tolist() == ["16", '{"dist": "uniform", "low": 8, "high": 24}']


def test_a_grid_value_the_font_cannot_draw_still_gives_figures(tmp_path):
    """Found by the fuzz suite: a name holding U+058B (no glyph in DejaVu Sans) made matplotlib warn at layout,
    which this suite's warnings-as-errors turned into a failure; the figures draw it as a box, silently."""
    out = tmp_path / "sweep"
    assert main(["sweep", str(SCENARIO), "--grid", "name=\u058b,b", "--grid", "workload.num_requests=10",
                 "--jobs", "1", "--out", str(out), "-q"]) == 0
    assert (out / "sweep.png").is_file() and (out / "sweep-heatmap.png").is_file()


@pytest.mark.parametrize(("grid", "words"), [
    ("parallel.tp", "expected key.path=v1,v2"), ("parallel.tp=[]", "not a non-empty YAML flow list"),
    ("x=[1, 2", "--grid x"),
])
def test_bad_grids_are_one_line(tmp_path, capsys, grid, words):
    err = error_line(capsys, ["sweep", str(SCENARIO), "--grid", grid, "--out", str(tmp_path / "s")])
    assert words in err
    assert not (tmp_path / "s").exists()
