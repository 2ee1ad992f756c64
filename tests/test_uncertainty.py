"""Error bars (sim/uncertainty.py): an 80 % interval per headline figure from the fits' held-out residuals.

The properties held here follow from the model stated in the module, not from its code: an op kind with zero
residuals adds zero width; a kind a run never executes (all-reduces at TP1) adds none; a kind's share of the
log-width grows linearly with its error; independent kinds add in quadrature, so two together are wider than
either and narrower than their sum."""

from __future__ import annotations

import math

import pytest

from helpers import scenario_dict
from splitsim.api import simulate
from splitsim.error_bars import Z
from splitsim.scenario import scenario_from_dict
from splitsim.sim import uncertainty

GPU_KINDS = ("gemm", "gemm bf16", "attention", "attention prefill", "attention decode", "elementwise")
COMM_KINDS = ("allreduce", "allreduce custom", "allgather", "sendrecv")
FIGURES = ("ttft_p50", "tpot_p50", "throughput")


def _bars(tp: int = 1, gpu: dict[str, float] | None = None, comm: dict[str, float] | None = None) -> dict:
    """The run's `uncertainty` on an H100 node whose residuals are exactly the given ones (others 0)."""
    cluster = {"base": "h100-nvlink-node",
               "gpu": {"efficiency": {"held_out_errors": {k: 0.0 for k in GPU_KINDS} | (gpu or {})}},
               "intra_node": {"held_out_errors": {k: 0.0 for k in COMM_KINDS} | (comm or {})}}
    workload = {"num_requests": 30, "rate": 5.0, "prompt_tokens": 300, "output_tokens": 40}
    summary = simulate(scenario_from_dict(scenario_dict(engine="vllm", cluster=cluster, parallel={"tp": tp},
                                                        workload=workload))).summary
    bars = summary["uncertainty"]
    assert bars["level"] == 0.8 and bars["no_residuals"] == [] and bars["assumed"] == []
    values = {"ttft_p50": summary["ttft_s"]["p50"], "tpot_p50": summary["tpot_s"]["p50"],
              "throughput": summary["throughput_tokens_per_s"]}
    for figure in FIGURES:  # the interval holds the run's own figure, symmetric in log
        lo, hi = bars[figure]
        assert lo <= values[figure] <= hi and math.log(hi / values[figure]) == pytest.approx(
            math.log(values[figure] / lo), rel=1e-9, abs=1e-15)
    return bars


def _half_width(bars: dict, figure: str) -> float:
    lo, hi = bars[figure]
    return math.log(hi / lo) / 2


def test_zero_residuals_give_zero_width():
    bars = _bars(tp=2)
    for figure in FIGURES:
        assert bars[figure][0] == bars[figure][1]


def test_allreduce_residuals_widen_nothing_at_tp1_and_something_at_tp2():
    comm = {"allreduce": 0.2, "allreduce custom": 0.2}
    for figure in FIGURES:
        assert _half_width(_bars(tp=1, comm=comm), figure) == 0.0
        assert _half_width(_bars(tp=2, comm=comm), figure) > 0.0


def test_width_grows_linearly_with_a_kinds_error_and_kinds_add_in_quadrature():
    gemm, gemm2 = _bars(gpu={"gemm bf16": 0.05}), _bars(gpu={"gemm bf16": 0.10})
    attention = _bars(gpu={"attention prefill": 0.2, "attention decode": 0.2})
    both = _bars(gpu={"gemm bf16": 0.05, "attention prefill": 0.2, "attention decode": 0.2})
    for figure in FIGURES:
        a, b = _half_width(gemm, figure), _half_width(attention, figure)
        assert a > 0 and b > 0
        assert _half_width(gemm2, figure) == pytest.approx(2 * a, rel=1e-9)
        assert _half_width(both, figure) == pytest.approx(math.hypot(a, b), rel=1e-9)


def test_equal_errors_on_every_kind_bound_the_width():
    """Every op of a TP1 step is a GEMM, prefill or decode attention, or element-wise kernel: with the same
    error e on each (σ = e / 0.6745), at most four independent kinds with shares w (Σw = 1) give a log
    half-width z·σ·√Σw², between z·σ/2 and z·σ."""
    e = 0.1
    bars = _bars(gpu={"gemm bf16": e, "attention prefill": e, "attention decode": e, "elementwise": e})
    sigma = e / 0.6744897501960817
    for figure in FIGURES:
        assert Z * sigma / 2 <= _half_width(bars, figure) <= Z * sigma


def test_assumed_figures_widen_and_missing_residuals_are_named():
    """The L40S box's send/recv figures are assumed (its all-reduces are fitted); the presets have no
    element-wise residuals."""
    summary = simulate(scenario_from_dict(scenario_dict(
        engine="vllm", model="llama-3-8b", cluster="l40s-pcie-node", parallel={"tp": 2, "pp": 2},
        workload={"num_requests": 10, "rate": 5.0, "prompt_tokens": 200, "output_tokens": 20}))).summary
    bars = summary["uncertainty"]
    assert "sendrecv" in bars["assumed"] and "allreduce" not in bars["assumed"]
    assert "elementwise" in bars["no_residuals"]


def test_error_bars_leave_the_run_itself_alone_and_can_be_left_out():
    scenario = scenario_from_dict(scenario_dict(parallel={"tp": 2}))
    with_bars, without = simulate(scenario).summary, simulate(scenario, error_bars=False).summary
    assert "uncertainty" not in without
    assert {k: v for k, v in with_bars.items() if k != "uncertainty"} == without


@pytest.mark.slow  # six interpreters, each running a shipped scenario
def test_the_intervals_do_not_depend_on_the_process_string_hashing():
    """Pools and Ray workers are other processes, each with its own string hash seed: the same run must give
    the same last digits in every one (a sum taken in set order did not)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "h100-2node-ib.yaml"  # one that showed it
    code = ("import json, sys; from splitsim import load_scenario, simulate; "
            "print(json.dumps(simulate(load_scenario(sys.argv[1])).summary['uncertainty']))")
    seen = set()
    for seed in ("1", "2", "3", "4", "5", "6"):
        out = subprocess.run([sys.executable, "-c", code, str(scenario)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        seen.add(json.dumps(json.loads(out.splitlines()[-1]), sort_keys=True))
    assert len(seen) == 1, seen


@pytest.mark.parametrize(("model", "parallel"), [
    ("deepseek-v3", {"tp": 1, "pp": 1, "dp": 16, "ep": 16}),  # MLA, a shared expert, dispatch and combine
    ("deepseek-v3", {"tp": 8, "pp": 2, "dp": 1, "ep": 1}),
    ("qwen3-235b-a22b", {"tp": 2, "pp": 1, "dp": 4, "ep": 8}),  # the replica's all-gather after the combine
])
def test_every_op_of_a_moe_model_counts_as_its_own_kind(model, parallel):
    """Each op lands in the kind of its kernel or collective: no GEMM or norm counts as an all-reduce, the
    all-to-alls count as all-to-alls over the experts' GPUs, and a layout without all-reduces has none."""
    from splitsim.models.ops import BatchShape
    from splitsim.sim.costs import StageCosts
    from splitsim.sim.plan import build_plan

    scenario = scenario_from_dict(scenario_dict(model=model, cluster="h100-ib-2node", parallel=parallel,
                                                precision={"weights": "fp8"}))
    plan = build_plan(scenario).pool
    batch = BatchShape.of(((100, 0),), num_decode=8, decode_context=8000)
    for stage in range(plan.pp):
        work = uncertainty._stage_work(StageCosts.of(plan, 0, stage), batch, 9)
        walk = StageCosts.of(plan, 0, stage).walk(batch, 9)
        kinds = {op.kind for _, _, ops in walk.runs for op in ops} | {op.kind for op in walk.epilogue.ops}
        # every op names the fit it rests on: a kind the error bars know
        assert kinds <= {"gemm", "moe", "elementwise", "attention prefill", "attention decode", "allreduce",
                         "allgather", "alltoall"}, kinds
        if plan.tp == 1:
            assert not any(kind.startswith("allreduce") for kind in work), work
        if plan.attention_dp:  # over both nodes' 16 GPUs, or one node's 8
            assert work["alltoall_inter_node" if plan.num_gpus > 8 else "alltoall"] > 0
        assert work["gemm"] > 0 and work["elementwise"] > 0
