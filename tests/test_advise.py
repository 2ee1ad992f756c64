"""The advisor: which candidates it considers, why it prunes, how it ranks what it simulates."""

from __future__ import annotations

import itertools

from helpers import ideal_cluster, scenario_dict
from splitsim.candidates import Candidate, consider


def _base(**overrides):
    return scenario_dict(**overrides)


def test_candidates_are_every_factorisation_with_its_orders_and_precisions():
    """3 nodes of 6 GPUs: an enumeration written out here, independently of splitsim.candidates."""
    base = _base(cluster=ideal_cluster(gpus_per_node=6, num_nodes=3))
    expected = set()
    for tp, pp, dp in itertools.product(range(1, 19), repeat=3):
        if tp * pp * dp != 18:
            continue
        orders = ["tp-pp-dp", "tp-dp-pp"] if pp > 1 and dp > 1 else ["tp-pp-dp"]
        for order, weights, kv in itertools.product(orders, ["bf16", "fp8"], ["bf16", "fp8"]):
            expected.add(Candidate(tp, pp, dp, order, weights, kv))
    found = consider(base, 18, ["bf16", "fp8"], ["bf16", "fp8"])
    assert {c.candidate for c in found} == expected
    assert len(found) == len(expected)  # each once


def test_pruned_candidates_carry_the_simulators_reason():
    base = _base(cluster=ideal_cluster(gpus_per_node=6, num_nodes=2))  # llama-3-8b: 32 heads, 8 KV heads
    by_layout = {(c.candidate.tp, c.candidate.pp, c.candidate.dp, c.candidate.order): c.pruned
                 for c in consider(base, 12, ["bf16"], ["bf16"])}
    assert "parallel.tp = 3" in by_layout[(3, 1, 4, "tp-pp-dp")]  # 32 heads are not split 3 ways
    assert "parallel.tp = 6" in by_layout[(6, 2, 1, "tp-pp-dp")]
    # TP4 fits in a 6-GPU node, but 12 GPUs in groups of 4 would put the second group across both nodes
    assert "must fill whole nodes or fit evenly in one" in by_layout[(4, 1, 3, "tp-pp-dp")]
    assert by_layout[(2, 2, 3, "tp-pp-dp")] is None and by_layout[(1, 12, 1, "tp-pp-dp")] is None
    assert by_layout[(12, 1, 1, "tp-pp-dp")] is not None  # 12 does not divide 32 heads


def test_memory_prunes_with_the_memory_reason():
    base = _base(model="llama-3-70b", cluster="h100-nvlink-node")
    by_layout = {(c.candidate.tp, c.candidate.pp, c.candidate.dp): c.pruned
                 for c in consider(base, 8, ["bf16"], ["bf16"])}
    assert by_layout[(1, 1, 8)].startswith("memory:")  # 140 GB of weights on one 80 GB GPU
    assert by_layout[(8, 1, 1)] is None and by_layout[(4, 2, 1)] is None
