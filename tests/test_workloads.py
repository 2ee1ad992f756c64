"""Workloads: the closed loop, trace replay, the load-kind options, burstiness, seeds and rows from Python.
Expected values come from closed forms, the csv module or hand calculations, never from splitsim's own code."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import REFERENCE_DATA, error_line, ideal_cluster, ideal_step_s, scenario_dict, tiny_model_path
from splitsim import simulate
from splitsim.cli import main
from splitsim.errors import ScenarioError
from splitsim.models.ops import BatchShape
from splitsim.report import write_outputs
from splitsim.scenario import Workload, load_scenario, scenario_from_dict
from splitsim.sim.workload import arrival_times, synthetic_stream

TRACES = REFERENCE_DATA / "traces"
HEADER = "arrival_s,prompt_tokens,output_tokens\n"


def _scenario(**replace) -> dict:
    """helpers.scenario_dict with whole top-level keys replaced (its merge would keep the base `rate`)."""
    return scenario_dict() | replace


def _run(**replace):
    return simulate(scenario_from_dict(_scenario(**replace)))


def _scenario_file(path: Path, **replace) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(_scenario(**replace)))
    return path


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))




# --- closed loop --------------------------------------------------------------------------------------------------


def test_closed_loop_holds_c_requests_and_refills_at_finishes(tmp_path):
    """Sweeping arrivals (+1) and finishes (−1), finishes first at equal times (a client sends its next request
    at the instant its previous one finishes): never more than C in the system, exactly C at t=0, and every
    request after the first C arrives at the finish of an earlier one: the first N−C finishes, one each."""
    c, n = 4, 40
    rows = _run(model=tiny_model_path(tmp_path), cluster=ideal_cluster(), workload={
        "num_requests": n, "concurrency": c, "prompt_tokens": {"dist": "uniform", "low": 16, "high": 256},
        "output_tokens": {"dist": "uniform", "low": 1, "high": 20}}).requests.sort_values("request_id")
    arrival, finish = rows["arrival_s"].tolist(), rows["finish_s"].tolist()
    in_system, peak = 0, 0
    for _, step in sorted([(t, 1) for t in arrival] + [(t, -1) for t in finish]):
        in_system += step
        peak = max(peak, in_system)
    assert peak == c
    assert arrival[:c] == [0.0] * c and min(arrival[c:]) > 0
    for i in range(c, n):
        assert arrival[i] in finish[:i], f"request {i} arrives at {arrival[i]}, no earlier request's finish"
    assert sorted(arrival[c:]) == sorted(finish)[:n - c]


def test_closed_loop_of_one_has_ttft_equal_to_its_own_prefill(tmp_path):
    """One client on the ideal GPU: each request runs alone, so its TTFT is one prefill step of its own prompt,
    Σ max(FLOPs/F, bytes/M) over the op list summed here (rel 1e-12: float summation order only)."""
    from splitsim.models.spec import load_model

    tiny = tiny_model_path(tmp_path)
    model = load_model(tiny)
    rows = _run(model=tiny, cluster=ideal_cluster(), workload={
        "num_requests": 12, "concurrency": 1, "prompt_tokens": {"dist": "uniform", "low": 8, "high": 512},
        "output_tokens": 3}).requests

    assert rows["prompt_tokens"].nunique() > 1  # the prompts differ, so TTFT must follow each one
    assert rows["ttft_s"].tolist() == pytest.approx(
        [ideal_step_s(model, BatchShape.of(((p, 0),)), 1) for p in rows["prompt_tokens"]], rel=1e-12)
    assert (rows["queue_s"] == 0).all()


# --- trace replay -------------------------------------------------------------------------------------------------


def test_splitwise_trace_replays_row_for_row_through_the_cli(tmp_path):
    """The first 2,000 rows of splitwise_conv.csv on Llama-3-70B, TP8: requests.csv (in request-id order) has
    each row's arrival and lengths exactly, as the csv module reads them."""
    trace = TRACES / "splitwise_conv.csv"
    if not trace.exists():
        pytest.skip(f"{trace} is not on this machine")
    scenario = tmp_path / "s.yaml"  # scenarios/h100-nvlink-70b.yaml's keys
    scenario.write_text(yaml.safe_dump({
        "model": "llama-3-70b", "cluster": "h100-nvlink-node", "parallel": {"tp": 8, "pp": 1, "dp": 1},
        "workload": {"num_requests": 500, "rate": 4.0, "prompt_tokens": 1020, "output_tokens": 129},
        "precision": {"weights": "bf16", "kv_cache": "bf16"},
        "scheduler": {"policy": "chunked", "max_num_seqs": 256, "max_batched_tokens": 2048}}))
    argv = ["run", str(scenario), "--set", f"workload.trace={trace}", "--set", "workload.num_requests=2000",
            "--out", str(tmp_path / "out"), "-q", "--no-plot"]
    assert main(argv) == 0
    expected = _csv(trace)[:2000]
    got = _csv(tmp_path / "out" / "requests.csv")
    assert [int(r["request_id"]) for r in got] == list(range(2000))
    assert [float(r["arrival_s"]) for r in got] == [float(r["arrived_at"]) for r in expected]
    assert [int(r["prompt_tokens"]) for r in got] == [int(r["num_prefill_tokens"]) for r in expected]
    assert [int(r["output_tokens"]) for r in got] == [int(r["num_decode_tokens"]) for r in expected]


@pytest.mark.parametrize("given", ["file", "set"])
def test_a_relative_trace_path_is_found_from_where_it_was_written(tmp_path, monkeypatch, given):
    """In the file: next to the file; with --set: from the working directory. A trace of the same name sits at
    the other place, with other lengths, so reading the wrong one shows."""
    study, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    study.mkdir()
    elsewhere.mkdir()
    (study / "t.csv").write_text(HEADER + "0,11,2\n0.5,12,2\n")
    (elsewhere / "t.csv").write_text(HEADER + "0,21,2\n0.5,22,2\n")
    workload = {"trace": "t.csv"} if given == "file" else {"num_requests": 2, "rate": 1.0, "prompt_tokens": 5,
                                                             "output_tokens": 2}
    path = _scenario_file(study / "s.yaml", model=tiny_model_path(tmp_path), cluster=ideal_cluster(), workload=workload)
    monkeypatch.chdir(elsewhere)
    scenario = load_scenario(path, ["workload.trace=t.csv"] if given == "set" else [])
    prompts = simulate(scenario).requests["prompt_tokens"].tolist()
    assert prompts == ([11, 12] if given == "file" else [21, 22])


def test_two_load_kinds_in_a_file_are_one_line_naming_both(tmp_path, capsys):
    """Which one the user meant is unknowable, so the error names both."""
    path = _scenario_file(tmp_path / "s.yaml", workload={"rate": 2.0, "concurrency": 4})
    err = error_line(capsys, ["run", str(path), "--out", str(tmp_path / "out"), "-q"])
    assert "workload.rate" in err and "workload.concurrency" in err


def test_set_concurrency_replaces_the_files_rate_and_burstiness(tmp_path):
    """The file's rate 5/s with burstiness 0.5 would be a schema error beside concurrency; --set drops both."""
    path = _scenario_file(tmp_path / "s.yaml", model=tiny_model_path(tmp_path), cluster=ideal_cluster(),
                          workload={"num_requests": 20, "rate": 5.0, "burstiness": 0.5, "prompt_tokens": 64,
                                    "output_tokens": 4})
    out = tmp_path / "out"
    assert main(["run", str(path), "--set", "workload.concurrency=8", "--out", str(out), "-q", "--no-plot"]) == 0
    workload = json.loads((out / "summary.json").read_text())["scenario"]["workload"]
    assert workload["kind"] == "concurrency" and workload["concurrency"] == 8
    assert "rate" not in workload and "burstiness" not in workload
    assert sum(float(r["arrival_s"]) == 0 for r in _csv(out / "requests.csv")) == 8  # eight clients start at once


@pytest.mark.parametrize(("text", "sets", "expected"), [
    (HEADER + "0,10,2\n0.5,20,3\n1.0,abc,4\n", [], ["line 4", "column prompt_tokens", "'abc'"]),
    (HEADER + "0,10,2\n0.5,20,3\n1.0,30,4\n", ["workload.num_requests=5"], ["workload.num_requests = 5", "only 3"]),
], ids=["bad row", "too few rows"])
def test_trace_errors_are_exit_2_naming_the_file(tmp_path, capsys, text, sets, expected):
    """A bad cell: its file, line (header = line 1) and column; too few rows: how many the file has."""
    trace = tmp_path / "t.csv"
    trace.write_text(text)
    path = _scenario_file(tmp_path / "s.yaml", model=tiny_model_path(tmp_path), cluster=ideal_cluster(),
                          workload={"trace": str(trace)})
    argv = ["run", str(path), "--out", str(tmp_path / "out"), "-q"] + [a for s in sets for a in ("--set", s)]
    err = error_line(capsys, argv)
    for fragment in [str(trace), *expected]:
        assert fragment in err


def test_time_scale_doubles_the_trace_arrivals(tmp_path):
    """Doubling a binary fraction is exact, so the arrivals compare with ==."""
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0,10,2\n0.25,20,3\n1.5,30,4\n3.125,40,5\n")
    rows = _run(model=tiny_model_path(tmp_path), cluster=ideal_cluster(),
                workload={"trace": str(trace), "time_scale": 2})
    assert rows.requests["arrival_s"].tolist() == [0.0, 0.5, 3.0, 6.25]


@pytest.mark.parametrize(("policy", "count", "arrival", "prompt", "output"), [
    # a 64-token context: 10+5 fits; 60+10 cuts the output to 4; 64+1 keeps 1 output, cuts the prompt to 63
    ("truncate", {"truncated": 2}, [0, 0.5, 1, 1.5], [10, 60, 63, 63], [5, 4, 1, 1]),
    ("skip", {"skipped": 2}, [0, 1.5], [10, 63], [5, 1]),  # 63+1 = 64 is not over
], ids=["truncate", "skip"])
def test_overlong_requests_are_cut_or_left_out_and_counted(tmp_path, policy, count, arrival, prompt, output):
    """Rows checked by hand against a 64-token context; the summary counts what was changed."""
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0,10,5\n0.5,60,10\n1,64,1\n1.5,63,1\n")
    result = _run(model=tiny_model_path(tmp_path, max_position_embeddings=64), cluster=ideal_cluster(),
                 workload={"trace": str(trace), "overlong": policy})
    rows = result.requests
    assert (rows["arrival_s"].tolist(), rows["prompt_tokens"].tolist(), rows["output_tokens"].tolist()) == (
        arrival, prompt, output)
    workload = result.summary["scenario"]["workload"]
    assert {k: workload[k] for k in ("truncated", "skipped") if k in workload} == count


# --- burstiness ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [0.25, 1.0, 4.0])
def test_gamma_gaps_have_mean_one_over_rate_and_cv_one_over_root_k(k):
    """n gamma(k) gaps: the mean's relative standard error is CV/√n = 1/√(kn); the sample variance's is
    √((6/k + 2)/n) (excess kurtosis 6/k), so the std's is half that. The CV's relative error is at most the sum
    of the std's and the mean's; both tolerances are 5 of these standard errors (k = 0.25: 2.2% and 5.1%)."""
    n, rate = 200_000, 5.0
    gaps = np.diff(arrival_times(rate, k, n, np.random.default_rng(1)), prepend=0.0)
    mean_se = 1 / math.sqrt(k * n)
    std_se = 0.5 * math.sqrt((6 / k + 2) / n)
    assert len(gaps) == n and (gaps >= 0).all()
    assert gaps.mean() == pytest.approx(1 / rate, rel=5 * mean_se)
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(k), rel=5 * (mean_se + std_se))


@pytest.mark.parametrize("rate", [0, math.inf])
def test_an_infinite_or_zero_rate_is_a_burst_at_time_zero(rate):
    workload = Workload.model_validate({"num_requests": 100, "rate": rate, "burstiness": 0.5, "prompt_tokens": 8,
                                        "output_tokens": 2})
    assert workload.kind == "burst"
    stream = synthetic_stream(8, 2, 100, 0, rate=workload.rate, burstiness=workload.burstiness)
    assert stream.arrival_s.tolist() == [0.0] * 100


def test_the_first_arrival_comes_after_its_own_gap():
    """As `vllm bench serve` (v0.11) sleeps before the first request too: over 4,000 seeds the first arrival is
    positive with mean 1/rate = 0.5 s (exponential gaps: standard error 0.5/√4000 ≈ 0.008 s; 5 of them)."""
    first = np.array([arrival_times(2.0, 1.0, 3, np.random.default_rng(seed))[0] for seed in range(4000)])
    assert (first > 0).all()
    assert first.mean() == pytest.approx(0.5, abs=5 * 0.5 / math.sqrt(4000))


def _stream(n: int, output_tokens: dict, seed: int = 7):
    workload = Workload.model_validate({
        "num_requests": n, "rate": 3.0, "burstiness": 0.5, "prompt_tokens": {"dist": "uniform", "low": 1, "high": 999},
        "output_tokens": output_tokens})
    return synthetic_stream(workload.prompt_tokens, workload.output_tokens, n, seed, rate=workload.rate,
                            burstiness=workload.burstiness)


LOGNORMAL = {"dist": "lognormal", "median": 100, "sigma": 1.0, "max": 5000}


def test_more_requests_with_the_same_seed_extend_the_same_stream():
    """Arrivals, prompts and outputs each have their own generator, so drawing more only appends."""
    short, long = _stream(500, LOGNORMAL), _stream(1000, LOGNORMAL)
    for name in ("arrival_s", "prompt_tokens", "output_tokens"):
        assert getattr(long, name)[:500].tolist() == getattr(short, name).tolist(), name


def test_changing_the_output_lengths_leaves_arrivals_and_prompts_alone():
    """Lognormal outputs draw other numbers than uniform ones; with one shared generator, arrivals would move."""
    before, after = _stream(500, LOGNORMAL), _stream(500, {"dist": "uniform", "low": 1, "high": 50})
    assert after.output_tokens.tolist() != before.output_tokens.tolist()
    assert after.arrival_s.tolist() == before.arrival_s.tolist()
    assert after.prompt_tokens.tolist() == before.prompt_tokens.tolist()


# --- rows from Python ---------------------------------------------------------------------------------------------


def test_simulate_serves_exactly_the_rows_it_is_given(tmp_path):
    """requests.csv, read back with the csv module, holds the DataFrame's rows in order (exact binary fractions)."""
    given = pd.DataFrame({"arrival_s": [0.0, 0.125, 0.125, 2.5], "prompt_tokens": [32, 100, 7, 250],
                          "output_tokens": [4, 1, 9, 2]})
    scenario = scenario_from_dict(_scenario(model=tiny_model_path(tmp_path), cluster=ideal_cluster()))
    result = simulate(scenario, requests=given)
    write_outputs(result, tmp_path / "out", timeline=False)
    got = _csv(tmp_path / "out" / "requests.csv")
    assert [(float(r["arrival_s"]), int(r["prompt_tokens"]), int(r["output_tokens"])) for r in got] == [
        (0.0, 32, 4), (0.125, 100, 1), (0.125, 7, 9), (2.5, 250, 2)]
    assert result.summary["scenario"]["workload"]["kind"] == "rows"


@pytest.mark.parametrize(("rows", "expected"), [
    ({"arrival_s": [0.0, 0.5, 0.25], "prompt_tokens": [8, 8, 8], "output_tokens": [2, 2, 2]}, ["row 2", "arrival_s"]),
    ({"arrival_s": [0.0, 0.5, 1.0], "prompt_tokens": [8, 8, 8], "output_tokens": [2, 0, 2]},
     ["row 1", "output_tokens"]),
], ids=["decreasing arrival", "zero output"])
def test_a_bad_row_is_a_scenario_error_naming_row_and_column(tmp_path, rows, expected):
    with pytest.raises(ScenarioError) as info:
        simulate(scenario_from_dict(_scenario(model=tiny_model_path(tmp_path), cluster=ideal_cluster())),
                 requests=pd.DataFrame(rows))
    for fragment in expected:
        assert fragment in str(info.value)


def test_a_trace_given_with_set_replays_every_row_whatever_the_files_num_requests(tmp_path):
    """The shipped scenarios say num_requests: 500 for their own load; switching to a trace with --set drops
    that count (a --set num_requests still applies)."""
    trace = tmp_path / "t.csv"
    trace.write_text(HEADER + "0,10,2\n0.5,20,3\n1.0,30,4\n")
    path = _scenario_file(tmp_path / "s.yaml", model=tiny_model_path(tmp_path), cluster=ideal_cluster(),
                          workload={"num_requests": 500, "rate": 4.0, "prompt_tokens": 10, "output_tokens": 2})
    assert load_scenario(path, [f"workload.trace={trace}"]).workload.num_requests is None
    assert load_scenario(path, ["workload.num_requests=2", f"workload.trace={trace}"]).workload.num_requests == 2
