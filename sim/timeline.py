"""Per-GPU intervals and the Chrome/Perfetto trace, as pure functions of the recorder's records.

Gaps between busy intervals are `bubble` while the replica had a batch in flight and `idle` otherwise;
adjacent intervals of one category merge. Only the recorded window appears.

A window may cover a whole long run (`--trace-window 1e9`: millions of records), so every function here is
linear in the records after one sort per stage: records are grouped by stage in one pass, and the busy
intervals and the in-flight windows (both in time order) are walked together instead of rescanned per gap.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pandas as pd

from splitsim.sim.plan import Plan
from splitsim.sim.recorder import Recorder
from splitsim.sim.result import INTERVAL_COLUMNS

Interval = tuple[float, float, str]  # (start_s, end_s, category)


def busy_by_stage(recorder: Recorder) -> dict[tuple[int, int], list[Interval]]:
    """Each (replica, stage)'s busy intervals, sorted: one pass over the records rather than one per stage."""
    busy: dict[tuple[int, int], list[Interval]] = defaultdict(list)
    for replica, stage, start, end, category, _ in recorder.intervals:
        busy[replica, stage].append((start, end, category))
    for intervals in busy.values():
        intervals.sort()
    return busy


def stage_intervals(busy: list[Interval], inflight: list[tuple[float, float]], start_s: float,
                    end_s: float) -> list[Interval]:
    """(start, end, category) covering [start_s, end_s) for one stage, merged.

    `busy` is sorted; `inflight` (the replica's in-flight windows) is disjoint and in time order, as the
    recorder appends it. Gaps come in time order too, so a window that ends before a gap starts can never
    touch a later gap: one pointer `i` into `inflight` replaces a scan of every window per gap, and the cost
    is len(busy) + len(inflight).
    """
    merged: list[Interval] = []
    i = 0

    def add(s: float, e: float, c: str) -> None:
        if merged and merged[-1][2] == c and merged[-1][1] == s:
            merged[-1] = (merged[-1][0], e, c)
        elif e > s:
            merged.append((s, e, c))

    def gap(start: float, end: float) -> None:
        """Split the gap [start, end) into bubble (inside an in-flight window) and idle pieces."""
        nonlocal i
        while i < len(inflight) and inflight[i][1] <= start:
            i += 1
        t, j = start, i
        while j < len(inflight) and inflight[j][0] < end:  # windows [i, j) may straddle `end`: keep i
            lo, hi = inflight[j]
            if lo > t:
                add(t, lo, "idle")
            if min(hi, end) > max(lo, t):
                add(max(lo, t), min(hi, end), "bubble")
            t = min(hi, end)
            j += 1
        if t < end:
            add(t, end, "idle")

    t = start_s
    for s, e, c in busy:
        if s >= end_s:
            break
        if e <= t:
            continue
        gap(t, s)
        add(max(s, t), min(e, end_s), c)
        t = min(e, end_s)
    gap(t, end_s)
    return merged


def gpu_intervals(plan: Plan, recorder: Recorder, start_s: float, end_s: float) -> pd.DataFrame:
    busy = busy_by_stage(recorder)
    rows = []
    for replica, (pool, local) in enumerate(plan.replicas):
        inflight = recorder.inflight_windows[replica]
        for stage in range(pool.pp):
            intervals = stage_intervals(busy.get((replica, stage), []), inflight, start_s, end_s)
            for gpu in pool.tp_group(local, stage):
                rows += [(gpu, s, e, c) for s, e, c in intervals]
    frame = pd.DataFrame(rows, columns=INTERVAL_COLUMNS)
    return frame.sort_values(["gpu", "start_s"], kind="stable").reset_index(drop=True)


def trace_events(plan: Plan, recorder: Recorder) -> list[dict[str, Any]]:
    """Complete events (`"ph": "X"`, microseconds): pid the node, tid the GPU, cat the category."""
    cluster = plan.cluster
    gpus = {(r, s): [(gpu, cluster.node_of(gpu)) for gpu in pool.tp_group(local, s)]
            for r, (pool, local) in enumerate(plan.replicas) for s in range(pool.pp)}  # once per stage, not per record
    several = len(plan.pools) > 1
    names = [{"pool": pool.index, "replica": local} if several else {"replica": local} for pool, local in plan.replicas]
    events: list[dict[str, Any]] = []
    for replica, stage, start, end, category, name in recorder.intervals:
        for gpu, node in gpus[replica, stage]:
            events.append({"name": name, "cat": category, "ph": "X", "ts": start * 1e6,
                           "dur": (end - start) * 1e6, "pid": node, "tid": gpu,
                           "args": names[replica] | {"stage": stage}})
    used = sorted(gpu for pool in plan.pools for gpu in pool.gpus)
    for gpu in used:
        events.append({"name": "thread_name", "ph": "M", "pid": cluster.node_of(gpu), "tid": gpu,
                       "args": {"name": f"GPU {gpu}"}})
    for node in sorted({cluster.node_of(g) for g in used}):
        events.append({"name": "process_name", "ph": "M", "pid": node, "args": {"name": f"node {node}"}})
    return events
