"""Contention priced from a measured step (sim/contention_memo.py): the regime rules by hand, and runs over shared
links with fast-forward on held to the same runs walking every step as flows."""

from __future__ import annotations

import pytest
import yaml

from helpers import SCENARIOS
from splitsim import simulate
from splitsim.scenario import scenario_from_dict
from splitsim.sim.contention_memo import ContentionMemo, Extras

A, B = "slot a", "slot b"
MET_A = Extras((0.1,), (0.0,), (0.0,))
MET_B = Extras((0.2,), (0.0,), (0.0,))


def test_a_step_is_priced_only_once_every_busy_slot_has_measured_the_steady_regime():
    memo = ContentionMemo()
    memo.formed(A, steady=True)
    memo.formed(B, steady=False)  # B prefills: the regime is not steady
    assert memo.priced(A) is None
    start_a = memo.measuring()
    assert start_a[1] is False  # B's prompt chunk is in flight: A's walk cannot measure cleanly
    memo.walked(A, start_a, MET_A)
    assert memo.measured == {}

    memo.formed(A, steady=True)
    memo.formed(B, steady=True)  # B's batch is decode-only now: a new steady regime
    start_a, start_b = memo.measuring(), memo.measuring()
    assert start_a[1] and start_b[1]
    memo.walked(A, start_a, MET_A)
    memo.formed(A, steady=True)
    assert memo.priced(A) is None  # B has not measured yet
    memo.walked(B, start_b, MET_B)
    memo.formed(A, steady=True)
    assert memo.priced(A) == MET_A
    memo.formed(B, steady=True)
    assert memo.priced(B) == MET_B


def test_a_prompt_chunk_or_an_idle_slot_waking_ends_the_regime_and_its_measurements():
    for change in ("prefill", "idle"):
        memo = ContentionMemo()
        for slot, met in ((A, MET_A), (B, MET_B)):
            memo.formed(slot, steady=True)
            memo.walked(slot, memo.measuring(), met)
        assert memo.priced(A) == MET_A
        if change == "prefill":
            memo.formed(B, steady=False)
        else:
            memo.went_idle(B)
        memo.formed(A, steady=True)
        assert memo.priced(A) is None and memo.measured == {}
        if change == "idle":  # A alone is busy: its own measurement prices it
            memo.walked(A, memo.measuring(), MET_A)
            assert memo.priced(A) == MET_A
            memo.formed(B, steady=True)  # B wakes: the traffic changes shape again
            assert memo.priced(A) is None


def test_a_walk_that_overlaps_a_priced_step_or_outlives_its_regime_measures_nothing():
    memo = ContentionMemo()
    for slot, met in ((A, MET_A), (B, MET_B)):
        memo.formed(slot, steady=True)
        memo.walked(slot, memo.measuring(), met)
    memo.formed(A, steady=True)
    assert memo.priced(A) == MET_A
    memo.priced_step(True)
    assert memo.measuring()[1] is False  # A's priced step crosses no link: a walk beside it sees too little
    memo.priced_step(False)
    memo.formed(B, steady=True)
    start = memo.measuring()
    memo.formed(A, steady=False)  # the regime changes while B walks
    memo.walked(B, start, Extras((9.0,), (0.0,), (0.0,)))
    assert B not in memo.measured


def test_a_regime_is_measured_again_after_its_rounds():
    memo = ContentionMemo(rounds=2)
    for slot, met in ((A, MET_A), (B, MET_B)):
        memo.formed(slot, steady=True)
        memo.walked(slot, memo.measuring(), met)
    priced = [memo.priced(slot) for slot in (A, B, A, B)]
    assert priced == [MET_A, MET_B, MET_A, MET_B]
    assert memo.priced(A) is None and memo.measured == {}  # two rounds of two slots: measure again


def _l40s(requests: int, **parallel: int) -> dict:
    data = yaml.safe_load((SCENARIOS / "l40s-pcie-70b.yaml").read_text())
    data["workload"]["num_requests"] = requests
    if parallel:
        data["parallel"] = {**data["parallel"], **parallel}
        data["precision"] = {**data["precision"], "weights": "fp8"}  # TP2 of 70B on a 48 GB L40S
    return data


@pytest.mark.slow  # walking every contended step: about 12 s on two cores
@pytest.mark.parametrize(("case", "data", "least_priced"), [
    ("TP2xPP4", _l40s(200), 0.6),
    ("TP2xDP4 fp8", _l40s(120, tp=2, pp=1, dp=4), 0.2),
])
def test_priced_contention_keeps_the_walked_runs_figures(case, data, least_priced):
    """Fast-forward on against every step walked as flows, over the L40S box's shared host path: the same requests
    and tokens, the headline figures within 0.5 % (measured: 0.1 % at most), and a share of steps priced that a
    path quietly declining would not reach."""
    runs = {}
    for ff in (False, True):
        run = {**data, "sim": {**data["sim"], "fast_forward": ff}}
        runs[ff] = simulate(scenario_from_dict(run), error_bars=False)
    walked, priced = runs[False].summary, runs[True].summary
    assert priced["num_requests"] == walked["num_requests"]
    assert runs[True].requests["output_tokens"].sum() == runs[False].requests["output_tokens"].sum()
    for figure in (("throughput_tokens_per_s",), ("ttft_s", "p50"), ("tpot_s", "p50"), ("e2e_s", "mean")):
        a, b = walked, priced
        for key in figure:
            a, b = a[key], b[key]
        assert b == pytest.approx(a, rel=5e-3), (case, figure)
    fallbacks = runs[True].meta["fast_forward"]["fallbacks"]
    share = fallbacks.get("contention_priced", 0) / (fallbacks.get("contention_priced", 0) + fallbacks["contention"])
    assert share >= least_priced, (case, fallbacks)
