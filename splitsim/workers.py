"""Where the advisor's and the sweep's simulations run: in this process, a pool of processes, or a Ray cluster.

A `Workers` takes tasks (a picklable function and its argument: resolved specs, never paths of ours, so a
worker on another machine reads no file) and returns futures; `size` is how many run at once, so a caller
keeps exactly that many in flight.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol

from splitsim.errors import ScenarioError


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
    """`jobs` processes (default: one per core); one runs in this process.

    Forked from a fork server that imported splitsim and nothing else, never from this process: a fork of a
    process with threads (a Ray connection, even one shut down; a notebook's kernel) can die or hang. As with
    any spawned pool, a script that calls the advisor or a sweep guards its body with `if __name__ == "__main__"`."""
    size = jobs or os.cpu_count() or 1
    if size == 1:
        yield InProcess()
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["splitsim.api"])
    with ProcessPoolExecutor(max_workers=size, mp_context=context) as pool:
        yield Processes(pool, size)


class RayWorkers:
    """Tasks as Ray tasks, one CPU each; `ran_in` collects the Ray worker ids that ran them."""

    def __init__(self, ray: Any) -> None:
        self.size = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1)(_in_ray_worker)
        self.ran_in: set[str] = set()

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
        outer: Future[Any] = Future()

        def unwrap(inner: Future[Any]) -> None:
            try:
                result, worker = inner.result()
            except BaseException as err:
                outer.set_exception(err)
                return
            self.ran_in.add(worker)
            outer.set_result(result)

        self._remote.remote(fn, arg).future().add_done_callback(unwrap)
        return outer


def _in_ray_worker(fn: Callable[[Any], Any], arg: Any) -> tuple[Any, str]:
    import ray

    return fn(arg), ray.get_runtime_context().get_worker_id()


@contextmanager
def ray_workers(address: str) -> Iterator[RayWorkers]:
    """Workers on a Ray cluster. `auto`: the running cluster Ray finds (RAY_ADDRESS, or one started on this
    machine with `ray start`), else a local instance started here and stopped after; `HOST:PORT` (or
    `ray://HOST:PORT`): that cluster only. A connection this process already has is used and kept. The
    cluster's workers need splitsim installed, at this version."""
    try:
        import ray
    except ImportError:
        raise ScenarioError("--ray: Ray is not installed (pip install 'splitsim[ray]')") from None
    import logging

    options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    owned = not ray.is_initialized()
    if owned and address != "auto":
        _check_reachable(address)
    if owned:
        try:
            ray.init(address=address, **options)
        except ConnectionError as err:
            if address != "auto":
                raise ScenarioError(f"--ray {address}: {str(err).splitlines()[0]}") from None
            ray.init(include_dashboard=False, **options)  # no cluster running: a local instance
        except ValueError as err:  # a malformed address
            raise ScenarioError(f"--ray {address}: {str(err).splitlines()[0]} (valid: auto or HOST:PORT)") from None
    try:
        yield RayWorkers(ray)
    finally:
        if owned:
            ray.shutdown()


def _check_reachable(address: str) -> None:
    """One line, at once, when nothing listens at HOST:PORT (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ScenarioError(f"--ray {address}: expected auto or HOST:PORT, e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ScenarioError(f"--ray {address}: nothing answers there ({err.strerror or err}); start one with "
                            "`ray start --head`, or give --ray auto") from None


@contextmanager
def workers_for(jobs: int | None, ray_address: str | None) -> Iterator[Workers]:
    """Ray workers when an address is given, else `jobs` local processes."""
    if ray_address is not None:
        with ray_workers(ray_address) as workers:
            yield workers
    else:
        with local_workers(jobs) as workers:
            yield workers


def add_workers_flags(parser: argparse.ArgumentParser, positive_int: Any) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--jobs", type=positive_int, help="processes (default: every core)")
    where.add_argument("--ray", metavar="auto|HOST:PORT",
                       help="run on a Ray cluster: auto connects to a running one or starts a local instance; "
                            "HOST:PORT only connects (needs splitsim[ray], and splitsim on the cluster)")
