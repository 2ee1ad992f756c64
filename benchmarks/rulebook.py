"""Which cut wins on which wires? Sweeps TP × PP over the shipped scenarios and prints one table.

    python benchmarks/rulebook.py            # every scenario, its own workload
    python benchmarks/rulebook.py --light    # light load (0.5 req/s): the TPOT view

Nothing here picks a winner by rule: every number comes from the simulator's physics.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from splitsim import load_scenario, simulate

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
SWEEPS = {
    "h100-nvlink-70b.yaml": [(8, 1), (4, 2), (2, 4), (1, 8)],
    "l40s-pcie-70b.yaml": [(8, 1), (4, 2), (2, 4), (1, 8)],
    "h100-2node-ib.yaml": [(16, 1), (8, 2), (4, 4)],
    "h100-2node-ethernet.yaml": [(16, 1), (8, 2), (4, 4)],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--light", action="store_true", help="20 requests at 0.5 req/s")
    args = parser.parse_args()
    print(f"{'scenario':26} {'layout':9} {'tok/s':>8} {'TTFT p50':>9} {'TPOT p50':>9} {'TPOT p99':>9}"
          f" {'compute':>8} {'tp_comm':>8} {'pp_comm':>8} {'bubble':>7}")
    for name, layouts in SWEEPS.items():
        for tp, pp in layouts:
            sets = [f"parallel.tp={tp}", f"parallel.pp={pp}"]
            if args.light:
                sets += ["workload.num_requests=20", "workload.rate=0.5"]
            s = simulate(load_scenario(SCENARIOS / name, sets), trace_window_s=0).summary
            f = s["gpu_time_fraction"]
            print(f"{name.removesuffix('.yaml'):26} TP{tp}×PP{pp:<3} {s['throughput_tokens_per_s']:8.1f} "
                  f"{s['ttft_s']['p50'] * 1e3:7.0f}ms {s['tpot_s']['p50'] * 1e3:7.1f}ms "
                  f"{s['tpot_s']['p99'] * 1e3:7.1f}ms {f['compute']:8.1%} {f['tp_comm']:8.1%} "
                  f"{f['pp_comm']:8.1%} {f['bubble']:7.1%}")


if __name__ == "__main__":
    main()
