"""Replay the whole Azure LLM-inference conversation trace (Splitwise, 19,366 requests, prompts up to 14,089
tokens) at 10x its rate on one 8-GPU H100 node serving the long-context Llama-3.1-70B, TP8 and TP4 x DP2.

    python benchmarks/bench_trace.py      # needs ../shared/reference-data beside the repository

Prints wall time (simulation, and simulation plus outputs) and the run's headline figures.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from splitsim.api import simulate
from splitsim.report import write_outputs
from splitsim.scenario import scenario_from_dict

TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "reference-data" / "traces" / "splitwise_conv.csv"


def main() -> int:
    if not TRACE.is_file():
        print(f"no trace at {TRACE}: this benchmark needs ../shared/reference-data beside the repository")
        return 1
    print(f"{'layout':12} {'requests':>9} {'simulate s':>11} {'+ outputs s':>12} {'events':>10} {'skipped':>8} "
          f"{'sim time s':>11} {'TTFT p50 ms':>12} {'TPOT p50 ms':>12}")
    for tp, dp in ((8, 1), (4, 2)):
        scenario = scenario_from_dict({
            "name": "azure-conv-10x", "model": "llama-3.1-70b", "cluster": "h100-nvlink-node",
            "parallel": {"tp": tp, "pp": 1, "dp": dp},
            "workload": {"trace": str(TRACE), "time_scale": 0.1},
            "scheduler": {"policy": "chunked"}, "sim": {"seed": 0}})
        t0 = time.perf_counter()
        result = simulate(scenario)
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            write_outputs(result, Path(out), timeline=True)
        t2 = time.perf_counter()
        s, ff = result.summary, result.meta["fast_forward"]
        print(f"TP{tp} x DP{dp:<5} {s['num_requests']:>9,} {t1 - t0:>11.2f} {t2 - t0:>12.2f} "
              f"{result.meta['events']:>10,} "
              f"{ff['steps_skipped'] / ff['steps_total']:>8.1%} {s['sim_time_s']:>11.1f} "
              f"{s['ttft_s']['p50'] * 1e3:>12.1f} {s['tpot_s']['p50'] * 1e3:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
