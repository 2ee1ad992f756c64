"""Experts spread over replicas with attention data-parallel (issue 11): the replicas step together, an idle one
runs a dummy batch, each MoE layer exchanges tokens by two all-to-alls on every GPU, dense layers keep their TP
all-reduces, and the step is the slowest replica's attention plus the shared expert work."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from helpers import scenario_dict
from splitsim import simulate
from splitsim.hardware import collectives
from splitsim.models import ops
from splitsim.models.ops import BatchShape, Sharding
from splitsim.models.spec import MoeSpec, load_model
from splitsim.scenario import scenario_from_dict
from splitsim.sim.costs import StageCosts
from splitsim.sim.plan import build_plan

LAYERS, DENSE = 4, (0,)  # the first layer keeps a dense MLP (as DeepSeek's first three do)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A small Qwen3-MoE: 4 layers, the first dense, 64 experts of which each token picks 4."""
    config = {"architectures": ["Qwen3MoeForCausalLM"], "hidden_size": 1024, "intermediate_size": 2048,
              "num_hidden_layers": LAYERS, "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 128,
              "vocab_size": 32000, "max_position_embeddings": 8192, "num_experts": 64, "num_experts_per_tok": 4,
              "moe_intermediate_size": 256, "mlp_only_layers": list(DENSE), "torch_dtype": "bfloat16"}
    path = tmp_path_factory.mktemp("model") / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def _scenario(model_path: str, tp: int, dp: int, ep: int, granularity: str = "layer", **workload):
    return scenario_from_dict(scenario_dict(
        engine="vllm", model=model_path, parallel={"tp": tp, "pp": 1, "dp": dp, "ep": ep},
        workload={"num_requests": 6, "rate": 40.0, "prompt_tokens": 48, "output_tokens": 5, **workload},
        sim={"granularity": granularity, "seed": 1}))


def _per_gpu(result, names):
    """{gpu: Counter of event names among `names`} over the whole run's trace."""
    counts: dict[int, Counter] = {}
    for event in result.trace_events:
        if event.get("ph") == "X" and event["name"] in names:
            counts.setdefault(event["tid"], Counter())[event["name"]] += 1
    return counts


def test_every_gpu_exchanges_twice_per_moe_layer_per_step_dummy_batches_included(model_path):
    result = simulate(_scenario(model_path, tp=1, dp=8, ep=8), trace_window_s=1e6)
    steps = result.meta["fast_forward"]["fallbacks"]["attention_dp"]  # every lockstep step is counted
    moe_layers = LAYERS - len(DENSE)
    counts = _per_gpu(result, {"moe_dispatch", "moe_combine", "dummy", "mlp_allreduce", "attn_allreduce"})
    assert sorted(counts) == list(range(8))
    for gpu, seen in counts.items():
        assert seen["moe_dispatch"] == seen["moe_combine"] == steps * moe_layers, (gpu, seen)
        assert not seen["mlp_allreduce"] and not seen["attn_allreduce"]  # TP 1: nothing to all-reduce
    # six requests on eight replicas: some replicas ran dummy batches, and exchanged all the same
    assert sum(seen["dummy"] for seen in counts.values()) > 0
    assert result.summary["gpu_time_fraction"]["ep_comm"] > 0


def test_dense_layers_keep_their_all_reduces_and_ep1_has_no_all_to_all(model_path):
    spread = simulate(_scenario(model_path, tp=2, dp=4, ep=8), trace_window_s=1e6)
    steps = spread.meta["fast_forward"]["fallbacks"]["attention_dp"]
    for gpu, seen in _per_gpu(spread, {"moe_dispatch", "mlp_allreduce", "attn_allreduce", "moe_allgather"}).items():
        # every layer's attention all-reduces over TP; the dense layer's MLP too; each MoE layer all-gathers the
        # tokens its two ranks dispatched apart
        assert seen["attn_allreduce"] == steps * LAYERS, (gpu, seen)
        assert seen["mlp_allreduce"] == steps * len(DENSE)
        assert seen["moe_dispatch"] == seen["moe_allgather"] == steps * (LAYERS - len(DENSE))
    split = simulate(_scenario(model_path, tp=8, dp=1, ep=1), trace_window_s=1e6)
    seen = _per_gpu(split, {"moe_dispatch", "moe_combine", "mlp_allreduce", "attn_allreduce"})
    assert all(not c["moe_dispatch"] and not c["moe_combine"] for c in seen.values())
    assert all(c["mlp_allreduce"] == c["attn_allreduce"] > 0 for c in seen.values())
    assert split.summary["gpu_time_fraction"]["ep_comm"] == 0.0


@pytest.mark.parametrize("prompt", [48, 1500], ids=["cuda-graph steps", "eager steps"])
def test_stage_and_layer_granularity_agree(model_path, prompt):
    layer = simulate(_scenario(model_path, tp=2, dp=4, ep=8, num_requests=20, prompt_tokens=prompt))
    stage = simulate(_scenario(model_path, tp=2, dp=4, ep=8, granularity="stage", num_requests=20,
                               prompt_tokens=prompt))
    for column in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(stage.requests[column], layer.requests[column], rtol=1e-9)
    for key in ("compute", "tp_comm", "ep_comm"):
        assert stage.summary["gpu_time_fraction"][key] == pytest.approx(layer.summary["gpu_time_fraction"][key],
                                                                         rel=1e-6)


def test_a_lockstep_step_is_the_layers_plus_two_all_to_alls_per_moe_layer(model_path):
    """Identical batches on every replica: nobody waits, and the step is the layers' ops (each replica's own,
    at 43 tokens padded to the CUDA graph of 48) plus, per MoE layer, a dispatch and a combine whose bytes are
    written out here: each GPU's tokens, times the other GPUs a token reaches (every GPU of an EP rank holding
    one of its k experts: 1 − C(E − E/ep, k)/C(E, k) of each), times h values of 2 bytes, times the busiest
    rank's share over the mean."""
    plan = build_plan(_scenario(model_path, tp=1, dp=8, ep=8, granularity="stage")).pool
    batch = BatchShape.of(((40, 0),), num_decode=3, decode_context=300)
    cost = StageCosts.of(plan, 0, 0)
    times = cost.lockstep_times([batch] * 8, [4] * 8)
    model = load_model(model_path)
    moe, h = model.moe, model.hidden_size
    reach = 1 - math.comb(moe.num_experts - moe.num_experts // 8, moe.top_k) / math.comb(moe.num_experts, moe.top_k)
    nbytes = 48 * reach * 7 * h * 2 * ops.expert_load(moe.num_experts, moe.top_k, 8, 8 * 48)
    exchange = 2 * collectives.alltoall_s(plan.cluster, list(range(8)), nbytes)
    attention = sum(cost.attention_times(batch))
    layers = 0.0
    for kind in model.layer_kinds:
        names = {op.name for op in ops.layer_graph(model, kind, 48, plan.sharding)}
        assert ("moe_dispatch" in names) == ("moe_combine" in names) == (kind == "moe")
        terms = cost.layer_terms(kind, 48)
        layers += terms.before + attention + sum(terms.after) + terms.comm + (exchange if kind == "moe" else 0.0)
    expected = cost.prologue(48).compute + layers + cost.epilogue(4).compute
    assert times.step == pytest.approx(expected, rel=1e-12)
    assert times.ep_comm == (exchange * (LAYERS - len(DENSE)),) * 8  # no wait: the same batch everywhere


def test_the_dispatch_reaches_the_gpus_random_routing_reaches():
    rng = np.random.default_rng(3)
    experts, k, ep = 128, 8, 8
    picks = np.argsort(rng.random((20000, experts)), axis=1)[:, :k]
    ranks = picks // (experts // ep)
    reached_other = np.mean([len(set(row) - {0}) for row in ranks])  # from rank 0
    sharding = Sharding(1, "bf16", "bf16", "bf16", ep=ep, dp_attention=8)
    moe = MoeSpec(num_experts=experts, top_k=k, intermediate_size=64)
    # a GPU's own rank is reached as often as any other; what leaves it goes to the other seven
    assert ops.dispatch_copies(moe, sharding) == pytest.approx(reached_other, rel=0.01)


@pytest.mark.parametrize(("experts", "groups", "picked", "k", "ep"), [
    (256, 8, 4, 8, 4), (256, 8, 4, 8, 8), (256, 8, 4, 8, 16), (256, 8, 4, 8, 32),  # DeepSeek-V3's routing
    (96, 8, 4, 8, 6), (96, 8, 4, 8, 3), (60, 4, 2, 4, 6),  # ranks that cut across groups
])
def test_grouped_routing_reaches_the_gpus_random_grouped_routing_reaches(experts, groups, picked, k, ep):
    """Grouped routing: `picked` of `groups` groups first, then k experts among theirs (uniform)."""
    rng = np.random.default_rng(ep)
    moe = MoeSpec(num_experts=experts, top_k=k, intermediate_size=64, groups=groups, groups_per_token=picked)
    tokens, size = 20000, experts // groups
    chosen = np.argsort(rng.random((tokens, groups)), axis=1)[:, :picked]
    within = np.argsort(rng.random((tokens, picked * size)), axis=1)[:, :k]  # among the picked groups' experts
    routed = chosen[np.arange(tokens)[:, None], within // size] * size + within % size
    ranks = routed // (experts // ep)
    sharding = Sharding(1, "bf16", "bf16", "bf16", ep=ep, dp_attention=ep)
    # every rank is some token's destination: the mean over ranks of how often it is reached, times ep − 1
    reached = np.mean([len(set(row)) for row in ranks]) / ep * (ep - 1)
    assert ops.dispatch_copies(moe, sharding) == pytest.approx(reached, rel=0.02)


def test_an_idle_run_of_replicas_waits_and_the_fast_forward_counts_why(model_path):
    result = simulate(_scenario(model_path, tp=1, dp=4, ep=4, granularity="stage", rate=0.5, num_requests=3))
    fallbacks = result.meta["fast_forward"]["fallbacks"]
    assert set(fallbacks) == {"attention_dp"} and fallbacks["attention_dp"] >= 3 * 5  # ≥ one step per token
    assert result.summary["num_requests"] == 3


def test_weights_per_gpu_under_attention_dp(model_path):
    """Each GPU holds its replica's attention (TP 1: whole), the router, and E/ep whole experts."""
    model = load_model(model_path)
    plan = build_plan(_scenario(model_path, tp=1, dp=8, ep=8, granularity="stage")).pool
    h, d, moe = model.hidden_size, model.head_dim, model.moe
    attention = h * (8 + 2 * 8) * d + 8 * d * h + 2 * h
    dense = attention + 3 * h * model.intermediate_size
    sparse = attention + h * moe.num_experts + moe.num_experts // 8 * 3 * h * moe.intermediate_size
    vocab = model.vocab_size * h
    expected = (dense + 3 * sparse + 2 * vocab + h) * 2  # embedding and LM head on the one stage, bf16
    assert plan.weights_bytes_per_gpu == pytest.approx(expected, rel=1e-12)


def test_an_eager_step_runs_each_replica_at_its_own_token_count(model_path):
    """Beyond the CUDA graphs' sizes vLLM runs every DP rank eager and pads none: a replica prefilling 2,000 tokens
    does not make the others run 2,000; the experts see the group's tokens, shared out evenly."""
    plan = build_plan(_scenario(model_path, tp=1, dp=8, ep=8, granularity="stage")).pool
    cost = StageCosts.of(plan, 0, 0)
    big, small = BatchShape.of(((2000, 0),)), BatchShape(num_decode=4, decode_context=400)
    local, shared = cost.lockstep_tokens([big] + [small] * 7)
    assert local == [2000] + [4] * 7 and shared == -(-(2000 + 28) // 8)
    assert cost.lockstep_tokens([small] * 8) == ([4] * 8, 4)  # CUDA graphs everywhere: padded alike (to 4)
    mixed = cost.lockstep_times([big] + [small] * 7, [1] + [4] * 7)
    everyone_big = cost.lockstep_times([big] * 8, [1] * 8)
    assert mixed.step < everyone_big.step
    # the small replicas compute less than the big one (the experts' and shared expert's work is common), and
    # wait for it in the all-to-alls
    assert mixed.compute[1] < mixed.compute[0] and mixed.ep_comm[1] > mixed.ep_comm[0]
    # the big replica never waits: its all-to-alls are its own, priced as if every replica sent its 2,000 tokens
    # (the busiest sender decides)
    exchange = ops.dispatch_copies(load_model(model_path).moe, plan.sharding) * 2000 * 1024 * 2 * ops.expert_load(
        64, 4, 8, 8 * 2000)
    moe_layers = LAYERS - len(DENSE)
    assert mixed.ep_comm[0] == pytest.approx(
        moe_layers * 2 * collectives.alltoall_s(plan.cluster, list(range(8)), exchange), rel=1e-9)
    for r in range(8):  # every replica is busy or waiting until its own LM head is done
        assert mixed.compute[r] + mixed.tp_comm[r] + mixed.ep_comm[r] <= mixed.step * (1 + 1e-12)
