"""How long does the advisor take to answer issue 9's question, and with how many simulations?

    python benchmarks/bench_advise.py            # the reference question, on every core
    python benchmarks/bench_advise.py --jobs 1   # one core (the pool's speed-up is the ratio)
    python benchmarks/bench_advise.py --ray auto # on Ray (here: a local instance, started and stopped)

Reference question (issue 9): Llama-3-70B on h100-nvlink-node (8 GPUs), 1,024 prompt / 1,024 output tokens,
--slo ttft_p99=2,tpot_p99=0.03, --precision bf16,fp8. AIConfigurator answers a similar question in 14.6 s on
this kind of machine (issue 9's measurement).

Measured here (2 cores): 24 candidates: 16 layouts × precisions, 4 pruned as unable to run, 7 skipped by their
bound (sim/bounds.py: TP1 layouts at most ~650 tok/s per GPU under the TPOT limit, bf16 PP layouts unable to
meet it), 13 simulated with the knob variants of the best; 94 simulations in 6.5 s with two processes,
11.0 s with one (1.7×); on Ray (`--ray auto`, a local instance of 2 CPUs, its start and stop included)
9.7 s, the same best; `splitsim advise` end to end 7.3 s. AIConfigurator: 14.6 s. Each judged point's
throughput known to ±1.8 % at worst. Best: TP4×PP1×DP2 fp8, max_batched_tokens 16384, at 296 clients,
1,225 output tok/s per GPU. Before bounds, one-event pipelines and single-threaded sums: 119 simulations in
32.0 s (two processes), 41.8 s (one).
"""

from __future__ import annotations

import argparse
import time

from splitsim.advisor import Question, advise
from splitsim.sim.slo import parse_slo_arg

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
