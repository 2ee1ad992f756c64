"""The public API the CLI, notebooks and tests share: one Scenario in, one Result out."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from splitsim import __version__
from splitsim.errors import ScenarioError
from splitsim.lengths import Replay
from splitsim.scenario import SCHEMA_VERSION, Scenario
from splitsim.sim.engine import Engine
from splitsim.sim.plan import Plan, build_plan
from splitsim.sim.records import RequestLog
from splitsim.sim.result import Result, gpu_time_totals, requests_frame, summarize
from splitsim.sim.scheduler import Request
from splitsim.sim.timeline import gpu_intervals, trace_events
from splitsim.sim.uncertainty import uncertainty
from splitsim.sim.workload import RequestStream, stream_from_rows, synthetic_stream, trace_stream

DEFAULT_TRACE_WINDOW_S = 2.0


def make_requests(scenario: Scenario, plan: Plan, requests: Any = None) -> RequestStream:
    """The run's requests: `requests` rows if given, else what `scenario.workload` describes."""
    wl, context = scenario.workload, plan.model.max_position_embeddings
    if requests is not None:
        return stream_from_rows(requests, context, wl.overlong)
    if wl.trace is not None:
        return trace_stream(Path(wl.trace), wl.num_requests, wl.time_scale or 1.0, context, wl.overlong)
    assert wl.num_requests and wl.prompt_tokens and wl.output_tokens  # the schema requires them without a trace
    return synthetic_stream(wl.prompt_tokens, wl.output_tokens, wl.num_requests, scenario.sim.seed,
                            rate=wl.rate, burstiness=wl.burstiness, concurrency=wl.concurrency)


def describe(scenario: Scenario, plan: Plan, stream: RequestStream, given_rows: bool) -> dict[str, Any]:
    """The resolved inputs, for summary.json: what was simulated, with every default decided."""
    wl = scenario.workload
    workload: dict[str, Any] = {"kind": "rows" if given_rows else wl.kind, "num_requests": stream.num_requests}
    if not given_rows:
        match wl.kind:
            case "rate":
                workload |= {"rate": wl.rate, "burstiness": wl.burstiness or 1.0}
            case "concurrency":
                workload["concurrency"] = wl.concurrency
            case "trace":  # the file by name and content: summary.json holds no machine's paths
                assert wl.trace is not None
                workload |= {"trace": Path(wl.trace).name, "trace_sha256": _sha256(wl.trace),
                             "time_scale": wl.time_scale or 1.0}
        if wl.kind != "trace":
            workload |= {"prompt_tokens": _lengths(wl.prompt_tokens), "output_tokens": _lengths(wl.output_tokens)}
    if wl.kind == "trace" or given_rows:
        workload |= {"overlong": wl.overlong} | stream.overlong
    pool = plan.pool  # an aggregated deployment's
    model, cluster, sched, sharding = plan.model, plan.cluster, pool.scheduler, pool.sharding
    precision = {"weights": sharding.weights, "kv_cache": sharding.kv_cache, "compute": sharding.compute}
    if sharding.expert_weights is not None:  # the checkpoint quantises its experts alone (gpt-oss: MXFP4)
        precision["experts"] = sharding.expert_weights
    if sharding.weights != model.default_weight_dtype:  # precision.weights overrides what the checkpoint holds
        precision["checkpoint_weights"] = model.default_weight_dtype
    if model.expert_weight_dtype is not None and sharding.expert_weights is None:  # ... its experts' format too
        precision["checkpoint_experts"] = model.expert_weight_dtype
    described = {
        "schema_version": SCHEMA_VERSION,
        "name": scenario.name,
        "model": {"name": model.name, "architecture": model.architecture, "layers": model.num_layers,
                  "hidden_size": model.hidden_size, "max_position_embeddings": model.max_position_embeddings},
        "cluster": cluster.name, "gpu": cluster.gpu.name,
        "layout": {"tp": pool.tp, "pp": pool.pp, "dp": pool.dp, "ep": pool.ep, "order": pool.order},
        "precision": precision,
        "workload": workload,
        "scheduler": {"policy": sched.policy, "max_num_seqs": sched.max_num_seqs,
                      "max_batched_tokens": sched.max_batched_tokens},
        "memory": {"gpu_utilization": pool.gpu_utilization, "block_size": pool.block_size,
                   "kv_allocation": sched.kv_allocation},
        "engine": {"name": pool.engine.name,
                   "allreduce": "custom, NCCL beyond its limits" if pool.engine.custom_allreduce else "nccl",
                   "handoff_tensors": pool.engine.handoff_tensors, "logits_gather": pool.engine.logits_gather,
                   "cuda_graph_max_tokens": len(pool.padded_tokens) - 1 if pool.padded_tokens else None},
        "router": {"policy": plan.router},
        "granularity": plan.granularity, "seed": scenario.sim.seed,
        "hardware_profile": Path(scenario.hardware_profile).name if scenario.hardware_profile else None,
    }
    if model.moe is not None:
        described["moe"] = {"experts": model.moe.num_experts, "top_k": model.moe.top_k,
                            "shared_experts": model.moe.shared_experts, "imbalance": scenario.moe.imbalance,
                            "redundant_experts": scenario.moe.redundant_experts,
                            "attention_data_parallel": pool.attention_dp}
    return described


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_result(requests: Any, summary: dict[str, Any]) -> None:
    """The last line of defence: figures that cannot be real mean an input that is out of range somewhere.
    Every latency must be positive and every summary figure finite; the error names the first that is not."""
    for column in ("ttft_s", "e2e_s"):
        values = requests[column].to_numpy()
        bad = ~(values > 0) | ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            request_id, value = int(requests["request_id"].iloc[i]), float(values[i])
            raise ScenarioError(f"result: request {request_id} has {column} = {value!r} (a latency must be "
                                "positive and finite: some cost in the inputs is out of range)")
    for key, value in _leaves(summary):
        if isinstance(value, float) and not math.isfinite(value):
            raise ScenarioError(f"result: summary {key} = {value!r} is not finite (some figure in the inputs is "
                                "out of range)")


def _leaves(tree: Any, prefix: str = "") -> Any:
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _leaves(value, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), tree


def _lengths(spec: Any) -> Any:
    if isinstance(spec, int):
        return spec
    return spec.described() if isinstance(spec, Replay) else spec.model_dump()


def simulate(scenario: Scenario, *, requests: Any = None, trace_window_s: float = DEFAULT_TRACE_WINDOW_S,
             trace_start_s: float = 0.0, on_finish: Callable[[Request], None] | None = None,
             on_tick: Callable[[float], None] | None = None, error_bars: bool = True) -> Result:
    """Run `scenario` and return its tables and summary; raises `ScenarioError` on bad input.

    `requests` (a DataFrame or rows with arrival_s, prompt_tokens, output_tokens) replaces the scenario's
    workload. `on_finish(request)` follows finished requests, `on_tick(simulated_s)` the clock every few
    thousand batches (a progress bar moves during one long request too). Intervals and trace events are
    kept for the window [trace_start_s, trace_start_s + trace_window_s). `error_bars` adds summary.json's
    `uncertainty` (sim/uncertainty.py; the advisor's search leaves it out).
    """
    plan = build_plan(scenario)
    stream = make_requests(scenario, plan, requests)
    plan.check_requests(stream)
    log = RequestLog()
    engine = Engine(plan, stream, (trace_start_s, trace_start_s + trace_window_s), on_finish=on_finish, sink=log,
                    on_tick=on_tick)
    records = engine.run()
    sim_time = records.sim_time_s
    frame = requests_frame(log.take_columns())
    totals = gpu_time_totals(records.recorder, [pool.tp for pool, _ in plan.replicas], sim_time)
    pool = plan.pool  # an aggregated deployment's
    extra = {"parallel": {"tp": pool.tp, "pp": pool.pp, "dp": pool.dp, "ep": pool.ep},
             "weights_bytes_per_gpu": pool.weights_bytes_per_gpu,
             "kv_cache_tokens_per_replica": pool.kv_cache_tokens, "version": __version__}
    summary = summarize(frame, records, totals, scenario.slo, describe(scenario, plan, stream, requests is not None),
                        extra)
    if error_bars and len(frame):
        summary["uncertainty"] = uncertainty(plan, stream, summary)
    check_result(frame, summary)
    start = min(trace_start_s, sim_time)
    end = min(trace_start_s + trace_window_s, sim_time)
    return Result(
        scenario_name=scenario.name,
        summary=summary,
        requests=frame,
        gpu_intervals=gpu_intervals(plan, records.recorder, start, end),
        trace_events=trace_events(plan, records.recorder),
        window=(start, end),
        meta={"model": plan.model.name, "cluster": plan.cluster.name, "gpu": plan.cluster.gpu.name,
              "granularity": plan.granularity, "events": records.events, "fast_forward": records.fast_forward,
              "kv_blocked_batches": records.kv_blocked_batches, "recomputed_tokens": records.recomputed_tokens,
              "max_concurrency": pool.max_concurrency(int((stream.prompt_tokens + stream.output_tokens).max())),
              "longest_request_tokens": int((stream.prompt_tokens + stream.output_tokens).max())},
    )
