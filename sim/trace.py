"""Request traces for replay: arrival times and lengths read from a CSV. Checks are vectorised, so a million-row
trace loads in well under a second, and the first bad row is still reported by its line in the file."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from splitsim.errors import ScenarioError

# Accepted headers as (arrival, prompt, output) columns: the public Azure/Splitwise/Vidur traces, and our own names.
FORMATS = (("arrived_at", "num_prefill_tokens", "num_decode_tokens"), ("arrival_s", "prompt_tokens", "output_tokens"))
POLICIES = ("refuse", "truncate", "skip")
_TOO_LARGE = 2**53  # token counts from here up are not exact as float64, and mean a broken file anyway


@dataclass(frozen=True, eq=False)
class TraceRows:
    """One entry per request, in file order; `source` is the path as given, for messages."""

    arrival_s: np.ndarray  # float64 seconds, non-decreasing
    prompt_tokens: np.ndarray  # int64, ≥ 1
    output_tokens: np.ndarray  # int64, ≥ 1
    source: str
    from_file: bool = True  # messages name CSV lines; rows passed from Python are named by index

    def __len__(self) -> int:
        return len(self.arrival_s)


def read_trace(path: Path, *, num_requests: int | None, time_scale: float = 1.0) -> TraceRows:
    """The first `num_requests` rows (all if None), arrivals multiplied by `time_scale`."""
    source = str(path)
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ScenarioError(f"workload.time_scale = {time_scale!r}: need a finite number > 0")
    if num_requests is not None and num_requests < 1:
        raise ScenarioError(f"workload.num_requests = {num_requests!r}: need a whole number ≥ 1")
    frame = _read_csv(path, source, num_requests)
    cols = next((f for f in FORMATS if set(f) <= set(frame.columns)), None)
    if cols is None:
        raise ScenarioError(f"{source} line 1: header {', '.join(frame.columns)} lacks the needed columns "
                            f"(need {', '.join(FORMATS[0])} or {', '.join(FORMATS[1])}, in any order)")
    n = len(frame)  # blank lines at the end of the file are dropped; blank lines inside it are bad rows
    while n and all(str(v).strip() == "" for v in frame.iloc[n - 1]):
        n -= 1
    if n == 0:
        raise ScenarioError(f"{source}: no requests after the header line (need at least one row)")
    if num_requests is not None and n < num_requests:
        raise ScenarioError(f"workload.num_requests = {num_requests}: {source} has only {n} requests "
                            "(leave num_requests out to replay them all)")

    # Row i is line i + 2: the header is line 1, and blank lines were kept as rows so the count stays true.
    arrival, prompt, output = (pd.to_numeric(frame[c].iloc[:n], errors="coerce").to_numpy(np.float64, na_value=np.nan)
                               for c in cols)
    bad = [~(np.isfinite(arrival) & (arrival >= 0))]
    bad += [~((v >= 1) & (v < _TOO_LARGE) & (v == np.floor(v))) for v in (prompt, output)]
    first = [int(np.argmax(b)) if b.any() else n for b in bad]
    row = min(first)  # the earliest bad line; within it, the first bad column
    down = np.flatnonzero(np.diff(arrival[:row]) < 0)  # arrivals going backwards before that line
    if down.size:
        i = int(down[0]) + 1
        before, value = _cells(path, cols[0], [i - 1, i])
        raise ScenarioError(f"{source} line {i + 2}, column {cols[0]} = '{value}': arrivals must not decrease "
                            f"(line {i + 1} has {before}; sort the trace by arrival)")
    if row < n:
        k = first.index(row)
        value = (arrival, prompt, output)[k][row]
        if k == 0:
            problem = "not a number" if math.isnan(value) else "not finite" if math.isinf(value) else "negative"
            need = "a finite number ≥ 0"
        else:
            problem = ("not an integer" if not math.isfinite(value) or value != math.floor(value)
                       else "too large" if value >= _TOO_LARGE else "less than 1")
            need = "a whole number ≥ 1"
        raise ScenarioError(f"{source} line {row + 2}, column {cols[k]} = '{_cells(path, cols[k], [row])[0]}': "
                            f"{problem} (need {need})")
    return TraceRows(arrival * time_scale, prompt.astype(np.int64), output.astype(np.int64), source)


def _read_csv(path: Path, source: str, nrows: int | None) -> pd.DataFrame:
    """The CSV as pandas parses it (clean columns numeric, columns with bad cells left as text); one-line errors."""
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # pandas only warns if line 2 is too long
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)  # text among numbers: found and reported below
            frame = pd.read_csv(f, encoding="utf-8-sig", nrows=nrows, na_filter=False, skip_blank_lines=False,
                                index_col=False)
    except OSError as err:
        raise ScenarioError(f"{source}: cannot read the trace file ({err.strerror or err})") from None
    except UnicodeDecodeError:
        data = Path(path).read_bytes()  # pandas decodes in chunks, so find the bad byte in the whole file
        at = _first_bad_byte(data)
        line = data.count(b"\n", 0, at) + 1
        raise ScenarioError(f"{source} line {line}: byte 0x{data[at]:02x} is not UTF-8 text (save the trace as UTF-8)"
                            ) from None
    except pd.errors.EmptyDataError:
        raise ScenarioError(f"{source}: empty file (need a header line and at least one request)") from None
    except pd.errors.ParserWarning:
        raise ScenarioError(f"{source}: a data row has more fields than the header has columns") from None
    except pd.errors.ParserError as err:
        raise ScenarioError(f"{source}: not a valid CSV ({str(err).split('C error: ')[-1].strip()})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _cells(path: Path, column: str, rows: list[int]) -> list[str]:
    """Cells' text as written, for messages (the fast parse keeps only the numbers): re-read up to the last one."""
    with open(path, "rb") as f:
        frame = pd.read_csv(f, encoding="utf-8-sig", dtype=str, nrows=max(rows) + 1, na_filter=False,
                            skip_blank_lines=False, index_col=False, usecols=lambda c: c.strip() == column)
    return [str(frame.iloc[r, 0]) for r in rows]


def _first_bad_byte(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start
    return 0


def apply_overlong(rows: TraceRows, max_tokens: int,
                   policy: Literal["refuse", "truncate", "skip"]) -> tuple[TraceRows, dict[str, int]]:
    """Requests whose prompt + output exceed the model's context (`max_tokens`): refused, truncated or skipped."""
    valid = " | ".join(POLICIES)
    if policy not in POLICIES:
        raise ScenarioError(f"workload.overlong = {policy!r}: not a policy (valid: {valid})")
    if max_tokens < 2:
        raise ScenarioError(f"max_tokens = {max_tokens}: need at least 2 (one prompt and one output token)")
    prompt, output = rows.prompt_tokens, rows.output_tokens
    over = prompt + output > max_tokens
    count = int(over.sum())
    if policy == "refuse":
        if count:
            i = int(np.argmax(over))
            raise ScenarioError(
                f"workload.overlong = 'refuse': {rows.source} "
                f"{f'request {i + 1} (line {i + 2})' if rows.from_file else f'row {i}'} has prompt {prompt[i]} "
                f"+ output {output[i]} = {prompt[i] + output[i]} tokens, over the model's context of {max_tokens} "
                f"(valid: {valid})")
        return rows, {}
    if policy == "skip":
        if count == len(rows):
            raise ScenarioError(f"workload.overlong = 'skip': all {count} requests in {rows.source} exceed the "
                                f"model's context of {max_tokens} tokens (valid: {valid})")
        keep = ~over
        return TraceRows(rows.arrival_s[keep], prompt[keep], output[keep], rows.source, rows.from_file), \
            {"skipped": count}
    # Truncate: shorten the output first (keeping at least 1 token), then the prompt, to exactly max_tokens.
    new_output = np.where(over, np.maximum(1, max_tokens - prompt), output)
    new_prompt = np.where(over, max_tokens - new_output, prompt)
    return TraceRows(rows.arrival_s, new_prompt, new_output, rows.source, rows.from_file), {"truncated": count}
