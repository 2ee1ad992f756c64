"""The engine against queueing theory: Lindley's recursion, M/D/1 (Pollaczek–Khinchine), inter-token
latency versus TPOT, and the steady-state window of an open-loop run. Every expected value is computed
here, from theory or from the run's own arrival column, never from the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

# One replica serving one request at a time, every request alike: a single deterministic server.
SINGLE_SERVER = {"scheduler": {"max_num_seqs": 1, "policy": "prefill_first", "max_batched_tokens": 8192},
                 "memory": {"kv_allocation": "reserve"}}
PROMPT = 512


def single_server(run, num_requests: int, rate: float, seed: int = 0):
    return run(trace_window_s=0.0, sim={"granularity": "stage", "seed": seed}, **SINGLE_SERVER,
               workload={"num_requests": num_requests, "rate": rate, "prompt_tokens": PROMPT, "output_tokens": 1})


def service_time(run) -> float:
    """S: the TTFT of a lone request (one prefill of PROMPT tokens sampling one token), which finds the
    system empty, so nothing of it is queueing."""
    rows = single_server(run, 1, 1.0).requests
    assert rows["queue_s"].iloc[0] == 0.0
    return float(rows["ttft_s"].iloc[0])


def lindley(arrival: np.ndarray, service_s: float) -> np.ndarray:
    """Waits in a FIFO single-server queue: W_1 = 0, W_{n+1} = max(0, W_n + S − (A_{n+1} − A_n))."""
    wait = np.zeros(len(arrival))
    for n in range(1, len(arrival)):
        wait[n] = max(0.0, wait[n - 1] + service_s - (arrival[n] - arrival[n - 1]))
    return wait


def test_waits_follow_lindleys_recursion_on_the_runs_own_arrivals(run):
    """Every wait (queue_s) equals Lindley's recursion on the run's arrivals, and TTFT = wait + S.

    Tolerance: relative 1e-9, absolute 1e-9·S for waits near zero. The engine and the recursion add the
    same float64 numbers in a different order (the engine's clock advances by `arrival − now` timeouts), so
    they differ by a few ulps of the absolute time (~1e-14 s here), far below 1e-9·S ≈ 1.5e-11 s; a wrong
    service time, order or admission would be off by a fraction of S (1e-2 s)."""
    service = service_time(run)
    rows = single_server(run, 2000, 0.8 / service).requests  # ρ = 0.8: idle periods and long queues
    arrival, wait = rows["arrival_s"].to_numpy(), rows["queue_s"].to_numpy()
    assert np.all(np.diff(arrival) > 0)
    expected = lindley(arrival, service)
    assert wait == pytest.approx(expected, rel=1e-9, abs=1e-9 * service)
    assert rows["ttft_s"].to_numpy() == pytest.approx(wait + service, rel=1e-9, abs=1e-9 * service)
    # Both branches of the max are exercised: requests that find the server idle, and ones that queue.
    assert 0.1 < np.mean(expected == 0.0) < 0.4  # P(W = 0) = 1 − ρ = 0.2 for M/D/1
    assert np.max(expected) > 5 * service


@pytest.mark.parametrize("rho", [0.5, 0.7])
def test_mean_wait_is_pollaczek_khinchine_for_deterministic_service(run, rho):
    """M/D/1: Poisson arrivals at λ = ρ/S, deterministic service S, so Wq = ρS / (2(1 − ρ)).

    The estimate is the mean of 38,000 waits after a 2,000-request warm-up (the run starts empty, which
    biases early waits down); the queue forgets its state within ~S/(1 − √ρ)² ≈ 40 services at ρ = 0.7,
    so 20 batches of 1,900 requests have nearly independent means, and the Student-t 99 % half-width of
    their mean (19 degrees of freedom) is the tolerance. The half-width is asserted below 15 % of Wq
    (measured: 5 % at ρ = 0.5, 9 % at ρ = 0.7), so a service time or queue discipline off by that much fails."""
    service = service_time(run)
    rows = single_server(run, 40_000, rho / service).requests
    assert rows["ttft_s"].to_numpy() == pytest.approx(rows["queue_s"].to_numpy() + service, rel=1e-9)
    waits = rows["queue_s"].to_numpy()[2000:]
    batch_means = waits.reshape(20, -1).mean(axis=1)
    half_width = stats.t.ppf(0.995, df=19) * batch_means.std(ddof=1) / math.sqrt(20)
    theory = rho * service / (2 * (1 - rho))
    assert half_width < 0.15 * theory
    assert abs(waits.mean() - theory) < half_width


CHUNKED_MIX = {
    "scheduler": {"policy": "chunked", "max_num_seqs": 64, "max_batched_tokens": 512},
    "workload": {"num_requests": 400, "rate": 2.0, "prompt_tokens": {"dist": "uniform", "low": 500, "high": 4000},
                 "output_tokens": {"dist": "uniform", "low": 16, "high": 112}},
}


def test_itl_keeps_the_stalls_that_tpot_averages_away(run):
    """Chunked prefill with a 512-token budget: while a 500..4000-token prompt is chunked in (a new one
    arrives every 0.5 s on average and takes 1..8 steps), every decode shares its step with a 512-token
    chunk and that gap is ~2x a plain decode step. TPOT = (e2e − TTFT)/(out − 1) averages a request's
    gaps, diluting its few stalls among many plain steps; ITL keeps every gap, so the stalls, ~8 % of all
    gaps here, set ITL's p99, above any request's average.

    ITL percentiles come from a log histogram whose bins are `percentile_resolution` (0.9 %) wide, so the
    ITL p99 must exceed TPOT's p99 by more than that to be above it for certain (measured: 1.5x).
    ITL's mean, though, is exact (running sums), and a request's out − 1 gaps telescope to e2e − TTFT, so
    it equals the token-weighted mean of TPOT, Σ(e2e − TTFT) / Σ(out − 1): an identity, relative 1e-9
    (float summation of ~26,000 gaps). Outputs of varied length make the token weighting matter."""
    result = run(trace_window_s=0.0, **CHUNKED_MIX)
    summary, rows = result.summary, result.requests
    itl, tpot = summary["itl_s"], summary["tpot_s"]
    assert itl["p99"] > tpot["p99"] * (1 + itl["percentile_resolution"])
    # A request's TPOT is the mean of its gaps, so it can never exceed its own largest gap.
    many = rows[rows["output_tokens"] > 1]
    assert (many["tpot_s"] <= many["itl_max_s"] * (1 + 1e-12)).all()
    token_weighted = (many["e2e_s"] - many["ttft_s"]).sum() / (many["output_tokens"] - 1).sum()
    assert itl["mean"] == pytest.approx(token_weighted, rel=1e-9)
    assert summary["preemptions"] == 0  # not needed by the identity, but the regime described above


def test_steady_state_rate_of_an_open_loop_below_capacity_is_the_arrival_rate(run):
    """Poisson arrivals at 8 req/s, 500-token prompts and 100-token outputs on one H100: far below capacity
    (≤ ~20 requests ever run together), so requests leave at the rate they arrive.

    The steady window holds n ≈ 3,990 finishes; their count (or, with the window's ends tied to arrivals,
    the window's length for a fixed count) is Poisson-like with relative standard deviation 1/√n ≈ 1.6 %.
    Tolerance: 3/√n ≈ 4.7 % (measured: 0.13 % off at seed 0, ≤ 0.5 % at seeds 0..3)."""
    rate, output = 8.0, 100
    result = run(trace_window_s=0.0, workload={"num_requests": 4000, "rate": rate, "prompt_tokens": 500,
                                                "output_tokens": output})
    summary, rows = result.summary, result.requests
    steady = summary["steady_state"]
    assert steady is not None
    start, end = steady["start_s"], steady["end_s"]
    assert rows["arrival_s"].min() <= start < end <= rows["finish_s"].max()
    finished = steady["requests_per_s"] * (end - start)
    assert finished > 0.95 * len(rows)  # the window is most of the run: ramp-up and drain are short
    assert steady["requests_per_s"] == pytest.approx(rate, rel=3 / math.sqrt(finished))
    # Tokens out in the window: `output` per finished request, give or take the partly generated outputs
    # of the requests running at either end (fewer than peak_running_seqs each).
    tokens = steady["output_throughput_tokens_per_s"] * (end - start)
    assert abs(tokens - output * finished) <= output * summary["peak_running_seqs"][0]
    for metric in ("ttft_s", "tpot_s"):
        values = steady[metric]
        assert all(values[key] is not None and math.isfinite(values[key]) for key in values)
        assert 0 < values["p50"] <= values["p90"] <= values["p99"]


def test_steady_latencies_describe_the_requests_the_steady_rate_counts(run):
    """A burst of 256 equal requests, 64 at a time: the waves finish together, and the window starts at
    the instant the first wave finishes. The steady rate counts end.finished − start.finished requests;
    the steady latency statistics should describe those same requests, not the first (warm-up) wave too.
    Counts are exact; means agree to rel 1e-12 (only the summation order differs).
    Before the fix: 192 requests finished in [start, end], the rate counted 128, and the steady TTFT mean
    is 0.83 s with the first wave against 1.13 s without it."""
    result = run(trace_window_s=0.0, scheduler={"max_num_seqs": 64},
                 workload={"num_requests": 256, "rate": 0, "prompt_tokens": 256, "output_tokens": 32})
    steady, rows = result.summary["steady_state"], result.requests
    start, end = steady["start_s"], steady["end_s"]
    counted = round(steady["requests_per_s"] * (end - start))
    closed = rows[(rows["finish_s"] >= start) & (rows["finish_s"] <= end)]
    half_open = rows[(rows["finish_s"] > start) & (rows["finish_s"] <= end)]
    assert len(closed) != len(half_open)  # a wave finishes at the start instant: the boundary matters
    # The rate's population, whichever convention a fix picks: the finishes it counts.
    (population,) = [frame for frame in (closed, half_open) if len(frame) == counted]
    for metric in ("ttft_s", "tpot_s"):
        assert steady[metric]["mean"] == pytest.approx(population[metric].mean(), rel=1e-12)


def test_steady_throughput_does_not_depend_on_the_length_of_a_burst():
    """Bursts of 2,000, 5,000 and 20,000 chat-like requests on the shipped H100 scenario (TP8): whole-run
    throughput grows with the burst (ramp-up and drain weigh less), while the steady-state window — a rule
    about the system's state, docs/metrics.md — gives the same rate within 5 %."""
    from helpers import SCENARIOS
    from splitsim import load_scenario, simulate

    whole, steady = [], []
    for n in (2000, 5000, 20000):
        s = simulate(load_scenario(SCENARIOS / "h100-nvlink-70b.yaml", ["workload.rate=inf",
                                                                          f"workload.num_requests={n}"]),
                     trace_window_s=0.0).summary
        assert s["scenario"]["workload"]["kind"] == "burst" and "rate" not in s["scenario"]["workload"]
        whole.append(s["throughput_tokens_per_s"])
        steady.append(s["steady_state"]["output_throughput_tokens_per_s"])
    spread = lambda values: (max(values) - min(values)) / max(values)  # noqa: E731
    assert spread(steady) < 0.05
    assert spread(whole) > spread(steady)
    assert whole == sorted(whole)  # a longer burst amortises its ramp-up and drain
