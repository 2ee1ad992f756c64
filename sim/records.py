"""What the engine emits: finished requests as columns, and the counters of a run.

The engine hands each finished request to a sink once; `RequestLog`, the default sink, keeps machine
numbers in `array` columns (a few dozen bytes a request) and gives them back as numpy arrays in request
order. A sink that streams rows to disk has the same one method.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from splitsim.sim.metrics import LogHistogram
from splitsim.sim.recorder import Recorder
from splitsim.sim.scheduler import Request

# column -> array typecode; the values each finished request contributes
REQUEST_FIELDS = {
    "request_id": "q", "arrival_s": "d", "first_scheduled_s": "d", "first_token_s": "d", "finish_s": "d",
    "prompt_tokens": "q", "output_tokens": "q", "replica": "q", "preemptions": "q", "max_itl_s": "d",
}


class RequestSink(Protocol):
    def add(self, request: Request, finish_s: float) -> None: ...


class RequestLog:
    """The default sink: every finished request, as columns."""

    def __init__(self) -> None:
        self._columns: dict[str, array[Any]] = {name: array(code) for name, code in REQUEST_FIELDS.items()}
        c = self._columns
        self._appends: tuple[Callable[[Any], None], ...] = (
            c["request_id"].append, c["arrival_s"].append, c["first_scheduled_s"].append, c["first_token_s"].append,
            c["finish_s"].append, c["prompt_tokens"].append, c["output_tokens"].append, c["replica"].append,
            c["preemptions"].append, c["max_itl_s"].append)

    def add(self, request: Request, finish_s: float) -> None:
        ids, arrival, scheduled, first, finish, prompt, output, replica, preempted, itl = self._appends
        ids(request.id)
        arrival(request.arrival_s)
        scheduled(request.first_scheduled_s)
        first(request.first_token_s)
        finish(finish_s)
        prompt(request.prompt)
        output(request.output)
        replica(request.replica)
        preempted(request.preemptions)
        itl(request.max_itl_s)

    def take_columns(self) -> dict[str, np.ndarray]:
        """Each column as a numpy array, rows in request-id order; the log lets go of its own copy (at a
        million requests that is ~80 MB less at the run's peak)."""
        ids = np.frombuffer(self._columns["request_id"], dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        del ids
        self._appends = ()  # bound appends hold the arrays too
        taken = {}
        for name in list(self._columns):
            col = self._columns.pop(name)
            taken[name] = np.frombuffer(col, dtype=np.int64 if col.typecode == "q" else np.float64)[order]
        return taken


@dataclass(frozen=True, slots=True)
class Moment:
    """The run's progress at one instant: output tokens sampled and requests finished so far."""

    time_s: float
    output_tokens: int
    finished: int


@dataclass(frozen=True)
class RunRecords:
    """Everything `Engine.run` observed."""

    sim_time_s: float
    recorder: Recorder  # busy seconds per stage, intervals of the trace window
    events: int  # SimPy events scheduled
    preemptions: int
    recomputed_tokens: int  # tokens computed again after preemptions
    peak_running_seqs: tuple[int, ...]  # per replica
    kv_blocked_batches: int  # batches formed while the queue's head waited for KV blocks
    itl: LogHistogram  # every gap between consecutive output tokens
    output_tokens: int
    steady_start: Moment | None  # the first admission after every request of the first wave finished
    steady_end: Moment | None  # the later of the last arrival and the last moment the queues emptied
    fast_forward: dict[str, Any]  # steps_total, steps_skipped, fallbacks {reason: steps} (sim/fast_forward.py)
