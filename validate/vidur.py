"""Reader of a Vidur profiling folder (microsoft/vidur `data/profiling/`) into tidy rows.

The layout it reads:

- `compute/<gpu>/<org>/<model>/mlp.csv`: one row per (`num_tokens`, `num_tensor_parallel_workers`), with
  `time_stats.<op>.median` for the four GEMMs of a layer and the model's shape columns;
- `network/<topology>/all_reduce.csv` and `send_recv.csv`: one row per (`size`, `num_workers`,
  `devices_per_node`), with `time_stats.<op>.median`.

Vidur's times are milliseconds of kernel time; the rows here are in seconds, and their GEMMs carry our op
names and the `[m×k]·[k×n]` shapes (`n` the weight's output columns on one TP rank):

    qkv      n = (heads + 2·kv_heads)·head_dim / TP   k = hidden
    o_proj   n = hidden                               k = heads·head_dim / TP
    gate_up  n = (2 if gated else 1)·ffn / TP         k = hidden
    down     n = hidden                               k = ffn / TP

Duplicate measurements of one point are reduced to their median. Pure pandas: nothing here fits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from splitsim.errors import ScenarioError
from splitsim.files import cut
from splitsim.validate.measurements import COUNT_LIMIT

MS = 1e-3
GEMM_OPS = {"attn_pre_proj": "qkv", "attn_post_proj": "o_proj", "mlp_up_proj": "gate_up",
            "mlp_down_proj": "down"}
SHAPE_COLUMNS = ["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "use_gated_mlp", "num_tokens",
                 "num_tensor_parallel_workers"]
NETWORK_FILES = {"allreduce": "all_reduce.csv", "sendrecv": "send_recv.csv"}
NETWORK_COLUMNS = ["num_workers", "devices_per_node", "size"]
GEMM_ROW_COLUMNS = ["model", "op", "tp", "m", "n", "k", "seconds"]
NETWORK_ROW_COLUMNS = ["op", "group_size", "devices_per_node", "nbytes", "seconds"]


def is_vidur_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "compute").is_dir() or (path / "network").is_dir())


def _subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def gpu_names(root: Path) -> list[str]:
    return _subfolders(root / "compute")


def topology_names(root: Path) -> list[str]:
    return _subfolders(root / "network")


def _choose(root: Path, kind: str, name: str, valid: list[str]) -> Path:
    if name not in valid:
        raise ScenarioError(f"{root}: no {kind}/{name} (valid: {', '.join(valid) or 'none'})")
    return root / kind / name


def _read_csv(path: Path, needed: list[str]) -> pd.DataFrame:
    """The needed columns, typed: shapes are whole numbers ≥ 1 in every row; times (`time_stats.*`, in ms)
    are finite and ≥ 0 where present (Vidur leaves a cell empty where it did not measure). Anything else is
    one line naming the file, the line and the column."""
    try:
        text = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ScenarioError(f"{path}: not a readable CSV ({cut(str(err).splitlines()[0])})") from None
    missing = [c for c in needed if c not in text.columns]
    if missing:
        raise ScenarioError(f"{path}: missing columns {', '.join(missing)} (not a Vidur profiling table)")
    table = pd.DataFrame(index=text.index)
    for column in needed:
        cells = text[column].str.strip()
        if column == "use_gated_mlp":
            flags = cells.str.lower().map({"true": 1, "false": 0, "1": 1, "0": 0})
            bad, why = flags.isna(), "expected True or False"
            table[column] = flags
        else:
            numbers = pd.to_numeric(cells.where(cells != ""), errors="coerce")
            if column.startswith("time_stats."):
                bad = (numbers.isna() & (cells != "")) | (numbers.notna() & (~np.isfinite(numbers) | (numbers < 0)))
                why = "expected a time in ms (≥ 0), or empty"
            else:
                bad = numbers.isna() | (numbers != np.floor(numbers)) | (numbers < 1) | (numbers > COUNT_LIMIT)
                why = f"expected a whole number from 1 to {COUNT_LIMIT}"
            table[column] = numbers
        if bad.any():
            row = int(np.argmax(bad))
            raise ScenarioError(f"{path}: line {row + 2}, {column} = {cut(repr(text[column].iloc[row]))}: {why}")
    return table


def model_folders(root: Path, gpu: str) -> list[Path]:
    """The model folders (`compute/<gpu>/<org>/<model>`) that hold an `mlp.csv`."""
    folder = _choose(root, "compute", gpu, gpu_names(root))
    found = sorted(p.parent for p in folder.glob("*/*/mlp.csv"))
    if not found:
        raise ScenarioError(f"{folder}: no <org>/<model>/mlp.csv files")
    return found


def _gemm_shapes(table: pd.DataFrame, op: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) of one GEMM on one TP rank, per row."""
    tp = table["num_tensor_parallel_workers"].to_numpy()
    heads, kv_heads = table["n_head"].to_numpy(), table["n_kv_head"].to_numpy()
    hidden, ffn = table["n_embd"].to_numpy(), table["n_expanded_embd"].to_numpy()
    head_dim = hidden // heads
    gated = np.where(table["use_gated_mlp"].astype(bool).to_numpy(), 2, 1)
    match op:
        case "qkv":
            return (heads + 2 * kv_heads) * head_dim // tp, hidden
        case "o_proj":
            return hidden, heads * head_dim // tp
        case "gate_up":
            return gated * ffn // tp, hidden
        case "down":
            return hidden, ffn // tp
    raise ValueError(f"unknown GEMM {op!r} (valid: {', '.join(GEMM_OPS.values())})")


def read_model_gemms(model_folder: Path) -> pd.DataFrame:
    """The four GEMMs of one model's `mlp.csv`, one row per (op, tp, m): columns `GEMM_ROW_COLUMNS`."""
    path = model_folder / "mlp.csv"
    needed = SHAPE_COLUMNS + [f"time_stats.{op}.median" for op in GEMM_OPS]
    table = _read_csv(path, needed)
    name = f"{model_folder.parent.name}/{model_folder.name}"
    parts = []
    for vidur_op, op in GEMM_OPS.items():
        n, k = _gemm_shapes(table, op)
        parts.append(pd.DataFrame({
            "model": name, "op": op, "tp": table["num_tensor_parallel_workers"].astype(int),
            "m": table["num_tokens"].astype(int), "n": n.astype(int), "k": k.astype(int),
            "seconds": table[f"time_stats.{vidur_op}.median"].astype(float) * MS,
        }))
    rows = pd.concat(parts, ignore_index=True).dropna(subset=["seconds"])
    rows = rows[rows["seconds"] > 0]
    return rows.groupby(GEMM_ROW_COLUMNS[:-1])["seconds"].median().reset_index()


def read_network(root: Path, topology: str) -> pd.DataFrame:
    """All-reduce and send/recv rows of `network/<topology>/`: columns `NETWORK_ROW_COLUMNS`."""
    folder = _choose(root, "network", topology, topology_names(root))
    parts = []
    for op, filename in NETWORK_FILES.items():
        path = folder / filename
        if not path.is_file():
            continue
        stat = f"time_stats.{filename.removesuffix('.csv')}.median"
        table = _read_csv(path, NETWORK_COLUMNS + [stat])
        parts.append(pd.DataFrame({
            "op": op, "group_size": table["num_workers"].astype(int),
            "devices_per_node": table["devices_per_node"].astype(int),
            "nbytes": table["size"].astype(float), "seconds": table[stat].astype(float) * MS,
        }))
    if not parts:
        raise ScenarioError(f"{folder}: neither {' nor '.join(NETWORK_FILES.values())}")
    rows = pd.concat(parts, ignore_index=True).dropna(subset=["seconds"])
    rows = rows[rows["seconds"] > 0]
    return rows.groupby(NETWORK_ROW_COLUMNS[:-1])["seconds"].median().reset_index()
