"""Trace replay input: both header formats, the public Splitwise traces read exactly, and every bad row reported
as one line naming its file, line, column and value. Expectations come from the csv module or by hand."""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from helpers import REFERENCE_DATA
from splitsim.errors import ScenarioError
from splitsim.sim.trace import TraceRows, apply_overlong, read_trace

TRACES = REFERENCE_DATA / "traces"
OURS = "arrival_s,prompt_tokens,output_tokens\n"
AZURE = "arrived_at,num_prefill_tokens,num_decode_tokens\n"


def _write(tmp_path: Path, text: str, name: str = "trace.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(ScenarioError) as info:
        read_trace(path, **{"num_requests": None, **kwargs})
    message = str(info.value)
    assert "\n" not in message
    return message


def _rows(prompt: list[int], output: list[int]) -> TraceRows:
    arrival = np.arange(len(prompt), dtype=np.float64)
    return TraceRows(arrival, np.array(prompt, dtype=np.int64), np.array(output, dtype=np.int64), "t.csv")


# --- formats and real traces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    OURS + "0,10,2\n0.5,20,3\n1.25,30,4\n",
    AZURE + "0,10,2\n0.5,20,3\n1.25,30,4\n",
    # columns in another order, an extra column, spaces after commas, Windows line ends, a byte-order mark
    "\ufeffoutput_tokens, note, prompt_tokens, arrival_s\r\n2,a,10,0\r\n3,b,20,0.5\r\n4,c,30,1.25\r\n",
], ids=["ours", "azure", "shuffled"])
def test_both_header_formats_read_the_same_rows(tmp_path, text):
    rows = read_trace(_write(tmp_path, text), num_requests=None)
    assert rows.arrival_s.dtype == np.float64 and rows.prompt_tokens.dtype == rows.output_tokens.dtype == np.int64
    assert rows.arrival_s.tolist() == [0.0, 0.5, 1.25]
    assert rows.prompt_tokens.tolist() == [10, 20, 30]
    assert rows.output_tokens.tolist() == [2, 3, 4]
    assert rows.source == str(tmp_path / "trace.csv") and len(rows) == 3


@pytest.mark.parametrize("name, count", [("splitwise_conv.csv", 2000), ("splitwise_code.csv", None)])
def test_public_splitwise_traces_are_reproduced_exactly(name, count):
    path = TRACES / name
    if not path.is_file():
        pytest.skip(f"{path} is not present (only in the development workspace)")
    with open(path, newline="") as f:
        expected = list(csv.DictReader(f))[:count]
    rows = read_trace(path, num_requests=count)
    assert len(rows) == len(expected)
    assert np.array_equal(rows.arrival_s, [float(r["arrived_at"]) for r in expected])
    assert np.array_equal(rows.prompt_tokens, [int(r["num_prefill_tokens"]) for r in expected])
    assert np.array_equal(rows.output_tokens, [int(r["num_decode_tokens"]) for r in expected])


def test_whole_number_written_as_float_is_accepted_and_trailing_blank_lines_ignored(tmp_path):
    rows = read_trace(_write(tmp_path, OURS + "0,12.0,3\n2,1e3,4.00\n\n\n"), num_requests=None)
    assert rows.prompt_tokens.tolist() == [12, 1000] and rows.output_tokens.tolist() == [3, 4]


def test_equal_arrivals_are_allowed(tmp_path):
    rows = read_trace(_write(tmp_path, OURS + "1,1,1\n1,1,1\n"), num_requests=None)
    assert rows.arrival_s.tolist() == [1.0, 1.0]


# --- time_scale and num_requests -------------------------------------------------------------------------------


def test_time_scale_multiplies_arrivals_only(tmp_path):
    rows = read_trace(_write(tmp_path, OURS + "0,10,2\n1,20,3\n3,30,4\n"), num_requests=None, time_scale=0.5)
    assert rows.arrival_s.tolist() == [0.0, 0.5, 1.5]
    assert rows.prompt_tokens.tolist() == [10, 20, 30] and rows.output_tokens.tolist() == [2, 3, 4]


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan")])
def test_time_scale_must_be_positive_and_finite(tmp_path, scale):
    message = _error(_write(tmp_path, OURS + "0,1,1\n"), time_scale=scale)
    assert message.startswith("workload.time_scale = ") and "finite number > 0" in message


def test_num_requests_takes_the_first_rows_and_reads_no_further(tmp_path):
    path = _write(tmp_path, OURS + "0,10,2\n1,20,3\n2,30,4\nbad,bad,bad\n")
    rows = read_trace(path, num_requests=2)
    assert rows.prompt_tokens.tolist() == [10, 20]
    assert len(read_trace(path, num_requests=3)) == 3  # the bad line 5 is never read


def test_num_requests_larger_than_the_file_says_how_many_it_has(tmp_path):
    path = _write(tmp_path, OURS + "0,10,2\n1,20,3\n2,30,4\n\n")
    message = _error(path, num_requests=4)
    assert message == (f"workload.num_requests = 4: {path} has only 3 requests "
                       "(leave num_requests out to replay them all)")
    assert "workload.num_requests = 0" in _error(path, num_requests=0)


# --- bad rows: the line (header = line 1), the column, the value, what is valid --------------------------------

GOOD = ["0.5", "100", "20"]  # arrival, prompt, output


@pytest.mark.parametrize("column, value, problem", [
    (0, "abc", "not a number (need a finite number ≥ 0)"),
    (0, "", "not a number (need a finite number ≥ 0)"),
    (0, "nan", "not a number (need a finite number ≥ 0)"),
    (0, "inf", "not finite (need a finite number ≥ 0)"),
    (0, "-0.1", "negative (need a finite number ≥ 0)"),
    (1, "12.5", "not an integer (need a whole number ≥ 1)"),
    (1, "0", "less than 1 (need a whole number ≥ 1)"),
    (1, "-3", "less than 1 (need a whole number ≥ 1)"),
    (1, "", "not an integer (need a whole number ≥ 1)"),
    (2, "abc", "not an integer (need a whole number ≥ 1)"),
    (2, "1e30", "too large (need a whole number ≥ 1)"),
])
@pytest.mark.parametrize("header", [OURS, AZURE], ids=["ours", "azure"])
def test_a_bad_cell_names_its_line_column_and_value(tmp_path, header, column, value, problem):
    cells = list(GOOD)
    cells[column] = value
    lines = [",".join(GOOD)] * 5 + [",".join(cells)] + [",".join(GOOD)] * 3  # the bad row is line 7
    path = _write(tmp_path, header + "\n".join(lines) + "\n")
    name = header.strip().split(",")[column]
    assert _error(path) == f"{path} line 7, column {name} = '{value}': {problem}"


def test_the_first_bad_line_is_reported_whatever_its_column(tmp_path):
    path = _write(tmp_path, OURS + "0,1,1\n1,1,x\n2,y,1\nz,1,1\n")
    assert _error(path).startswith(f"{path} line 3, column output_tokens = 'x': ")
    path = _write(tmp_path, OURS + "0,1,1\n1,y,x\n")  # two bad cells on one line: the first column
    assert _error(path).startswith(f"{path} line 3, column prompt_tokens = 'y': ")


def test_a_bad_cell_deep_in_a_large_file_is_found_without_warnings(tmp_path):
    # Past pandas' parse chunks, so the column holds numbers in early chunks and text in the last.
    rows = 300_000
    path = _write(tmp_path, OURS + "".join(f"{i},{i % 97 + 1},{i % 13 + 1}\n" for i in range(rows)) + f"{rows},5,x\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _error(path).startswith(f"{path} line {rows + 2}, column output_tokens = 'x': not an integer")


def test_a_blank_line_inside_the_file_is_a_bad_row_at_its_own_line(tmp_path):
    path = _write(tmp_path, OURS + "0,1,1\n\n2,1,1\n")
    assert _error(path) == f"{path} line 3, column arrival_s = '': not a number (need a finite number ≥ 0)"


def test_decreasing_arrivals_name_the_line_and_both_values(tmp_path):
    path = _write(tmp_path, AZURE + "0,1,1\n1.5,1,1\n2.5,1,1\n2.25,1,1\n3,1,1\n")
    message = _error(path)
    assert message.startswith(f"{path} line 5, column arrived_at = '2.25': arrivals must not decrease")
    assert "line 4 has 2.5" in message


def test_a_decrease_before_a_bad_cell_is_reported_first(tmp_path):
    path = _write(tmp_path, OURS + "5,1,1\n4,1,1\n6,1,x\n")
    assert _error(path).startswith(f"{path} line 3, column arrival_s = '4': arrivals must not decrease")


# --- whole-file problems ---------------------------------------------------------------------------------------


def test_a_header_matching_neither_format_lists_both(tmp_path):
    path = _write(tmp_path, "time,input,output\n0,1,1\n")
    message = _error(path)
    assert message.startswith(f"{path} line 1: header time, input, output")
    assert "arrived_at, num_prefill_tokens, num_decode_tokens" in message
    assert "arrival_s, prompt_tokens, output_tokens" in message


def test_empty_file_and_header_only_are_errors(tmp_path):
    assert "empty file" in _error(_write(tmp_path, "", "empty.csv"))
    assert "no requests after the header" in _error(_write(tmp_path, OURS, "header.csv"))


def test_missing_file_and_directory_name_the_path_and_reason(tmp_path):
    missing = tmp_path / "nope.csv"
    assert _error(missing) == f"{missing}: cannot read the trace file (No such file or directory)"
    assert _error(tmp_path) == f"{tmp_path}: cannot read the trace file (Is a directory)"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_names_the_reason(tmp_path):
    path = _write(tmp_path, OURS + "0,1,1\n")
    path.chmod(0)
    try:
        assert _error(path) == f"{path}: cannot read the trace file (Permission denied)"
    finally:
        path.chmod(0o644)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(OURS.encode() + b"0,1,1\n1,2,3 # caf\xe9\n")
    assert _error(path) == f"{path} line 3: byte 0xe9 is not UTF-8 text (save the trace as UTF-8)"


def test_rows_with_more_fields_than_the_header_are_errors(tmp_path):
    assert "more fields than the header" in _error(_write(tmp_path, OURS + "0,1,1,9\n", "first.csv"))
    assert "Expected 3 fields in line 3, saw 4" in _error(_write(tmp_path, OURS + "0,1,1\n1,1,1,9\n", "later.csv"))


# --- requests longer than the model's context ------------------------------------------------------------------
# prompt + output vs a 4096-token context: request 2 is 4200 (104 over), request 4 is 5100 (1004 over).
PROMPT, OUTPUT, LIMIT = [100, 4000, 50, 5000], [20, 200, 10, 100], 4096


def test_overlong_refuse_names_the_first_such_request(tmp_path):
    text = OURS + "".join(f"{i},{p},{o}\n" for i, (p, o) in enumerate(zip(PROMPT, OUTPUT)))
    rows = read_trace(_write(tmp_path, text), num_requests=None)
    with pytest.raises(ScenarioError) as info:
        apply_overlong(rows, LIMIT, "refuse")
    message = str(info.value)
    assert message.startswith("workload.overlong = 'refuse': ")
    assert f"{rows.source} request 2 (line 3) has prompt 4000 + output 200 = 4200 tokens" in message
    assert "context of 4096" in message and "refuse | truncate | skip" in message


def test_overlong_truncate_cuts_the_output_first_then_the_prompt():
    rows, counts = apply_overlong(_rows(PROMPT, OUTPUT), LIMIT, "truncate")
    assert counts == {"truncated": 2}
    assert rows.prompt_tokens.tolist() == [100, 4000, 50, 4095]  # request 4: output down to 1, prompt to 4095
    assert rows.output_tokens.tolist() == [20, 96, 10, 1]  # request 2: 200 - 104
    assert rows.arrival_s.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_overlong_skip_drops_those_requests():
    rows, counts = apply_overlong(_rows(PROMPT, OUTPUT), LIMIT, "skip")
    assert counts == {"skipped": 2}
    assert rows.arrival_s.tolist() == [0.0, 2.0]
    assert rows.prompt_tokens.tolist() == [100, 50] and rows.output_tokens.tolist() == [20, 10]


def test_overlong_within_the_limit_changes_nothing():
    rows = _rows([100, 4000], [20, 96])  # 4096 exactly is allowed
    for policy, expected in [("refuse", {}), ("truncate", {"truncated": 0}), ("skip", {"skipped": 0})]:
        out, counts = apply_overlong(rows, LIMIT, policy)  # type: ignore[arg-type]
        assert counts == expected
        assert out.prompt_tokens.tolist() == [100, 4000] and out.output_tokens.tolist() == [20, 96]


def test_overlong_skip_of_every_request_and_unknown_policy_are_errors():
    with pytest.raises(ScenarioError, match="all 2 requests"):
        apply_overlong(_rows([5000, 4000], [1, 100]), LIMIT, "skip")
    with pytest.raises(ScenarioError, match=r"workload.overlong = 'clip': .*refuse \| truncate \| skip"):
        apply_overlong(_rows([1], [1]), LIMIT, "clip")  # type: ignore[arg-type]
