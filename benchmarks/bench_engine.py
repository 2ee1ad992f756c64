"""How fast does splitsim simulate? Wall time, events/s and peak memory of two fixed runs.

Reference run (Vidur's usual benchmark): Llama-2-70B (benchmarks/models/llama-2-70b/config.json) on
one H100 NVLink node, TP4 PP1 DP1, 10,000 requests at Poisson 2 req/s, 1,024-token prompts, 212 output
tokens, chunked prefill with max_batched_tokens 512, max_num_seqs 128, stage granularity, seed 0.

Target: Vidur, the best-known simulator, took 78.6 s wall for this run on this machine (measured side by
side, issue 8). Our goal is < 2.6 s -- 30x faster -- *including* writing the default outputs
(summary.json, requests.csv, gpus.csv, trace.json, timeline.png).

A second run, 200 requests of the same scenario at layer granularity (one event per op), shows the
cost per event of the detailed mode.

    python benchmarks/bench_engine.py                  # both runs, one table
    python benchmarks/bench_engine.py --requests 2000  # a shorter run
    python benchmarks/bench_engine.py --requests 1000000 --layer-requests 1  # the million-request figures
    python benchmarks/bench_engine.py --requests 1000000 --rate 20 --layer-requests 1  # at high load
    python benchmarks/bench_engine.py --no-fast-forward  # stepping every batch, the exact reference
    python benchmarks/bench_engine.py --profile        # cProfile of the stage-mode run (simulate + write)
    python benchmarks/bench_engine.py --tracemalloc    # adds the Python-heap peak (slow)

Run one benchmark at a time: the figures are wall-clock.

Measured on an AMD EPYC with AVX-512 (2 cores, `lscpu` model name "AMD EPYC"), 2026-12-08, three runs:
reference 10,000 requests: simulate 1.77-2.51 s, outputs 0.44-0.66 s, total 2.20-3.17 s, imports 0.56-0.71 s
more (the target is not met on this machine); the 200-request layer run 7.1-7.6 s. Machines of this kind differ
up to twofold: compare figures from one machine only. `benchmarks/bench_layouts.py` gives the pipeline and
contended layouts' figures.

Measured on the issue-8 machine (2 cores, a faster one whose model was not recorded; fast-forward and tick-based
decodes, before -> after):
- reference 10,000 requests: 1.71 s total (simulate 1.36 s, outputs 0.36 s; imports 0.36 s more), 5.8 SimPy
  events a request (21.8 stepping every batch); 46x faster than Vidur's 78.6 s.
- 1,000,000 requests at 2 req/s: simulate 131.7 -> 132 s (fast-forward folds 77 % of the steps, but each
  request still needs ~2.8 prompt-chunk steps, ~1.1 spans and ~1.9 other stepped batches at ~15-50 us
  each), outputs 8.6 -> 4.3 s, peak RSS 429 -> 353 MiB (ru_maxrss).
- 1,000,000 requests at 20 req/s (saturated: every step carries a prompt chunk, nothing to fold): 87 s
  wall in issue 8's own measurement -> simulate 56-64 s (decodes cost nothing a token; 20,000 requests:
  3.0 -> 1.1 s), outputs 4.3 s, peak RSS 365 MiB.
The goal of < 30 s for a million requests is not reached: the floor is ~5 Python-level steps a request.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

_t0 = time.perf_counter()
from splitsim.api import simulate  # noqa: E402
from splitsim.report import write_outputs  # noqa: E402
from splitsim.scenario import scenario_from_dict  # noqa: E402

IMPORT_S = time.perf_counter() - _t0  # numpy, pandas, pydantic, simpy (matplotlib comes on first write)

MODEL = Path(__file__).resolve().parent / "models" / "llama-2-70b" / "config.json"
VIDUR_WALL_S = 78.6  # Vidur on this reference run, measured side by side on this machine (issue 8)
TARGET_WALL_S = 2.6  # 30x faster, outputs included


def reference_scenario(num_requests: int, granularity: str = "stage", rate: float = 2.0,
                       fast_forward: bool = True) -> dict:
    return {
        "name": f"bench-{granularity}",
        "model": str(MODEL),
        "cluster": "h100-nvlink-node",
        "parallel": {"tp": 4, "pp": 1, "dp": 1},
        "workload": {"num_requests": num_requests, "rate": rate, "prompt_tokens": 1024, "output_tokens": 212},
        "scheduler": {"max_num_seqs": 128, "max_batched_tokens": 512, "policy": "chunked"},
        "sim": {"granularity": granularity, "seed": 0, "fast_forward": fast_forward},
    }


def run(label: str, data: dict, trace_memory: bool, profiler: cProfile.Profile | None = None) -> dict:
    """Simulate `data` and write its default outputs to a temp folder, timing each half."""
    scenario = scenario_from_dict(data)
    gc.collect()
    if trace_memory:
        tracemalloc.start()
    if profiler:
        profiler.enable()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = simulate(scenario)
        t1 = time.perf_counter()
        write_outputs(result, Path(out), run_info={"wall_time_s": t1 - t0}, timeline=True)
        t2 = time.perf_counter()
    if profiler:
        profiler.disable()
    peak = tracemalloc.get_traced_memory()[1] if trace_memory else None
    tracemalloc.stop()
    s = result.summary
    return {
        "run": label, "requests": s["num_requests"], "events": result.meta["events"],
        "simulate_s": t1 - t0, "write_s": t2 - t1, "total_s": t2 - t0,
        "req_per_wall_s": s["num_requests"] / (t1 - t0), "events_per_s": result.meta["events"] / (t1 - t0),
        "py_peak_mib": peak / 2**20 if peak is not None else None,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "sim_time_s": s["sim_time_s"], "tokens_per_s": s["throughput_tokens_per_s"],
        "tpot_p50_ms": s["tpot_s"]["p50"] * 1e3, "events_per_request": result.meta["events"] / s["num_requests"],
        "skipped": result.meta["fast_forward"]["steps_skipped"] / result.meta["fast_forward"]["steps_total"],
    }


ROWS = [  # (key, label, format)
    ("requests", "requests", "{:,}"), ("events", "SimPy events", "{:,}"),
    ("events_per_request", "events / request", "{:.1f}"), ("skipped", "steps fast-forwarded", "{:.1%}"),
    ("simulate_s", "wall: simulate (s)", "{:.2f}"), ("write_s", "wall: write outputs (s)", "{:.2f}"),
    ("total_s", "wall: total (s)", "{:.2f}"), ("req_per_wall_s", "requests / wall-s", "{:,.0f}"),
    ("events_per_s", "events / wall-s", "{:,.0f}"), ("py_peak_mib", "tracemalloc peak (MiB)", "{:.1f}"),
    ("rss_mib", "max RSS, process (MiB)", "{:.0f}"), ("sim_time_s", "simulated time (s)", "{:.1f}"),
    ("tokens_per_s", "throughput (out tok/s)", "{:.1f}"), ("tpot_p50_ms", "TPOT p50 (ms)", "{:.2f}"),
]


def print_table(results: list[dict]) -> None:
    width = max(len(r["run"]) for r in results) + 2
    print(f"{'':26}" + "".join(f"{r['run']:>{width}}" for r in results))
    for key, label, fmt in ROWS:
        cells = ["n/a" if r[key] is None else fmt.format(r[key]) for r in results]
        print(f"{label:26}" + "".join(f"{c:>{width}}" for c in cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000, help="requests in the stage-mode run")
    parser.add_argument("--rate", type=float, default=2.0, help="requests/s (the reference: 2)")
    parser.add_argument("--no-fast-forward", action="store_true", help="step every batch (sim.fast_forward: false)")
    parser.add_argument("--layer-requests", type=int, default=200, help="requests in the layer-mode run")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the stage-mode run only (timings then include profiler overhead)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="rerun each case under tracemalloc for the Python-heap peak (slow: ~1 min)")
    args = parser.parse_args()
    stage = reference_scenario(args.requests, rate=args.rate, fast_forward=not args.no_fast_forward)
    print(f"python {sys.version.split()[0]}; imports {IMPORT_S:.2f} s (not in the table)")

    if args.profile:
        profiler = cProfile.Profile()
        result = run(f"stage {args.requests}", stage, False, profiler)
        print_table([result])
        stats = pstats.Stats(profiler).strip_dirs()
        for order in ("cumulative", "tottime"):
            print(f"\n--- top 25 by {order} ---")
            stats.sort_stats(order).print_stats(25)
        return 0

    # Timed without tracemalloc (it slows this allocation-heavy code ~10x); optionally rerun under it.
    results = []
    for label, data in ((f"stage {args.requests}", stage),
                        (f"layer {args.layer_requests}", reference_scenario(args.layer_requests, "layer"))):
        timed = run(label, data, trace_memory=False)
        if args.tracemalloc:
            timed["py_peak_mib"] = run(label, data, trace_memory=True)["py_peak_mib"]
        results.append(timed)
    print_table(results)
    ref = results[0]
    if args.requests == 10_000:
        total = ref["total_s"]
        print(f"\nreference (10,000 requests): {total:.2f} s total; target < {TARGET_WALL_S} s "
              f"(Vidur ~{VIDUR_WALL_S:.0f} s) -- " + ("MET" if total < TARGET_WALL_S else "NOT MET"))
    else:
        print(f"\n{args.requests:,} requests: {ref['simulate_s'] * 10_000 / args.requests:.2f} s of simulation per "
              f"10,000 requests; peak RSS {ref['rss_mib']:.0f} MiB (the reference target applies to 10,000)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
