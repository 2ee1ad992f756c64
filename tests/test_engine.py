"""The engine against closed forms: exact two-request timelines, conservation, granularity agreement,
link contention, bubbles and event counts."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import ideal_cluster, ideal_step_s
from splitsim.models.ops import BatchShape


def test_two_requests_follow_the_hand_computed_timeline(run, tiny_model):
    from splitsim.models.spec import load_model

    model = load_model(tiny_model)
    result = run(model=tiny_model, cluster=ideal_cluster(),
                 workload={"num_requests": 2, "rate": 0, "prompt_tokens": 64, "output_tokens": 3})
    prefill = ideal_step_s(model, BatchShape.of(((64, 0), (64, 0))), 2)
    decode1 = ideal_step_s(model, BatchShape(num_decode=2, decode_context=2 * 65), 2)
    decode2 = ideal_step_s(model, BatchShape(num_decode=2, decode_context=2 * 66), 2)
    rows = result.requests
    assert rows["first_token_s"].tolist() == pytest.approx([prefill, prefill], rel=1e-12)
    assert rows["finish_s"].tolist() == pytest.approx([prefill + decode1 + decode2] * 2, rel=1e-12)
    assert rows["tpot_s"].tolist() == pytest.approx([(decode1 + decode2) / 2] * 2, rel=1e-12)


def test_layer_mode_trace_of_one_layer_is_the_op_sequence(run, tiny_model):
    result = run(model=tiny_model, cluster=ideal_cluster(), parallel={"tp": 2},
                 sim={"granularity": "layer"},
                 workload={"num_requests": 1, "rate": 0, "prompt_tokens": 16, "output_tokens": 1})
    gpu0 = [e for e in result.trace_events if e["ph"] == "X" and e["tid"] == 0]
    names = [e["name"] for e in gpu0]
    layer = ["input_norm", "qkv", "rope", "attention_prefill", "o_proj", "attn_allreduce", "post_norm", "gate_up",
             "act", "down", "mlp_allreduce"]
    assert names == ["embedding", "embedding_allreduce"] + layer * 2 + ["lm_head"]
    for before, after in zip(gpu0, gpu0[1:]):  # back to back: no gaps, no overlaps
        assert after["ts"] == pytest.approx(before["ts"] + before["dur"], rel=1e-12)


@pytest.mark.parametrize(("cluster", "parallel", "num_requests"), [
    ("h100-nvlink-node", {"tp": 2, "pp": 2, "dp": 2}, 12),
    ("h100-ib-2node", {"tp": 8, "pp": 2}, 6),
    ("a100-nvlink-node", {"tp": 4, "pp": 2}, 8),
    ("l40s-pcie-node", {"tp": 4, "pp": 2}, 1),  # one batch at a time: nothing contends for host memory
    ("h100-nvlink-node", {"tp": 4, "pp": 2, "engine": "vllm"}, 8),  # its own all-reduce, logits gather, graphs
])
def test_stage_and_layer_granularity_agree_without_contention(run, cluster, parallel, num_requests):
    workload = {"num_requests": num_requests, "rate": 50.0, "prompt_tokens": {"dist": "uniform", "low": 20,
                "high": 200}, "output_tokens": {"dist": "uniform", "low": 1, "high": 12}}
    parallel = dict(parallel)
    engine = {"engine": parallel.pop("engine")} if "engine" in parallel else {}
    stage = run(cluster=cluster, parallel=parallel, workload=workload, **engine)
    layer = run(cluster=cluster, parallel=parallel, workload=workload, sim={"granularity": "layer"}, **engine)
    for column in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(layer.requests[column], stage.requests[column], rtol=1e-9)
    for key, value in stage.summary["gpu_time_fraction"].items():
        assert layer.summary["gpu_time_fraction"][key] == pytest.approx(value, abs=1e-9)


@pytest.mark.parametrize("granularity", ["stage", "layer"])
def test_two_handoffs_over_one_ethernet_nic_share_it(run, granularity):
    """DP2 × PP2 × TP4 with each stage's replicas side by side: both replicas' prefill hand-offs leave
    node 0 at the same instant through its one NIC and share it fairly, so each takes two sends' time: one
    send longer than one request alone in the same layout, in layer granularity and in stage granularity with
    `sim.contention` (sim/flows.py)."""
    from helpers import catalog_yaml
    from splitsim.hardware.units import parse_quantity as q

    prompt, hidden = 512, 4096  # llama-3-8b
    workload = {"num_requests": 2, "rate": 0, "prompt_tokens": prompt, "output_tokens": 1}
    sim = {"granularity": granularity, "contention": True}
    layout = {"tp": 4, "pp": 2, "dp": 2, "order": "tp-dp-pp"}
    both = run(cluster="h100-eth-2node", parallel=layout, workload=workload, sim=sim).requests["first_token_s"]
    alone = run(cluster="h100-eth-2node", parallel=layout, sim=sim,
                workload=workload | {"num_requests": 1}).requests["first_token_s"].iloc[0]
    eth = catalog_yaml("fabrics", "roce-200g-node")
    nic = q(eth["nic_bw_bytes_per_s"], "bytes_per_s") * eth["p2p_bw_efficiency"]
    send = q(eth["p2p_latency_s"], "seconds") + prompt * hidden * 2 / nic  # 4 ranks × S/4 (engine: ideal)
    np.testing.assert_allclose(both.to_numpy(), alone + send, rtol=1e-9)


def test_stage_mode_with_contention_meets_layer_modes_transfers_as_often():
    """Two TP2 replicas on the L40S box without P2P share their socket's path through host memory for every
    all-reduce: stage mode with `sim.contention` (the default) walks each layer's compute runs and all-reduces
    as layer mode does, so the requests' times agree (and differ from stage mode that ignores the sharing)."""
    from helpers import scenario_dict
    from splitsim.api import simulate
    from splitsim.scenario import scenario_from_dict

    base = scenario_dict(cluster="l40s-pcie-node", parallel={"tp": 2, "dp": 2},
                         workload={"num_requests": 6, "rate": 20.0, "prompt_tokens": 300, "output_tokens": 6})
    runs = {}
    for name, sim in (("layer", {"granularity": "layer"}), ("stage", {}), ("alone", {"contention": False})):
        runs[name] = simulate(scenario_from_dict(base | {"sim": base["sim"] | sim})).requests
    for column in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(runs["stage"][column], runs["layer"][column], rtol=1e-9)
    assert (runs["alone"]["finish_s"].to_numpy() < runs["layer"]["finish_s"].to_numpy() - 1e-6).any()


def test_stage_mode_without_contention_times_each_handoff_alone_and_says_why_it_stepped(run):
    layout = {"tp": 4, "pp": 2, "dp": 2, "order": "tp-dp-pp"}
    workload = {"num_requests": 2, "rate": 0, "prompt_tokens": 512, "output_tokens": 1}
    ignored = {"contention": False}
    both = run(cluster="h100-eth-2node", parallel=layout, workload=workload, sim=ignored)
    alone = run(cluster="h100-eth-2node", parallel=layout, workload=workload | {"num_requests": 1}, sim=ignored)
    np.testing.assert_allclose(both.requests["first_token_s"].to_numpy(), alone.requests["first_token_s"].iloc[0],
                               rtol=1e-12)
    shared = run(cluster="h100-eth-2node", parallel=layout, workload=workload)  # sim.contention: on by default
    assert shared.meta["fast_forward"]["fallbacks"].get("contention") == 2  # each batch walked as events


def _gpu_fraction(result, category):
    return result.summary["gpu_time_fraction"][category]


def test_one_request_through_four_stages_leaves_three_quarters_bubble(run):
    result = run(cluster="h100-nvlink-node", parallel={"tp": 2, "pp": 4},
                 workload={"num_requests": 1, "rate": 0, "prompt_tokens": 32, "output_tokens": 400})
    f = result.summary["gpu_time_fraction"]
    assert f["idle"] == pytest.approx(0.0, abs=1e-12)
    assert f["bubble"] == pytest.approx(0.75, abs=0.02)


def test_four_batches_in_flight_fill_the_bubbles(run):
    result = run(cluster="h100-nvlink-node", parallel={"tp": 2, "pp": 4},
                 workload={"num_requests": 16, "rate": 0, "prompt_tokens": 32, "output_tokens": 400})
    assert _gpu_fraction(result, "bubble") < 0.25


def test_layer_mode_counts_two_allreduces_per_layer_and_one_handoff_per_boundary(run):
    result = run(cluster="h100-nvlink-node", parallel={"tp": 2, "pp": 2}, sim={"granularity": "layer"},
                 workload={"num_requests": 3, "rate": 0, "prompt_tokens": 40, "output_tokens": 5})
    # Two slots (PP = 2) take the requests 2 + 1; each runs one prefill and four decode batches.
    batches = 2 * (1 + 4)
    layers_per_stage = 32 // 2
    events = [e for e in result.trace_events if e["ph"] == "X"]
    for gpu in range(4):
        mine = [e["name"] for e in events if e["tid"] == gpu]
        assert mine.count("attn_allreduce") == layers_per_stage * batches
        assert mine.count("mlp_allreduce") == layers_per_stage * batches
        assert mine.count("handoff") == (batches if gpu < 2 else 0)  # stage 0 (GPUs 0, 1) sends


def test_chunked_prefill_lowers_tpot_p99_on_a_mixed_load(run):
    workload = {"num_requests": 200, "rate": 10.0,
                "prompt_tokens": {"dist": "uniform", "low": 500, "high": 4000}, "output_tokens": 64}
    whole = run(cluster="h100-nvlink-node", workload=workload,
                scheduler={"policy": "prefill_first", "max_batched_tokens": 4096})
    chunked = run(cluster="h100-nvlink-node", workload=workload,
                  scheduler={"policy": "chunked", "max_batched_tokens": 512})
    assert chunked.summary["tpot_s"]["p99"] < 0.8 * whole.summary["tpot_s"]["p99"]


def test_a_full_kv_cache_makes_requests_wait(run):
    """A GPU with memory for the weights and the KV of 2.5 requests, reserved at admission: the rest queue
    and TTFT grows."""
    cluster = ideal_cluster()
    cluster["gpu"]["memory_bytes"] = (8.03e9 * 2 + 1.0e9) / 0.9  # weights + ~1 GB (activations, KV)
    capacity = run(cluster=cluster).summary["kv_cache_tokens_per_replica"]
    half = capacity // 80 * 16  # prompt = output = half: each request reserves 2·half ≈ capacity / 2.5
    assert 2 * (2 * half) <= capacity < 3 * (2 * half)
    result = run(cluster=cluster, memory={"kv_allocation": "reserve"},
                 workload={"num_requests": 6, "rate": 0, "prompt_tokens": half, "output_tokens": half})
    rows = result.requests.sort_values("first_token_s")
    # Requests 3-6 start only after earlier ones finish and free their KV blocks.
    finishes = sorted(rows["finish_s"])
    assert rows["first_token_s"].iloc[2] > finishes[0]
    assert rows["ttft_s"].iloc[-1] > 2 * rows["e2e_s"].iloc[0]


def test_the_engine_hands_out_exactly_the_tokens_asked_and_accounts_for_every_gpu_second():
    """Below the public API on purpose: the engine's own counters, not the summary built from the ask."""
    from helpers import scenario_dict
    from splitsim.api import make_requests
    from splitsim.scenario import scenario_from_dict
    from splitsim.sim.engine import Engine
    from splitsim.sim.plan import build_plan
    from splitsim.sim.result import gpu_time_totals

    scenario = scenario_from_dict(scenario_dict(
        parallel={"tp": 2, "pp": 2, "dp": 2},
        workload={"num_requests": 80, "rate": 25.0, "prompt_tokens": {"dist": "uniform", "low": 10, "high": 900},
                  "output_tokens": {"dist": "uniform", "low": 1, "high": 50}},
        scheduler={"policy": "chunked", "max_batched_tokens": 256}))
    plan = build_plan(scenario)
    pool = plan.pool
    stream = make_requests(scenario, plan)
    finished = []
    engine = Engine(plan, stream, (0.0, 0.0), on_finish=finished.append)
    records = engine.run()
    assert sorted(r.id for r in finished) == list(range(80))  # each finishes exactly once
    assert all(r.generated == r.output for r in finished)
    assert records.output_tokens == stream.output_tokens.sum()  # tokens counted as batches sampled them
    assert [r.prompt for r in sorted(finished, key=lambda r: r.id)] == stream.prompt_tokens.tolist()
    assert all(r.kv_blocks == 0 for r in finished)  # every KV block handed back
    assert all(slot.kv.free_blocks == pool.kv_blocks_per_slot for replica in engine.replicas for slot in replica.slots)
    assert {r.replica for r in finished} == {0, 1}
    totals = gpu_time_totals(records.recorder, [pool.tp] * pool.dp, records.sim_time_s)
    assert sum(totals.values()) == pytest.approx(plan.num_gpus * records.sim_time_s, rel=1e-9)


def test_the_clock_ticks_during_one_long_request(tmp_path):
    """A progress bar that only moves on finishes stands still through one long request: the engine also
    reports the simulated clock every few thousand batches, forward in time."""
    from helpers import scenario_dict, tiny_model_path
    from splitsim import simulate
    from splitsim.scenario import scenario_from_dict
    from splitsim.sim.engine import TICK_BATCHES

    ticks: list[float] = []
    model = tiny_model_path(tmp_path, max_position_embeddings=4 * TICK_BATCHES)
    scenario = scenario_from_dict(scenario_dict(model=model, scheduler={"policy": "chunked"}, workload={
        "num_requests": 1, "rate": 0, "prompt_tokens": 16, "output_tokens": 3 * TICK_BATCHES}))
    result = simulate(scenario, on_tick=ticks.append)
    assert len(ticks) == 3  # 1 prefill + 3·TICK_BATCHES − 1 decodes: three full countdowns
    assert ticks == sorted(ticks) and 0 < ticks[0] < result.summary["sim_time_s"]


@pytest.mark.parametrize("changes", [
    {},  # PP1 stage mode: the fast-forward's spans
    {"parallel": {"tp": 2, "pp": 2}, "sim": {"contention": False}},  # the closed-form walk through two stages
    {"parallel": {"tp": 2, "pp": 2}, "sim": {"granularity": "layer"}},  # an event per op
    {"cluster": "h100-eth-2node", "parallel": {"tp": 4, "pp": 2, "dp": 2, "order": "tp-dp-pp"}},  # flows
    {"model": "qwen3-30b-a3b", "parallel": {"tp": 1, "dp": 2, "ep": 2}},  # lockstep replicas
])
def test_the_engine_counts_every_event_simpy_numbers(changes):
    """`events` is the engine's own count of what it schedules, and it is the number SimPy's private counter
    gives out (read here only, as the oracle)."""
    from helpers import scenario_dict
    from splitsim.api import make_requests
    from splitsim.scenario import scenario_from_dict
    from splitsim.sim.engine import Engine
    from splitsim.sim.plan import build_plan

    scenario = scenario_from_dict(scenario_dict(**changes, workload={
        "num_requests": 12, "rate": 30.0, "prompt_tokens": 300, "output_tokens": 20},
        scheduler={"policy": "chunked", "max_batched_tokens": 256}))
    plan = build_plan(scenario)
    engine = Engine(plan, make_requests(scenario, plan), (0.0, 1e9))
    events = engine.run().events
    assert events > 12 and events == next(engine.env._eid)
