"""How long do gpus.csv and trace.json take when `--trace-window` covers a whole long run?

The reference scenario of bench_engine.py (Llama-2-70B, TP4 on one H100 node, Poisson 2 req/s, stage
granularity) with 2,000 and 10,000 requests and a trace window of 1e9 s. `simulate` builds the GPU
intervals and the trace itself, so the two builders are wrapped with timers and their time is taken out
of the engine's; writing gpus.csv and trace.json (as `write_outputs` does) is timed on its own. The
builders should grow linearly with the intervals they write (issue 7, "Long windows stay linear").

    python benchmarks/bench_timeline.py                       # 2,000 and 10,000 requests
    python benchmarks/bench_timeline.py --requests 500 2000   # other sizes

Measured on the 2-core dev machine (wall seconds for gpu_intervals; 2,000 / 5,000 / 10,000 requests give
360k / 895k / 1.76M gpus.csv rows):

    before (filter every record per stage, scan every in-flight window per gap):  50.8 / 906 / > 3,300 (killed)
    after (group once, two pointers):                                              0.26 / 0.59 / 1.33

trace_events was already linear (0.63 / 1.48 / 3.00 s); writing gpus.csv and trace.json now dominates
(1.7 / 4.2 / 8.3 s).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import reference_scenario  # noqa: E402

import splitsim.api as api  # noqa: E402
from splitsim.scenario import scenario_from_dict  # noqa: E402

WINDOW_S = 1e9  # longer than any run here: the whole run is recorded


def timed(fn: Callable[..., Any], spent: dict[str, float]) -> Callable[..., Any]:
    """`fn`, adding its wall time to spent[fn.__name__]."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[fn.__name__] = spent.get(fn.__name__, 0.0) + time.perf_counter() - t0
    return wrapper


def run(num_requests: int) -> dict[str, Any]:
    spent: dict[str, float] = {}
    originals = api.gpu_intervals, api.trace_events
    api.gpu_intervals, api.trace_events = timed(api.gpu_intervals, spent), timed(api.trace_events, spent)
    try:
        t0 = time.perf_counter()
        result = api.simulate(scenario_from_dict(reference_scenario(num_requests)), trace_window_s=WINDOW_S)
        total = time.perf_counter() - t0
    finally:
        api.gpu_intervals, api.trace_events = originals
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result.gpu_intervals.to_csv(Path(out) / "gpus.csv", index=False, float_format="%.17g")
        (Path(out) / "trace.json").write_text(json.dumps({"traceEvents": result.trace_events,
                                                          "displayTimeUnit": "ms"}))
        write = time.perf_counter() - t0
    return {"requests": num_requests, "sim_time_s": result.summary["sim_time_s"],
            "engine_s": total - spent["gpu_intervals"] - spent["trace_events"],
            "gpu_intervals_s": spent["gpu_intervals"], "trace_events_s": spent["trace_events"],
            "write_s": write, "rows": len(result.gpu_intervals), "events": len(result.trace_events)}


ROWS = [  # (key, label, format)
    ("requests", "requests", "{:,}"), ("sim_time_s", "simulated time (s)", "{:,.1f}"),
    ("engine_s", "wall: simulate, engine (s)", "{:.2f}"), ("gpu_intervals_s", "wall: gpu_intervals (s)", "{:.2f}"),
    ("trace_events_s", "wall: trace_events (s)", "{:.2f}"), ("write_s", "wall: write csv+json (s)", "{:.2f}"),
    ("rows", "gpus.csv rows", "{:,}"), ("events", "trace events", "{:,}"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, nargs="+", default=[2_000, 10_000], help="run sizes")
    args = parser.parse_args()
    results = [run(n) for n in args.requests]
    print(f"{'':30}" + "".join(f"{r['requests']:>12,}" for r in results))
    for key, label, fmt in ROWS[1:]:
        print(f"{label:30}" + "".join(f"{fmt.format(r[key]):>12}" for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
