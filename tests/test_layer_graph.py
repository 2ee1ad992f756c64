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
    plan = build_plan(scenario_from_dict(scenario_dict(parallel={"tp": 2, "pp": 2})))  # 32 layers, 16 a stage
    batch = BatchShape(prefill=((300, 0),), num_decode=5, decode_context=5 * 700)
    for stage in (0, 1):
        cost = StageCosts(plan, 0, stage)
        assert dict(cost.layer_counts) == {"attention_only": 4, "dense": 12}
        assert cost.layer_runs[:2] == (("attention_only", 1), ("dense", 3))
        dense, attention_only = _layer_s(cost, "dense", batch), _layer_s(cost, "attention_only", batch)
        assert attention_only[0] < dense[0] and attention_only[1] == pytest.approx(dense[1] / 2)
        edge_compute, edge_comm = cost.edge_times(batch.num_tokens)
        logits = 6 if cost.is_last else 0
        compute, comm = cost.stage_time(batch, logits)
        assert compute == pytest.approx(edge_compute + 12 * dense[0] + 4 * attention_only[0]
                                        + cost.lm_head_time(logits), rel=1e-12)
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
