"""sim/timeline.py against the straightforward algorithm it replaced (kept here as the oracle): the linear
version must give exactly the same gpus.csv rows and trace events."""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
import pytest

from helpers import scenario_dict
from splitsim.api import make_requests
from splitsim.scenario import scenario_from_dict
from splitsim.sim.engine import Engine
from splitsim.sim.plan import build_plan
from splitsim.sim.recorder import Recorder
from splitsim.sim.result import INTERVAL_COLUMNS
from splitsim.sim.timeline import busy_by_stage, gpu_intervals, stage_intervals, trace_events


# -- the oracle: the quadratic timeline as it was before issue 7 ------------------------------------------------
def _old_gaps(start, end, inflight):
    pieces, t = [], start
    for lo, hi in inflight:
        if hi <= t or lo >= end:
            continue
        if lo > t:
            pieces.append((t, lo, "idle"))
        pieces.append((max(lo, t), min(hi, end), "bubble"))
        t = min(hi, end)
    if t < end:
        pieces.append((t, end, "idle"))
    return [p for p in pieces if p[1] > p[0]]


def _old_stage_intervals(recorder, replica, stage, start_s, end_s):
    busy = sorted((s, e, c) for r, st, s, e, c, _ in recorder.intervals if r == replica and st == stage)
    inflight = recorder.inflight_windows[replica]
    covered = []
    t = start_s
    for s, e, c in busy:
        if s >= end_s:
            break
        if e <= t:
            continue
        covered += _old_gaps(t, s, inflight)
        covered.append((max(s, t), min(e, end_s), c))
        t = min(e, end_s)
    covered += _old_gaps(t, end_s, inflight)
    merged = []
    for s, e, c in covered:
        if merged and merged[-1][2] == c and merged[-1][1] == s:
            merged[-1] = (merged[-1][0], e, c)
        elif e > s:
            merged.append((s, e, c))
    return merged


def _old_gpu_intervals(plan, recorder, start_s, end_s):
    rows = []
    for replica in range(plan.dp):
        for stage in range(plan.pp):
            intervals = _old_stage_intervals(recorder, replica, stage, start_s, end_s)
            for gpu in plan.tp_group(replica, stage):
                rows += [(gpu, s, e, c) for s, e, c in intervals]
    frame = pd.DataFrame(rows, columns=INTERVAL_COLUMNS)
    return frame.sort_values(["gpu", "start_s"], kind="stable").reset_index(drop=True)


def _old_trace_events(plan, recorder):
    cluster = plan.cluster
    events = []
    for replica, stage, start, end, category, name in recorder.intervals:
        for gpu in plan.tp_group(replica, stage):
            events.append({"name": name, "cat": category, "ph": "X", "ts": start * 1e6,
                           "dur": (end - start) * 1e6, "pid": cluster.node_of(gpu), "tid": gpu,
                           "args": {"replica": replica, "stage": stage}})
    for gpu in range(plan.num_gpus):
        events.append({"name": "thread_name", "ph": "M", "pid": cluster.node_of(gpu), "tid": gpu,
                       "args": {"name": f"GPU {gpu}"}})
    for node in sorted({cluster.node_of(g) for g in range(plan.num_gpus)}):
        events.append({"name": "process_name", "ph": "M", "pid": node, "args": {"name": f"node {node}"}})
    return events


# -- real runs ----------------------------------------------------------------------------------------------------
WORKLOAD = {"num_requests": 30, "rate": 8.0, "prompt_tokens": {"dist": "uniform", "low": 16, "high": 900},
            "output_tokens": {"dist": "uniform", "low": 1, "high": 40}}
CASES = {  # name: (scenario overrides, trace start, trace window)
    "pp1-stage": ({"parallel": {"tp": 2, "pp": 1, "dp": 1}}, 0.0, 1e9),
    "pp4-stage": ({"parallel": {"tp": 2, "pp": 4, "dp": 1}}, 0.0, 1e9),
    "dp2-pp2-layer": ({"parallel": {"tp": 2, "pp": 2, "dp": 2}, "sim": {"granularity": "layer", "seed": 1}}, 0.0,
                      1e9),
    "pp4-mid-window": ({"parallel": {"tp": 1, "pp": 4, "dp": 2}}, 1.0, 0.7),
    "pp1-layer-mid-window": ({"sim": {"granularity": "layer", "seed": 2}}, 0.8, 0.5),
}


def _recorded(overrides: dict[str, Any], trace_start: float, window: float):
    """Run the engine as `simulate` does; return the plan, its recorder and the window `simulate` would keep."""
    data = scenario_dict(workload=WORKLOAD, scheduler={"policy": "chunked", "max_batched_tokens": 256}, **overrides)
    scenario = scenario_from_dict(data)
    plan = build_plan(scenario)
    records = Engine(plan, make_requests(scenario, plan), (trace_start, trace_start + window)).run()
    sim_time = records.sim_time_s
    return plan, records.recorder, (min(trace_start, sim_time), min(trace_start + window, sim_time))


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.slow) if case == "dp2-pp2-layer" else case
                                  for case in CASES])  # layer mode over 4 stages: the old algorithms take seconds
def test_gpu_intervals_and_trace_are_the_old_algorithms(case):
    plan, recorder, (start, end) = _recorded(*CASES[case])
    new = gpu_intervals(plan, recorder, start, end)
    pool = plan.pool
    pd.testing.assert_frame_equal(new, _old_gpu_intervals(pool, recorder, start, end), check_exact=True)
    assert new.to_csv(index=False, float_format="%.17g") == \
        _old_gpu_intervals(pool, recorder, start, end).to_csv(index=False, float_format="%.17g")
    assert {"compute", "idle"} | ({"bubble"} if pool.pp > 1 else set()) <= set(new["category"])  # real gaps
    assert trace_events(plan, recorder) == _old_trace_events(pool, recorder)


# -- synthetic records: overlaps, zero lengths, records outside the window --------------------------------------
def _random_recorder(rng: random.Random, dp: int, pp: int, window: tuple[float, float]) -> Recorder:
    recorder = Recorder([pp] * dp, window)
    grid = [round(0.25 * k, 2) for k in range(41)]  # shared endpoints: touching and equal times are common
    for replica in range(dp):
        t, depth = 0.0, 0
        for _ in range(rng.randint(0, 12)):
            t = max(t, rng.choice(grid))
            if depth and rng.random() < 0.5:
                recorder.batch_finished(replica, t)
                depth -= 1
            else:
                recorder.batch_started(replica, t)
                depth += 1
        for _ in range(depth):
            recorder.batch_finished(replica, t)
        for _ in range(rng.randint(0, 15)):
            s = rng.choice(grid)
            e = max(s, rng.choice(grid)) if rng.random() < 0.7 else s
            recorder.busy(replica, rng.randrange(pp), s, e, rng.choice(("compute", "tp_comm", "pp_comm")), "op")
    return recorder


def test_stage_intervals_match_the_old_algorithm_on_random_records():
    rng = random.Random(7)
    for _ in range(3000):
        start = rng.choice([0.0, 0.0, 1.0, 2.5, 4.0])
        end = rng.choice([start, start + 0.5, start + 3.0, 10.0, 20.0])
        dp, pp = rng.randint(1, 2), rng.randint(1, 3)
        recorder = _random_recorder(rng, dp, pp, (start, end))
        busy = busy_by_stage(recorder)
        for replica in range(dp):
            for stage in range(pp):
                got = stage_intervals(busy.get((replica, stage), []), recorder.inflight_windows[replica], start, end)
                assert got == _old_stage_intervals(recorder, replica, stage, start, end)
