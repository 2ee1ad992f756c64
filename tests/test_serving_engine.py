"""What a serving engine adds to the physics (`engine:`; sim/defaults.py): its own all-reduce under vLLM's
rules, the hand-off of hidden state and residual, and its default knobs. The closed-form oracles elsewhere pin
`engine: ideal`; here each effect is checked against the fabric's figures read from the catalog YAML and the
formulas written out by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import catalog_yaml, error_line, scenario_dict
from splitsim.cli import main
from splitsim.hardware import collectives
from splitsim.hardware.catalog import load_cluster
from splitsim.hardware.units import parse_quantity
from splitsim.models.ops import BatchShape
from splitsim.scenario import scenario_from_dict
from splitsim.sim.costs import StageCosts
from splitsim.sim.plan import build_plan
from splitsim.validate import fit

KIB, MIB = 1024.0, 2.0**20


def _figures(fabric: str) -> dict[str, float]:
    block = catalog_yaml("fabrics", fabric)["custom_allreduce"]
    return {key: parse_quantity(value, "bytes_per_s" if key.endswith("_per_s") else "seconds")
            for key, value in block.items() if key.endswith("_s")}


@pytest.mark.parametrize(("cluster", "p", "nbytes", "regime"), [
    ("h100-nvlink-node", 2, 6 * MIB, "one_shot"),      # two GPUs: always one-shot below the limit (8 MiB)
    ("h100-nvlink-node", 2, 8 * MIB, "symm_mem"),      # at the limit: symmetric memory (below 64 MiB)
    ("h100-nvlink-node", 4, 511 * KIB, "one_shot"),
    ("h100-nvlink-node", 4, 512 * KIB, "two_shot"),    # up to 4 GPUs: one-shot below 512 KiB
    ("h100-nvlink-node", 8, 255 * KIB, "one_shot"),
    ("h100-nvlink-node", 8, 256 * KIB, "symm_mem"),    # sm90, 8 GPUs: custom kernels only below 256 KiB
    ("h100-nvlink-node", 8, 64 * MIB, "nccl"),
    ("h100-nvlink-node", 3, 1 * KIB, "nccl"),          # vLLM supports 2, 4, 6, 8 GPUs
    ("a100-nvlink-node", 8, 1 * MIB, "two_shot"),      # sm80: custom below 8 MiB, no symmetric memory
    ("a100-nvlink-node", 8, 8 * MIB, "nccl"),
    ("l40s-pcie-node", 2, 1 * KIB, "nccl"),            # PCIe without P2P: vLLM's P2P check fails
    ("l40s-pcie-p2p-node", 2, 1 * KIB, "one_shot"),    # two PCIe GPUs with P2P
    ("l40s-pcie-p2p-node", 4, 1 * KIB, "nccl"),        # more than two PCIe GPUs: NCCL
    ("h100-ib-2node", 16, 1 * KIB, "nccl"),            # a group across nodes
])
def test_the_engine_allreduce_follows_vllms_rules(cluster, p, nbytes, regime):
    spec = load_cluster(cluster)
    gpus = list(range(0, 16, 16 // p)) if p == 16 else list(range(p))
    seconds, chosen = collectives.engine_allreduce(spec, gpus, nbytes)
    assert chosen == regime
    if regime == "nccl":
        assert seconds == collectives.allreduce_s(spec, gpus, nbytes)


def test_each_regime_costs_its_closed_form():
    f = _figures("nvlink4-nvswitch")
    cluster = load_cluster("h100-nvlink-node")
    one, _ = collectives.engine_allreduce(cluster, list(range(8)), 128 * KIB)
    assert one == pytest.approx(f["one_shot_latency_s"] + 7 * 128 * KIB / f["one_shot_bw_bytes_per_s"], rel=1e-12)
    two, _ = collectives.engine_allreduce(cluster, list(range(4)), 2 * MIB)
    assert two == pytest.approx(f["two_shot_latency_s"] + 2 * 3 / 4 * 2 * MIB / f["two_shot_bw_bytes_per_s"],
                                rel=1e-12)
    symm, _ = collectives.engine_allreduce(cluster, list(range(8)), 16 * MIB)
    assert symm == pytest.approx(f["symm_mem_latency_s"] + 16 * MIB / f["symm_mem_bw_bytes_per_s"], rel=1e-12)


def test_the_fit_recovers_planted_figures_and_never_sees_nccl_rows():
    """Rows made from known α and B (and NCCL-sized rows made from nonsense, which must be left out)."""
    rules = load_cluster("h100-nvlink-node").intra_node.custom_allreduce
    assert rules is not None
    planted = rules.model_copy(update={"one_shot_latency_s": 4e-6, "one_shot_bw_bytes_per_s": 250e9,
                                       "two_shot_latency_s": 7e-6, "two_shot_bw_bytes_per_s": 280e9,
                                       "symm_mem_latency_s": 10e-6, "symm_mem_bw_bytes_per_s": 200e9})
    sizes = 2.0 ** np.arange(8, 28)
    rows = pd.DataFrame([(p, s) for p in (2, 4, 8) for s in sizes], columns=["group_size", "nbytes"])
    rows["seconds"] = fit.custom_allreduce_times_s(planted, rows)
    rows["seconds"] = rows["seconds"].fillna(1.0)  # NCCL's sizes: a fit that used them would be far off
    rows["train"] = True
    fitted = fit.fit_custom_allreduce(rows, rules, "planted")
    for key in ("one_shot_latency_s", "one_shot_bw_bytes_per_s", "two_shot_latency_s", "two_shot_bw_bytes_per_s",
                "symm_mem_latency_s", "symm_mem_bw_bytes_per_s"):
        assert getattr(fitted, key) == pytest.approx(getattr(planted, key), rel=1e-6), key


def _plan(engine: str, **changes):
    return build_plan(scenario_from_dict(scenario_dict(engine=engine, **changes))).pool


def test_vllm_prices_tp_allreduces_with_its_own_kernels_and_ideal_with_nccl():
    """A TP8 decode of 64 tokens all-reduces 64 × 8192 × 2 = 1 MiB: symmetric memory under vLLM on H100."""
    changes = {"model": "llama-3-70b", "parallel": {"tp": 8}}
    vllm, ideal = StageCosts.of(_plan("vllm", **changes), 0, 0), StageCosts.of(_plan("ideal", **changes), 0, 0)
    cluster, group, nbytes = load_cluster("h100-nvlink-node"), list(range(8)), 64 * 8192 * 2
    assert vllm.allreduce_time(64) == collectives.engine_allreduce(cluster, group, nbytes)[0]
    assert ideal.allreduce_time(64) == collectives.allreduce_s(cluster, group, nbytes)
    assert vllm.allreduce_time(64) < 0.6 * ideal.allreduce_time(64)  # 15 µs against NCCL's 25 µs
    batch = BatchShape(num_decode=64, decode_context=64 * 1000)
    gap = ideal.stage_time(batch, 0)[1] - vllm.stage_time(batch, 0)[1]  # 2 a layer × 80, and the embedding's
    assert gap == pytest.approx(161 * (ideal.allreduce_time(64) - vllm.allreduce_time(64)), rel=1e-9)


def test_the_engines_all_gather_the_logits_over_tp_and_ideal_does_not():
    """64 sampled tokens of Llama-3-70B at TP8: 64 × 128,256 × 2 bytes gathered on NVLink 4, as a ring
    all-gather from the fabric's own figures: t₀ + 7α + 7/8 · S/B."""
    nv = catalog_yaml("fabrics", "nvlink4-nvswitch")
    t0, alpha = parse_quantity(nv["collective_launch_s"], "seconds"), parse_quantity(nv["latency_s"], "seconds")
    bw = parse_quantity(nv["link_bw_bytes_per_s"], "bytes_per_s") * nv["bw_efficiency"]
    size = 64 * 128256 * 2
    expected = t0 + 7 * alpha + 7 / 8 * size / bw
    batch = BatchShape(num_decode=64, decode_context=64 * 1000)
    for engine in ("vllm", "sglang", "trtllm", "ideal"):
        cost = StageCosts.of(_plan(engine, model="llama-3-70b", parallel={"tp": 8}), 0, 0)
        gather = cost.stage_time(batch, 64)[1] - cost.stage_time(batch, 0)[1]
        assert gather == pytest.approx(0.0 if engine == "ideal" else expected, rel=1e-9, abs=1e-15), engine
    alone = StageCosts.of(_plan("vllm", model="llama-3-8b", parallel={"tp": 1}), 0, 0)
    assert alone.epilogue(64).comm == 0.0 and [op.name for op in alone.epilogue(64).ops] == ["lm_head"]


def test_a_vllm_handoff_sends_the_hidden_state_and_the_residual():
    changes = {"parallel": {"tp": 2, "pp": 2}}
    vllm, ideal = StageCosts.of(_plan("vllm", **changes), 0, 0), StageCosts.of(_plan("ideal", **changes), 0, 0)
    cluster, tokens, hidden = load_cluster("h100-nvlink-node"), 100, 4096
    assert ideal.handoff_times(tokens) == collectives.handoff_s(cluster, [0, 1], [2, 3], tokens * hidden * 2)
    assert vllm.handoff_times(tokens) == collectives.handoff_s(cluster, [0, 1], [2, 3], 2 * tokens * hidden * 2)


def _compute_ops(cost: StageCosts, tokens: int) -> list:
    """A layer's GEMMs and element-wise kernels for `tokens` tokens, timed."""
    return [op for op in cost.layer_terms("dense", tokens).timed if op.category == "compute"]


def test_vllm_runs_a_small_batch_as_its_padded_cuda_graph():
    """vLLM's capture sizes: 1, 2, 4, multiples of 8 below 256, of 16 up to min(2 × max_num_seqs, 512,
    max_num_batched_tokens). With 64 sequences that is 128: 9 tokens run as 16, 121 as 128, 129 eagerly."""
    vllm, ideal = StageCosts.of(_plan("vllm"), 0, 0), StageCosts.of(_plan("ideal"), 0, 0)
    for tokens, graph in ((1, 1), (3, 4), (9, 16), (121, 128), (128, 128), (129, 129), (1000, 1000)):
        assert _compute_ops(vllm, tokens) == _compute_ops(ideal, graph), tokens
        assert vllm.prologue(tokens).compute == ideal.prologue(graph).compute, tokens
    assert _compute_ops(vllm, 9) != _compute_ops(ideal, 9)
    batch = BatchShape(num_decode=9, decode_context=9 * 500)  # attention runs on the real sequences
    assert vllm.attention_times(batch) == ideal.attention_times(batch)
    large = _plan("vllm", scheduler={"max_num_seqs": 1024, "max_batched_tokens": 8192})
    assert large.padded_tokens[250] == 256 and large.padded_tokens[257] == 272 and len(large.padded_tokens) == 513


@pytest.mark.parametrize(("engine", "cluster", "expected"), [
    # (max_batched_tokens, max_num_seqs, block_size, kv_allocation, gpu_utilization), from the engines' sources
    ("vllm", "h100-nvlink-node", (8192, 1024, 16, "on_demand", 0.9)),
    ("vllm", "l40s-pcie-node", (2048, 256, 16, "on_demand", 0.9)),
    ("sglang", "h100-nvlink-node", (8192, 2048, 1, "on_demand", 0.9)),
    ("sglang", "l40s-pcie-node", (4096, 2048, 1, "on_demand", 0.9)),  # 48 GB: chunked_prefill_size 4096
    ("trtllm", "h100-nvlink-node", (8192, 2048, 32, "reserve", 0.9)),
    ("ideal", "h100-nvlink-node", (8192, 1024, 16, "on_demand", 0.9)),
])
def test_each_engine_resolves_its_own_default_knobs(engine, cluster, expected):
    data = scenario_dict(engine=engine, cluster=cluster)
    data["scheduler"] = {}
    plan = build_plan(scenario_from_dict(data)).pool
    sched = plan.scheduler
    assert (sched.max_batched_tokens, sched.max_num_seqs, plan.block_size, sched.kv_allocation,
            plan.gpu_utilization) == expected


def test_an_explicit_scenario_key_wins_over_the_engine():
    data = scenario_dict(engine="trtllm", memory={"kv_allocation": "on_demand", "block_size": 16})
    data["scheduler"] = {"max_batched_tokens": 1024}
    plan = build_plan(scenario_from_dict(data)).pool
    assert (plan.scheduler.max_batched_tokens, plan.scheduler.max_num_seqs) == (1024, 1024)
    assert (plan.scheduler.kv_allocation, plan.block_size) == ("on_demand", 16)


def test_the_summary_names_the_engine_and_the_default_is_vllm(tmp_path):
    from splitsim.api import simulate

    data = scenario_dict(parallel={"tp": 2})
    del data["engine"]
    summary = simulate(scenario_from_dict(data)).summary
    assert summary["scenario"]["engine"] == {"name": "vllm", "allreduce": "custom, NCCL beyond its limits",
                                             "handoff_tensors": 2, "logits_gather": True,
                                             "cuda_graph_max_tokens": 128}  # 2 × 64 seqs


def test_cost_says_which_allreduce_it_priced(capsys):
    argv = ["cost", "allreduce", "--cluster", "h100-nvlink-node", "--gpus", "8", "--bytes", "131072", "--json"]
    assert main(argv) == 0
    nccl = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert nccl["impl"] == "nccl"
    for flags in (["--impl", "custom"], ["--engine", "vllm"]):
        assert main(argv + flags) == 0
        custom = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert custom["impl"] == "custom" and custom["regime"] == "one_shot" and custom["seconds"] < nccl["seconds"]
    assert main(argv + ["--engine", "trtllm"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == nccl


def test_engine_flags_on_other_costs_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:  # argparse's refusal, as the installed command would exit
        main(["cost", "gemm", "--gpu", "h100-sxm", "--m", "1", "--n", "8", "--k", "8", "--impl", "custom"])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and "--impl and --engine choose an all-reduce" in err


def test_an_unknown_engine_is_one_line(capsys, tmp_path):
    import yaml

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario_dict(engine="tgi")))
    line = error_line(capsys, ["run", str(path), "--out", str(tmp_path / "out")])
    assert line.startswith("splitsim: error: engine = 'tgi'") and "vllm" in line and "ideal" in line


def test_list_names_the_engines_and_the_new_presets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "engines:  vllm, sglang, trtllm, ideal" in out
    for preset in ("b200-nvlink-node", "rtx-pro-6000-pcie-node", "h200-nvlink-node", "l40s-pcie-p2p-node"):
        assert preset in out
