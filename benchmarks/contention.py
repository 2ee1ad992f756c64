"""Stage against layer granularity where transfers share links (issue 10): the throughput each gives, and the gap
(stage mode with `sim.contention: true`, the default; layer mode always shares links).

    python benchmarks/contention.py [--requests N]

The cases: Llama-3-70B (fp8 weights, so TP2 fits a 48 GB L40S) on the 8×L40S box without P2P (every
transfer staged through host memory: the two TP pairs of a socket share its path) at TP2×DP4 and TP2×PP4, and
Llama-3-70B on two H100 nodes over one Ethernet NIC each at TP4×PP2×DP2, order tp-dp-pp (the two replicas' hand-offs
share each node's NIC). Workload: scenarios/h100-nvlink-70b.yaml's lengths, at its rate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from splitsim import load_scenario, simulate

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "h100-nvlink-70b.yaml"
CASES = [
    ("L40S TP2xDP4 (P2P off)", ["cluster=l40s-pcie-node", "precision.weights=fp8", "parallel.tp=2", "parallel.dp=4"]),
    ("L40S TP2xPP4 (P2P off)", ["cluster=l40s-pcie-node", "precision.weights=fp8", "parallel.tp=2", "parallel.pp=4"]),
    ("h100-eth-2node TP4xPP2xDP2 tp-dp-pp", ["cluster=h100-eth-2node", "parallel.tp=4", "parallel.pp=2",
                                             "parallel.dp=2", "parallel.order=tp-dp-pp"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600)
    args = parser.parse_args()
    print(f"{'case':40} {'stage tok/s':>12} {'layer tok/s':>12} {'gap':>7} {'stage s':>8} {'layer s':>8}")
    for name, overrides in CASES:
        results = {}
        for granularity in ("stage", "layer"):
            scenario = load_scenario(SCENARIO, [*overrides, f"workload.num_requests={args.requests}",
                                                f"sim.granularity={granularity}", "sim.contention=true"])
            start = time.perf_counter()
            summary = simulate(scenario, trace_window_s=0.0, error_bars=False).summary
            results[granularity] = (summary["throughput_tokens_per_s"], time.perf_counter() - start)
        (stage, stage_s), (layer, layer_s) = results["stage"], results["layer"]
        print(f"{name:40} {stage:12.1f} {layer:12.1f} {stage / layer - 1:7.1%} {stage_s:8.1f} {layer_s:8.1f}")


if __name__ == "__main__":
    main()
