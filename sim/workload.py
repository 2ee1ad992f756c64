"""The requests of a run: lengths (fixed or seeded distributions) and arrivals (open loop at a rate, all at
t=0, a closed loop of clients, a replayed trace, or rows a notebook passes in).

Randomness: `sim.seed` seeds a `numpy.random.SeedSequence` whose three children drive arrivals, prompt
lengths and output lengths separately, so drawing any of them later, or in pieces, gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from splitsim.errors import ScenarioError
from splitsim.lengths import Lengths, Overlong, draw_lengths
from splitsim.sim.trace import TraceRows, apply_overlong, read_trace


def arrival_times(rate: float, burstiness: float | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arrivals at `rate` requests/s with gamma-distributed gaps of shape k = `burstiness` and mean 1/rate
    (k = 1: Poisson; coefficient of variation 1/√k), as `vllm bench serve --burstiness` draws them; the first
    request arrives after its own gap. vLLM (since v0.10.1) then rescales the sum so the last request leaves
    at exactly N/rate; we keep the raw draws, whose rate is `rate` in expectation, so that arrivals can be
    drawn in pieces as a run goes (the rescale needs every gap first). An infinite rate puts all at t=0."""
    if math.isinf(rate):
        return np.zeros(n)
    k = 1.0 if burstiness is None else burstiness
    return np.cumsum(rng.gamma(shape=k, scale=1.0 / (rate * k), size=n))


@dataclass(frozen=True, eq=False)
class RequestStream:
    """The requests a run serves, in id order: their lengths, and either their arrival times (open loop)
    or the number of clients of a closed loop (arrivals then depend on finishes)."""

    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    arrival_s: np.ndarray | None = None  # float64, non-decreasing
    concurrency: int | None = None
    overlong: dict[str, int] = field(default_factory=dict)  # {"truncated": n} or {"skipped": n}

    @property
    def num_requests(self) -> int:
        return len(self.prompt_tokens)


def _generators(seed: int) -> tuple[np.random.Generator, ...]:
    """(arrivals, prompts, outputs): independent streams from one seed."""
    return tuple(np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3))


def synthetic_stream(prompt_tokens: Lengths, output_tokens: Lengths, num_requests: int, seed: int, *,
                     rate: float | None = None, burstiness: float | None = None,
                     concurrency: int | None = None) -> RequestStream:
    """Drawn requests: arrivals at `rate` (open loop) or `concurrency` clients (closed loop)."""
    arrivals_rng, prompts_rng, outputs_rng = _generators(seed)
    prompts = draw_lengths(prompt_tokens, prompts_rng, num_requests)
    outputs = draw_lengths(output_tokens, outputs_rng, num_requests)
    if concurrency is not None:
        return RequestStream(prompts, outputs, concurrency=concurrency)
    assert rate is not None, "an open loop needs a rate"
    return RequestStream(prompts, outputs, arrival_times(rate, burstiness, num_requests, arrivals_rng))


def trace_stream(path: Path, num_requests: int | None, time_scale: float, max_tokens: int,
                 overlong: Overlong) -> RequestStream:
    """A replayed trace file; `max_tokens` (the model's context) bounds its requests."""
    return _replayed(read_trace(path, num_requests=num_requests, time_scale=time_scale), max_tokens, overlong)


def _replayed(rows: TraceRows, max_tokens: int, overlong: Overlong) -> RequestStream:
    rows, counts = apply_overlong(rows, max_tokens, overlong)
    return RequestStream(rows.prompt_tokens, rows.output_tokens, rows.arrival_s, overlong=counts)


ROW_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")


def stream_from_rows(requests: Any, max_tokens: int, overlong: Overlong) -> RequestStream:
    """Requests a caller passes in (a DataFrame, or rows of arrival_s, prompt_tokens, output_tokens)."""
    if isinstance(requests, pd.DataFrame):
        frame = requests
    else:
        given = list(requests)
        named = bool(given) and isinstance(given[0], dict)
        frame = pd.DataFrame(given) if named else pd.DataFrame(given, columns=list(ROW_COLUMNS))
    missing = [c for c in ROW_COLUMNS if c not in frame.columns]
    if missing:
        raise ScenarioError(f"requests: missing column {missing[0]} (need {', '.join(ROW_COLUMNS)})")
    if len(frame) == 0:
        raise ScenarioError("requests: no rows (need at least one request)")
    arrival = pd.to_numeric(frame["arrival_s"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    columns = {"arrival_s": arrival}
    bad = ~(np.isfinite(arrival) & (arrival >= 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ScenarioError(f"requests row {i}, column arrival_s = {frame['arrival_s'].iloc[i]!r}: "
                            "need a finite number of seconds ≥ 0")
    for name in ("prompt_tokens", "output_tokens"):
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = ~((values >= 1) & (values == np.floor(values)))
        if bad.any():
            i = int(np.argmax(bad))
            raise ScenarioError(f"requests row {i}, column {name} = {frame[name].iloc[i]!r}: need a whole number ≥ 1")
        columns[name] = values
    down = np.flatnonzero(np.diff(arrival) < 0)
    if down.size:
        i = int(down[0]) + 1
        raise ScenarioError(f"requests row {i}, column arrival_s = {arrival[i]!r}: arrivals must not decrease "
                            f"(row {i - 1} has {arrival[i - 1]!r}; sort the rows by arrival)")
    rows = TraceRows(arrival, columns["prompt_tokens"].astype(np.int64), columns["output_tokens"].astype(np.int64),
                     "requests", from_file=False)
    return _replayed(rows, max_tokens, overlong)
