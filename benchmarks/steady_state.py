"""Steady state against whole-run figures: bursts of several lengths, an open loop below capacity, a
pipeline layout. The rule behind the window is in docs/metrics.md.

    python benchmarks/steady_state.py            # the table (a few minutes: the 20,000-request bursts dominate)
    python benchmarks/steady_state.py --quick    # bursts of 200 and 2,000 only
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from splitsim import load_scenario, simulate

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def row(label: str, scenario: str, overrides: list[str]) -> None:
    started = time.perf_counter()
    s = simulate(load_scenario(SCENARIOS / scenario, overrides)).summary
    wall = time.perf_counter() - started
    steady = s["steady_state"]
    window = (f"{steady['start_s']:8.1f} {steady['end_s']:8.1f} {steady['requests_per_s']:8.3f} "
              f"{steady['output_throughput_tokens_per_s']:9.1f}") if steady else f"{'none':>8} {'':8} {'':8} {'':9}"
    print(f"{label:34} {s['num_requests']:7d} {s['requests_per_s']:8.3f} {s['throughput_tokens_per_s']:9.1f} "
          f"{window} {s['preemptions']:6d} {wall:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bursts of 200 and 2,000 requests only")
    args = parser.parse_args()
    sizes = (200, 2000) if args.quick else (200, 2000, 5000, 20000)
    print(f"{'run':34} {'reqs':>7} {'req/s':>8} {'tok/s':>9} {'start_s':>8} {'end_s':>8} {'st.req/s':>8} "
          f"{'st.tok/s':>9} {'preem':>6} {'wall_s':>6}")
    for layout, sets in (("TP8", []), ("TP4xDP2", ["parallel.tp=4", "parallel.dp=2"])):
        for n in sizes:
            row(f"H100 70B {layout} burst", "h100-nvlink-70b.yaml",
                sets + ["workload.rate=inf", f"workload.num_requests={n}"])
    for n in sizes[1:]:
        row("L40S 70B TP2xPP4 burst", "l40s-pcie-70b.yaml", [f"workload.num_requests={n}"])
    for rate in (2.0, 4.0):
        row(f"H100 70B TP8 Poisson {rate:g}/s", "h100-nvlink-70b.yaml",
            [f"workload.rate={rate}", "workload.num_requests=4000"])


if __name__ == "__main__":
    main()
