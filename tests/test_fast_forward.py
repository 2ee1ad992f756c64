"""Fast-forward is exact: on a battery of scenarios it gives what stepping every batch gives.

The contract (issue 8): times equal to a relative 1e-9 of max(|value|, simulated duration), counts exactly,
for requests.csv, summary.json and the GPU intervals of the trace window. The decode-heavy cases must also
skip a stated share of their steps, so a fast path that quietly declines cannot pass.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from helpers import cluster_holding, scenario_dict
from splitsim import simulate
from splitsim.models.ops import BatchShape
from splitsim.scenario import scenario_from_dict
from splitsim.sim.costs import StageCosts
from splitsim.sim.plan import build_plan

DECODE_HEAVY = {"prompt_tokens": 128, "output_tokens": {"dist": "lognormal", "median": 300, "sigma": 0.6, "max": 2000}}
CHUNKED = {"policy": "chunked", "max_batched_tokens": 512, "max_num_seqs": 64}
TIGHT = {"policy": "chunked", "max_batched_tokens": 2048, "max_num_seqs": 256}

# name -> (scenario overrides, the least share of steps the fast path must skip; None: it must decline)
BATTERY: dict[str, tuple[dict[str, Any], float | None]] = {
    "tp4 chunked lognormal": ({"parallel": {"tp": 4}, "scheduler": CHUNKED,
                               "workload": {"num_requests": 300, "rate": 4, **DECODE_HEAVY}}, 0.6),
    "dp2 fixed lengths": ({"parallel": {"tp": 2, "dp": 2}, "scheduler": CHUNKED,
                           "workload": {"num_requests": 300, "rate": 6, "prompt_tokens": 256,
                                        "output_tokens": 200}}, 0.6),
    "fp8 weights and kv": ({"precision": {"weights": "fp8", "kv_cache": "fp8"}, "scheduler": CHUNKED,
                            "workload": {"num_requests": 200, "rate": 3, **DECODE_HEAVY}}, 0.6),
    "whole-prompt prefill": ({"scheduler": {"policy": "prefill_first", "max_num_seqs": 64,
                                            "max_batched_tokens": 4096},
                              "workload": {"num_requests": 200, "rate": 3, **DECODE_HEAVY}}, 0.6),
    "reserved kv, queue blocked": ({"scheduler": TIGHT, "memory": {"gpu_utilization": 1.0, "kv_allocation": "reserve"},
                                    "cluster": "tight",
                                    "workload": {"num_requests": 60, "rate": 0, "prompt_tokens": 100,
                                                 "output_tokens": 400}}, 0.5),
    "paged kv with preemption": ({"scheduler": TIGHT, "memory": {"gpu_utilization": 1.0, "kv_allocation": "on_demand"},
                                  "cluster": "tight",
                                  "workload": {"num_requests": 120, "rate": 0, "prompt_tokens": 100,
                                               "output_tokens": 400}}, 0.3),
    "closed loop": ({"scheduler": CHUNKED, "workload": {"num_requests": 200, "concurrency": 16, **DECODE_HEAVY}},
                    0.5),
    "trace": ({"scheduler": CHUNKED, "workload": {"trace": "trace.csv"}}, 0.5),
    "burst": ({"scheduler": CHUNKED, "workload": {"num_requests": 100, "rate": "inf", **DECODE_HEAVY}}, 0.6),
    # a replica with fewer outstanding requests than another steps (a finish there may send it a request)
    "mixture of experts tp2": ({"model": "qwen3-30b-a3b", "parallel": {"tp": 2}, "scheduler": CHUNKED,
                                "workload": {"num_requests": 200, "rate": 4, **DECODE_HEAVY}}, 0.6),
    "closed loop dp2": ({"parallel": {"dp": 2}, "scheduler": CHUNKED,
                         "workload": {"num_requests": 100, "concurrency": 7, **DECODE_HEAVY}}, 0.5),
    # symmetric replicas: their steps and finishes tie in time, so event order at equal times matters
    "closed loop dp2, fixed lengths": ({"parallel": {"dp": 2}, "scheduler": CHUNKED,
                                        "workload": {"num_requests": 100, "concurrency": 8, "prompt_tokens": 128,
                                                     "output_tokens": 150}}, 0.5),
    "closed loop dp4, mixed lengths": ({"parallel": {"dp": 4}, "scheduler": CHUNKED,
                                        "workload": {"num_requests": 160, "concurrency": 10, **DECODE_HEAVY}},
                                       0.3),
    # sliding windows of 128 on every other layer: a decode's view stops growing as it passes the window
    "sliding windows": ({"model": "gpt-oss-20b", "precision": {"weights": None}, "scheduler": CHUNKED,
                         "workload": {"num_requests": 150, "rate": 4, "prompt_tokens": 60,
                                      "output_tokens": {"dist": "lognormal", "median": 200, "sigma": 0.6,
                                                        "max": 1500}}}, 0.5),
    # chunks of 8192 on three of four layers: prompts just short of a chunk's end, so decodes cross into the next
    "chunked attention": ({"model": "llama-4-scout", "parallel": {"tp": 4}, "scheduler": TIGHT,
                           "workload": {"num_requests": 60, "rate": 2, "prompt_tokens": 8100,
                                        "output_tokens": 300}}, 0.5),
    "pp2 (steps)": ({"parallel": {"tp": 2, "pp": 2}, "scheduler": CHUNKED,
                     "workload": {"num_requests": 60, "rate": 3, **DECODE_HEAVY}}, None),
    "layer granularity (steps)": ({"sim": {"granularity": "layer"}, "scheduler": CHUNKED,
                                   "workload": {"num_requests": 20, "rate": 3, "prompt_tokens": 64,
                                                "output_tokens": 40}}, None),
}


def _scenario(folder: Path, overrides: dict[str, Any], fast_forward: bool) -> Any:
    overrides = dict(overrides)
    if overrides.get("cluster") == "tight":
        overrides["cluster"] = cluster_holding("llama-3-8b", 6000, TIGHT)
    if overrides.get("workload", {}).get("trace"):
        rng = np.random.default_rng(5)
        arrivals = np.cumsum(rng.exponential(0.4, 150))
        pd.DataFrame({"arrival_s": arrivals.round(3), "prompt_tokens": rng.integers(20, 900, 150),
                      "output_tokens": rng.integers(1, 500, 150)}).to_csv(folder / "trace.csv", index=False)
        overrides["workload"] = {"trace": str(folder / "trace.csv")}
    data = scenario_dict(**overrides)
    data["workload"] = overrides["workload"]  # whole: one load kind, not merged with the default's rate
    data["sim"] = {**data["sim"], "fast_forward": fast_forward}
    return scenario_from_dict(data)


def _same(fast: Any, exact: Any, scale: float, where: str) -> None:
    """Equal within the contract: counts exactly, times to 1e-9 of max(|value|, duration)."""
    if isinstance(exact, dict):
        assert fast.keys() == exact.keys(), where
        for key in exact:
            _same(fast[key], exact[key], scale, f"{where}.{key}")
    elif isinstance(exact, list):
        assert len(fast) == len(exact), where
        for i, (a, b) in enumerate(zip(fast, exact, strict=True)):
            _same(a, b, scale, f"{where}[{i}]")
    elif isinstance(exact, float) and not isinstance(fast, bool):
        assert math.isclose(fast, exact, rel_tol=0, abs_tol=1e-9 * max(abs(exact), scale)), (where, fast, exact)
    else:
        assert fast == exact, (where, fast, exact)


@pytest.mark.parametrize("case", list(BATTERY))
def test_fast_forward_gives_what_stepping_gives(tmp_path, case):
    overrides, least_skipped = BATTERY[case]
    window = {"trace_window_s": 30.0, "trace_start_s": 5.0}
    fast = simulate(_scenario(tmp_path, overrides, True), **window)
    exact = simulate(_scenario(tmp_path, overrides, False), **window)
    scale = exact.summary["sim_time_s"]
    assert fast.requests.columns.tolist() == exact.requests.columns.tolist()
    for column in exact.requests.columns:
        _same(fast.requests[column].tolist(), exact.requests[column].tolist(), scale, column)
    summary = {k: v for k, v in exact.summary.items() if k != "scenario"}
    _same({k: fast.summary[k] for k in summary}, summary, scale, "summary")
    _same(fast.gpu_intervals.to_dict("list"), exact.gpu_intervals.to_dict("list"), scale, "gpu_intervals")
    for key in ("kv_blocked_batches", "recomputed_tokens"):
        assert fast.meta[key] == exact.meta[key], key

    stats, reference = fast.meta["fast_forward"], exact.meta["fast_forward"]
    assert stats["steps_total"] == reference["steps_total"] == sum(reference["fallbacks"].values())
    assert reference["steps_skipped"] == 0 and reference["fallbacks"] == {"off": reference["steps_total"]}
    # every step is skipped inside a span, ends a span (stepped, after the skipped ones), or steps for a reason
    spans = sum(stats["span_lengths"].values())
    assert stats["steps_skipped"] + spans + sum(stats["fallbacks"].values()) == stats["steps_total"]
    skipped = stats["steps_skipped"] / stats["steps_total"]
    if least_skipped is None:
        assert skipped == 0 and set(stats["fallbacks"]) <= {"pipeline", "layer_granularity", "closed_loop_dp"}
    else:
        assert skipped >= least_skipped, stats
    if case == "closed loop dp2":
        assert stats["fallbacks"]["closed_loop_dp"] > 0  # 7 clients: one replica has 3, the other 4
    if "preemption" in case:
        assert exact.summary["preemptions"] > 0  # the case does what its name says
    if "blocked" in case:
        assert exact.meta["kv_blocked_batches"] > 0


def _own_decode_attention_cluster() -> dict:
    """h100-nvlink-node whose GPU has its own decode-attention roofline (profile schema 2)."""
    from splitsim.hardware.catalog import load_cluster

    cluster = load_cluster("h100-nvlink-node")
    from splitsim.hardware.gpu import AttentionKernel

    efficiency = cluster.gpu.efficiency.model_copy(update={"attention_decode": AttentionKernel(
        compute=0.41, memory=0.67, launch_s=13.7e-6)})
    return cluster.model_copy(update={"gpu": cluster.gpu.model_copy(update={"efficiency": efficiency})}).model_dump()


@pytest.mark.parametrize("overrides", [{"parallel": {"tp": 4}}, {"precision": {"weights": "fp8"}},
                                       {"parallel": {"tp": 2, "pp": 2}}, {"cluster": "l40s-pcie-node",
                                                                          "parallel": {"tp": 4}},
                                       {"cluster": _own_decode_attention_cluster()},
                                       {"model": "gpt-oss-20b", "precision": {"weights": None}},
                                       {"model": "llama-4-scout", "parallel": {"tp": 4, "pp": 2}}])
def test_decode_step_times_are_stage_time_bit_for_bit(overrides):
    plan = build_plan(scenario_from_dict(scenario_dict(**overrides))).pool
    for stage in range(plan.pp):
        costs = StageCosts.of(plan, 0, stage)
        for n in (1, 7, 64):
            contexts = n * 100 + n * np.arange(0, 3000, 37)
            local = None if plan.model.local_attention is None else np.minimum(contexts, n * 128)
            compute, comm = costs.decode_stage_times(n, contexts, local)
            for i, (ctx, fast) in enumerate(zip(contexts.tolist(), compute.tolist(), strict=True)):
                seen = 0 if local is None else int(local[i])
                assert (fast, comm) == costs.stage_time(BatchShape((), n, ctx, seen), n)  # equal, not close


def test_the_span_counts_what_local_layers_see_step_by_step():
    """Each step's Σ positions in view, vectorised, against `local_positions` summed sequence by sequence."""
    from splitsim.models.ops import local_positions
    from splitsim.sim.fast_forward import local_contexts

    contexts = np.array([1, 5, 126, 127, 128, 129, 400, 8191, 8192, 8193])
    for kind, span in (("sliding", 128), ("chunked", 128), ("chunked", 8192), ("sliding", 1)):
        got = local_contexts(contexts, 300, kind, span)
        assert got.tolist() == [sum(local_positions(int(c) + s, kind, span) for c in contexts) for s in range(300)]
