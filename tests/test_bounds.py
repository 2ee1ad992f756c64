"""The advisor's closed-form bounds (sim/bounds.py): what they claim, checked against the engine's own step
times and against simulated runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from helpers import scenario_dict
from splitsim import simulate
from splitsim.models.ops import BatchShape
from splitsim.scenario import scenario_from_dict
from splitsim.sim.bounds import decode_bound
from splitsim.sim.costs import StageCosts
from splitsim.sim.plan import build_plan


def _plan(model="llama-3-70b", cluster="h100-nvlink-node", tp=2, pp=2, weights="bf16", **scheduler):
    return build_plan(scenario_from_dict(scenario_dict(
        model=model, cluster=cluster, parallel={"tp": tp, "pp": pp, "dp": 1}, precision={"weights": weights},
        scheduler={"policy": "chunked", "max_num_seqs": 256, "max_batched_tokens": 8192, **scheduler}))).pool


def _step_s(plan, b: int, context: int) -> list[float]:
    """Each stage's seconds on b decodes of `context` positions each, from the engine's per-batch function."""
    costs = [StageCosts.of(plan, 0, s) for s in range(plan.pp)]
    shape = BatchShape(num_decode=b, decode_context=b * context)
    return [sum(cost.stage_time(shape, b if s == plan.pp - 1 else 0)) for s, cost in enumerate(costs)]


@pytest.mark.parametrize("slack", [math.inf, 2.0, 1.2])
def test_the_bound_is_the_best_batch_on_the_engines_step_times(slack):
    """Every batch size from 1 to the most a micro-batch holds, timed by StageCosts.stage_time (the engine's
    per-batch function): the best tokens/s over those whose round through the stages meets the limit."""
    plan, prompt, output = _plan(), 512, 64
    largest = min(256, plan.kv_blocks_per_slot * plan.block_size // (prompt + 1))
    step_limit = slack * sum(_step_s(plan, 1, prompt + 1))  # a TPOT limit some batches meet, or none
    best = 0.0
    for b in range(1, largest + 1):
        stages = _step_s(plan, b, prompt + 1)
        if sum(stages) <= step_limit:
            best = max(best, b / max(stages))
    exact = best * output / (output - 1) / (plan.tp * plan.pp)
    bound = decode_bound(plan, prompt, output, step_limit)
    assert exact > 0
    assert bound.tokens_per_s_per_gpu == pytest.approx(exact, rel=1e-12)
    quickest = min(sum(_step_s(plan, b, prompt + 1)) for b in range(1, largest + 1))
    assert bound.e2e_s == pytest.approx((output - 1) * quickest, rel=1e-12)


def test_a_limit_no_batch_meets_bounds_throughput_at_zero():
    plan = _plan()
    quickest = min(sum(_step_s(plan, b, 513)) for b in range(1, 65))  # not always b = 1 (sim/bounds.py)
    assert decode_bound(plan, 512, 64, quickest * 0.99).tokens_per_s_per_gpu == 0.0
    assert decode_bound(plan, 512, 64, quickest * 1.01).tokens_per_s_per_gpu > 0.0


@pytest.mark.parametrize(("model", "cluster", "tp", "weights"), [
    ("llama-3-70b", "h100-nvlink-node", 4, "fp8"), ("llama-3-70b", "l40s-pcie-node", 8, "bf16"),
    ("llama-3-8b", "h100-nvlink-node", 1, "bf16")])
def test_a_step_never_gets_faster_with_more_context_or_a_prefill_chunk(model, cluster, tp, weights):
    """What the bound rests on (not on batch size: a GEMM of few rows fills its tiles poorly, so b = 2 can be
    quicker than b = 1, and the bound times every b): more context or an added prefill chunk never shortens
    a stage's step."""
    plan = _plan(model, cluster, tp=tp, pp=1, weights=weights)
    cost = StageCosts.of(plan, 0, 0)
    longer = np.array([sum(cost.stage_time(BatchShape(num_decode=64, decode_context=64 * c), 64))
                       for c in range(100, 4000, 50)])
    assert (np.diff(longer) >= 0).all()
    for chunk in (1, 64, 512, 2048):
        mixed = BatchShape.of(((chunk, 0),), num_decode=64, decode_context=64 * 600)
        assert sum(cost.stage_time(mixed, 65)) >= sum(cost.stage_time(BatchShape(num_decode=64,
                                                                                 decode_context=64 * 600), 64))


@pytest.mark.parametrize(("tp", "pp", "dp", "clients"), [(1, 1, 2, 48), (2, 1, 1, 96), (1, 2, 1, 64)])
def test_no_simulated_run_beats_its_bound(tp, pp, dp, clients):
    data = scenario_dict(model="llama-3-8b", cluster="h100-nvlink-node", parallel={"tp": tp, "pp": pp, "dp": dp},
                         scheduler={"policy": "chunked", "max_num_seqs": 64, "max_batched_tokens": 2048})
    data["workload"] = {"num_requests": 4 * clients, "concurrency": clients, "prompt_tokens": 256,
                        "output_tokens": 128}
    scenario = scenario_from_dict(data)
    result = simulate(scenario)
    bound = decode_bound(build_plan(scenario).pool, 256, 128)
    per_gpu = result.summary["throughput_tokens_per_s"] / (tp * pp * dp)
    steady = result.summary["steady_state"]["output_throughput_tokens_per_s"] / (tp * pp * dp)
    assert max(per_gpu, steady) <= bound.tokens_per_s_per_gpu
    requests = result.requests
    assert (requests["finish_s"] - requests["arrival_s"]).min() >= bound.e2e_s
