"""Per-GPU intervals and the Chrome/Perfetto trace, as pure functions of the recorder's records.

Gaps between busy intervals are `bubble` while the replica had a batch in flight and `idle` otherwise;
adjacent intervals of one category merge. Only the recorded window appears.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from splitsim.sim.plan import Plan
from splitsim.sim.recorder import Recorder
from splitsim.sim.result import INTERVAL_COLUMNS


def _gaps(start: float, end: float, inflight: list[tuple[float, float]]) -> list[tuple[float, float, str]]:
    """Split the gap [start, end) into bubble (inside an in-flight window) and idle pieces."""
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


def stage_intervals(recorder: Recorder, replica: int, stage: int, start_s: float,
                    end_s: float) -> list[tuple[float, float, str]]:
    """(start, end, category) covering [start_s, end_s) for one stage, merged."""
    busy = sorted((s, e, c) for r, st, s, e, c, _ in recorder.intervals if r == replica and st == stage)
    inflight = recorder.inflight_windows[replica]
    covered: list[tuple[float, float, str]] = []
    t = start_s
    for s, e, c in busy:
        if s >= end_s:
            break
        if e <= t:
            continue
        covered += _gaps(t, s, inflight)
        covered.append((max(s, t), min(e, end_s), c))
        t = min(e, end_s)
    covered += _gaps(t, end_s, inflight)
    merged: list[tuple[float, float, str]] = []
    for s, e, c in covered:
        if merged and merged[-1][2] == c and merged[-1][1] == s:
            merged[-1] = (merged[-1][0], e, c)
        elif e > s:
            merged.append((s, e, c))
    return merged


def gpu_intervals(plan: Plan, recorder: Recorder, start_s: float, end_s: float) -> pd.DataFrame:
    rows = []
    for replica in range(plan.dp):
        for stage in range(plan.pp):
            intervals = stage_intervals(recorder, replica, stage, start_s, end_s)
            for gpu in plan.tp_group(replica, stage):
                rows += [(gpu, s, e, c) for s, e, c in intervals]
    frame = pd.DataFrame(rows, columns=INTERVAL_COLUMNS)
    return frame.sort_values(["gpu", "start_s"], kind="stable").reset_index(drop=True)


def trace_events(plan: Plan, recorder: Recorder) -> list[dict[str, Any]]:
    """Complete events (`"ph": "X"`, microseconds): pid the node, tid the GPU, cat the category."""
    cluster = plan.cluster
    events: list[dict[str, Any]] = []
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
