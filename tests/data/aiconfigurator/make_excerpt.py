"""How excerpt/ was cut from aiconfigurator-core 0.12.0 (PyPI; Apache-2.0, see NOTICE), so the calibration
tests run without the package: a few hundred rows of the H100 tables vLLM's kernels use, and one forward-filled
copy of the NCCL folder (its rows carry another version, twice), as the package has, to test version choice;
vLLM's own all-reduce under CUDA graphs; the fused-MoE kernel's balanced rows of a few model shapes (`moe`).

    pip download --no-deps aiconfigurator-core==0.12.0
    unzip aiconfigurator_core-*.whl 'aiconfigurator_core/systems/*'
    python tests/data/aiconfigurator/make_excerpt.py aiconfigurator_core/systems/data
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent / "excerpt"
SHAPES = [(4096, 4096), (6144, 4096), (8192, 8192), (10240, 8192), (16384, 8192), (16384, 4096), (12288, 16384),
          (16384, 16384), (51200, 8192), (3072, 8192), (2048, 2048), (256, 256), (128, 128)]  # the last two: launch
TOKENS = [1, 4, 16, 64, 128, 256, 1024, 4096, 8192]
# (hidden, intermediate, top-k, experts): Qwen3-30B-A3B, Qwen3-235B-A22B, Mixtral-8x7B, DeepSeek-V3 (fp8 only), and a
# 256-expert shape (bf16 only); bf16 and block-fp8 rows, a few per-tensor fp8 rows (another kernel, not fitted)
MOE_SHAPES = {"bfloat16": [(2048, 768, 8, 128), (4096, 1536, 8, 128), (4096, 14336, 2, 8), (6144, 2048, 8, 256)],
              "fp8_block": [(2048, 768, 8, 128), (4096, 1536, 8, 128), (4096, 14336, 2, 8), (7168, 2048, 8, 256)],
              "fp8": [(4096, 1536, 8, 128)]}
MOE_TOKENS = [1, 2, 4, 16, 64, 256, 1024, 4096, 16384]
MOE_LAYOUTS = [(1, 1), (2, 1), (4, 1), (8, 1), (1, 2), (1, 8), (1, 32)]  # (moe_tp, moe_ep)


def main(root: Path) -> None:
    shutil.rmtree(HERE, ignore_errors=True)
    system = root / "h100_sxm"
    gemm = pd.read_parquet(system / "gemm/vllm/0.24.0/gemm_perf.parquet")
    keep = gemm["kernel_source"].isin(["torch.nn.functional.linear", "CutlassFP8ScaledMMLinearKernel"]) \
        & gemm["m"].isin(TOKENS) & pd.Series(list(zip(gemm["n"], gemm["k"]))).isin(SHAPES).to_numpy()
    _write(gemm[keep], system, "gemm/vllm/0.24.0", "gemm_perf")
    for name in ("context_attention_perf", "generation_attention_perf"):
        table = pd.read_parquet(system / f"attention/vllm/0.24.0/{name}.parquet")
        keep = (table["window_size"] == 0) & (table["kv_cache_dtype"] == "bfloat16") \
            & (table["kernel_source"] == "vllm_flash_attn_fa3") & table["head_dim"].isin([128]) \
            & table["num_heads"].isin([8, 16, 32, 64]) & table["num_key_value_heads"].isin([1, 2, 8]) \
            & table["batch_size"].isin([1, 8, 64]) & (table["isl"].isin([1, 512, 2048, 8192])) \
            & table["step"].isin([0, 1023, 8191])
        _write(table[keep], system, "attention/vllm/0.24.0", name)
    nccl = pd.read_parquet(system / "comm/nccl/2.29.2/nccl_perf.parquet")
    nccl = nccl[nccl["op_name"].isin(["all_reduce", "all_gather", "alltoall"]) & (nccl["nccl_dtype"] == "half")]
    _write(nccl, system, "comm/nccl/2.29.2", "nccl_perf")
    _write(pd.concat([nccl, nccl]), system, "comm/nccl/2.30.0", "nccl_perf", provenance="legacy")  # a copy
    custom = pd.read_parquet(system / "comm/vllm/0.24.0/custom_allreduce_perf.parquet")
    _write(custom[custom["backend"] == "vllm_graph"], system, "comm/vllm/0.24.0", "custom_allreduce_perf")
    moe(system)


def moe(system: Path) -> None:
    """The balanced MoE rows of `MOE_SHAPES` at `MOE_TOKENS` and `MOE_LAYOUTS` (block-fp8 under EP: FlashInfer's
    kernel, which the fit leaves out)."""
    table = pd.read_parquet(system / "moe/vllm/0.24.0/moe_perf.parquet")
    shape = pd.Series(list(zip(table["hidden_size"], table["inter_size"], table["topk"], table["num_experts"])))
    layout = pd.Series(list(zip(table["moe_tp_size"], table["moe_ep_size"])))
    keep = (table["distribution"] == "balanced") & table["num_tokens"].isin(MOE_TOKENS) \
        & layout.isin(MOE_LAYOUTS).to_numpy()
    keep &= pd.concat([(table["moe_dtype"] == dtype) & shape.isin(shapes).to_numpy()
                       for dtype, shapes in MOE_SHAPES.items()], axis=1).any(axis=1)
    _write(table[keep], system, "moe/vllm/0.24.0", "moe_perf")


def _write(frame: pd.DataFrame, system: Path, folder: str, name: str, provenance: str | None = None) -> None:
    out = HERE / "h100_sxm" / folder
    out.mkdir(parents=True, exist_ok=True)
    frame.reset_index(drop=True).to_parquet(out / f"{name}.parquet", index=False)
    meta = (system / folder / "collection_meta.yaml")
    text = meta.read_text() if meta.exists() else "schema_version: 1\nprovenance: legacy\n"
    if provenance is not None:
        text = "schema_version: 1\nprovenance: legacy\n"
    (out / "collection_meta.yaml").write_text(text)
    print(f"{out.relative_to(HERE)}/{name}.parquet: {len(frame)} rows")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
