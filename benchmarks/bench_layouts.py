"""How fast is each execution path? CPU time per request and the share of steps fast-forward folds, for the
reference PP1 run and the shipped pipeline scenarios (issue 20's table).

Each row simulates one scenario (no outputs written) and prints CPU seconds, wall seconds, CPU ms per request,
SimPy events per request, the share of batch steps folded into fast-forward spans and why the rest stepped
(`run.json`'s `fast_forward.fallbacks`).

    python benchmarks/bench_layouts.py                    # 10,000 requests each (walking every contended step: 2,000)
    python benchmarks/bench_layouts.py --requests 1000    # quicker
    python benchmarks/bench_layouts.py --only l40s        # rows whose name contains 'l40s'

Run one benchmark at a time, on a quiet machine, and name the machine (`lscpu` model name) beside its figures.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import yaml

from splitsim.api import simulate
from splitsim.scenario import scenario_from_dict

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_MODEL = ROOT / "benchmarks" / "models" / "llama-2-70b" / "config.json"


def _shipped(name: str, **sim: object) -> dict:
    data = yaml.safe_load((ROOT / "scenarios" / f"{name}.yaml").read_text())
    data["sim"] = {**data.get("sim", {}), **sim}
    return data


def rows(requests: int) -> list[tuple[str, dict, int]]:
    """(label, scenario mapping, requests) for each row."""
    reference = {"name": "reference", "model": str(REFERENCE_MODEL), "cluster": "h100-nvlink-node",
                 "parallel": {"tp": 4, "pp": 1, "dp": 1},
                 "workload": {"num_requests": requests, "rate": 2.0, "prompt_tokens": 1024, "output_tokens": 212},
                 "scheduler": {"max_num_seqs": 128, "max_batched_tokens": 512, "policy": "chunked"},
                 "sim": {"granularity": "stage", "seed": 0}}
    return [
        ("reference PP1 TP4 h100-nvlink-node", reference, requests),
        ("l40s-pcie-70b TP2xPP4 (contention on)", _shipped("l40s-pcie-70b"), requests),
        ("l40s-pcie-70b TP2xPP4 every step walked", _shipped("l40s-pcie-70b", fast_forward=False), min(requests, 2000)),
        ("l40s-pcie-70b TP2xPP4 contention off", _shipped("l40s-pcie-70b", contention=False), requests),
        ("h100-2node-ib TP8xPP2", _shipped("h100-2node-ib"), requests),
        ("h100-2node-ethernet TP8xPP2", _shipped("h100-2node-ethernet"), requests),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--only", default="", help="run the rows whose label contains this")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()} (name the `lscpu` model beside these figures)")
    print(f"{'run':40} {'requests':>8} {'CPU s':>7} {'wall s':>7} {'CPU ms/req':>10} {'events/req':>10} "
          f"{'folded':>7}  stepped because")
    for label, data, requests in rows(args.requests):
        if args.only not in label:
            continue
        data = {**data, "workload": {**data["workload"], "num_requests": requests}}
        scenario = scenario_from_dict(data)
        wall, cpu = time.perf_counter(), time.process_time()
        result = simulate(scenario, error_bars=False)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        ff = result.meta["fast_forward"]
        folded = ff["steps_skipped"] / ff["steps_total"] if ff["steps_total"] else 0.0
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(ff["fallbacks"].items(), key=lambda kv: -kv[1]))
        print(f"{label:40} {requests:>8,} {cpu:>7.2f} {wall:>7.2f} {cpu / requests * 1e3:>10.3f} "
              f"{result.meta['events'] / requests:>10.1f} {folded:>7.0%}  {reasons}", flush=True)


if __name__ == "__main__":
    main()
