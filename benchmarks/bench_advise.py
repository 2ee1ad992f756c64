"""How long does the advisor take to answer issue 9's question, and with how many simulations?

    python benchmarks/bench_advise.py            # the reference question, on every core
    python benchmarks/bench_advise.py --jobs 1   # one core (the pool's speed-up is the ratio)
    python benchmarks/bench_advise.py --ray auto # on Ray (here: a local instance, started and stopped)

Reference question (issue 9): Llama-3-70B on h100-nvlink-node (8 GPUs), 1,024 prompt / 1,024 output tokens,
--slo ttft_p99=2,tpot_p99=0.03, --precision bf16,fp8. AIConfigurator answers a similar question in 14.6 s on
this kind of machine (issue 9's measurement).

Measured here (2 cores), with the presets fitted to aiconfigurator-core's tables (issue 10, fp8 GEMMs their
own): 24 candidates: 4 pruned by memory, 7 skipped by their bound (sim/bounds.py), 13 simulated with the knob
variants of the best; 91 simulations in 5.9 s with two processes, 10.5 s with one (1.8×); `splitsim
advise` end to end 7.2 s. AIConfigurator: 14.6 s. Best: TP4×PP1×DP2 fp8 at 266 clients, 1,097 output tok/s
per GPU, each judged point ±1.9 % at worst. With the earlier (Vidur-fitted) presets: 94 simulations,
6.5 s / 11.0 s, the same layout at 1,225 tok/s per GPU; on a local Ray instance 9.7 s. Before bounds,
one-event pipelines and single-threaded sums: 119 simulations in 32.0 s (two processes), 41.8 s (one).
"""

from __future__ import annotations

import argparse
import time

from splitsim.advisor import Question, advise
from splitsim.slo import parse_slo_arg

AICONFIGURATOR_S = 14.6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="processes (default: every core)")
    parser.add_argument("--ray", help="a Ray address (auto: a running cluster, else a local instance)")
    args = parser.parse_args()
    question = Question(
        base={"name": "advice", "model": "llama-3-70b", "cluster": "h100-nvlink-node", "sim": {"seed": 0},
              "scheduler": {"policy": "chunked"},
              "workload": {"num_requests": 1, "rate": 0, "prompt_tokens": 1024, "output_tokens": 1024}},
        gpus=8, weights=("bf16", "fp8"), kv_caches=("bf16",), slo=parse_slo_arg("ttft_p99=2,tpot_p99=0.03"))
    started = time.perf_counter()
    advice = advise(question, jobs=args.jobs, ray=args.ray)
    wall = time.perf_counter() - started
    runs = sum(int(e.metrics.get("load_search_runs", 1)) + bool(e.metrics.get("precision_rerun"))
               for e in advice.ranked)
    precisions = [e.metrics["steady_state_precision"] for e in advice.ranked
                  if e.metrics.get("steady_state_precision") is not None]
    best = advice.best
    print(f"candidates: {len(advice.ranked) + len(advice.pruned) + len(advice.failed)} "
          f"({len(advice.ranked)} simulated, {len(advice.pruned)} pruned, {len(advice.failed)} refused)")
    where = f"ray={args.ray}" if args.ray else f"jobs={args.jobs or 'all cores'}"
    print(f"simulations: {runs}; wall {wall:.1f} s ({wall / max(runs, 1) * 1e3:.0f} ms wall per simulation, "
          f"{where}); AIConfigurator: {AICONFIGURATOR_S} s")
    if precisions:
        print(f"steady-state throughput known to ±{max(precisions):.1%} at worst (95 % CI), median "
              f"±{sorted(precisions)[len(precisions) // 2]:.1%}")
    if best is not None:
        print(f"best: {best.candidate.label} at {best.load}, {best.metrics['throughput_per_gpu']:.0f} tok/s per GPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
