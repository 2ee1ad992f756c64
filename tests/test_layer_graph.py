"""models/ops.py's layer graph is the one description of a layer's work: stage mode prices it per layer kind,
layer mode walks it, and a model whose layers differ is priced layer by layer (issue 11's first step)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import scenario_dict
from splitsim.models import ops
from splitsim.models.ops import BatchShape
from splitsim.models.spec import ModelSpec
from splitsim.scenario import scenario_from_dict
from splitsim.sim.costs import StageCosts
from splitsim.sim.plan import build_plan

MLP = ("post_norm", "gate_up", "act", "down", "mlp_allreduce")


def _attention_only(model, tokens, sharding):
    """A layer without its MLP: a second kind of layer, for these tests only."""
    return tuple(op for op in ops.dense_layer(model, tokens, sharding) if op.name not in MLP)


@pytest.fixture
def mixed_layers(monkeypatch):
    """Every fourth layer of every model without its MLP (layers 0, 4, 8, …)."""
    monkeypatch.setitem(ops.LAYERS, "attention_only", _attention_only)
    monkeypatch.setattr(ModelSpec, "layer_kinds", property(
        lambda self: tuple("attention_only" if i % 4 == 0 else "dense" for i in range(self.num_layers))))


def _layer_s(cost: StageCosts, kind: str, batch: BatchShape) -> tuple[float, float]:
    """(compute, comm) of one layer of `kind`: its ops from models/, each priced alone, summed here."""
    timed = cost.layer_ops(batch, kind)
    return (sum(op.seconds for op in timed if op.category == "compute"),
            sum(op.seconds for op in timed if op.category == "tp_comm"))


def test_a_stage_of_two_layer_kinds_costs_each_layer_its_own_ops(mixed_layers):
    plan = build_plan(scenario_from_dict(scenario_dict(parallel={"tp": 2, "pp": 2}))).pool  # 32 layers, 16 a stage
    batch = BatchShape.of(((300, 0),), num_decode=5, decode_context=5 * 700)
    for stage in (0, 1):
        cost = StageCosts.of(plan, 0, stage)
        assert dict(cost.layer_counts) == {"attention_only": 4, "dense": 12}
        assert cost.layer_runs[:2] == (("attention_only", 1), ("dense", 3))
        dense, attention_only = _layer_s(cost, "dense", batch), _layer_s(cost, "attention_only", batch)
        assert attention_only[0] < dense[0] and attention_only[1] == pytest.approx(dense[1] / 2)
        edge_compute, edge_comm = cost.prologue(batch.num_tokens).compute, cost.prologue(batch.num_tokens).comm
        logits = 6 if cost.is_last else 0
        compute, comm = cost.stage_time(batch, logits)
        assert compute == pytest.approx(edge_compute + 12 * dense[0] + 4 * attention_only[0]
                                        + cost.epilogue(logits).compute, rel=1e-12)
        assert comm == pytest.approx(edge_comm + 12 * dense[1] + 4 * attention_only[1], rel=1e-12)
        contexts = np.array([5 * 300, 5 * 900])  # the fast-forward's decode steps: bit for bit stage_time's
        fast, fast_comm = cost.decode_stage_times(5, contexts)
        for i, context in enumerate(contexts):
            assert (fast[i], fast_comm) == cost.stage_time(BatchShape(num_decode=5, decode_context=int(context)), 5)


def test_stage_and_layer_mode_agree_on_a_model_whose_layers_differ(mixed_layers):
    workload = {"num_requests": 8, "rate": 50.0, "prompt_tokens": {"dist": "uniform", "low": 20, "high": 200},
                "output_tokens": {"dist": "uniform", "low": 1, "high": 12}}
    from splitsim.api import simulate

    runs = {}
    for granularity in ("stage", "layer"):
        data = scenario_dict(parallel={"tp": 2, "pp": 2}, workload=workload, sim={"granularity": granularity})
        runs[granularity] = simulate(scenario_from_dict(data)).requests
    for column in ("first_token_s", "finish_s"):
        np.testing.assert_allclose(runs["layer"][column], runs["stage"][column], rtol=1e-9)


def test_a_stage_is_priced_from_its_parts_alone():
    """StageCosts takes the model, cluster, sharding, engine and groups it prices, not a plan: built by hand for
    Llama-3-8B's second stage of TP2 × PP2 on an H100 node, it prices a batch as the plan's stage does, and its walk
    holds exactly the LM head at its end."""
    from splitsim.hardware.catalog import load_cluster
    from splitsim.models.ops import Sharding
    from splitsim.models.spec import load_model
    from splitsim.sim.defaults import ENGINES

    model, cluster = load_model("llama-3-8b"), load_cluster("h100-nvlink-node")
    by_hand = StageCosts(model, cluster, Sharding(2, "bf16", "bf16", "bf16"), ENGINES["ideal"], (), range(16, 32),
                         [2, 3], [2, 3], None, is_first=False)
    pool = build_plan(scenario_from_dict(scenario_dict(parallel={"tp": 2, "pp": 2}))).pool
    batch = BatchShape.of(((300, 40),), num_decode=7, decode_context=7 * 900)
    assert by_hand.stage_time(batch, 8) == StageCosts.of(pool, 0, 1).stage_time(batch, 8)
    walk = by_hand.walk(batch, 8)
    assert walk.prologue.ops == () and [op.name for op in walk.epilogue.ops] == ["lm_head"]  # ideal: no gather
    assert walk.runs[0][:2] == ("dense", 16)


def test_two_runs_in_one_process_leave_the_cost_caches_flat():
    """The cost caches are process-wide (an advisor's or a sweep's worker runs many scenarios) and keyed by a token
    count alone, so they stop growing once a run has seen its budget's counts: after a first run, two more runs of
    other requests (other seeds) add no entry. A cache keyed by a batch's chunks would grow with each run."""
    from splitsim import simulate
    from splitsim.sim import costs

    budget, seqs = 32, 16

    def run(seed):
        simulate(scenario_from_dict(scenario_dict(
            model="gpt-oss-20b", scheduler={"policy": "chunked", "max_batched_tokens": budget, "max_num_seqs": seqs},
            workload={"num_requests": 200, "rate": 20,
                      "prompt_tokens": {"dist": "lognormal", "median": 60, "sigma": 0.8, "max": 300},
                      "output_tokens": {"dist": "lognormal", "median": 20, "sigma": 0.8, "max": 100}},
            sim={"seed": seed})))
        return sum(len(cache) for cache in costs._CACHES.values())

    def entries():
        return {(outer, inner) for outer, cache in costs._CACHES.items() for inner in cache}

    earlier = entries()  # other tests' runs in this process
    run(0)
    assert run(1) == run(2)
    added = [inner for _, inner in entries() - earlier]
    counts = [key if isinstance(key, int) else key[1] for key in added]  # tokens, or (layer kind, tokens)
    assert all(isinstance(count, int) and 0 <= count <= budget for count in counts)
