"""Calibration datasets from NVIDIA's measured kernel tables, as the `aiconfigurator-core` package ships them.

The package (PyPI, Apache-2.0; `pip install 'splitsim[aiconfigurator]'`) holds per-kernel timings under
`aiconfigurator_core/systems/data/<system>/<op>/<framework>/<version>/*.parquet`, latency in ms, collective
`message_size` in elements. This module turns one system's tables into a `calibrate.Dataset`:

- GEMMs: `gemm/<framework>/<version>/gemm_perf.parquet`, the kernel the engine runs for each dtype
  (`GEMM_KERNELS`); every other (n, k) weight shape is held out, so no held-out (m, n, k) is fitted.
- attention: `attention/<framework>/<version>/{context,generation}_attention_perf.parquet`, full attention
  (no window) with a bf16 KV cache; FLOPs and bytes from the simulator's own attention op; every other
  (heads, KV heads, head_dim) shape held out.
- collectives: `comm/nccl/<version>/nccl_perf.parquet`, fp16 all_reduce and all_gather over 2-8 GPUs of
  one node; every other message size held out.
- mixture-of-experts layers: `moe/<framework>/<version>/moe_perf.parquet`, the engine's fused-MoE kernel on
  `balanced` routing (`moe_rows`): its two grouped GEMMs on one rank's experts, beside the element-wise work
  the kernel does; every other model shape (hidden, intermediate, top-k, experts) held out.

Versions: a version folder may be a forward-filled copy of an older collection (its rows carry another
version, sometimes twice). The default is the newest folder whose rows are its own, preferring those whose
`collection_meta.yaml` says `provenance: collected`; the choice is reported.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from splitsim.errors import ScenarioError
from splitsim.models.ops import BatchShape, Sharding, attention
from splitsim.models.spec import ModelSpec
from splitsim.validate import fit

PACKAGE = "aiconfigurator_core"
# aiconfigurator system -> (splitsim GPU preset, a cluster preset the profile should apply to)
SYSTEMS: dict[str, tuple[str, str | None]] = {
    "h100_sxm": ("h100-sxm", "h100-nvlink-node"),
    "h200_sxm": ("h200", "h200-nvlink-node"),
    "a100_sxm": ("a100-sxm", "a100-nvlink-node"),
    "l40s": ("l40s", "l40s-pcie-p2p-node"),  # the tables' box had P2P (fabrics/pcie-gen4-2socket.yaml says why)
    "b200_sxm": ("b200", "b200-nvlink-node"),
    "rtx_pro_6000_server": ("rtx-pro-6000", "rtx-pro-6000-pcie-node"),
}
# L2 cache per GPU (datasheets / architecture whitepapers: H100 and H200 SXM 50 MB, A100 40 MB, L40S 96 MB).
# The tables time one GEMM over and over, so a weight matrix the L2 holds is read from cache after the
# first call; serving reads every layer's weights from memory. GEMM rows whose weights are under twice the
# L2 are left out (`L2_FACTOR`): their memory side would be fitted to the cache.
L2_BYTES = {"h100_sxm": 50e6, "h200_sxm": 50e6, "a100_sxm": 40e6, "l40s": 96e6,
            "b200_sxm": 126e6, "rtx_pro_6000_server": 128e6}  # Blackwell: public spec listings, assumed
L2_FACTOR = 2.0
NVLINK = {"h100_sxm": True, "h200_sxm": True, "a100_sxm": True, "l40s": False, "b200_sxm": True,
          "rtx_pro_6000_server": False}  # every GPU pair on NVLink
NVLS_SYSTEMS = ("h100_sxm", "h200_sxm", "b200_sxm")  # third-generation NVSwitch: it reduces (NCCL's NVLS algorithm)
FRAMEWORKS = ("vllm", "trtllm", "sglang")
# Engines whose own all-reduce follows vLLM's kernels and rules (SGLang's custom_all_reduce.py is derived from
# vLLM's); TRT-LLM's own all-reduce strategies are not modelled yet.
CUSTOM_ALLREDUCE_FRAMEWORKS = ("vllm", "sglang")
# The GEMM kernel each engine runs for a dtype (the table's kernel_source; older collections' names after the
# first), and its weight bytes.
GEMM_KERNELS: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": {"bf16": ("torch.nn.functional.linear", "vllm_default"), "fp8": ("CutlassFP8ScaledMMLinearKernel",),
             "fp4": ("FlashInferCuteDslNvFp4LinearKernel", "FlashInferCutlassNvFp4LinearKernel")},
    "trtllm": {"bf16": ("torch_flow", "trtllm_default"), "fp8": ("torch_flow",)},
    "sglang": {"bf16": ("sglang_torch_linear", "sglang"), "fp8": ("sglang_sgl_kernel_fp8_scaled_mm", "sglang")},
}
TABLE_DTYPES = {"bfloat16": "bf16", "fp8": "fp8", "nvfp4": "fp4"}
WEIGHT_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5}  # as models/precision.py counts them
NCCL_OPS = {"all_reduce": "allreduce", "all_gather": "allgather", "alltoall": "alltoall"}
MS = 1e-3
# A MoE table's dtype -> the compute dtype it fits, in order of preference: fp8 from block-scaled rows (DeepSeek-V3
# and Qwen3-FP8 checkpoints: 128x128 weight blocks, per-group activations), per-tensor fp8 rows only where a table has
# no block rows (on H100 vLLM runs per-tensor fp8 experts in another kernel, several times slower).
MOE_DTYPES: dict[str, tuple[str, ...]] = {"bf16": ("bfloat16",), "fp8": ("fp8_block", "fp8"), "fp4": ("nvfp4",)}
# Kernels of the older collector (vLLM's `fused_experts` called directly, default dtype float32); the newer one
# builds vLLM's FusedMoE module (kernel_source `vllm_<method>_<backend>_<experts>`) under a bfloat16 default dtype,
# in which `balanced_logits` then computes (`balanced_routing`).
LEGACY_MOE_KERNELS = ("vllm_fused_moe", "vllm_mxfp4_moe", "vllm_flashinfer_trtllm_moe_fp4", "vllm_marlin_int4_moe")


@dataclass(frozen=True)
class Table:
    """One table chosen for the fit: where it is, which version, and why that one."""

    op: str
    framework: str
    version: str
    reason: str
    path: Path

    def describe(self) -> str:
        return f"{self.op}/{self.framework} {self.version} ({self.reason})"


def data_root(given: Path | None = None) -> Path:
    """The tables' root: `given` (a copy of the package's `systems/data` folder), else the installed package's."""
    if given is not None:
        if not given.is_dir():
            raise ScenarioError(f"--tables {given}: no such folder")
        return given
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ScenarioError("--aiconfigurator: the aiconfigurator-core package is not installed "
                            "(pip install 'splitsim[aiconfigurator]', Python 3.11 or later)")
    return Path(next(iter(spec.submodule_search_locations))) / "systems" / "data"


def package_version(given: Path | None) -> str:
    """`aiconfigurator-core X.Y.Z` (the installed package), or what `--tables` names: the figures' source."""
    if given is not None:
        return f"aiconfigurator-core tables at {given.name}/"
    import importlib.metadata

    try:
        return f"aiconfigurator-core {importlib.metadata.version('aiconfigurator-core')}"
    except importlib.metadata.PackageNotFoundError:
        return "aiconfigurator-core"


def _version_key(version: str) -> tuple[tuple[int, str], ...]:
    """Sortable: numbers as numbers, so 0.5.14 > 0.5.9 and 1.3.0rc20 > 1.3.0rc11."""
    return tuple((int(part), "") if part.isdigit() else (-1, part) for part in re.findall(r"\d+|[a-z]+", version))


def _own_rows(path: Path, version: str) -> bool:
    """Whether a version folder's rows are its own collection: its tables' `version` column, where they have
    one, names the folder's version on most rows (b200's MoE table has 972 rows of a preview build appended
    beside its 66,831: `moe_rows` reads its own), and its rows are not there twice (a stray repeated measurement
    is)."""
    for table in path.glob("*.parquet"):
        frame = pd.read_parquet(table)
        if "version" in frame.columns and (frame["version"].astype(str) == version).mean() <= 0.5:
            return False
        if len(frame) and frame.duplicated().mean() >= 0.5:
            return False
    return True


def pick_table(root: Path, system: str, op: str, framework: str, version: str | None = None) -> Table:
    """The version folder of `<system>/<op>/<framework>` to fit: `version` if given, else the newest collection."""
    folder = root / system / op / framework
    versions = sorted((p.name for p in folder.iterdir() if p.is_dir()), key=_version_key) if folder.is_dir() else []
    if not versions:
        raise ScenarioError(f"--aiconfigurator {system}: no {op} tables for {framework} "
                            f"(valid systems: {', '.join(systems(root))})")
    if version is not None:
        if version not in versions:
            raise ScenarioError(f"--version {version}: {system} has {op}/{framework} tables for "
                                f"{', '.join(versions)}")
        return Table(op, framework, version, "as asked", folder / version)
    own = [v for v in versions if _own_rows(folder / v, v)]
    if not own:
        raise ScenarioError(f"--aiconfigurator {system}: every {op}/{framework} folder copies another's rows")
    collected = [v for v in own if _provenance(folder / v) == "collected"]
    chosen = (collected or own)[-1]
    skipped = [v for v in versions if _version_key(v) > _version_key(chosen)]
    reason = "newest collected" if collected else "newest with its own rows"
    if skipped:
        reason += f"; newer {', '.join(skipped)} skipped (copied or older collections)"
    return Table(op, framework, chosen, reason, folder / chosen)


def _provenance(path: Path) -> str:
    meta = path / "collection_meta.yaml"
    if not meta.is_file():
        return ""
    data = yaml.safe_load(meta.read_text())
    return str(data.get("provenance", "")) if isinstance(data, dict) else ""


def systems(root: Path) -> list[str]:
    """The systems with tables under `root` that map to a splitsim GPU preset."""
    return [s for s in SYSTEMS if (root / s).is_dir()]


# ---------------------------------------------------------------------------------------------- rows

def _read(path: Path, required: tuple[str, ...], defaults: dict[str, Any] | None = None) -> pd.DataFrame:
    """A table with the columns we use; older collections lack some optional ones (then their default)."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise ScenarioError(f"{path}: not a readable parquet table ({str(err).splitlines()[0]})") from None
    for column, value in (defaults or {}).items():
        if column not in frame.columns:
            frame[column] = value
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ScenarioError(f"{path}: no column {missing[0]} (has {', '.join(map(str, frame.columns))})")
    return frame


LAUNCH_ROWS = (16, 65536)  # at most this m and n·k: a GEMM whose time is its launch, cached or not


def gemm_rows(table: Table, framework: str, l2_bytes: float = 0.0) -> tuple[pd.DataFrame, float]:
    """GEMM rows (m, n, k, weight_bytes, dtype, op, seconds, train) of the engine's kernel per dtype, whose
    weights are at least L2_FACTOR × `l2_bytes` (the rest were read from the L2 cache), and the launch cost:
    the median time of the bf16 GEMMs so small (`LAUNCH_ROWS`) that they are nothing else."""
    frame = _read(table.path / "gemm_perf.parquet", ("kernel_source", "gemm_dtype", "m", "n", "k", "latency"))
    parts = []
    for dtype, kernels in GEMM_KERNELS[framework].items():
        table_dtype = next(name for name, ours in TABLE_DTYPES.items() if ours == dtype)
        rows = frame[frame["gemm_dtype"] == table_dtype]
        kernel = next((k for k in kernels if (rows["kernel_source"] == k).any()), None)
        part = rows[rows["kernel_source"] == kernel]
        parts.append(pd.DataFrame({"m": part["m"], "n": part["n"], "k": part["k"],
                                   "weight_bytes": WEIGHT_BYTES[dtype], "dtype": dtype, "op": dtype,
                                   "seconds": part["latency"] * MS}))
    rows = pd.concat(parts, ignore_index=True)
    tiny = rows[(rows["dtype"] == "bf16") & (rows["m"] <= LAUNCH_ROWS[0]) & (rows["n"] * rows["k"] <= LAUNCH_ROWS[1])]
    launch_s = float(tiny["seconds"].median()) if len(tiny) else float("nan")
    rows = rows[rows["n"] * rows["k"] * rows["weight_bytes"] >= L2_FACTOR * l2_bytes].reset_index(drop=True)
    if not (rows["dtype"] == "bf16").any():
        raise ScenarioError(f"{table.path}: no bf16 GEMM rows of {framework}'s kernels "
                            f"({', '.join(GEMM_KERNELS[framework]['bf16'])}) with weights of at least "
                            f"{L2_FACTOR * l2_bytes / 1e6:g} MB (twice the L2 cache)")
    shapes = rows["n"].astype(np.int64) * 1_000_003 + rows["k"].astype(np.int64)  # one key per (n, k)
    rows["train"] = fit.every_other(shapes.to_numpy())
    return rows, launch_s


@functools.cache
def _attention_model(heads: int, kv_heads: int, head_dim: int) -> ModelSpec:
    return ModelSpec(name="table", hidden_size=heads * head_dim, intermediate_size=4 * heads * head_dim,
                     num_layers=1, num_heads=heads, num_kv_heads=kv_heads, head_dim_override=head_dim,
                     vocab_size=32000, max_position_embeddings=1 << 20)


def attention_rows(table: Table) -> pd.DataFrame:
    """Attention rows (flops, nbytes, phase, op, seconds, train): full attention, bf16 KV cache, the newest
    kernel; prefill as `batch_size` prompts of `isl` tokens, decode as `batch_size` sequences at context
    `step` + 1."""
    rows = []
    sharding = Sharding(tp=1, weights="bf16", kv_cache="bf16", compute="bf16")
    for phase, name in (("prefill", "context_attention_perf"), ("decode", "generation_attention_perf")):
        frame = _read(table.path / f"{name}.parquet",
                      ("batch_size", "isl", "num_heads", "num_key_value_heads", "head_dim", "kv_cache_dtype",
                       "latency") + (("step",) if phase == "decode" else ()),
                      {"window_size": 0, "kernel_source": "", "step": 0})
        frame = frame[(frame["window_size"] == 0) & (frame["kv_cache_dtype"] == "bfloat16")
                      & (frame["num_heads"] % frame["num_key_value_heads"] == 0)]
        kernel = sorted(frame["kernel_source"].unique())[0] if len(frame) else None
        frame = frame[frame["kernel_source"] == kernel]
        columns = ("num_heads", "num_key_value_heads", "head_dim", "batch_size", "isl", "step", "latency")
        for heads, kv_heads, head_dim, batch, length, step, latency in zip(
                *(frame[c].to_numpy() for c in columns), strict=True):
            key = (int(heads), int(kv_heads), int(head_dim))
            shape = (BatchShape.of(((int(length), 0),) * int(batch)) if phase == "prefill" else
                     BatchShape(num_decode=int(batch), decode_context=int(batch) * (int(step) + 1)))
            op = attention(_attention_model(*key), shape, sharding)[0 if phase == "prefill" else 1]
            rows.append((op.flops, op.nbytes, phase, f"attention {phase}", float(latency) * MS, key))
    frame = pd.DataFrame(rows, columns=["flops", "nbytes", "phase", "op", "seconds", "shape"])
    keys = frame["shape"].map(lambda s: s[0] * 1_000_000 + s[1] * 1_000 + s[2]).to_numpy()
    frame["train"] = fit.every_other(keys)
    return frame.drop(columns="shape")


def collective_rows(table: Table) -> pd.DataFrame:
    """NCCL rows (op, group_size, nbytes, seconds, train): fp16 all_reduce, all_gather and alltoall inside a node.
    An all-to-all's `message_size` is each rank's whole buffer, its own share included (as
    `all_to_all_single`'s input): the row's `nbytes` is what it sends to the others, (p−1)/p of it."""
    frame = _read(table.path / "nccl_perf.parquet", ("op_name", "nccl_dtype", "num_gpus", "message_size", "latency"))
    frame = frame[frame["op_name"].isin(list(NCCL_OPS)) & (frame["nccl_dtype"] == "half")]
    p = frame["num_gpus"].astype(int)
    nbytes = frame["message_size"].astype(float) * 2.0
    ops = frame["op_name"].map(NCCL_OPS)
    a2a = (ops == "alltoall").to_numpy()
    rows = pd.DataFrame({"op": ops, "group_size": p, "nbytes": np.where(a2a, nbytes * (p - 1) / p, nbytes),
                         "seconds": frame["latency"] * MS})
    train = np.zeros(len(rows), dtype=bool)  # every other measured size, apart for the rings and the all-to-alls
    train[~a2a] = fit.every_other(nbytes.to_numpy()[~a2a])
    train[a2a] = fit.every_other(nbytes.to_numpy()[a2a])
    rows["train"] = train
    return rows.reset_index(drop=True)


def _bf16(values: np.ndarray) -> np.ndarray:
    """Rounded to bfloat16 (nearest, ties to even), kept as float32."""
    bits = np.asarray(values, np.float32).view(np.uint32).astype(np.uint64)
    return (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


@functools.cache
def balanced_routing(tokens: int, experts: int, topk: int, bf16: bool = True) -> np.ndarray:
    """Tokens per expert under the tables' `balanced` routing, as aiconfigurator's collector draws it
    (collector/helper.py `balanced_logits`): token t takes experts (t + j·s) mod E, j < k, s = ⌈E/k⌉; with fewer
    tokens than s, ⌊t·s/T + j·s⌋ mod E, in bfloat16 arithmetic when `bf16` (the newer collector's default dtype;
    it moves a few experts of small batches over 256 experts)."""
    stride = math.ceil(experts / topk)
    t = np.arange(tokens)[:, None]
    j = np.arange(topk)[None, :]
    if tokens >= stride:
        chosen = (t + j * stride) % experts
    elif bf16:
        share = _bf16(_bf16(t * stride) / np.float32(tokens))
        value = _bf16(share + _bf16(j * stride))
        chosen = np.trunc(_bf16(value - np.floor(value / experts) * experts)).astype(np.int64)
    else:
        chosen = np.floor((t * stride / tokens + j * stride) % experts).astype(np.int64)
    return np.bincount(chosen.ravel(), minlength=experts)


def _expert_map_kernel(kernel: str) -> bool:
    """Whether the kernel runs every routed row of the batch through its element-wise steps under EP (vLLM's Triton
    fused MoE with an expert map: other ranks' rows are zero-filled, activated and summed) rather than only the
    rank's own rows (FlashInfer's CUTLASS MoE permutes the rank's rows first)."""
    return "triton" in kernel or kernel == "vllm_fused_moe"


MOE_LAUNCH_ROWS = (4, 16e6)  # at most this many tokens and bytes of experts' weights: a fused MoE that is its fixed
# cost (the weights well inside every system's L2)
MOE_COLUMNS = ["dtype", "weight_bytes", "m", "groups", "gate_up_n", "gate_up_k", "down_n", "down_k", "act_bytes",
               "reduce_bytes", "seconds", "tokens", "hidden", "inter", "topk", "experts", "moe_tp", "moe_ep", "kernel"]


def moe_work(frame: pd.DataFrame) -> pd.DataFrame:
    """MoE table rows (its columns, and `dtype`: the compute dtype) as one rank's work (`moe_rows` says what),
    columns `MOE_COLUMNS`."""
    records = []
    columns = ("dtype", "kernel_source", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts",
               "moe_tp_size", "moe_ep_size", "latency")
    for dtype, kernel, tokens, hidden, inter, topk, experts, moe_tp, moe_ep, latency in zip(
            *(frame[c].to_numpy() for c in columns), strict=True):
        tokens, hidden, topk, experts, moe_tp, moe_ep = (int(v) for v in (tokens, hidden, topk, experts, moe_tp,
                                                                          moe_ep))
        counts = balanced_routing(tokens, experts, topk, kernel not in LEGACY_MOE_KERNELS)[:experts // moe_ep]
        routed, reached = int(counts.sum()), int(np.count_nonzero(counts))
        ffn = int(inter) // moe_tp
        rows_run = tokens * topk if _expert_map_kernel(str(kernel)) else routed
        act = rows_run * 3 * ffn * 2.0 + (rows_run - routed) * (2 * ffn + hidden) * 2.0
        reduce = (rows_run + tokens) * hidden * 2.0
        records.append((dtype, WEIGHT_BYTES[dtype], -(-routed // max(1, reached)), float(reached), 2 * ffn, hidden,
                        hidden, ffn, act, reduce, float(latency) * MS, tokens, hidden, int(inter), topk, experts,
                        moe_tp, moe_ep, str(kernel)))
    return pd.DataFrame(records, columns=MOE_COLUMNS)


def moe_rows(table: Table, has_fp8: bool = True, has_fp4: bool = False,
             l2_bytes: float = 0.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fused-MoE kernel's `balanced` rows, one per timing, as the work of one rank (EP rank 0, or a TP rank of
    experts split `moe_tp_size` ways): `groups` experts its routed tokens reach (`balanced_routing`), `m` rows each
    (the routed rows over the experts, rounded up, as models/ops.py `moe_layer` does), gate/up `[m×h]·[h×2f]` and
    down `[m×f]·[f×h]` with f = inter/moe_tp; and the element-wise work the kernel does besides (16-bit):
    SiLU-and-mul over its rows (3·f values each), the top-k reduction (its rows and the T outputs, h values each)
    and, under an expert map, the zero-filled GEMM outputs of other ranks' rows. Its rows: the rank's routed ones,
    or all T·k under an expert map (`_expert_map_kernel`).

    Per dtype (`MOE_DTYPES`) one kernel: the one the engine runs for TP-split experts (EP 1). vLLM runs another
    for block-fp8 under EP on Hopper (FlashInfer's CUTLASS MoE), whose time at large batches follows the rank's
    experts times all the batch's tokens, not the routed rows: its rows are left out. So are rows whose experts'
    weights (groups · 3·f·h) are under L2_FACTOR × `l2_bytes`: the table times one layer over and over, so they
    come from the L2 cache after the first call (as `gemm_rows` leaves such GEMMs out); of those, the smallest
    (`MOE_LAUNCH_ROWS`) are returned apart: their time is the kernel's fixed cost. Columns (`MOE_COLUMNS`): dtype,
    weight_bytes, m, groups, gate_up_n, gate_up_k, down_n, down_k, act_bytes, reduce_bytes, seconds, the row's
    tokens, hidden, inter, topk, experts, moe_tp, moe_ep, kernel; and `train` (every other model shape)."""
    frame = _read(table.path / "moe_perf.parquet",
                  ("kernel_source", "moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk", "num_experts",
                   "moe_tp_size", "moe_ep_size", "distribution", "latency"), {"version": table.version})
    frame = frame[(frame["distribution"] == "balanced") & (frame["version"].astype(str) == table.version)]
    computes = {"bf16": True, "fp8": has_fp8, "fp4": has_fp4}
    parts = []
    for dtype, names in MOE_DTYPES.items():
        name = next((n for n in names if (frame["moe_dtype"] == n).any()), None)
        if name is None or not computes[dtype]:
            continue
        rows = frame[frame["moe_dtype"] == name]
        tp_split = rows[rows["moe_ep_size"] == 1]
        kernel = (tp_split if len(tp_split) else rows)["kernel_source"].value_counts().index[0]
        parts.append(rows[rows["kernel_source"] == kernel].assign(dtype=dtype))
    rows = moe_work(pd.concat(parts) if parts else frame.iloc[:0].assign(dtype=""))
    rows = rows[rows["groups"] > 0]
    weights = rows["groups"] * 3 * rows["down_k"] * rows["hidden"] * rows["weight_bytes"]
    cached = (weights < L2_FACTOR * l2_bytes).to_numpy()
    smallest = rows[(rows["tokens"] <= MOE_LAUNCH_ROWS[0]) & (weights <= MOE_LAUNCH_ROWS[1])].reset_index(drop=True)
    rows = rows[~cached].reset_index(drop=True)
    shapes = ((rows["hidden"].astype(np.int64) * 1_000_003 + rows["inter"]) * 1009 + rows["experts"]) * 31 \
        + rows["topk"]  # one key per model shape
    train = np.zeros(len(rows), dtype=bool)
    for index in rows.groupby("dtype").indices.values():
        train[index] = fit.every_other(shapes.to_numpy()[index])
    rows["train"] = train
    return rows, smallest


def custom_allreduce_rows(table: Table) -> pd.DataFrame:
    """The engine's own all-reduce as it runs inside CUDA graphs (group_size, nbytes, seconds, train): bf16
    rows of the `*_graph` backend; the table's message size is in elements."""
    frame = _read(table.path / "custom_allreduce_perf.parquet", ("num_gpus", "message_size", "latency"),
                  {"backend": "graph", "allreduce_dtype": "bfloat16"})
    frame = frame[frame["backend"].astype(str).str.endswith("graph") & (frame["allreduce_dtype"] == "bfloat16")]
    rows = pd.DataFrame({"group_size": frame["num_gpus"].astype(int),
                         "nbytes": frame["message_size"].astype(float) * 2.0, "seconds": frame["latency"] * MS})
    rows["train"] = fit.every_other(rows["nbytes"].to_numpy())
    return rows.reset_index(drop=True)
