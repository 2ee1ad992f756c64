"""The fast CSV writer gives pandas' bytes (`to_csv(index=False, float_format="%.17g")`) for any table of
the kinds splitsim writes: floats (NaN, ±0, ±inf, subnormal, huge), integers and plain text."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import pandas as hpd

from splitsim import csvfile
from splitsim.csvfile import write_csv

FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1e-310, 0.1, 1 / 3])
TEXT = st.text(min_size=0, max_size=5)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=hpd.data_frames([hpd.column("a_s", elements=FLOATS), hpd.column("n", dtype=int),
                              hpd.column("kind", elements=TEXT, dtype=object), hpd.column("b", elements=FLOATS)]),
       chunk=st.sampled_from([1, 3, 100_000]))
def test_bytes_are_pandas_bytes(tmp_path, monkeypatch, frame, chunk):
    monkeypatch.setattr(csvfile, "CHUNK_ROWS", chunk)
    ours, theirs = tmp_path / "ours.csv", tmp_path / "theirs.csv"
    write_csv(frame, ours)
    frame.to_csv(theirs, index=False, float_format="%.17g")
    assert ours.read_bytes() == theirs.read_bytes()


def test_an_empty_table_is_its_header(tmp_path):
    write_csv(pd.DataFrame({"x": pd.Series([], dtype=float)}), tmp_path / "e.csv")
    assert (tmp_path / "e.csv").read_text() == "x\n"
