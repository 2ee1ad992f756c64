"""Where the advisor's and the sweep's simulations run: in this process, or in a pool of processes.

A `Workers` takes tasks (a picklable function and its argument: resolved specs, never paths) and returns
futures; `size` is how many run at once, so a caller can keep exactly that many in flight.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol


class Workers(Protocol):
    size: int

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]: ...


class InProcess:
    """Runs each task as it is submitted: one worker, no pickling (and a debugger sees it)."""

    size = 1

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(arg))
        except BaseException as err:  # raised again by future.result(), as a pool's future would
            future.set_exception(err)
        return future


class Processes:
    def __init__(self, pool: ProcessPoolExecutor, size: int) -> None:
        self.pool, self.size = pool, size

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        return self.pool.submit(fn, arg)


@contextmanager
def local_workers(jobs: int | None) -> Iterator[Workers]:
    """`jobs` processes (default: one per core); one runs in this process."""
    size = jobs or os.cpu_count() or 1
    if size == 1:
        yield InProcess()
        return
    with ProcessPoolExecutor(max_workers=size) as pool:
        yield Processes(pool, size)
