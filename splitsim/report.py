"""Writing a Result to a folder and printing its summary.

`summary.json` and `requests.csv` depend on the scenario and seed alone (no wall-clock times, paths or
dates), so two runs give identical bytes; wall time and versions go to `run.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from splitsim.sim.result import Result

GIB = 2.0**30


def write_outputs(result: Result, out_dir: Path, run_info: dict[str, Any] | None = None,
                  timeline: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / "summary.json"
    path.write_text(json.dumps(result.summary, indent=2) + "\n")
    written.append(path)
    path = out_dir / "requests.csv"
    result.requests.to_csv(path, index=False, float_format="%.17g")
    written.append(path)
    path = out_dir / "gpus.csv"
    result.gpu_intervals.to_csv(path, index=False, float_format="%.17g")
    written.append(path)
    path = out_dir / "trace.json"
    path.write_text(json.dumps({"traceEvents": result.trace_events, "displayTimeUnit": "ms"}))
    written.append(path)
    if timeline and result.window[1] > result.window[0]:
        from splitsim.plots import save_timeline

        path = out_dir / "timeline.png"
        save_timeline(result, path)
        written.append(path)
    if run_info is not None:
        path = out_dir / "run.json"
        path.write_text(json.dumps(run_info, indent=2) + "\n")
        written.append(path)
    return written


def _ms(stats: dict[str, float | None]) -> str:
    return "  ".join(f"{k} {v * 1e3:9.2f}" if v is not None else f"{k}       n/a" for k, v in stats.items())


def format_summary(result: Result) -> str:
    s = result.summary
    par = s["parallel"]
    fractions = "  ".join(f"{k} {v:6.1%}" for k, v in s["gpu_time_fraction"].items())
    lines = [
        f"{result.scenario_name}: {result.meta.get('model')} on {result.meta.get('cluster')}, "
        f"TP{par['tp']} × PP{par['pp']} × DP{par['dp']} ({result.meta.get('granularity')} granularity)",
        f"  requests        {s['num_requests']} in {s['sim_time_s']:.3f} s simulated "
        f"({s['requests_per_s']:.3f} req/s)",
        f"  throughput      {s['throughput_tokens_per_s']:.1f} output tokens/s",
        f"  TTFT (ms)       {_ms(s['ttft_s'])}",
        f"  TPOT (ms)       {_ms(s['tpot_s'])}",
        f"  E2E  (ms)       {_ms(s['e2e_s'])}",
        f"  GPU time        {fractions}",
        f"  memory          weights {s['weights_bytes_per_gpu'] / GIB:.1f} GiB/GPU, "
        f"KV cache {s['kv_cache_tokens_per_replica']} tokens/replica",
    ]
    return "\n".join(lines)
