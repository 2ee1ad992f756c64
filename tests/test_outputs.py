"""What `splitsim run` writes: files, reproducibility, and a summary that the rows reproduce."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import scenario_dict
from splitsim.cli import main


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    scenario = folder / "small.yaml"
    scenario.write_text(yaml.safe_dump(scenario_dict(
        name="small", parallel={"tp": 2, "pp": 2, "dp": 2},
        workload={"num_requests": 40, "rate": 30.0, "prompt_tokens": {"dist": "uniform", "low": 16, "high": 600},
                  "output_tokens": {"dist": "uniform", "low": 1, "high": 30}},
        scheduler={"policy": "chunked", "max_batched_tokens": 256})))
    outs = []
    for name in ("a", "b"):
        assert main(["run", str(scenario), "--out", str(folder / name), "--trace-window", "1000", "-q"]) == 0
        outs.append(folder / name)
    return outs


def test_run_writes_every_output(small_run):
    names = {p.name for p in small_run[0].iterdir()}
    assert {"summary.json", "requests.csv", "gpus.csv", "trace.json", "timeline.png", "run.json"} <= names


def test_summary_and_requests_are_byte_identical_across_runs(small_run):
    a, b = small_run
    for name in ("summary.json", "requests.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_summary_is_what_the_rows_give(small_run):
    summary = json.loads((small_run[0] / "summary.json").read_text())
    rows = pd.read_csv(small_run[0] / "requests.csv")
    assert list(rows.columns) == ["request_id", "arrival_s", "first_token_s", "finish_s", "prompt_tokens",
                                  "output_tokens", "ttft_s", "tpot_s", "e2e_s", "replica", "queue_s", "preemptions",
                                  "itl_max_s"]
    assert summary["num_requests"] == len(rows)
    assert summary["sim_time_s"] == rows["finish_s"].max()
    duration = rows["finish_s"].max() - rows["arrival_s"].min()  # first arrival to last finish
    assert summary["duration_s"] == pytest.approx(duration, rel=1e-15)
    assert summary["throughput_tokens_per_s"] == pytest.approx(rows["output_tokens"].sum() / duration, rel=1e-14)
    assert summary["input_throughput_tokens_per_s"] == pytest.approx(rows["prompt_tokens"].sum() / duration,
                                                                     rel=1e-14)
    assert summary["total_throughput_tokens_per_s"] == pytest.approx(
        (rows["prompt_tokens"].sum() + rows["output_tokens"].sum()) / duration, rel=1e-14)
    for metric in ("ttft_s", "tpot_s", "e2e_s"):
        values = rows[metric].dropna().to_numpy()
        expected = [values.mean(), *np.percentile(values, [50, 90, 99]), np.sqrt(((values - values.mean())**2).mean())]
        got = [summary[metric][k] for k in ("mean", "p50", "p90", "p99", "std")]
        assert got == pytest.approx(expected, rel=1e-12)
    assert ((rows["queue_s"] >= 0) & (rows["queue_s"] <= rows["ttft_s"])).all()
    assert set(rows["replica"]) == {0, 1}
    np.testing.assert_allclose(rows["e2e_s"], rows["finish_s"] - rows["arrival_s"], rtol=1e-12)
    assert summary["parallel"] == {"tp": 2, "pp": 2, "dp": 2, "ep": 1}


def test_gpu_intervals_tile_the_run_and_match_the_fractions(small_run):
    summary = json.loads((small_run[0] / "summary.json").read_text())
    intervals = pd.read_csv(small_run[0] / "gpus.csv")
    assert sorted(intervals["gpu"].unique()) == list(range(8))
    span = summary["sim_time_s"]
    for _, mine in intervals.groupby("gpu"):
        starts, ends = mine["start_s"].to_numpy(), mine["end_s"].to_numpy()
        assert starts[0] == 0.0 and ends[-1] == pytest.approx(span, rel=1e-12)
        np.testing.assert_allclose(starts[1:], ends[:-1], rtol=0, atol=1e-12)  # no gaps, no overlaps
        same = mine["category"].to_numpy()
        assert not (same[1:] == same[:-1]).any()  # adjacent intervals of one category are merged
    seconds = (intervals["end_s"] - intervals["start_s"]).groupby(intervals["category"]).sum()
    for category, fraction in summary["gpu_time_fraction"].items():
        assert seconds.get(category, 0.0) / (8 * span) == pytest.approx(fraction, abs=1e-9)


def test_trace_is_chrome_complete_events(small_run):
    trace = json.loads((small_run[0] / "trace.json").read_text())["traceEvents"]
    complete = [e for e in trace if e["ph"] == "X"]
    assert complete and {e["cat"] for e in complete} <= {"compute", "tp_comm", "pp_comm"}
    assert {e["tid"] for e in complete} == set(range(8))
    assert all(e["dur"] >= 0 for e in complete)


def test_trace_window_keeps_long_runs_small(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(scenario_dict(workload={"num_requests": 50, "rate": 50.0,
                                                               "prompt_tokens": 100, "output_tokens": 50})))
    assert main(["run", str(scenario), "--out", str(tmp_path / "o"), "--trace-window", "0.5", "-q",
                 "--no-plot"]) == 0
    trace = json.loads((tmp_path / "o" / "trace.json").read_text())["traceEvents"]
    assert max(e["ts"] for e in trace if e["ph"] == "X") < 0.5e6
    intervals = pd.read_csv(tmp_path / "o" / "gpus.csv")
    assert intervals["end_s"].max() == pytest.approx(0.5)


def test_the_trace_window_can_start_later(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(scenario_dict(workload={"num_requests": 50, "rate": 5.0,
                                                               "prompt_tokens": 100, "output_tokens": 50})))
    assert main(["run", str(scenario), "--out", str(tmp_path / "o"), "--trace-start", "3", "--trace-window", "1",
                 "-q"]) == 0
    intervals = pd.read_csv(tmp_path / "o" / "gpus.csv")
    assert intervals["start_s"].min() == pytest.approx(3.0)
    assert intervals["end_s"].max() == pytest.approx(4.0)
    trace = json.loads((tmp_path / "o" / "trace.json").read_text())["traceEvents"]
    complete = [e for e in trace if e["ph"] == "X"]
    assert all(e["ts"] + e["dur"] > 3e6 and e["ts"] < 4e6 for e in complete)


def test_console_says_what_vllm_says_at_start_up_and_notes_go_to_stdout(tmp_path, capsys):
    """The KV cache's maximum concurrency at the workload's longest request, as vLLM logs it (blocks over
    ceil(tokens / block_size)); a deprecation note on stdout, stderr left empty."""
    from splitsim.sim.plan import build_plan

    data = scenario_dict(workload={"num_requests": 5, "rate": 0, "prompt_tokens": 100, "output_tokens": 21})
    data["scheduler"] = {"chunked_prefill": True, "max_batched_tokens": 256}  # the alias, alone
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(data))
    assert main(["run", str(scenario), "--out", str(tmp_path / "o"), "-q", "--no-plot"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "note: scheduler.chunked_prefill is deprecated: use scheduler.policy: chunked" in out
    from splitsim.scenario import load_scenario

    blocks = build_plan(load_scenario(scenario)).pool.kv_cache_tokens // 16
    assert f"maximum concurrency for 121 tokens per request: {blocks / 8:.2f}x" in out  # 121 tokens: 8 blocks


class _Interrupted(Exception):
    pass


def test_an_interrupted_write_leaves_the_old_result_the_new_one_or_nothing(tmp_path):
    """The writer is stopped after each of its steps in turn (a hook, not a timed kill): the folder is then
    exactly the old result, exactly the new one, or absent; the next run clears what the stopped one left."""
    from splitsim import simulate
    from splitsim.report import write_outputs
    from splitsim.scenario import scenario_from_dict

    result = simulate(scenario_from_dict(scenario_dict()), trace_window_s=1.0)
    out = tmp_path / "runs" / "r"
    steps: list[str] = []
    write_outputs(result, out, {"run": "new"}, on_step=steps.append)
    new_files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "old result moved aside" not in steps and steps[-1] == "new result in place"

    def old_result() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / "summary.json").write_text("old")
        (out / "timeline.png").write_text("old")  # a file the new run writes too
        (out / "stale.txt").write_text("old")  # and one it does not

    seen = set()
    all_steps = [*steps[:-1], "old result moved aside", steps[-1]]
    for stop_at in all_steps:
        old_result()

        def hook(label: str, stop_at: str = stop_at) -> None:
            if label == stop_at:
                raise _Interrupted

        with pytest.raises(_Interrupted):
            write_outputs(result, out, {"run": "new"}, on_step=hook)
        if not out.exists():
            seen.add("absent")
        elif (out / "stale.txt").exists():
            assert {p.name for p in out.iterdir()} == {"summary.json", "timeline.png", "stale.txt"}
            seen.add("old")
        else:
            assert {p.name: p.read_bytes() for p in out.iterdir()} == new_files
            seen.add("new")
        write_outputs(result, out, {"run": "new"})  # the next run: complete, and no leftovers beside it
        assert {p.name: p.read_bytes() for p in out.iterdir()} == new_files
        assert [p.name for p in out.parent.iterdir()] == ["r"]
    assert seen == {"old", "absent", "new"}  # every state reached, and only these


def test_a_run_into_an_existing_folder_keeps_no_file_of_the_previous_run(tmp_path):
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(scenario_dict()))
    out = tmp_path / "o"
    assert main(["run", str(scenario), "--out", str(out), "-q"]) == 0
    assert (out / "timeline.png").exists()
    assert main(["run", str(scenario), "--out", str(out), "-q", "--no-plot"]) == 0
    assert not (out / "timeline.png").exists()  # a stale picture of the first run would mislead
