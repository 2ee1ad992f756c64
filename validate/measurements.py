"""The runner's output format: one tidy table of timings plus the run's configuration.

A measurements folder holds `measurements.csv` (the columns below, one row per timed thing, `seconds`
the median over repeats) and `config.json` (how it was measured). `splitsim calibrate` and
`splitsim validate compare` read it; nothing here imports torch.

Row kinds:
- `op`: one op inside a real sharded forward pass (`op` is a name from models/ops: input_norm, qkv,
  attention (with RoPE), o_proj, attn_allreduce, post_norm, gate_up, act, down, mlp_allreduce; plus
  embedding, embedding_allreduce, lm_head,
  logits_allgather, handoff, handoff_allgather), on one rank of one stage, for one layer (`layer` = -1
  for non-layer ops); decode rows carry `context`, the positions each sequence attends (prompt + i + 1);
- `step`: a whole prefill or decode step across the pipeline (`op` = prefill_step / decode_step), the
  slowest rank's time from a common start;
- `micro`: a microbenchmark between the run's own ranks: `op` = gemm (m, n, k), attention_prefill
  (batch, prompt), attention_decode (batch, context), allreduce / allgather (nbytes, group_size),
  sendrecv (nbytes, group_size = 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from splitsim.errors import ScenarioError
from splitsim.files import cut, read_json_file

SCHEMA = "splitsim.measurements/1"
COLUMNS = ["kind", "op", "phase", "layer", "stage", "rank", "tp", "pp", "batch", "prompt", "context",
           "tokens", "m", "n", "k", "nbytes", "group_size", "seconds", "repeats"]
KINDS = ("op", "step", "micro")
TABLE = "measurements.csv"
CONFIG = "config.json"


class MeasurementsError(ScenarioError):
    """A measurements folder that cannot be read: the message says which file and why."""


def write(folder: Path, rows: pd.DataFrame, config: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"measurement rows lack columns {missing}")
    rows[COLUMNS].to_csv(folder / TABLE, index=False, float_format="%.9g")
    (folder / CONFIG).write_text(json.dumps({"schema": SCHEMA, **config}, indent=2) + "\n")


def read(folder: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table and configuration of a measurements folder, checked against this schema."""
    folder = Path(folder)
    table, config_path = folder / TABLE, folder / CONFIG
    if not folder.is_dir():
        raise MeasurementsError(f"{folder}: no such measurements folder")
    if not config_path.is_file():
        raise MeasurementsError(f"{folder}: no {CONFIG} (a folder written by `splitsim validate run --out`)")
    try:
        config = read_json_file(config_path, "measurements config", "schema, model, device…")
    except ScenarioError as err:
        raise MeasurementsError(str(err)) from None
    if config.get("schema") != SCHEMA:
        raise MeasurementsError(f"{config_path}: schema {cut(repr(config.get('schema')))}, expected {SCHEMA!r}")
    if not table.is_file():
        raise MeasurementsError(f"{folder}: no {TABLE}")
    rows = pd.read_csv(table)
    missing = [c for c in COLUMNS if c not in rows.columns]
    if missing:
        raise MeasurementsError(f"{table}: missing columns {', '.join(missing)} (schema {SCHEMA})")
    unknown = sorted(set(rows["kind"]) - set(KINDS))
    if unknown:
        raise MeasurementsError(f"{table}: unknown kind {unknown[0]!r} (valid: {', '.join(KINDS)})")
    return rows, config
