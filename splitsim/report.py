"""Writing a Result to a folder and printing its summary.

`summary.json` and `requests.csv` depend on the scenario and seed alone (no wall-clock times, paths or
dates), so two runs give identical bytes; wall time and versions go to `run.json`. A result folder is
replaced whole (see `write_outputs`), so no file of an earlier run survives beside a new one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splitsim.csvfile import write_csv
from splitsim.sim.result import Result, layout_label
from splitsim.writing import replace_folder

GIB = 2.0**30


def write_outputs(result: Result, out_dir: Path, run_info: dict[str, Any] | None = None, timeline: bool = True,
                  on_step: Callable[[str], None] | None = None) -> list[Path]:
    """Write the run's files into `out_dir`, replacing it whole (splitsim.writing.replace_folder).
    `on_step(label)` is called after every file and every rename (tests interrupt the writer there)."""
    step = on_step or (lambda label: None)
    names = replace_folder(Path(out_dir), lambda staging: _write_files(result, staging, run_info, timeline, step),
                           step)
    return [Path(out_dir) / name for name in names]


def _write_files(result: Result, folder: Path, run_info: dict[str, Any] | None, timeline: bool,
                 step: Callable[[str], None]) -> list[str]:
    names = []

    def done(name: str) -> None:
        names.append(name)
        step(name)

    summary = json.dumps(result.summary, indent=2, allow_nan=False)  # strict JSON: no NaN/Infinity
    (folder / "summary.json").write_text(summary + "\n")
    done("summary.json")
    write_csv(result.requests, folder / "requests.csv")
    done("requests.csv")
    write_csv(result.gpu_intervals, folder / "gpus.csv")
    done("gpus.csv")
    (folder / "trace.json").write_text(json.dumps({"traceEvents": result.trace_events, "displayTimeUnit": "ms"}))
    done("trace.json")
    if timeline and result.window[1] > result.window[0]:
        from splitsim.plots import save_timeline

        save_timeline(result, folder / "timeline.png")
        done("timeline.png")
    if run_info is not None:
        (folder / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
        done("run.json")
    return names


def _ms(stats: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {v * 1e3:9.2f}" if v is not None else f"{k}       n/a" for k, v in stats.items()
                     if k in ("mean", "p50", "p90", "p99", "std"))


def _rate(value: float | None, unit: str) -> str:
    return "n/a" if value is None else f"{value:.1f} {unit}"


def _short(x: float) -> str:
    """Three significant digits, never in exponent form: 0.0123, 12.3, 30,960."""
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def format_summary(result: Result) -> str:
    s = result.summary
    par, meta = s["parallel"], result.meta
    scenario = s["scenario"]
    fractions = "  ".join(f"{k} {v:6.1%}" for k, v in s["gpu_time_fraction"].items())
    lines = [
        f"{result.scenario_name}: {meta.get('model')} on {meta.get('cluster')}, "
        f"{layout_label(par)} ({meta.get('granularity')} granularity)",
        f"  KV cache        {s['kv_cache_tokens_per_replica']} tokens/replica; maximum concurrency for "
        f"{meta.get('longest_request_tokens')} tokens per request: {meta.get('max_concurrency', 0):.2f}x",
        f"  requests        {s['num_requests']} in {s['duration_s']:.3f} s from first arrival to last finish "
        f"({_rate(s['requests_per_s'], 'req/s')})",
        f"  throughput      output {_rate(s['throughput_tokens_per_s'], 'tok/s')}, "
        f"input {_rate(s['input_throughput_tokens_per_s'], 'tok/s')}, "
        f"total {_rate(s['total_throughput_tokens_per_s'], 'tok/s')}",
    ]
    steady = s.get("steady_state")
    if steady is not None:
        lines.append(f"  steady state    {steady['start_s']:.1f}–{steady['end_s']:.1f} s: "
                     f"{steady['requests_per_s']:.3f} req/s, {steady['output_throughput_tokens_per_s']:.1f} output "
                     "tok/s")
    else:
        lines.append("  steady state    none: the run never settled between ramp-up and drain")
    lines += [
        f"  TTFT (ms)       {_ms(s['ttft_s'])}",
        f"  TPOT (ms)       {_ms(s['tpot_s'])}",
        f"  ITL  (ms)       {_ms(s['itl_s'])}",
        f"  E2E  (ms)       {_ms(s['e2e_s'])}",
    ]
    bars = s.get("uncertainty")
    if bars is not None:
        parts = [f"{label} {_short(pair[0] * scale)}–{_short(pair[1] * scale)} {unit}"
                 for label, pair, scale, unit in (("TTFT p50", bars["ttft_p50"], 1e3, "ms"),
                                                  ("TPOT p50", bars["tpot_p50"], 1e3, "ms"),
                                                  ("output", bars["throughput"], 1.0, "tok/s")) if pair is not None]
        unpriced = f"; no residuals for {', '.join(bars['no_residuals'])}" if bars["no_residuals"] else ""
        assumed = f"; assumed figures for {', '.join(bars['assumed'])}" if bars["assumed"] else ""
        lines.append(f"  {bars['level']:.0%} interval    {', '.join(parts)} "
                     f"(held-out kernel errors{unpriced}{assumed})")
    if "goodput_requests_per_s" in s:
        slo = s["slo"]
        checks = "".join(f"; {key} {'met' if c['met'] else 'MISSED'}" for key, c in slo["percentiles"].items())
        lines.append(f"  goodput         {_rate(s['goodput_requests_per_s'], 'req/s')} "
                     f"({slo['requests_meeting_thresholds']} of {s['num_requests']} requests meet "
                     f"{', '.join(f'{k}={v:g}' for k, v in slo['given'].items() if '_p' not in k) or 'no threshold'})"
                     f"{checks}")
    lines += [
        f"  GPU time        {fractions}",
        f"  memory          weights {s['weights_bytes_per_gpu'] / GIB:.1f} GiB/GPU; "
        f"peak running sequences {', '.join(map(str, s['peak_running_seqs']))} (per replica)",
    ]
    if s["preemptions"]:
        lines.append(f"  note            KV memory ran out: {s['preemptions']} preemptions recomputed "
                     f"{meta.get('recomputed_tokens')} tokens")
    elif meta.get("kv_blocked_batches"):
        lines.append(f"  note            KV memory limited admission: the queue's head waited for blocks in "
                     f"{meta['kv_blocked_batches']} batches ({scenario['memory']['kv_allocation']} allocation)")
    overlong = {k: v for k, v in scenario["workload"].items() if k in ("truncated", "skipped") and v}
    if overlong:
        lines.append("  note            " + ", ".join(f"{k} {v} over-long requests" for k, v in overlong.items()))
    return "\n".join(lines)
