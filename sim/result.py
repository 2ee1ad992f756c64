"""A run's outcome as flat tables, and the summary computed from them (and from nothing else).

`requests` has one row per request; the summary's latency statistics are numpy's linear-interpolation
percentiles (and population std) of its columns, so anyone can recompute them from `requests.csv`. Inter-token
latencies are too many to keep: their statistics come from the engine's log-spaced histogram (exact counts,
percentiles within its stated resolution).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from splitsim.sim.metrics import distribution_stats
from splitsim.sim.recorder import CATEGORIES, Recorder
from splitsim.sim.records import Moment, RunRecords
from splitsim.sim.slo_checks import evaluate, goodput
from splitsim.slo import Slo

REQUEST_COLUMNS = ["request_id", "arrival_s", "first_token_s", "finish_s", "prompt_tokens", "output_tokens",
                   "ttft_s", "tpot_s", "e2e_s", "replica", "queue_s", "preemptions", "itl_max_s"]
INTERVAL_COLUMNS = ["gpu", "start_s", "end_s", "category"]


def requests_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per request from the engine's columns; TPOT = (e2e − TTFT)/(output − 1), vLLM's definition,
    undefined (NaN) for one-token outputs; `queue_s` runs from arrival to first being scheduled."""
    arrival, output = columns["arrival_s"], columns["output_tokens"]
    ttft = columns["first_token_s"] - arrival
    e2e = columns["finish_s"] - arrival
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(output > 1, (e2e - ttft) / (output - 1), np.nan)
    return pd.DataFrame({
        "request_id": columns["request_id"], "arrival_s": arrival, "first_token_s": columns["first_token_s"],
        "finish_s": columns["finish_s"], "prompt_tokens": columns["prompt_tokens"], "output_tokens": output,
        "ttft_s": ttft, "tpot_s": tpot, "e2e_s": e2e, "replica": columns["replica"],
        "queue_s": columns["first_scheduled_s"] - arrival, "preemptions": columns["preemptions"],
        "itl_max_s": np.where(output > 1, columns["max_itl_s"], np.nan),
    }, copy=False)


def gpu_time_totals(recorder: Recorder, tp: list[int], sim_time_s: float) -> dict[str, float]:
    """Seconds per category summed over the deployment's GPUs (`tp[r]`: replica r's TP degree): busy time as
    recorded, bubble the rest of the time a replica had a batch in flight, idle the time it had none."""
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for replica, stages in enumerate(recorder.busy_s):
        inflight = recorder.inflight_s[replica]
        ranks = tp[replica]
        for compute, tp_comm, pp_comm, ep_comm in stages:
            totals["compute"] += ranks * compute
            totals["tp_comm"] += ranks * tp_comm
            totals["pp_comm"] += ranks * pp_comm
            totals["ep_comm"] += ranks * ep_comm
            totals["bubble"] += ranks * max(0.0, inflight - compute - tp_comm - pp_comm - ep_comm)
            totals["idle"] += ranks * max(0.0, sim_time_s - inflight)
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
        """The summary flattened (`tpot_s.p99`, `gpu_time_fraction.bubble`, `parallel.tp`…), so runs become a
        DataFrame with `pd.DataFrame([r.row() for r in results])`."""
        return {"scenario": self.scenario_name, **flatten(self.summary)}


def steady_state(requests: pd.DataFrame, start: Moment | None, end: Moment | None) -> dict[str, Any] | None:
    """Rates between the steady-state window's ends (docs/metrics.md) and the latencies of the requests
    that finished inside it, (start, end] as the rates count them; None when the run never settled."""
    if start is None or end is None or end.time_s <= start.time_s:
        return None
    span = end.time_s - start.time_s
    inside = requests[(requests["finish_s"] > start.time_s) & (requests["finish_s"] <= end.time_s)]
    return {
        "start_s": start.time_s, "end_s": end.time_s,
        "requests_per_s": (end.finished - start.finished) / span,
        "output_throughput_tokens_per_s": (end.output_tokens - start.output_tokens) / span,
        "ttft_s": distribution_stats(inside["ttft_s"].to_numpy()),
        "tpot_s": distribution_stats(inside["tpot_s"].to_numpy()),
    }


def summarize(requests: pd.DataFrame, records: RunRecords, totals: dict[str, float], slo: Slo | None,
              described: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """The run in numbers. Every rate divides by the duration from the first arrival to the last finish."""
    first_arrival = float(requests["arrival_s"].min())
    sim_time = float(requests["finish_s"].max())
    duration = sim_time - first_arrival
    rate = (lambda x: x / duration) if duration > 0 else (lambda x: None)  # noqa: E731
    grand = sum(totals.values())
    output_tokens = int(requests["output_tokens"].sum())
    input_tokens = int(requests["prompt_tokens"].sum())
    summary: dict[str, Any] = {
        "num_requests": len(requests),
        "sim_time_s": sim_time,
        "duration_s": duration,
        "throughput_tokens_per_s": rate(output_tokens),
        "input_throughput_tokens_per_s": rate(input_tokens),
        "total_throughput_tokens_per_s": rate(input_tokens + output_tokens),
        "requests_per_s": rate(len(requests)),
        "ttft_s": distribution_stats(requests["ttft_s"].to_numpy()),
        "tpot_s": distribution_stats(requests["tpot_s"].to_numpy()),
        "e2e_s": distribution_stats(requests["e2e_s"].to_numpy()),
        "itl_s": records.itl.stats() | {"percentile_resolution": records.itl.relative_resolution},
        "preemptions": records.preemptions,
        "peak_running_seqs": list(records.peak_running_seqs),
    }
    if slo is not None:
        good = goodput(slo, requests["ttft_s"].to_numpy(), requests["tpot_s"].to_numpy(),
                       requests["e2e_s"].to_numpy(), requests["itl_max_s"].to_numpy())
        columns = {"ttft": requests["ttft_s"], "tpot": requests["tpot_s"], "e2e": requests["e2e_s"]}

        def percentile(metric: str, q: float) -> float | None:
            if metric == "itl":
                return records.itl.percentile(q)
            data = columns[metric].dropna().to_numpy()
            return float(np.percentile(data, q)) if data.size else None

        summary["goodput_requests_per_s"] = rate(int(good.sum()))
        summary["slo"] = {"given": slo.as_dict(), "requests_meeting_thresholds": int(good.sum()),
                          "percentiles": {c.key: {"limit_s": c.limit_s, "value_s": c.value_s, "met": c.met}
                                          for c in evaluate(slo, percentile)}}
    summary["steady_state"] = steady_state(requests, records.steady_start, records.steady_end)
    summary["gpu_time_fraction"] = {k: (v / grand if grand else 0.0) for k, v in totals.items()}
    summary.update(extra)
    summary["scenario"] = described
    return summary


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested summary fields as dotted columns (`ttft_s.p50`); lists as their text."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = " ".join(map(str, value))
        else:
            flat[name] = value
    return flat


def layout_label(parallel: dict) -> str:
    """'TP8 × PP1 × DP1', with ' × EP n' when the experts are spread, and where: over the replicas (attention
    data-parallel) or within each replica's TP group."""
    label = f"TP{parallel['tp']} × PP{parallel['pp']} × DP{parallel['dp']}"
    ep = parallel.get("ep", 1)
    if ep == 1:
        return label
    return label + f" × EP{ep}" + (" (attention-DP)" if parallel["tp"] % ep else "")
