"""The public API the CLI, notebooks and tests share: one Scenario in, one Result out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from splitsim.scenario import Scenario
from splitsim.sim.engine import Engine
from splitsim.sim.plan import build_plan
from splitsim.sim.records import RequestLog
from splitsim.sim.result import Result, gpu_time_totals, requests_frame, summarize
from splitsim.sim.scheduler import Request
from splitsim.sim.timeline import gpu_intervals, trace_events
from splitsim.sim.workload import RequestStream, arrival_times, draw_lengths

DEFAULT_TRACE_WINDOW_S = 2.0


def make_requests(scenario: Scenario) -> RequestStream:
    """The run's requests, drawn from one generator seeded by `sim.seed`."""
    wl = scenario.workload
    rng = np.random.default_rng(scenario.sim.seed)
    arrivals = arrival_times(wl.rate, wl.num_requests, rng)
    prompts = draw_lengths(wl.prompt_tokens, rng, wl.num_requests)
    outputs = draw_lengths(wl.output_tokens, rng, wl.num_requests)
    return RequestStream(arrivals, prompts, outputs)


def simulate(scenario: Scenario, *, trace_window_s: float = DEFAULT_TRACE_WINDOW_S, trace_start_s: float = 0.0,
             on_finish: Callable[[Request], None] | None = None) -> Result:
    """Run `scenario` and return its tables and summary; raises `ScenarioError` on bad input.

    Intervals and trace events are kept for the window [trace_start_s, trace_start_s + trace_window_s).
    """
    plan = build_plan(scenario)
    log = RequestLog()
    engine = Engine(plan, make_requests(scenario), (trace_start_s, trace_start_s + trace_window_s),
                    on_finish=on_finish, sink=log)
    records = engine.run()
    sim_time = records.sim_time_s
    c = log.columns()
    frame = requests_frame(c["request_id"], c["arrival_s"], c["first_token_s"], c["finish_s"],
                           c["prompt_tokens"], c["output_tokens"])
    totals = gpu_time_totals(records.recorder, plan.tp, sim_time)
    summary = summarize(frame, totals, {"tp": plan.tp, "pp": plan.pp, "dp": plan.dp},
                        plan.weights_bytes_per_gpu, plan.kv_cache_tokens)
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
              "granularity": plan.granularity, "events": records.events},
    )
