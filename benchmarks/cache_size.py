"""How big do the process-wide cost caches grow? Entries in `sim/costs.py`'s caches after runs of growing length
and after a second long run in the same process (an advisor's or a sweep's worker runs many).

The caches are keyed by (layer kind, token count) under each configuration priced, so they are bounded by the
scheduler's token budget, not by the run: a longer run meets a few more token counts, a second run adds nothing.

    python benchmarks/cache_size.py                   # Llama-3-70B TP4 on h100-nvlink-node, chunk 512, 2 req/s
    python benchmarks/cache_size.py --requests 2000   # the second-run check at another length
"""

from __future__ import annotations

import argparse

from splitsim import simulate
from splitsim.scenario import scenario_from_dict
from splitsim.sim import costs


def entries() -> tuple[int, int]:
    """(entries over every cache, configurations priced)."""
    return sum(len(cache) for cache in costs._CACHES.values()), len(costs._CACHES)


def scenario(requests: int) -> dict:
    return {"name": "cache-size", "model": "llama-3-70b", "cluster": "h100-nvlink-node", "parallel": {"tp": 4},
            "scheduler": {"policy": "chunked", "max_num_seqs": 128, "max_batched_tokens": 512},
            "workload": {"num_requests": requests, "rate": 2.0, "prompt_tokens": 1024, "output_tokens": 212}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=8000, help="length of the two runs in one process")
    args = parser.parse_args()
    print("run                              entries  configurations")
    for n in (500, 2000, args.requests):
        costs._CACHES.clear()
        simulate(scenario_from_dict(scenario(n)))
        print(f"{n:>6,} requests, fresh process   {entries()[0]:>7,}  {entries()[1]:>14}")
    for run in (1, 2):
        simulate(scenario_from_dict(scenario(args.requests)))
        print(f"{args.requests:>6,} requests, run {run} in a row  {entries()[0]:>7,}  {entries()[1]:>14}")


if __name__ == "__main__":
    main()
