"""A deployment of pools (sim/plan.py): `parallel` is the shorthand of one aggregated pool, and a pool's own
scheduler, memory and precision override the scenario's field by field."""

from __future__ import annotations

import json

import pytest

from helpers import error_line, scenario_dict
from splitsim.errors import ScenarioError
from splitsim.scenario import scenario_from_dict
from splitsim.sim.plan import build_plan

WORKLOAD = {"num_requests": 12, "rate": 20.0, "prompt_tokens": 300, "output_tokens": 20}


def _deployed(**pool):
    data = scenario_dict(workload=WORKLOAD)
    del data["parallel"]
    return data | {"deployment": {"kind": "aggregated", **pool}}


def test_an_aggregated_deployment_is_what_parallel_says(run):
    from splitsim import simulate

    written = scenario_dict(workload=WORKLOAD, parallel={"tp": 2, "pp": 2, "dp": 2})
    short = run(**{k: v for k, v in written.items() if k != "name"})
    long = simulate(scenario_from_dict(_deployed(tp=2, pp=2, dp=2)), trace_window_s=1e9)
    assert json.dumps(short.summary) == json.dumps(long.summary)
    assert short.requests.equals(long.requests)
    assert short.trace_events == long.trace_events


def test_a_pool_overrides_the_scenarios_sections_field_by_field():
    data = _deployed(tp=1, scheduler={"max_num_seqs": 7}, memory={"block_size": 32},
                     precision={"kv_cache": "fp8"})
    data["scheduler"] = {"policy": "prefill_first", "max_num_seqs": 64, "max_batched_tokens": 4096}
    pool = build_plan(scenario_from_dict(data)).pool
    # the pool's own value where it gives one, the scenario's where it does not
    assert (pool.scheduler.max_num_seqs, pool.scheduler.policy, pool.scheduler.max_batched_tokens) == (
        7, "prefill_first", 4096)
    assert pool.block_size == 32
    assert (pool.sharding.kv_cache, pool.sharding.weights) == ("fp8", "bf16")


def test_the_pool_occupies_the_first_gpus_in_its_order():
    plan = build_plan(scenario_from_dict(_deployed(tp=2, pp=2, dp=2, order="tp-dp-pp")))
    pool = plan.pool
    assert pool.gpus == tuple(range(8))
    # tp-dp-pp: the same stage of both replicas side by side
    assert [pool.tp_group(r, s) for s in range(2) for r in range(2)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert plan.replicas == ((pool, 0), (pool, 1))


def test_parallel_and_deployment_together_are_one_line_naming_both(capsys, tmp_path):
    data = _deployed(tp=2)
    data["parallel"] = {"tp": 2}
    with pytest.raises(ScenarioError, match=r"^parallel and deployment are given together"):
        scenario_from_dict(data)
    path = tmp_path / "both.yaml"
    path.write_text(json.dumps(data))
    assert "parallel and deployment" in error_line(capsys, ["run", str(path), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_deployments_layout_errors_name_its_fields():
    with pytest.raises(ScenarioError, match=r"^deployment\.tp = 3: "):
        build_plan(scenario_from_dict(_deployed(tp=3)))
    with pytest.raises(ScenarioError, match=r"^deployment: tp×pp×dp = 4×1×4 = 16 GPUs"):
        build_plan(scenario_from_dict(_deployed(tp=4, dp=4)))
    with pytest.raises(ScenarioError, match=r"^deployment\.kind"):
        scenario_from_dict(_deployed(tp=1) | {"deployment": {"kind": "disaggregated", "tp": 1}})
