"""Timers: wall clock on CPU, CUDA events on GPUs; op spans inside a step; barrier-aligned whole steps.

On CPU every op is synchronous, so `time.perf_counter()` around it is its time. On a GPU the host only
enqueues work: a span records a CUDA event (`enable_timing=True`) on the current stream before and
after the op, and the times are read after `torch.cuda.synchronize()`. A collective or send run by NCCL
on its own stream makes the current stream wait for it, so the end event follows it.

A whole step is timed from a common start: every rank leaves a barrier, marks, runs its part, marks,
and the step's time is the slowest rank's (an all-reduce MAX), since the step ends when the last rank
is done.
"""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist

from splitsim.validate.dist import DeviceKind

TimerKind = Literal["perf_counter", "cuda_event"]
T = TypeVar("T")


class Timer(ABC):
    kind: TimerKind

    @abstractmethod
    def mark(self) -> Any:
        """A point in time (or, on a GPU, on the current stream)."""

    @abstractmethod
    def sync(self) -> None:
        """Wait until every mark made so far has happened."""

    @abstractmethod
    def seconds(self, start: Any, end: Any) -> float:
        """Seconds from `start` to `end`; both must have happened (call `sync` first)."""


class PerfCounterTimer(Timer):
    kind: TimerKind = "perf_counter"

    def mark(self) -> float:
        return time.perf_counter()

    def sync(self) -> None:
        pass

    def seconds(self, start: float, end: float) -> float:
        return end - start


class CudaEventTimer(Timer):
    kind: TimerKind = "cuda_event"

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def sync(self) -> None:
        torch.cuda.synchronize()

    def seconds(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return float(start.elapsed_time(end)) / 1e3  # elapsed_time is in milliseconds


def timer_for(device: DeviceKind) -> Timer:
    match device:
        case "cpu":
            return PerfCounterTimer()
        case "cuda":
            return CudaEventTimer()
    raise ValueError(f"device {device!r} (valid: cpu, cuda)")


class OpRecorder:
    """Spans of named ops within one step: `with rec.span("qkv", layer): …`, then `collect()`."""

    def __init__(self, timer: Timer) -> None:
        self.timer = timer
        self._spans: list[tuple[str, int, Any, Any]] = []

    @contextmanager
    def span(self, op: str, layer: int = -1) -> Iterator[None]:
        start = self.timer.mark()
        yield
        self._spans.append((op, layer, start, self.timer.mark()))

    def collect(self) -> list[tuple[str, int, float]]:
        """(op, layer, seconds) of every span since the last collect, in the order they ran."""
        self.timer.sync()
        out = [(op, layer, self.timer.seconds(start, end)) for op, layer, start, end in self._spans]
        self._spans.clear()
        return out


class NoTiming:
    """An OpTimer that times nothing (correctness runs)."""

    def span(self, op: str, layer: int = -1) -> nullcontext[None]:
        return nullcontext()


NO_TIMING = NoTiming()


def timed_step(run: Callable[[], T], timer: Timer, device: torch.device,
               group: dist.ProcessGroup | None = None) -> tuple[T, float]:
    """Run `run()` on every rank of `group` from a barrier-aligned start; its result and the slowest
    rank's seconds."""
    dist.barrier(group=group)
    timer.sync()
    start = timer.mark()
    result = run()
    end = timer.mark()
    timer.sync()
    return result, group_max([timer.seconds(start, end)], device, group)[0]


def group_max(values: Sequence[float], device: torch.device, group: dist.ProcessGroup | None = None) -> list[float]:
    """Element-wise maximum over the ranks of `group` (each rank passes as many values)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return [float(x) for x in t.tolist()]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
