"""vLLM's paged KV cache against reservation: blocks as tokens come, preemption by recompute, and a run
traced by hand through one preemption."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers import cluster_holding, ideal_step_s
from splitsim.models.ops import BatchShape


def test_one_preemption_traced_by_hand(run, tiny_model):
    """Five 16-token blocks, two requests of 16 + 40 tokens at t=0. Both prefill (1 block each) and decode in
    lockstep, taking a second block at 17 tokens. At 33 tokens each needs a third: A (admitted first) takes
    the fifth block, B finds none and, being the most recently admitted, is preempted with 17 tokens
    generated. It waits until A finishes (readmitting it needs 3 blocks for 16 + 17 = 33 tokens), then
    recomputes those 33 tokens, samples its 18th and decodes to 40."""
    from helpers import scenario_dict
    from splitsim import simulate
    from splitsim.models.spec import load_model
    from splitsim.scenario import scenario_from_dict

    model = load_model(tiny_model)
    scheduler = {"policy": "chunked", "max_batched_tokens": 4096, "max_num_seqs": 8}
    rows = pd.DataFrame({"arrival_s": [0.0, 0.0], "prompt_tokens": [16, 16], "output_tokens": [40, 40]})
    scenario = scenario_from_dict(scenario_dict(
        model=tiny_model, cluster=cluster_holding(tiny_model, 5.5 * 16, scheduler), scheduler=scheduler,
        memory={"gpu_utilization": 1.0, "kv_allocation": "on_demand"}))
    result = simulate(scenario, requests=rows)
    assert result.summary["kv_cache_tokens_per_replica"] == 80  # the set-up: five blocks

    t = ideal_step_s(model, BatchShape.of(((16, 0), (16, 0))), 2)
    first_token = t
    for g in range(1, 17):  # both decode; a decode's context is prompt + tokens generated so far
        t += ideal_step_s(model, BatchShape(num_decode=2, decode_context=2 * (16 + g)), 2)
    preempted_at = t
    for g in range(17, 40):  # A alone
        t += ideal_step_s(model, BatchShape(num_decode=1, decode_context=16 + g), 1)
    a_finish = t
    t += ideal_step_s(model, BatchShape.of(((33, 0),)), 1)  # B recomputes prompt + 17 generated tokens
    for g in range(18, 40):
        t += ideal_step_s(model, BatchShape(num_decode=1, decode_context=16 + g), 1)
    b_finish = t

    table = result.requests
    assert table["preemptions"].tolist() == [0, 1]
    assert result.summary["preemptions"] == 1
    assert result.meta["recomputed_tokens"] == 16 + 17
    assert table["output_tokens"].tolist() == [40, 40]
    assert table["first_token_s"].tolist() == pytest.approx([first_token] * 2, rel=1e-12)
    assert table["finish_s"].tolist() == pytest.approx([a_finish, b_finish], rel=1e-12)
    # B's longest gap: from its 17th token to the one its recompute samples.
    b_gap = a_finish + ideal_step_s(model, BatchShape.of(((33, 0),)), 1) - preempted_at
    assert table["itl_max_s"].iloc[1] == pytest.approx(b_gap, rel=1e-12)
    assert table["queue_s"].tolist() == [0.0, 0.0]  # re-queueing after a preemption is not queueing


TIGHT = {"policy": "chunked", "max_batched_tokens": 2048, "max_num_seqs": 256}


def _tight(run, kv_allocation: str):
    return run(cluster=cluster_holding("llama-3-8b", 6000, TIGHT), scheduler=TIGHT,
               memory={"gpu_utilization": 1.0, "kv_allocation": kv_allocation},
               workload={"num_requests": 120, "rate": 0, "prompt_tokens": 100, "output_tokens": 400})


def test_on_demand_blocks_run_more_sequences_and_finish_sooner_than_reservation(run):
    """6,000 tokens of KV: reserving 500 tokens a request runs 11 at once; paging admits on the prompt's
    blocks and runs as many as the cache holds, preempting when growth runs out of blocks."""
    reserve = _tight(run, "reserve")
    paged = _tight(run, "on_demand")
    assert reserve.summary["preemptions"] == 0
    assert reserve.summary["kv_cache_tokens_per_replica"] == 6000 // 16 * 16  # the set-up: 375 blocks
    assert max(reserve.summary["peak_running_seqs"]) == 375 // 32  # 500 tokens reserve 32 blocks
    assert max(paged.summary["peak_running_seqs"]) >= 1.5 * max(reserve.summary["peak_running_seqs"])
    assert paged.summary["sim_time_s"] < reserve.summary["sim_time_s"]
    assert paged.summary["preemptions"] > 0
    assert paged.summary["preemptions"] == paged.requests["preemptions"].sum()
    for result in (reserve, paged):  # every request finishes once, with what it asked for
        table = result.requests
        assert table["request_id"].tolist() == list(range(120))
        assert (table["output_tokens"] == 400).all()
        assert np.isfinite(table["finish_s"]).all()


def test_with_ample_memory_both_allocations_give_identical_requests(run):
    workload = {"num_requests": 200, "rate": 30.0,
                "prompt_tokens": {"dist": "lognormal", "median": 400, "sigma": 0.8, "max": 3000},
                "output_tokens": {"dist": "uniform", "low": 1, "high": 300}}
    tables = [run(workload=workload, memory={"kv_allocation": allocation},
                  scheduler={"policy": "chunked", "max_batched_tokens": 1024}).requests
              for allocation in ("reserve", "on_demand")]
    assert tables[1]["preemptions"].sum() == 0
    pd.testing.assert_frame_equal(tables[0], tables[1])


def _gaps_add_up(result) -> None:
    """A request's inter-token gaps telescope to e2e − TTFT, so the ITL mean (exact running sums) is
    Σ (e2e − TTFT) / Σ (output − 1), and each request's longest gap lies between its TPOT and e2e − TTFT."""
    table = result.requests
    many = table[table["output_tokens"] > 1]
    expected = (many["e2e_s"] - many["ttft_s"]).sum() / (many["output_tokens"] - 1).sum()
    assert result.summary["itl_s"]["mean"] == pytest.approx(expected, rel=1e-9)
    assert (many["itl_max_s"] >= many["tpot_s"] * (1 - 1e-12)).all()
    assert (many["itl_max_s"] <= (many["e2e_s"] - many["ttft_s"]) * (1 + 1e-12)).all()


@pytest.mark.parametrize("case", ["prefill_first", "more decodes than tokens", "pipeline", "preemptions"])
def test_inter_token_gaps_add_up_in_lockstep_and_out_of_it(run, case):
    """Batches where every decode runs share one gap; prefill batches that hold decodes back, budgets
    smaller than the decodes, PP slots and preemptions break the lockstep: the sums must hold in all."""
    workload = {"num_requests": 150, "rate": 40.0, "prompt_tokens": {"dist": "uniform", "low": 20, "high": 600},
                "output_tokens": {"dist": "uniform", "low": 1, "high": 80}}
    match case:
        case "prefill_first":
            result = run(workload=workload, scheduler={"policy": "prefill_first"})
        case "more decodes than tokens":
            result = run(workload=workload, scheduler={"policy": "chunked", "max_batched_tokens": 24})
        case "pipeline":
            result = run(workload=workload, parallel={"tp": 2, "pp": 4}, scheduler={"policy": "chunked"})
        case _:
            result = _tight(run, "on_demand")
            assert result.summary["preemptions"] > 0
    _gaps_add_up(result)


def test_pipeline_slots_page_their_own_share_of_the_cache(run, tmp_path):
    """vLLM V0 gives each PP virtual engine 1/PP of the blocks: a slot pages and preempts within its share,
    so a tight cache under PP4 thrashes no slot into another's blocks (a shared pool let four slots free and
    retake each other's blocks for ever). Capacity for 4 × 11 blocks: every request (≤ 173 tokens) fits one
    slot's 11 blocks (176 tokens), the run preempts and still finishes; a share below the longest request is
    an error."""
    from helpers import tiny_model_path
    from splitsim.errors import ScenarioError

    tiny_model = tiny_model_path(tmp_path, num_hidden_layers=4)
    scheduler = {"policy": "chunked", "max_num_seqs": 8, "max_batched_tokens": 64}
    workload = {"num_requests": 31, "rate": 0, "prompt_tokens": {"dist": "uniform", "low": 3, "high": 99},
                "output_tokens": {"dist": "uniform", "low": 30, "high": 74}}

    def tight(blocks_per_slot: int):
        cluster = cluster_holding(tiny_model, 4 * blocks_per_slot * 16 + 8, scheduler, parallel={"pp": 4})
        return run(model=tiny_model, cluster=cluster, parallel={"pp": 4}, scheduler=scheduler, workload=workload,
                   memory={"gpu_utilization": 1.0, "kv_allocation": "on_demand"})

    result = tight(11)
    assert result.summary["kv_cache_tokens_per_replica"] == 4 * 11 * 16
    assert result.summary["preemptions"] > 0
    assert result.requests["request_id"].tolist() == list(range(31))
    _gaps_add_up(result)
    longest = int((result.requests["prompt_tokens"] + result.requests["output_tokens"]).max())
    with pytest.raises(ScenarioError, match=r"per pipeline slot"):
        tight((longest - 1) // 16)  # a slot's blocks hold fewer tokens than the longest request
