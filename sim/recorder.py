"""What the engine observed, as flat records: busy time per stage, batches in flight per replica.

Totals cover the whole run; intervals (for gpus.csv, the trace and the timeline) only those that
overlap the window `[start, end)`, so long runs stay small. All TP ranks of a stage do the same thing at the same time,
so records are per (replica, stage) and expand to GPUs at export. Replicas are numbered over every pool
(`Plan.replicas`): the plan says which pool and which of its replicas a number is.
"""

from __future__ import annotations

import numpy as np

CATEGORIES = ("compute", "tp_comm", "pp_comm", "ep_comm", "bubble", "idle")
_BUSY_INDEX = {"compute": 0, "tp_comm": 1, "pp_comm": 2, "ep_comm": 3}


class Recorder:
    def __init__(self, stages: list[int], window: tuple[float, float]) -> None:
        """`stages[r]`: the pipeline stages of replica r (the run's numbering, `Plan.replicas`)."""
        self.window_start, self.window_end = window
        dp = len(stages)
        self.busy_s = [[[0.0, 0.0, 0.0, 0.0] for _ in range(pp)] for pp in stages]
        # (replica, stage, start_s, end_s, category, name) inside the window
        self.intervals: list[tuple[int, int, float, float, str, str]] = []
        self.inflight_s = [0.0] * dp
        self.inflight_windows: list[list[tuple[float, float]]] = [[] for _ in range(dp)]
        self._inflight = [0] * dp
        self._inflight_since = [0.0] * dp

    def busy(self, replica: int, stage: int, start: float, end: float, category: str, name: str) -> None:
        self.busy_s[replica][stage][_BUSY_INDEX[category]] += end - start
        if start < self.window_end and end > self.window_start:
            self.intervals.append((replica, stage, start, end, category, name))

    def decode_span(self, replica: int, starts: np.ndarray, ends: np.ndarray, compute: np.ndarray,
                    comm: float) -> None:
        """A fast-forward span of back-to-back steps on stage 0 of a one-stage replica: the busy seconds and
        intervals `busy` would have recorded step by step (the same float operations, added in order), and
        the in-flight interval of every step but the last, which is still running."""
        busy = self.busy_s[replica][0]
        compute_end = starts + compute
        busy[0] = _added(busy[0], compute_end - starts)
        comm_end = compute_end + comm
        if comm:
            busy[1] = _added(busy[1], comm_end - compute_end)
        for i in np.flatnonzero((starts < self.window_end) & ((comm_end if comm else compute_end) > self.window_start)):
            start, c_end, m_end = float(starts[i]), float(compute_end[i]), float(comm_end[i])
            if start < self.window_end and c_end > self.window_start:
                self.intervals.append((replica, 0, start, c_end, "compute", "layers"))
            if comm and c_end < self.window_end and m_end > self.window_start:
                self.intervals.append((replica, 0, c_end, m_end, "tp_comm", "allreduce"))
        done_starts, done_ends = starts[:-1], ends[:-1]
        self.inflight_s[replica] = _added(self.inflight_s[replica], done_ends - done_starts)
        windows = self.inflight_windows[replica]
        for i in np.flatnonzero((done_starts < self.window_end) & (done_ends > self.window_start)):
            windows.append((float(done_starts[i]), float(done_ends[i])))
        self._inflight_since[replica] = float(starts[-1])

    def batch_started(self, replica: int, now: float) -> None:
        if self._inflight[replica] == 0:
            self._inflight_since[replica] = now
        self._inflight[replica] += 1

    def batch_finished(self, replica: int, now: float) -> None:
        self._inflight[replica] -= 1
        if self._inflight[replica] == 0:
            since = self._inflight_since[replica]
            self.inflight_s[replica] += now - since
            if since < self.window_end and now > self.window_start:
                self.inflight_windows[replica].append((since, now))


def _added(total: float, values: np.ndarray) -> float:
    """`total` plus each value in turn, as a loop of `+=` would give it (accumulate is sequential)."""
    return float(np.add.accumulate(np.concatenate(([total], values)))[-1])
