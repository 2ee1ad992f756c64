"""Streaming latency statistics against numpy, and the SLO grammar (YAML and CLI forms), goodput and checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from splitsim.errors import ScenarioError
from splitsim.sim.metrics import HistogramBuffer, LogHistogram, distribution_stats
from splitsim.sim.slo_checks import evaluate, goodput
from splitsim.slo import PercentileLimit, Slo, parse_slo, parse_slo_arg

QS = [0, 0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100]


def _half_bin(hist: LogHistogram) -> float:
    """Largest relative distance from a value to its bin's geometric midpoint."""
    return math.sqrt(1 + hist.relative_resolution) - 1


def test_resolution_is_under_one_percent():
    hist = LogHistogram()
    assert hist.relative_resolution == pytest.approx(10 ** (1 / 256) - 1)
    assert hist.relative_resolution < 0.01
    assert hist.counts.size == 13 * 256 + 2  # 1 ns to 1e4 s, plus underflow and overflow


@pytest.mark.parametrize("sample", ["lognormal", "uniform"])
def test_percentiles_within_resolution_of_numpy(sample):
    rng = np.random.default_rng(7)
    values = rng.lognormal(np.log(0.03), 1.2, 10**6) if sample == "lognormal" else rng.uniform(1e-3, 0.2, 10**6)
    hist = LogHistogram()
    hist.add(values)
    for q in QS:
        exact = np.percentile(values, q)
        assert abs(hist.percentile(q) / exact - 1) <= _half_bin(hist) + 1e-12, q
    assert hist.percentile(0) == values.min() and hist.percentile(100) == values.max()


def test_bin_centre_values_give_numpy_percentiles():
    """Values at bin centres: the histogram sees them exactly, so only interpolation rounding differs."""
    hist = LogHistogram()
    rng = np.random.default_rng(3)
    bins = rng.integers(0, 13 * 256, size=5000)
    values = 10.0 ** (-9 + (bins + 0.5) / 256)
    hist.add(values)
    for q in QS:
        assert hist.percentile(q) == pytest.approx(np.percentile(values, q), rel=1e-9)


def test_counts_are_exact():
    hist = LogHistogram()
    # 10^(-9 + (i + 0.5)/256) is the centre of bin i; counts[0] is underflow, so bin i is counts[i + 1].
    centre = lambda i: 10.0 ** (-9 + (i + 0.5) / 256)  # noqa: E731
    hist.add(np.array([centre(0)] * 3 + [centre(2000)] * 5 + [centre(13 * 256 - 1)] * 2))
    hist.add(np.array([0.0, 0.0, 5e-10, 1e4, 3e5]))
    assert hist.counts.dtype == np.int64
    assert (hist.counts[1], hist.counts[2001], hist.counts[13 * 256]) == (3, 5, 2)
    assert (hist.counts[0], hist.counts[-1]) == (3, 2)  # 0, 0, 0.5 ns under; 1e4 s and 3e5 s over
    assert hist.counts.sum() == hist.count == 15


def test_zeros_land_in_underflow_and_are_reported_exactly():
    hist = LogHistogram()
    hist.add(np.zeros(1000))
    assert hist.counts[0] == 1000
    assert hist.stats() == {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "std": 0.0}
    hist.add(np.full(1000, 0.02))
    assert hist.percentile(0) == 0.0
    assert hist.percentile(25) == 0.0
    assert abs(hist.percentile(75) / 0.02 - 1) <= _half_bin(hist)
    assert hist.mean == pytest.approx(0.01, rel=1e-12)


def test_overflow_reports_the_exact_maximum():
    hist = LogHistogram()
    hist.add(np.array([1.0, 2e4]))
    assert hist.counts[-1] == 1
    assert hist.percentile(100) == 2e4


@pytest.mark.parametrize("bad", [np.nan, -1e-3, np.inf])
def test_rejects_values_that_are_not_durations(bad):
    with pytest.raises(ValueError, match="finite and ≥ 0"):
        LogHistogram().add(np.array([0.1, bad]))


def test_empty_histogram_has_no_statistics():
    hist = LogHistogram()
    hist.add(np.array([]))
    assert hist.stats() == {"mean": None, "p50": None, "p90": None, "p99": None, "std": None}
    with pytest.raises(ValueError, match="between 0 and 100"):
        hist.percentile(101)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_mean_and_std_match_numpy_across_flushes_and_merges(offset):
    """Uneven batches through buffers, histograms merged in a tree: Chan's update keeps mean and std exact,
    also for a narrow spread on a large offset, where sum-of-squares minus squared mean is off by ~5e-7."""
    rng = np.random.default_rng(11)
    parts = [offset + rng.gamma(2.0, 0.01, size=int(n)) for n in rng.integers(1, 200_000, size=12)]
    histograms = []
    for part in parts:
        buffer = HistogramBuffer(LogHistogram())
        cut = len(part) // 3
        for value in part[:cut].tolist():
            buffer.append(value)
            buffer.flush_if_full()
        buffer.append_many(float(part[cut]), 1)
        for value in part[cut + 1:].tolist():
            buffer.append(value)
        histograms.append(buffer.flush())
    while len(histograms) > 1:
        histograms[0].merge(histograms.pop())
        histograms.insert(0, histograms.pop())
    merged, everything = histograms[0], np.concatenate(parts)
    assert merged.count == everything.size == merged.counts.sum()
    assert merged.mean == pytest.approx(np.mean(everything), rel=1e-12, abs=0)
    assert merged.std == pytest.approx(np.std(everything), rel=1e-12, abs=0)
    assert merged.sum == pytest.approx(np.sum(everything), rel=1e-12, abs=0)


def test_merge_refuses_different_bins():
    with pytest.raises(ValueError, match="different bins"):
        LogHistogram().merge(LogHistogram(bins_per_decade=100))


def test_buffer_flushes_when_full_so_memory_stays_bounded():
    """The engine appends a batch's gaps, then calls flush_if_full: the buffer never holds much more than
    FLUSH_EVERY values, and every value reaches the histogram exactly once."""
    buffer = HistogramBuffer(LogHistogram())
    append = buffer.append
    for _ in range(HistogramBuffer.FLUSH_EVERY - 1):
        append(0.01)
    buffer.flush_if_full()
    assert len(buffer) == HistogramBuffer.FLUSH_EVERY - 1 and buffer.histogram.count == 0
    buffer.append_many(0.02, 6)
    buffer.flush_if_full()
    assert len(buffer) == 0 and buffer.histogram.count == HistogramBuffer.FLUSH_EVERY + 5
    assert buffer.histogram.sum == pytest.approx(0.01 * (HistogramBuffer.FLUSH_EVERY - 1) + 0.12, rel=1e-12)


def test_distribution_stats_by_hand():
    stats = distribution_stats(np.array([4.0, np.nan, 1.0, 3.0, 2.0]))
    # Sorted 1..4: linear rank (n-1)q/100 → p50 at 2.5, p90 at 1 + 0.9·3, p99 at 1 + 0.99·3; σ² = 1.25.
    assert stats == pytest.approx({"mean": 2.5, "p50": 2.5, "p90": 3.7, "p99": 3.97, "std": math.sqrt(1.25)})
    assert distribution_stats(np.array([np.nan])) == dict.fromkeys(["mean", "p50", "p90", "p99", "std"])
    assert distribution_stats(np.array([])) == dict.fromkeys(["mean", "p50", "p90", "p99", "std"])


# --- SLO grammar ---------------------------------------------------------------------------------------


def test_yaml_and_cli_forms_agree():
    from_yaml = parse_slo(yaml.safe_load("{ttft: 0.5, tpot: 0.05, ttft_p99: 2, itl_p99.9: 0.1, e2e_p50: 30}"))
    from_cli = parse_slo_arg(" ttft=0.5, tpot = 0.05,ttft_p99=2 ,itl_p99.9=1e-1,e2e_p50=30 ")
    assert from_yaml == from_cli
    assert from_yaml.thresholds_s == {"ttft": 0.5, "tpot": 0.05}
    assert from_yaml.percentiles == (
        PercentileLimit(key="ttft_p99", metric="ttft", percentile=99.0, limit_s=2.0),
        PercentileLimit(key="itl_p99.9", metric="itl", percentile=99.9, limit_s=0.1),
        PercentileLimit(key="e2e_p50", metric="e2e", percentile=50.0, limit_s=30.0),
    )
    assert from_yaml.as_dict() == {"ttft": 0.5, "tpot": 0.05, "ttft_p99": 2.0, "itl_p99.9": 0.1, "e2e_p50": 30.0}


def test_slo_dumps_to_its_mapping_and_back():
    slo = Slo(ttft=1, tpot_p90=0.2)
    assert slo.model_dump() == {"ttft": 1.0, "tpot_p90": 0.2}
    assert Slo.model_validate(slo.model_dump()) == slo
    with pytest.raises(ValueError):
        slo.thresholds_s = {}  # frozen


VALID = "(valid: ttft, tpot, e2e, itl, or one of them with a percentile suffix such as ttft_p99)"


@pytest.mark.parametrize(("mapping", "message"), [
    ({"ttfx": 0.5}, f"slo.ttfx: unknown key {VALID}"),
    ({"ttft_s": 0.5}, f"slo.ttft_s: unknown key {VALID}"),
    ({"ttft_p": 0.5}, f"slo.ttft_p: unknown key {VALID}"),
    ({"tpot": -1}, "slo.tpot = -1: must be a finite number of seconds > 0"),
    ({"tpot": 0}, "slo.tpot = 0: must be a finite number of seconds > 0"),
    ({"e2e": float("inf")}, "slo.e2e = inf: must be a finite number of seconds > 0"),
    ({"itl": True}, "slo.itl = True: must be a finite number of seconds > 0"),
    ({"ttft": "0.5"}, "slo.ttft = '0.5': must be a finite number of seconds > 0"),
    ({"ttft_p101": 2}, "slo.ttft_p101: percentile must be between 0 and 100"),
    ({"ttft_p99": 2, "ttft_p99.0": 3}, "slo.ttft_p99.0: the same constraint as ttft_p99"),
    ({}, f"slo: no constraints {VALID}"),
    ([0.5], "slo = [0.5]: expected a mapping of key: seconds, e.g. {ttft: 0.5, ttft_p99: 2}"),
])
def test_yaml_form_errors_are_one_line(mapping, message):
    with pytest.raises(ScenarioError) as err:
        parse_slo(mapping)
    assert str(err.value) == message
    with pytest.raises(ValueError, match="^1 validation error"):  # the scenario loader's path: a pydantic error
        Slo.model_validate(mapping)


@pytest.mark.parametrize(("text", "message"), [
    ("", "--slo: empty (expected key=seconds, comma-separated, e.g. ttft=0.5,tpot=0.05,ttft_p99=2)"),
    ("ttft", "--slo 'ttft': expected key=seconds, comma-separated, e.g. ttft=0.5,tpot=0.05,ttft_p99=2"),
    ("ttft=0.5,", "--slo 'ttft=0.5,': empty item (expected key=seconds, comma-separated, "
                  "e.g. ttft=0.5,tpot=0.05,ttft_p99=2)"),
    ("ttft=0.5,ttfx=1", f"--slo ttfx=1: unknown key {VALID}"),
    ("tpot=fast", "--slo tpot=fast: must be a finite number of seconds > 0"),
    ("tpot=-0.1", "--slo tpot=-0.1: must be a finite number of seconds > 0"),
    ("itl_p99.9=nan", "--slo itl_p99.9=nan: must be a finite number of seconds > 0"),
    ("ttft_p101=2", "--slo ttft_p101=2: percentile must be between 0 and 100"),
    ("ttft=1, ttft=2", "--slo ttft=2: given twice"),
])
def test_cli_form_errors_are_one_line(text, message):
    with pytest.raises(ScenarioError) as err:
        parse_slo_arg(text)
    assert str(err.value) == message and "\n" not in message


def test_goodput_on_a_hand_made_table():
    slo = parse_slo({"ttft": 1.0, "tpot": 0.1, "e2e": 10.0, "itl": 0.5, "ttft_p99": 0.1})  # p99: not per request
    #                  meets   at limits  slow TTFT  slow TPOT  one token  long gap  unfinished
    ttft = np.array([0.5,     1.0,       1.5,       0.2,       0.3,       0.2,      np.nan])
    tpot = np.array([0.05,    0.1,       0.05,      0.2,       np.nan,    0.05,     np.nan])
    e2e = np.array([5.0,      10.0,      5.0,       5.0,       0.3,       5.0,      np.nan])
    itl_max = np.array([0.2,  0.5,       0.2,       0.2,       np.nan,    0.6,      np.nan])
    expected = [True, True, False, False, True, False, False]
    assert goodput(slo, ttft, tpot, e2e, itl_max).tolist() == expected
    assert goodput(parse_slo({"ttft_p99": 5}), ttft, tpot, e2e, itl_max).tolist() == [True] * 7


def test_evaluate_percentile_constraints():
    slo = parse_slo({"ttft": 9.0, "ttft_p99": 2.0, "tpot_p50": 0.05, "itl_p99.9": 0.1})
    ttft = np.linspace(0.0, 3.0, 101)  # p99 = 2.97
    calls = []

    def percentile(metric, q):
        calls.append((metric, q))
        return {"ttft": float(np.percentile(ttft, q)), "tpot": 0.05, "itl": None}[metric]

    checks = evaluate(slo, percentile)
    assert calls == [("ttft", 99.0), ("tpot", 50.0), ("itl", 99.9)]
    assert [(c.key, c.value_s, c.met) for c in checks] == [
        ("ttft_p99", pytest.approx(2.97), False), ("tpot_p50", 0.05, True), ("itl_p99.9", None, True)]
    assert checks[0]._asdict()["limit_s"] == 2.0
