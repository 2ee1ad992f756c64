"""How well splitsim prices a mixture-of-experts layer's experts against NVIDIA's measured fused-MoE kernels
(aiconfigurator-core's `moe/vllm/<version>/moe_perf.parquet`, `balanced` routing), before and after the grouped
GEMM figures (`Efficiency.grouped_gemm`).

    python benchmarks/moe_kernels.py                        # h100_sxm, the installed package's tables
    python benchmarks/moe_kernels.py --system l40s
    python benchmarks/moe_kernels.py --tables tests/data/aiconfigurator/excerpt

Each row of the table is one rank's experts: T tokens routed top-k over E experts, the experts split moe_tp ways
or spread over moe_ep ranks. Two ways to build its work:

- `moe_layer`: the ops models/ops.py `moe_layer` builds (experts_gate_up, experts_act, experts_down), priced as
  sim/costs.py prices them. Split by TP (EP 1) it is `moe_layer` itself; for one EP rank it is `moe_layer` on that
  rank's E/ep experts with top-1 routing of ⌈T·k/ep⌉ tokens, which gives moe_layer's own EP reach
  E/ep·(1 − (1 − ep/E)^routed) with no load factor (balanced routing spreads the rows evenly).
- `kernel`: what the timed kernel did (`validate/aiconfigurator.py` `moe_work`): the experts the collector's balanced
  routing reaches on rank 0, and the kernel's element-wise work besides the GEMMs (activation and top-k reduction
  over every routed row under vLLM's Triton expert map, zero-filled rows of other ranks). This is what
  `calibrate` fits.

Both are priced with the GPU preset as shipped (`after`: grouped figures) and with its grouped figures removed
(`before`: every grouped GEMM as a dense GEMM of its dtype, today's pricing without the figures). Columns are the
median |predicted/measured − 1| over the rows; `held out` counts only the model shapes the fit did not see.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from splitsim.hardware.catalog import load_gpu
from splitsim.hardware.gpu import GpuSpec
from splitsim.models import ops
from splitsim.models.spec import ModelSpec, MoeSpec
from splitsim.validate import aiconfigurator as aic
from splitsim.validate import fit

TABLE_DTYPES = {"bfloat16": ("bf16", "bf16"), "fp8_block": ("fp8", "fp8"), "fp8": ("fp8", "fp8"),
                "nvfp4": ("fp4", "fp4")}  # the table's moe_dtype -> (weights, compute)
REGIMES = ((0, 64, "T ≤ 64"), (64, 1024, "64 < T ≤ 1024"), (1024, math.inf, "T > 1024"))


def _model(hidden: int, inter: int, experts: int, topk: int) -> ModelSpec:
    return ModelSpec(name="table", hidden_size=hidden, intermediate_size=inter, num_layers=1, num_heads=64,
                     num_kv_heads=64, head_dim_override=128, vocab_size=32000, max_position_embeddings=4096,
                     moe=MoeSpec(num_experts=experts, top_k=topk, intermediate_size=inter))


def layer_ops(tokens: int, hidden: int, inter: int, topk: int, experts: int, moe_tp: int, moe_ep: int,
              weights: str, compute: str) -> list[ops.Op]:
    """The experts' ops of one rank, as models/ops.py `moe_layer` builds them (module docstring)."""
    if moe_ep == 1:
        sharding = ops.Sharding(tp=moe_tp, weights=weights, kv_cache="bf16", compute=compute)  # type: ignore[arg-type]
        layer = ops.moe_layer(_model(hidden, inter, experts, topk), tokens, sharding)
    else:
        local, routed = experts // moe_ep, math.ceil(tokens * topk / moe_ep)
        sharding = ops.Sharding(tp=1, weights=weights, kv_cache="bf16", compute=compute)  # type: ignore[arg-type]
        if local > 1:
            layer = ops.moe_layer(_model(hidden, inter, local, 1), routed, sharding)
        else:  # one expert a rank (MoeSpec wants two): moe_layer's reach is that one expert
            layer = (ops.gemm("experts_gate_up", routed, 2 * inter, hidden, sharding),
                     ops.Op("experts_act", "memory", nbytes=3 * routed * inter * ops.ACTIVATION_BYTES),
                     ops.gemm("experts_down", routed, hidden, inter, sharding))
    return [op for op in layer if op.name.startswith("experts_")]


def price(gpu: GpuSpec, op: ops.Op) -> float:
    """An op's seconds as sim/costs.py `_op_time` prices GEMMs and element-wise kernels."""
    if op.kind == "gemm":
        return gpu.gemm_time_s(op.m, op.n, op.k, weight_bytes=op.weight_bytes, dtype=op.dtype, groups=op.groups)
    return gpu.elementwise_time_s(op.nbytes)


def read_rows(root: Path, system: str, has_fp8: bool, has_fp4: bool) -> tuple[pd.DataFrame, aic.Table]:
    """Every balanced row of the dtypes above, as `moe_work` rows, with `table_dtype`, `fitted` (a row `calibrate`
    fits or holds out: the dtype's chosen kernel, weights beyond the L2) and `train`."""
    table = aic.pick_table(root, system, "moe", "vllm")
    raw = pd.read_parquet(table.path / "moe_perf.parquet")
    if "version" in raw.columns:
        raw = raw[raw["version"].astype(str) == table.version]
    raw = raw[(raw["distribution"] == "balanced") & raw["moe_dtype"].isin(list(TABLE_DTYPES))]
    computes = {"bf16": True, "fp8": has_fp8, "fp4": has_fp4}
    raw = raw[[computes[TABLE_DTYPES[d][1]] for d in raw["moe_dtype"]]]
    rows = aic.moe_work(raw.assign(dtype=[TABLE_DTYPES[d][1] for d in raw["moe_dtype"]]))
    rows["table_dtype"] = raw["moe_dtype"].to_numpy()
    fitted, _ = aic.moe_rows(table, has_fp8, has_fp4, aic.L2_BYTES.get(system, 0.0))
    keys = ["dtype", "tokens", "hidden", "inter", "topk", "experts", "moe_tp", "moe_ep", "kernel"]
    merged = rows.merge(fitted[keys + ["train"]], on=keys, how="left")
    merged["fitted"] = merged["train"].notna()
    merged["train"] = merged["train"].astype("boolean").fillna(False).astype(bool)
    chosen = {dtype: names for dtype, names in aic.MOE_DTYPES.items()}
    preferred = {d: next((n for n in chosen[d] if (merged["table_dtype"] == n).any()), None) for d in chosen}
    merged["fitted"] &= merged["table_dtype"].to_numpy() == merged["dtype"].map(preferred).to_numpy()
    return merged, table


def predictions(rows: pd.DataFrame, gpu: GpuSpec) -> dict[str, np.ndarray]:
    """Seconds of each row: `moe_layer` ops and the kernel's work, before (dense) and after (grouped figures)."""
    before = gpu.model_copy(update={"efficiency": gpu.efficiency.model_copy(update={"grouped_gemm": {}})})
    out: dict[str, np.ndarray] = {}
    for label, spec in (("before", before), ("after", gpu)):
        layer = []
        for r in rows.itertuples():
            weights, compute = TABLE_DTYPES[str(r.table_dtype)]
            layer.append(sum(price(spec, op) for op in layer_ops(int(r.tokens), int(r.hidden), int(r.inter),
                                                                 int(r.topk), int(r.experts), int(r.moe_tp),
                                                                 int(r.moe_ep), weights, compute)))
        out[f"moe_layer {label}"] = np.array(layer)
        out[f"kernel {label}"] = fit.moe_times_s(spec, rows)
    return out


def _median(errors: pd.Series) -> str:
    return f"{errors.median():7.1%}" if len(errors) else f"{'—':>7}"


def report(rows: pd.DataFrame, predicted: dict[str, np.ndarray], title: str, select: Callable[[pd.DataFrame], pd.Series]
           ) -> None:
    errors = {label: pd.Series(np.abs(p / rows["seconds"].to_numpy() - 1), index=rows.index)
              for label, p in predicted.items()}
    print(f"\n{title}")
    print(f"  {'table dtype':12} {'regime':14} {'rows':>5} | {'moe_layer ops':^17} | {'kernel work':^17} |"
          f" {'held out':^17}")
    print(f"  {'':12} {'':14} {'':>5} | {'before':>7}  {'after':>7} | {'before':>7}  {'after':>7} |"
          f" {'rows':>7}  {'kernel':>7}")
    for dtype in [d for d in TABLE_DTYPES if ((rows["table_dtype"] == d) & select(rows)).any()]:
        for low, high, label in (*REGIMES, (0, math.inf, "all")):
            part = rows[(rows["table_dtype"] == dtype) & (rows["tokens"] > low) & (rows["tokens"] <= high)]
            part = part[select(part)]
            held = part[part["fitted"] & ~part["train"]]
            cells = [_median(errors[k][part.index]) for k in
                     ("moe_layer before", "moe_layer after", "kernel before", "kernel after")]
            print(f"  {dtype:12} {label:14} {len(part):5d} | {cells[0]}  {cells[1]} | {cells[2]}  {cells[3]} |"
                  f" {len(held):7d}  {_median(errors['kernel after'][held.index])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="h100_sxm", help="aiconfigurator system (default h100_sxm)")
    parser.add_argument("--tables", type=Path, help="a copy of the package's systems/data (default: the installed one)")
    args = parser.parse_args()
    root = aic.data_root(args.tables)
    gpu = load_gpu(aic.SYSTEMS[args.system][0])
    rows, table = read_rows(root, args.system, gpu.has_fp8, gpu.has_fp4)
    print(f"{args.system} ({gpu.name} preset), {table.describe()}: {len(rows)} balanced rows")
    for dtype, g in gpu.efficiency.grouped_gemm.items():
        print(f"  grouped {dtype}: η_peak {g.compute:.3f}, m½ {g.m_half:.3g}, η_m {g.memory:.3f}, "
              f"t_launch {g.launch_s * 1e6:.3g} µs")
    predicted = predictions(rows, gpu)
    report(rows, predicted, "rows calibrate fits or holds out (each dtype's kernel, weights beyond twice the L2):",
           lambda part: part["fitted"])
    report(rows, predicted, "every balanced row (other kernels and cache-resident weights included):",
           lambda part: part["fitted"] | ~part["fitted"])
    for (dtype, kernel), part in rows[~rows["fitted"]].groupby(["table_dtype", "kernel"]):
        err = np.abs(predicted["kernel after"][part.index] / part["seconds"].to_numpy() - 1)
        print(f"  not fitted: {dtype} {kernel}: {len(part)} rows, kernel work after {np.median(err):.1%}")


if __name__ == "__main__":
    main()
