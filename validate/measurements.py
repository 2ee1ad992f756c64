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
  alltoall (nbytes = what each rank sends to the others, its own share excluded; group_size),
  sendrecv (nbytes, group_size = 2), grouped_gemm (m rows per expert, n, k, groups = experts: `groups` GEMMs
  [m×k]·[k×n] back to back, a mixture-of-experts layer's grouped GEMM; the run's dtype, as for gemm).

`groups` came after the first tables: a table without that column reads as one with it empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from splitsim.errors import ScenarioError
from splitsim.files import cut, read_json_file
from splitsim.models.spec import ModelSpec

SCHEMA = "splitsim.measurements/1"
COLUMNS = ["kind", "op", "phase", "layer", "stage", "rank", "tp", "pp", "batch", "prompt", "context",
           "tokens", "m", "n", "k", "groups", "nbytes", "group_size", "seconds", "repeats"]
OPTIONAL = ("groups",)  # columns a table written before them lacks: read as empty
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


# What each row must carry, by kind and op (the runner writes more; these are what readers use).
REQUIRED = {("micro", "gemm"): ("m", "n", "k"), ("micro", "attention_prefill"): ("batch", "prompt"),
            ("micro", "attention_decode"): ("batch", "context"), ("micro", "allreduce"): ("nbytes", "group_size"),
            ("micro", "allgather"): ("nbytes", "group_size"), ("micro", "alltoall"): ("nbytes", "group_size"),
            ("micro", "sendrecv"): ("nbytes",), ("micro", "grouped_gemm"): ("m", "n", "k", "groups"),
            ("step", "prefill_step"): ("tp", "pp", "batch", "prompt"),
            ("step", "decode_step"): ("tp", "pp", "batch", "prompt", "context")}
PHASES = ("prefill", "decode")
TEXT = ("kind", "op", "phase")
COUNT_LIMIT = 2**31 - 1  # as for a model's sizes (models/spec.py)
LOWEST = {"layer": -1, "stage": 0, "rank": 0, "context": 0, "tokens": 0}  # the other counts start at 1


def measured_model(folder: Path, config: dict[str, Any]) -> ModelSpec:
    """The model the runner built: the config's `model_spec` with its `layers` (the runner may keep fewer)."""
    path = folder / CONFIG
    spec = config.get("model_spec")
    if not isinstance(spec, dict):
        raise MeasurementsError(f"{path}: model_spec = {cut(repr(spec))}: expected the model's mapping "
                                "(written by `splitsim validate run`)")
    layers = config.get("layers")
    try:
        # as the runner wrote it, JSON read strictly: no true for a size, and arrays for tuples (local_layers)
        model = ModelSpec.model_validate_json(json.dumps(spec), strict=True)
        if layers is not None:
            model = ModelSpec.model_validate_json(json.dumps({**spec, "num_layers": layers}), strict=True)
    except ValidationError as err:
        first = err.errors()[0]
        where = "layers" if first["loc"] == ("num_layers",) and layers is not None else \
            "model_spec." + ".".join(map(str, first["loc"]))
        if first["type"] == "missing":
            raise MeasurementsError(f"{path}: {where}: required field is missing") from None
        raise MeasurementsError(f"{path}: {where} = {cut(repr(first.get('input')))}: "
                                f"{first['msg'].removeprefix('Value error, ')}") from None
    if model.num_layers > spec.get("num_layers", model.num_layers):
        raise MeasurementsError(f"{path}: layers = {layers}: more than the model's {spec['num_layers']}")
    return model


MEASURED_DTYPES = ("bf16", "fp16")  # what `splitsim validate run --dtype` offers


def measured_dtype(folder: Path, config: dict[str, Any]) -> str:
    dtype = config.get("dtype", "bf16")
    if dtype not in MEASURED_DTYPES:
        raise MeasurementsError(f"{folder / CONFIG}: dtype = {cut(repr(dtype))} (valid: {', '.join(MEASURED_DTYPES)})")
    return str(dtype)


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
    return check_rows(table, _read_table(table)), config


def _read_table(table: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(table, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise MeasurementsError(f"{table}: not a readable CSV ({cut(str(err).strip().splitlines()[0])})") from None


def check_rows(table: Path, text: pd.DataFrame) -> pd.DataFrame:
    """Typed rows, or one line naming the line, the column, the value and what would be valid.

    Every row needs a positive finite `seconds`; counts are whole numbers in range; each (kind, op) carries
    the fields in REQUIRED. Empty cells are NaN (a field that does not apply to the row)."""
    text = text.assign(**{c: "" for c in OPTIONAL if c not in text.columns})
    missing = [c for c in COLUMNS if c not in text.columns]
    if missing:
        raise MeasurementsError(f"{table}: missing columns {', '.join(missing)} (schema {SCHEMA})")

    def refuse(row: int, column: str, why: str) -> MeasurementsError:
        value = text[column].iloc[row]  # line 1 is the header
        return MeasurementsError(f"{table}: line {row + 2}, {column} = {cut(repr(value))}: {why}")

    rows = text[COLUMNS].copy()
    for column in COLUMNS:
        if column in TEXT:
            continue
        cells = text[column].str.strip()
        numbers = pd.to_numeric(cells.where(cells != ""), errors="coerce")
        bad = numbers.isna() & (cells != "")
        if column == "seconds":
            bad |= ~np.isfinite(numbers) | (numbers <= 0)
            if bad.any():
                raise refuse(int(np.argmax(bad)), column, "expected the measured time, a positive number of seconds")
        elif column == "nbytes":
            bad |= numbers.notna() & (~np.isfinite(numbers) | (numbers <= 0))
            if bad.any():
                raise refuse(int(np.argmax(bad)), column, "expected a positive finite number of bytes, or empty")
        else:
            low = LOWEST.get(column, 1)
            bad |= numbers.notna() & ((numbers != np.floor(numbers)) | (numbers < low) | (numbers > COUNT_LIMIT))
            if bad.any():
                raise refuse(int(np.argmax(bad)), column, f"expected a whole number from {low} to {COUNT_LIMIT}, "
                                                          "or empty")
        rows[column] = numbers
    for row, (kind, op, phase) in enumerate(zip(rows["kind"], rows["op"], rows["phase"], strict=True)):
        if kind not in KINDS:
            raise refuse(row, "kind", f"expected one of {', '.join(KINDS)}")
        if phase not in (*PHASES, ""):
            raise refuse(row, "phase", f"expected {' or '.join(PHASES)}, or empty")
        if kind == "op" and phase == "":
            raise refuse(row, "phase", f"an op row needs {' or '.join(PHASES)}")
        valid_ops = sorted(o for k, o in REQUIRED if k == kind)
        if valid_ops and (kind, op) not in REQUIRED:
            raise refuse(row, "op", f"expected a {kind} op: {', '.join(valid_ops)}")
        for column in REQUIRED.get((kind, op), ()):
            if pd.isna(rows[column].iloc[row]):
                raise refuse(row, column, f"a {kind} {op} row needs it")
    return rows
