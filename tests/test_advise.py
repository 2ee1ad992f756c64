"""The advisor: which candidates it considers, why it prunes, how it ranks what it simulates."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pandas as pd
import pytest
import yaml

from helpers import error_line, ideal_cluster, scenario_dict
from splitsim import simulate
from splitsim.candidates import Candidate, consider
from splitsim.scenario import scenario_from_dict


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


def test_a_mixture_of_experts_is_also_tried_with_its_experts_spread():
    """Every factorisation of 8 GPUs; for a mixture of experts, each with DP 1 and TP > 1 once more with
    EP = TP, and each with DP > 1 and one stage once more with EP over every GPU, attention data-parallel
    (written out here)."""
    base = _base(model="mixtral-8x7b", cluster="h100-nvlink-node")
    expected = set()
    for tp, pp, dp in itertools.product(range(1, 9), repeat=3):
        if tp * pp * dp == 8:
            expected.add(Candidate(tp, pp, dp, "tp-pp-dp", "bf16", "bf16"))
            if dp == 1 and tp > 1:
                expected.add(Candidate(tp, pp, dp, "tp-pp-dp", "bf16", "bf16", ep=tp))
            if dp > 1 and pp == 1:
                expected.add(Candidate(tp, pp, dp, "tp-pp-dp", "bf16", "bf16", ep=8))
    found = {c.candidate for c in consider(base, 8, ["bf16"], ["bf16"])}
    assert found == expected
    assert Candidate(8, 1, 1, "tp-pp-dp", "bf16", "bf16", ep=8).label == "TP8×PP1×DP1×EP8 bf16/kv bf16"


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


SMALL = ["--model", "llama-3-8b", "--cluster", "h100-nvlink-node", "--gpus", "2", "--isl", "128", "--osl", "64",
         "--max-num-seqs", "16", "-q"]


def _advise(tmp_path, capsys, *flags: str) -> tuple[dict, pd.DataFrame]:
    from splitsim.cli import main

    assert main(["advise", *SMALL, "--out", str(tmp_path / "a"), "--json", *flags]) == 0
    out = capsys.readouterr().out
    return json.loads(out.strip().splitlines()[-1]), pd.read_csv(tmp_path / "a" / "candidates.csv")


def test_advice_ranks_every_candidate_and_its_best_is_what_a_run_of_it_gives(tmp_path, capsys):
    advice, table = _advise(tmp_path, capsys, "--precision", "bf16,fp8", "--jobs", "1")
    # 2 GPUs: TP1×PP1×DP2, TP1×PP2×DP1, TP2×PP1×DP1, each in two weight precisions; then the best layout's
    # max_batched_tokens halved and doubled (max_num_seqs is pinned by the question). A candidate whose
    # bound is below the best found before it is not simulated (test_bounds.py holds the bounds).
    evaluated = table[table["status"] == "evaluated"]
    skipped = table[table["status"] == "pruned"]
    assert len(table) == 8 and len(evaluated) + len(skipped) == 8 and len(skipped) >= 1
    assert skipped["reason"].str.startswith("bound: at most").all()
    assert evaluated["rank"].tolist() == list(range(1, len(evaluated) + 1))
    assert evaluated["throughput_per_gpu"].is_monotonic_decreasing
    assert advice["candidates"] == {"evaluated": len(evaluated), "pruned": len(skipped), "failed": 0}
    layout = ["tp", "pp", "dp", "order", "weights", "kv_cache"]
    tokens = table.groupby(layout)["max_batched_tokens"].apply(lambda t: sorted(t.dropna()))
    refined = tokens[tokens.apply(len) == 3]
    assert len(refined) == 1 and refined.iloc[0] == [4096, 8192, 16384]  # the engine's 8192 (H100), ÷2, ×2
    assert (table.groupby(layout).size() == 1).sum() == 5  # the other five layouts once each
    assert tuple(table.iloc[0][layout]) == refined.index[0]  # refined around the best layout
    best = advice["best"]
    top = table.iloc[0]
    assert (best["tp"], best["pp"], best["dp"], best["precision"]["weights"]) == \
        (top["tp"], top["pp"], top["dp"], top["weights"])
    # The best candidate's figure is what a run of its scenario gives, computed here from the summary.
    clients = best["load"]["concurrency"]
    data = scenario_dict(model="llama-3-8b", cluster="h100-nvlink-node",
                         parallel={"tp": best["tp"], "pp": best["pp"], "dp": best["dp"]},
                         precision=best["precision"], scheduler={"policy": "chunked", "max_num_seqs": 16,
                                                                 "max_batched_tokens": best["max_batched_tokens"]})
    data["workload"] = {"num_requests": 3 * clients, "concurrency": clients, "prompt_tokens": 128,
                        "output_tokens": 64}
    result = simulate(scenario_from_dict(data))
    steady = result.summary["steady_state"]
    assert steady is not None
    assert best["metrics"]["throughput_per_gpu"] == pytest.approx(steady["output_throughput_tokens_per_s"] / 2,
                                                                  rel=1e-12)
    # Saturation: as many clients as the layout runs at once (16 sequences per batch, per replica and stage)
    assert clients == 16 * best["pp"] * best["dp"]


def test_a_process_pool_gives_the_same_advice(tmp_path, capsys):
    """Workers run candidates ahead of the skipping rule; what they ran that the rule skips is dropped, so
    candidates.csv is the same byte for byte."""
    one, _ = _advise(tmp_path / "one", capsys, "--jobs", "1", "--precision", "bf16,fp8")
    two, _ = _advise(tmp_path / "two", capsys, "--jobs", "2", "--precision", "bf16,fp8")
    assert one == two
    assert (tmp_path / "one/a/candidates.csv").read_bytes() == (tmp_path / "two/a/candidates.csv").read_bytes()


def test_latency_is_judged_at_the_given_load(tmp_path, capsys):
    advice, table = _advise(tmp_path, capsys, "--objective", "latency", "--rate", "4", "--num-requests", "60",
                            "--jobs", "1")
    assert advice["best"]["load"] == {"rate": 4.0}
    assert table[table["status"] == "evaluated"]["e2e_s.mean"].is_monotonic_increasing


@pytest.mark.parametrize(("flags", "words"), [
    (["--precision", "fp9"], "--precision fp9: 'fp9' is not a precision"),
    (["--gpus", "99"], "--gpus 99: h100-nvlink-node has 8 GPUs"),
    (["--objective", "latency"], "--objective latency: give the load"),
    (["--rate", "0"], "argument --rate"),
])
def test_bad_advise_flags_are_one_line(tmp_path, capsys, flags, words):
    argv = ["advise", "--model", "llama-3-8b", "--cluster", "h100-nvlink-node", "--out", str(tmp_path / "a"), *flags]
    try:
        err = error_line(capsys, argv)
    except SystemExit as stop:  # argparse's own refusals
        assert stop.code == 2
        err = capsys.readouterr().err.strip()
    assert words in err, err
    assert not (tmp_path / "a").exists()


def test_percentile_slos_find_the_most_load_that_meets_them(tmp_path, capsys):
    """The found load meets the SLO in a run of its own, and the next load the search tried (within 2 %)
    does not; ranking follows throughput per GPU at the found loads."""
    # chosen so that the best layout meets it below saturation (32 clients) and no layout misses it at 1
    advice, table = _advise(tmp_path, capsys, "--slo", "ttft_p99=0.04,tpot_p99=0.008", "--jobs", "1")
    evaluated = table[table["status"] == "evaluated"]
    assert evaluated["slo_met"].all() and evaluated["throughput_per_gpu"].is_monotonic_decreasing
    best = advice["best"]
    clients, missed = best["load"]["concurrency"], int(evaluated.iloc[0]["slo_missed_at_concurrency"])
    assert clients < missed <= max(clients + 1, clients * 1.02)

    def meets(c: int) -> bool:
        data = scenario_dict(model="llama-3-8b", cluster="h100-nvlink-node",
                             parallel={"tp": best["tp"], "pp": best["pp"], "dp": best["dp"]},
                             precision=best["precision"], slo={"ttft_p99": 0.04, "tpot_p99": 0.008},
                             scheduler={"policy": "chunked", "max_num_seqs": 16,
                                        "max_batched_tokens": best["max_batched_tokens"]})
        data["workload"] = {"num_requests": 3 * c, "concurrency": c, "prompt_tokens": 128, "output_tokens": 64}
        steady = simulate(scenario_from_dict(data)).summary["steady_state"]  # judged on the steady state
        return steady["ttft_s"]["p99"] <= 0.04 and steady["tpot_s"]["p99"] <= 0.008

    assert meets(clients) and not meets(missed)
    # pareto.png's curve of the best: every load its search ran, fewest clients first, the found and missed ones
    curve = [point["concurrency"] for point in best["curve"]]
    assert curve == sorted(set(curve)) and {clients, missed} <= set(curve)
    assert len(curve) == evaluated.iloc[0]["load_search_runs"]


def test_no_advice_when_nothing_meets_the_slo(tmp_path, capsys):
    advice, table = _advise(tmp_path, capsys, "--slo", "tpot_p99=0.001", "--jobs", "1")
    assert advice["best"] is None
    # one decode step of one sequence takes longer than 1 ms on every layout: none is simulated
    assert (table["status"] == "pruned").all()
    assert table["reason"].str.startswith("bound: no batch meets the SLO's time per output token").all()


def test_per_request_thresholds_rank_by_goodput_per_gpu(tmp_path, capsys):
    advice, table = _advise(tmp_path, capsys, "--slo", "ttft=0.05,tpot=0.008", "--jobs", "1")
    assert advice["objective"] == "goodput"
    evaluated = table[table["status"] == "evaluated"]
    assert evaluated["goodput_per_gpu"].is_monotonic_decreasing and evaluated["goodput_per_gpu"].iloc[0] > 0
    # the best load is among those tried, and no tried load of the best candidate had more goodput
    assert table["load_search_runs"].iloc[0] >= 3


def test_the_explanation_quotes_candidates_csv(tmp_path, capsys):
    """The paragraph's numbers are the best and runner-up rows of candidates.csv, recomputed here."""
    from splitsim.cli import main

    assert main(["advise", *SMALL, "--out", str(tmp_path / "a"), "--jobs", "1"]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # the paragraph is wrapped
    rows = pd.read_csv(tmp_path / "a" / "candidates.csv")
    layout = ["tp", "pp", "dp", "order", "weights", "kv_cache"]
    best = rows.iloc[0]
    runner = rows[rows[layout].ne(best[layout]).any(axis=1)].iloc[0]  # the best other layout
    assert f"gives {best['throughput_per_gpu']:.0f} output tok/s per GPU" in printed
    assert f"{best['gpu_time_fraction.compute']:.0%} computing" in printed
    gap = (best["throughput_per_gpu"] - runner["throughput_per_gpu"]) / best["throughput_per_gpu"]
    assert f"scores {gap:.1%} lower" in printed
    assert "8 GPUs per node on nvlink4-nvswitch" in printed
    assert (tmp_path / "a" / "pareto.png").stat().st_size > 10_000
    # the deploy line names the Hub repository the catalog config came from, with the best's figures
    assert (f"vllm serve meta-llama/Meta-Llama-3-8B --tensor-parallel-size {best['tp']} "
            f"--pipeline-parallel-size {best['pp']} --data-parallel-size {best['dp']} "
            f"--max-num-seqs {best['max_num_seqs']:.0f} "
            f"--max-num-batched-tokens {best['max_batched_tokens']:.0f}") in printed


def test_pareto_front_keeps_the_undominated():
    from splitsim.advisor import pareto_front

    points = [(1, 5), (2, 4), (2, 3), (3, 1), (0.5, 5), (3, 1)]
    # (2, 3) is beaten by (2, 4); (0.5, 5) by (1, 5); equal points do not dominate each other
    assert pareto_front(points) == [True, True, False, True, False, True]


def _question(cluster: str, gpus: int, objective: str, load=None, **workload):
    from splitsim.advisor import Question

    lengths = {"prompt_tokens": 512, "output_tokens": 64} | workload
    return Question(base={"name": "q", "model": "llama-3-70b", "cluster": cluster, "sim": {"seed": 0},
                          "scheduler": {"policy": "chunked", "max_num_seqs": 32},
                          "workload": {"num_requests": 1, "rate": 0, **lengths}},
                    gpus=gpus, objective=objective, load=load, num_requests=20)


@pytest.mark.slow  # three advisor searches over whole clusters: over a minute on two cores
def test_the_rulebook_falls_out_of_the_advisor():
    """The seed's rules, found by simulation rather than written in: on NVLink the lowest-latency layout is
    TP-heavy; on the PCIe-only L40S box TP8 is never the best; over two nodes TP stays inside a node and
    crossing Ethernet with TP costs far more than crossing it with PP."""
    from splitsim.advisor import advise, evaluate

    nvlink = advise(_question("h100-nvlink-node", 8, "latency", {"rate": 0.5}), jobs=2)
    assert nvlink.best is not None and nvlink.best.candidate.tp >= 4
    for objective, load in (("latency", {"rate": 0.5}), ("throughput_per_gpu", None)):
        pcie = advise(_question("l40s-pcie-node", 8, objective, load), jobs=2)
        assert pcie.best is not None and pcie.best.candidate.tp < 8, objective
        tp8 = [e for e in pcie.ranked if e.candidate.tp == 8]  # simulated, or skipped by a bound below the best
        skipped = [c for c in pcie.pruned if c.candidate.tp == 8 and c.pruned.startswith("bound:")]
        assert tp8 or skipped
        assert all(e.score < pcie.best.score for e in tp8)
    penalty = {}  # how much slower TP16 (TP crosses the network) is than TP8×PP2 (PP crosses it)
    for cluster in ("h100-ib-2node", "h100-eth-2node"):
        question = _question(cluster, 16, "latency", {"rate": 0.5})
        two_nodes = advise(question, jobs=2)
        assert two_nodes.best is not None and two_nodes.best.candidate.tp <= 8, cluster  # TP inside a node
        e2e = {}
        for candidate in (Candidate(16, 1, 1, "tp-pp-dp", "bf16", "bf16"),
                          Candidate(8, 2, 1, "tp-pp-dp", "bf16", "bf16")):
            ran = [e for e in two_nodes.ranked if e.candidate == candidate]  # or skipped by its bound: run it here
            e2e[candidate.tp] = (ran[0] if ran else evaluate(question, candidate)).metrics["e2e_s.mean"]
        penalty[cluster] = e2e[16] / e2e[8]
    assert 1 < penalty["h100-ib-2node"] < penalty["h100-eth-2node"]  # and more so over Ethernet


def test_steady_precision_by_batch_means():
    """Even production gives a zero-width interval; every token in one tenth of the window gives the widest
    the formula can: t(9) · sd/√10 / mean with counts (T, 0, …, 0) is 2.262 exactly."""
    from splitsim.advisor import steady_precision

    steady = {"start_s": 0.0, "end_s": 10.0}
    even = pd.DataFrame({"first_token_s": [-1.0] * 4, "finish_s": [11.0] * 4, "output_tokens": [121] * 4})
    assert steady_precision(even, steady) == pytest.approx(0.0, abs=1e-12)
    burst = pd.DataFrame({"first_token_s": [0.5], "finish_s": [0.5 + 1e-9], "output_tokens": [1]})
    assert steady_precision(burst, steady) == pytest.approx(2.262, rel=1e-12)


def test_judged_points_know_their_throughput_to_two_percent(tmp_path, capsys):
    _, table = _advise(tmp_path, capsys, "--jobs", "1")
    done = table[table["status"] == "evaluated"]
    assert ((done["steady_state_precision"] <= 0.02) | (done["rounds"] >= 12)).all()


def test_a_scenario_supplies_what_the_flags_leave_out(tmp_path, capsys):
    from splitsim.cli import main

    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(scenario_dict(
        cluster="h100-nvlink-node", workload={"num_requests": 5, "rate": 1, "prompt_tokens": 96, "output_tokens": 48},
        scheduler={"policy": "chunked", "max_num_seqs": 8}, slo={"tpot_p99": 0.5})))
    assert main(["advise", "--scenario", str(scenario), "--gpus", "1", "--out", str(tmp_path / "a"), "--json",
                 "-q", "--jobs", "1"]) == 0
    advice = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    table = pd.read_csv(tmp_path / "a" / "candidates.csv")
    assert advice["best"]["max_num_seqs"] == 8  # the scenario's pinned knob, not refined
    assert set(table["max_num_seqs"]) == {8}
    assert "slo.given.tpot_p99" in table.columns


def test_advise_needs_a_model_and_a_cluster(tmp_path, capsys):
    err = error_line(capsys, ["advise", "--cluster", "h100-nvlink-node", "--out", str(tmp_path / "a")])
    assert "--model: required (or a --scenario that names it)" in err


def test_every_found_load_meets_the_slo_and_the_ranking_is_reproduced(tmp_path, capsys):
    """For every candidate: a run of its own at the found load meets the SLO (on the steady state), one at the
    next load the search tried does not; and ranking candidates by runs of their found loads, long enough
    for ±2 %, gives the advisor's order up to ties within those ±2 %."""
    slo = {"ttft_p99": 0.04, "tpot_p99": 0.008}
    _, table = _advise(tmp_path, capsys, "--slo", "ttft_p99=0.04,tpot_p99=0.008", "--jobs", "2")
    table = table[table["status"] == "evaluated"].reset_index(drop=True)

    def run(row, clients: int, rounds: int) -> dict:
        data = scenario_dict(model="llama-3-8b", cluster="h100-nvlink-node",
                             parallel={"tp": int(row["tp"]), "pp": int(row["pp"]), "dp": int(row["dp"]),
                                       "order": row["order"]},
                             precision={"weights": row["weights"], "kv_cache": row["kv_cache"]}, slo=slo,
                             scheduler={"policy": "chunked", "max_num_seqs": int(row["max_num_seqs"]),
                                        "max_batched_tokens": int(row["max_batched_tokens"])})
        data["workload"] = {"num_requests": rounds * clients, "concurrency": clients, "prompt_tokens": 128,
                            "output_tokens": 64}
        return simulate(scenario_from_dict(data)).summary

    def meets(summary: dict) -> bool:
        steady = summary["steady_state"]
        return steady["ttft_s"]["p99"] <= slo["ttft_p99"] and steady["tpot_s"]["p99"] <= slo["tpot_p99"]

    throughput = []
    for _, row in table.iterrows():
        clients = int(row["load.concurrency"])
        assert meets(run(row, clients, 3)), row["tp"]
        if not pd.isna(row["slo_missed_at_concurrency"]):
            assert not meets(run(row, int(row["slo_missed_at_concurrency"]), 3))
        steady = run(row, clients, int(row["rounds"]))["steady_state"]
        throughput.append(steady["output_throughput_tokens_per_s"] / 2)
    for i in range(len(throughput) - 1):  # the advisor's order, or a tie within the precision
        assert throughput[i] >= throughput[i + 1] * (1 - 0.02) - 1e-9, (i, throughput)


@pytest.mark.parametrize("slo", [None, "ttft_p99=0.04,tpot_p99=0.008"])
def test_candidates_skipped_by_their_bound_never_beat_the_best(slo):
    """Issue 9: the bounds that skip candidates are conservative. Every skipped candidate, simulated here
    as the advisor would have, scores below the best."""
    from splitsim.advisor import Question, advise, evaluate
    from splitsim.slo import parse_slo_arg

    question = Question(base={"name": "q", "model": "llama-3-8b", "cluster": "h100-nvlink-node", "sim": {"seed": 0},
                              "scheduler": {"policy": "chunked", "max_num_seqs": 16},
                              "workload": {"num_requests": 1, "rate": 0, "prompt_tokens": 128, "output_tokens": 64}},
                        gpus=2, weights=("bf16", "fp8"), slo=parse_slo_arg(slo) if slo else None)
    advice = advise(question, jobs=1)
    skipped = [c.candidate for c in advice.pruned if c.pruned.startswith("bound:")]
    assert advice.best is not None and skipped
    for candidate in skipped:
        assert evaluate(question, candidate).score < advice.best.score, candidate.label


def test_a_trace_gives_the_lengths_in_its_order(tmp_path, capsys):
    """A trace of equal requests advises exactly as --isl/--osl of those lengths (its arrival times are not
    the load); a trace of two kinds of request is replayed in order, each candidate judged on both."""
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n" + "".join(f"{i * 0.1},128,64\n" for i in range(50)))
    same = [flag for flag in SMALL if flag not in ("--isl", "128", "--osl", "64")]
    from splitsim.cli import main

    assert main(["advise", *same, "--trace", str(trace), "--out", str(tmp_path / "t"), "--jobs", "1"]) == 0
    assert main(["advise", *SMALL, "--out", str(tmp_path / "l"), "--jobs", "1"]) == 0
    capsys.readouterr()
    assert (tmp_path / "t/candidates.csv").read_bytes() == (tmp_path / "l/candidates.csv").read_bytes()

    mixed = tmp_path / "m.csv"
    mixed.write_text("arrival_s,prompt_tokens,output_tokens\n0,512,16\n0,32,200\n")
    assert main(["advise", *same, "--trace", str(mixed), "--out", str(tmp_path / "m"), "--jobs", "1"]) == 0
    capsys.readouterr()
    best = pd.read_csv(tmp_path / "m/candidates.csv").iloc[0]
    # a closed loop of C clients sends 3·C requests (or more, for precision), alternating the two rows
    n = int(best["num_requests"])
    assert n % best["load.concurrency"] == 0
    assert best["throughput_tokens_per_s"] * best["duration_s"] == pytest.approx((n + 1) // 2 * 16 + n // 2 * 200,
                                                                                  rel=1e-9)


def test_a_trace_longer_than_the_context_is_refused_or_handled_as_asked(tmp_path, capsys):
    trace = tmp_path / "t.csv"
    trace.write_text("arrival_s,prompt_tokens,output_tokens\n0,100,20\n1,9000,20\n")  # llama-3-8b: 8192
    argv = ["advise", *[f for f in SMALL if f not in ("--isl", "128", "--osl", "64")], "--trace", str(trace),
            "--jobs", "1", "--out", str(tmp_path / "a")]
    err = error_line(capsys, argv)
    assert "--overlong refuse" in err and "request 2 (line 3)" in err and not (tmp_path / "a").exists()
    from splitsim.cli import main

    assert main([*argv, "--overlong", "skip"]) == 0
    assert "--isl" in error_line(capsys, [*argv, "--isl", "64"])


def test_checkpoint_precision_keeps_what_the_config_stores():
    """--precision checkpoint: gpt-oss-120b keeps its MXFP4 experts and fits one H100; bf16 would not."""
    base = _base(model="gpt-oss-120b", cluster="h100-nvlink-node")
    by_weights = {c.candidate.weights: c.pruned for c in consider(base, 1, ["checkpoint", "bf16"], ["bf16"])}
    assert by_weights["checkpoint"] is None and by_weights["bf16"].startswith("memory:")
    candidate = Candidate(1, 1, 1, "tp-pp-dp", "checkpoint", "bf16")
    assert candidate.scenario(base)["precision"]["weights"] is None


def test_the_default_precision_is_the_checkpoints_where_it_stores_another_format():
    """No --precision: bf16 for a bf16 checkpoint (as before), the checkpoint's own for gpt-oss (MXFP4 experts), so
    the deploy line deploys what was simulated; 'checkpoint' on a bf16 model is bf16, not a second run."""
    from splitsim.advise_command import question_from_args
    from splitsim.cli import build_parser

    def weights(*flags):
        args = build_parser().parse_args(["advise", "--cluster", "h100-nvlink-node", *flags])
        return question_from_args(args).weights

    assert weights("--model", "llama-3-8b") == ("bf16",)
    assert weights("--model", "gpt-oss-20b") == ("checkpoint",)
    assert weights("--model", "llama-3-8b", "--precision", "checkpoint,bf16") == ("bf16",)


def test_a_layout_short_only_of_activation_room_is_retried_with_smaller_knobs():
    """Llama-3-70B in fp8 on one H100: 65.7 GiB of weights leave no room for the activations of vLLM's default
    largest batch on a GPU this size (8,192 tokens, 1,024 sequences: sim/defaults.py); halved once, they fit, so
    TP1×DP8 is simulated with 4,096 / 512 rather than pruned. Knobs the question sets are not moved."""
    from splitsim.candidates import prune_reason

    base = {"name": "q", "model": "llama-3-70b", "cluster": "h100-nvlink-node", "scheduler": {"policy": "chunked"},
            "workload": {"num_requests": 10, "rate": 1.0, "prompt_tokens": 1024, "output_tokens": 1024}}
    layout = Candidate(1, 1, 8, "tp-pp-dp", "fp8", "fp8")
    assert prune_reason(base, replace_knobs(layout, 8192, 1024)).startswith("memory: activations")
    assert prune_reason(base, replace_knobs(layout, 4096, 512)) is None
    kept = {c.candidate: c.pruned for c in consider(base, 8, ["fp8"], ["fp8"]) if c.candidate.tp == 1
            and c.candidate.dp == 8}
    assert kept == {replace_knobs(layout, 4096, 512): None}

    fixed = {**base, "scheduler": {"policy": "chunked", "max_num_seqs": 1024}}
    only_tokens = {c.candidate: c.pruned for c in consider(fixed, 8, ["fp8"], ["fp8"]) if c.candidate.tp == 1
                   and c.candidate.dp == 8}
    # 4,096 tokens leave KV for 592 tokens, short of one 2,048-token request; 2,048 leave enough
    assert prune_reason(fixed, replace_knobs(layout, 4096, 1024)).startswith("memory: the KV cache holds")
    assert only_tokens == {replace(layout, max_batched_tokens=2048, max_num_seqs=1024): None}

    both = {**base, "scheduler": {"policy": "chunked", "max_num_seqs": 1024, "max_batched_tokens": 8192}}
    (pruned,) = [c for c in consider(both, 8, ["fp8"], ["fp8"]) if c.candidate.tp == 1 and c.candidate.dp == 8]
    assert pruned.candidate == layout and pruned.pruned.startswith("memory: activations")


def replace_knobs(candidate, tokens, seqs):
    return replace(candidate, max_batched_tokens=tokens, max_num_seqs=seqs)


def test_goodput_skips_layouts_whose_quickest_round_is_slower_than_the_tpot_threshold(tmp_path, capsys):
    """A request's TPOT is the mean of its gaps, each at least one decode round: Llama-3-8B's round is ~6.5 ms
    on one H100 and ~4.1 ms on two (TP2), so under tpot=5 ms the TP1 layouts cannot have a good request and are
    pruned with that reason, while TP2 is simulated; runs of a pruned layout confirm it scores nothing."""
    advice, table = _advise(tmp_path, capsys, "--slo", "tpot=0.005", "--jobs", "1")
    pruned = table[table["reason"].fillna("").str.startswith("bound: no batch meets the SLO's time per output")]
    assert set(zip(pruned["tp"], pruned["pp"], pruned["dp"])) == {(1, 1, 2), (1, 2, 1)}
    assert (advice["best"]["tp"], advice["best"]["pp"]) == (2, 1)
    for clients in (1, 4):
        data = scenario_dict(model="llama-3-8b", cluster="h100-nvlink-node", parallel={"tp": 1, "pp": 1, "dp": 2},
                             engine="vllm", slo={"tpot": 0.005},
                             scheduler={"policy": "chunked", "max_num_seqs": 16})
        data["workload"] = {"num_requests": 3 * clients, "concurrency": clients, "prompt_tokens": 128,
                            "output_tokens": 64}
        assert simulate(scenario_from_dict(data)).summary["goodput_requests_per_s"] == 0


def test_goodput_that_is_nothing_at_every_load_is_ranked_not_refused(tmp_path, capsys):
    """No request can meet a 0.1 ms TTFT: every load's goodput is 0, the best of the grid is one client, and the
    search's refinement below it has nothing to try (it once asked for zero clients, refusing the layout)."""
    advice, table = _advise(tmp_path, capsys, "--slo", "ttft=0.0001", "--jobs", "1")
    assert (table["status"] != "failed").all()
    evaluated = table[table["status"] == "evaluated"]
    assert len(evaluated) >= 1 and (evaluated["goodput_per_gpu"] == 0).all()
