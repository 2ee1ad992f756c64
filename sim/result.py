"""A run's outcome as flat tables, and the summary computed from them (and from nothing else).

`requests` has one row per request; the summary's latency statistics are numpy's linear-interpolation
percentiles of its columns, so anyone can recompute them from `requests.csv`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from splitsim.sim.recorder import CATEGORIES, Recorder

REQUEST_COLUMNS = ["request_id", "arrival_s", "first_token_s", "finish_s", "prompt_tokens",
                   "output_tokens", "ttft_s", "tpot_s", "e2e_s"]
INTERVAL_COLUMNS = ["gpu", "start_s", "end_s", "category"]


def latency_stats(values: pd.Series) -> dict[str, float | None]:
    """mean, p50, p90, p99 of the defined values (TPOT is undefined for one-token outputs)."""
    data = values.dropna().to_numpy(dtype=float)
    if data.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return {"mean": float(data.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def requests_frame(ids: np.ndarray, arrival: np.ndarray, first_token: np.ndarray, finish: np.ndarray,
                   prompt: np.ndarray, output: np.ndarray) -> pd.DataFrame:
    ttft = first_token - arrival
    e2e = finish - arrival
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(output > 1, (e2e - ttft) / (output - 1), np.nan)
    return pd.DataFrame({
        "request_id": ids, "arrival_s": arrival, "first_token_s": first_token, "finish_s": finish,
        "prompt_tokens": prompt, "output_tokens": output, "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e,
    })


def gpu_time_totals(recorder: Recorder, tp: int, sim_time_s: float) -> dict[str, float]:
    """Seconds per category summed over the layout's GPUs: busy time as recorded, bubble the rest of
    the time a replica had a batch in flight, idle the time it had none."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for replica, stages in enumerate(recorder.busy_s):
        inflight = recorder.inflight_s[replica]
        for compute, tp_comm, pp_comm in stages:
            totals["compute"] += tp * compute
            totals["tp_comm"] += tp * tp_comm
            totals["pp_comm"] += tp * pp_comm
            totals["bubble"] += tp * max(0.0, inflight - compute - tp_comm - pp_comm)
            totals["idle"] += tp * max(0.0, sim_time_s - inflight)
    return totals


@dataclass
class Result:
    """What `simulate` returns: tables, the summary, and what the outputs need to be drawn."""

    scenario_name: str
    summary: dict[str, Any]
    requests: pd.DataFrame
    gpu_intervals: pd.DataFrame
    trace_events: list[dict[str, Any]]
    window: tuple[float, float]  # [start, end) of simulated time kept in gpu_intervals and the trace
    meta: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The summary flattened to one level (`tpot_s.p99`, `gpu_time_fraction.bubble`, `parallel.tp`…),
        so a sweep becomes a DataFrame with `pd.DataFrame([r.row() for r in results])`."""
        flat: dict[str, Any] = {"scenario": self.scenario_name}
        for key, value in self.summary.items():
            if isinstance(value, dict):
                flat.update({f"{key}.{inner}": v for inner, v in value.items()})
            else:
                flat[key] = value
        return flat


def summarize(requests: pd.DataFrame, totals: dict[str, float], parallel: dict[str, int],
              weights_bytes_per_gpu: float, kv_cache_tokens: int) -> dict[str, Any]:
    # Throughput is output tokens over the time to the last finish: under a steady arrival rate it
    # follows the rate; with everything at t=0 (rate 0) it measures what the layout sustains.
    sim_time = float(requests["finish_s"].max())
    grand = sum(totals.values())
    return {
        "num_requests": len(requests),
        "sim_time_s": sim_time,
        "throughput_tokens_per_s": float(requests["output_tokens"].sum()) / sim_time,
        "requests_per_s": len(requests) / sim_time,
        "ttft_s": latency_stats(requests["ttft_s"]),
        "tpot_s": latency_stats(requests["tpot_s"]),
        "e2e_s": latency_stats(requests["e2e_s"]),
        "gpu_time_fraction": {k: (v / grand if grand else 0.0) for k, v in totals.items()},
        "parallel": parallel,
        "weights_bytes_per_gpu": weights_bytes_per_gpu,
        "kv_cache_tokens_per_replica": kv_cache_tokens,
    }
