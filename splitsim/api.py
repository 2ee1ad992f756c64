"""The public API the CLI, notebooks and tests share: one Scenario in, one Result out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from splitsim.scenario import Scenario
from splitsim.sim.engine import Engine
from splitsim.sim.plan import build_plan
from splitsim.sim.result import Result, gpu_time_totals, requests_frame, summarize
from splitsim.sim.scheduler import Request
from splitsim.sim.timeline import gpu_intervals, trace_events
from splitsim.sim.workload import arrival_times, draw_lengths

DEFAULT_TRACE_WINDOW_S = 2.0


def make_requests(scenario: Scenario) -> list[Request]:
    """The run's requests, drawn from one generator seeded by `sim.seed`."""
    wl = scenario.workload
    rng = np.random.default_rng(scenario.sim.seed)
    arrivals = arrival_times(wl.rate, wl.num_requests, rng)
    prompts = draw_lengths(wl.prompt_tokens, rng, wl.num_requests)
    outputs = draw_lengths(wl.output_tokens, rng, wl.num_requests)
    return [Request(i, float(a), int(p), int(o)) for i, (a, p, o) in enumerate(zip(arrivals, prompts, outputs))]


def simulate(scenario: Scenario, *, trace_window_s: float = DEFAULT_TRACE_WINDOW_S, trace_start_s: float = 0.0,
             on_finish: Callable[[Request], None] | None = None) -> Result:
    """Run `scenario` and return its tables and summary; raises `ScenarioError` on bad input.

    Intervals and trace events are kept for the window [trace_start_s, trace_start_s + trace_window_s).
    """
    plan = build_plan(scenario)
    requests = make_requests(scenario)
    engine = Engine(plan, requests, (trace_start_s, trace_start_s + trace_window_s), on_finish=on_finish)
    sim_time = engine.run()
    frame = requests_frame(
        np.array([r.id for r in requests]), np.array([r.arrival_s for r in requests]),
        np.array([r.first_token_s for r in requests]), np.array([r.finish_s for r in requests]),
        np.array([r.prompt for r in requests]), np.array([r.output for r in requests]),
    )
    totals = gpu_time_totals(engine.recorder, plan.tp, sim_time)
    summary = summarize(frame, totals, {"tp": plan.tp, "pp": plan.pp, "dp": plan.dp},
                        plan.weights_bytes_per_gpu, plan.kv_cache_tokens)
    start = min(trace_start_s, sim_time)
    end = min(trace_start_s + trace_window_s, sim_time)
    return Result(
        scenario_name=scenario.name,
        summary=summary,
        requests=frame,
        gpu_intervals=gpu_intervals(plan, engine.recorder, start, end),
        trace_events=trace_events(plan, engine.recorder),
        window=(start, end),
        meta={"model": plan.model.name, "cluster": plan.cluster.name, "gpu": plan.cluster.gpu.name,
              "granularity": scenario.sim.granularity, "events": engine.events_scheduled},
    )
