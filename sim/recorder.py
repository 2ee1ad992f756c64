"""What the engine observed, as flat records: busy time per stage, batches in flight per replica.

Totals cover the whole run; intervals (for gpus.csv, the trace and the timeline) only those that
overlap the window `[start, end)`, so long runs stay small. All TP ranks of a stage do the same thing at the same time,
so records are per (replica, stage) and expand to GPUs at export.
"""

from __future__ import annotations

CATEGORIES = ("compute", "tp_comm", "pp_comm", "bubble", "idle")
_BUSY_INDEX = {"compute": 0, "tp_comm": 1, "pp_comm": 2}


class Recorder:
    def __init__(self, dp: int, pp: int, window: tuple[float, float]) -> None:
        self.window_start, self.window_end = window
        self.busy_s = [[[0.0, 0.0, 0.0] for _ in range(pp)] for _ in range(dp)]
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
