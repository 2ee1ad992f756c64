"""The rule of thumb falls out of the physics: no layout is hard-coded anywhere."""

from __future__ import annotations

import pytest

from helpers import scenario_dict
from splitsim import simulate
from splitsim.scenario import scenario_from_dict

LOAD = {"num_requests": 160, "rate": 0, "prompt_tokens": {"dist": "uniform", "low": 200, "high": 1500},
        "output_tokens": {"dist": "uniform", "low": 16, "high": 200}}
SCHED = {"policy": "chunked", "max_batched_tokens": 2048, "max_num_seqs": 128}


def _run(model, cluster, tp, pp, workload=LOAD):
    return simulate(scenario_from_dict(scenario_dict(model=model, cluster=cluster,
                                                     parallel={"tp": tp, "pp": pp}, workload=workload,
                                                     scheduler=SCHED)), trace_window_s=0)


def test_tp8_has_the_lowest_tpot_on_an_nvlink_node_at_light_load():
    light = {"num_requests": 20, "rate": 0.5, "prompt_tokens": 512, "output_tokens": 64}
    tpot = {(tp, pp): _run("llama-3-70b", "h100-nvlink-node", tp, pp, light).summary["tpot_s"]["mean"]
            for tp, pp in [(8, 1), (4, 2), (2, 4), (1, 8)]}
    assert min(tpot, key=tpot.get) == (8, 1)


def _throughput(model, cluster, tp, pp):
    return _run(model, cluster, tp, pp).summary["throughput_tokens_per_s"]


def test_a_pipeline_heavy_layout_beats_tp8_on_the_l40s_pcie_box():
    tp8 = _throughput("llama-3-70b", "l40s-pcie-node", 8, 1)
    assert _throughput("llama-3-70b", "l40s-pcie-node", 2, 4) > 1.3 * tp8


def test_on_nvlink_the_same_l40s_gpus_prefer_tp8():
    on_nvlink = {"name": "l40s-nvlink", "gpu": "l40s", "gpus_per_node": 8, "intra_node": "nvlink4-nvswitch"}
    tp8 = _throughput("llama-3-70b", on_nvlink, 8, 1)
    assert tp8 > _throughput("llama-3-70b", on_nvlink, 2, 4)
    assert tp8 > _throughput("llama-3-70b", on_nvlink, 4, 2)


@pytest.mark.parametrize(("cluster", "margin"), [("h100-ib-2node", 1.1), ("h100-eth-2node", 2.0)])
def test_tp8_pp2_beats_tp16_across_two_nodes(cluster, margin):
    assert _throughput("llama-3-70b", cluster, 8, 2) > margin * _throughput("llama-3-70b", cluster, 16, 1)
