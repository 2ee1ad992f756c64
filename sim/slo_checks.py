"""Whether a run meets its service-level objectives (`splitsim.slo` says what they are): per request for
goodput, per percentile for the run."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from splitsim.slo import Metric, Slo


class PercentileCheck(NamedTuple):
    key: str
    metric: Metric
    percentile: float
    limit_s: float
    value_s: float | None  # None: the run has no such values (e.g. TPOT with one-token outputs only)
    met: bool



def goodput(slo: Slo, ttft_s: np.ndarray, tpot_s: np.ndarray, e2e_s: np.ndarray, itl_max_s: np.ndarray) -> np.ndarray:
    """Per request (aligned arrays), whether it meets every per-request threshold: value ≤ threshold, as
    vLLM's benchmark counts. A NaN TPOT or largest inter-token gap (a one-token output has neither) meets
    its threshold, as vLLM's benchmark takes TPOT = 0 there; a NaN TTFT or e2e (never finished) fails."""
    columns = {"ttft": ttft_s, "tpot": tpot_s, "e2e": e2e_s, "itl": itl_max_s}
    good = np.ones(np.shape(ttft_s), dtype=bool)
    for metric, limit_s in slo.thresholds_s.items():
        values = np.asarray(columns[metric], dtype=float)
        meets = values <= limit_s
        if metric in ("tpot", "itl"):
            meets |= np.isnan(values)
        good &= meets
    return good


def evaluate(slo: Slo, percentile: Callable[[Metric, float], float | None]) -> list[PercentileCheck]:
    """Each percentile constraint against `percentile(metric, q)` (q in 0–100, e.g. a histogram's or
    numpy's). A metric with no values (None) meets it, as a missing TPOT meets its per-request threshold."""
    checks = []
    for limit in slo.percentiles:
        value = percentile(limit.metric, limit.percentile)
        met = value is None or value <= limit.limit_s
        checks.append(PercentileCheck(limit.key, limit.metric, limit.percentile, limit.limit_s, value, met))
    return checks
