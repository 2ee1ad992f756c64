"""TP against EP for mixture-of-experts models: experts split by TP (TP8), spread whole over one TP group
(TP8×EP8) and spread over replicas with attention data-parallel (TP1×DP8×EP8, TP2×DP4×EP8), on one 8×H100 node at
a light and a heavy load, with where each GPU's time went; then DeepSeek-V3 over two H100 nodes (InfiniBand).

    python benchmarks/moe_layouts.py                    # Mixtral-8x7B (bf16), Qwen3-235B-A22B and DeepSeek-V3 (fp8)
    python benchmarks/moe_layouts.py --requests 200

The workload is the shipped scenarios' (chat-like lengths, Poisson arrivals); nothing here picks a winner by rule.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from splitsim import load_scenario, simulate

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
ONE_NODE = [(8, 1, 1, 1), (8, 1, 1, 8), (1, 1, 8, 8), (2, 1, 4, 8)]  # (tp, pp, dp, ep)
TWO_NODES = [(16, 1, 1, 1), (8, 2, 1, 1), (16, 1, 1, 16), (1, 1, 16, 16), (2, 1, 8, 16)]
RUNS = [  # (scenario, model, weights, layouts, {load: requests per second})
    ("h100-nvlink-70b.yaml", "mixtral-8x7b", "bf16", ONE_NODE, {"light": 1.0, "heavy": 16.0}),
    ("h100-nvlink-70b.yaml", "qwen3-235b-a22b", "fp8", ONE_NODE, {"light": 1.0, "heavy": 16.0}),
    ("h100-2node-ib.yaml", "deepseek-v3", "fp8", TWO_NODES, {"light": 1.0, "heavy": 12.0}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per run (default: 400)")
    args = parser.parse_args()
    print(f"{'model':16} {'load':6} {'layout':12} {'tok/s':>7} {'TTFT p50':>9} {'TPOT p50':>9} {'TPOT p99':>9}"
          f" {'compute':>8} {'tp_comm':>8} {'ep_comm':>8} {'bubble':>7} {'idle':>6}")
    for scenario, model, weights, layouts, loads in RUNS:
        for load, rate in loads.items():
            for tp, pp, dp, ep in layouts:
                sets = [f"model={model}", f"precision.weights={weights}", f"parallel.tp={tp}", f"parallel.pp={pp}",
                        f"parallel.dp={dp}", f"parallel.ep={ep}", f"workload.rate={rate}",
                        f"workload.num_requests={args.requests}"]
                s = simulate(load_scenario(SCENARIOS / scenario, sets), trace_window_s=0).summary
                f = s["gpu_time_fraction"]
                label = f"TP{tp}" + (f"×PP{pp}" if pp > 1 else "") + f"×DP{dp}" + (f"×EP{ep}" if ep > 1 else "")
                print(f"{model:16} {load:6} {label:12} {s['throughput_tokens_per_s']:7.0f} "
                      f"{s['ttft_s']['p50'] * 1e3:7.1f}ms {s['tpot_s']['p50'] * 1e3:7.2f}ms "
                      f"{s['tpot_s']['p99'] * 1e3:7.2f}ms {f['compute']:8.1%} {f['tp_comm']:8.1%} "
                      f"{f['ep_comm']:8.1%} {f['bubble']:7.1%} {f['idle']:6.1%}", flush=True)


if __name__ == "__main__":
    main()
