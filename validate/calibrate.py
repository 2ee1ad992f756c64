"""`splitsim calibrate`: fit a hardware profile to measurements and say how well it predicts held-out rows.

Two inputs, told apart by what the folder holds:

- folders written by `splitsim validate run` (`config.json` + `measurements.csv`): GEMMs from `micro` gemm
  rows and from `op` rows of qkv/o_proj/gate_up/down (shapes from the config's model spec and the row's
  TP), attention from `micro` attention rows and `op` attention rows, collectives from `micro`
  allreduce/allgather, the all-to-all (`AllToAll`, fitted apart from the ring) from `micro` alltoall,
  send/recv from `micro` sendrecv, the grouped GEMM figures (`Efficiency.grouped_gemm`, by the fit the
  aiconfigurator's fused-MoE rows take) from `micro` grouped_gemm, if the folders have such rows. The GPU is the
  config's cluster preset's (`cpu-local` on CPU). Held out: every other token count (GEMMs; grouped GEMMs: rows
  per expert, within each shape and expert count) and size (the rest).
- a Vidur profiling folder (`compute/`, `network/`): `--gpu` picks `compute/<gpu>/` (every model under
  it), `--network` picks `network/<topology>/`: rows with `num_workers == devices_per_node` are inside a
  node, rows with `devices_per_node == 1` between nodes. Held out: the models in `VIDUR_HELD_OUT` and,
  for collectives, every other size.

Every fit uses the training rows only; the profile's `errors` are on the held-out rows (or, where nothing
was held out, on the training rows, marked `held_out: false`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from splitsim.error_bars import HALF_NORMAL_MEDIAN, Z
from splitsim.errors import ScenarioError
from splitsim.hardware.catalog import load_cluster, load_gpu
from splitsim.hardware.fabric import AllToAll, CustomAllReduce
from splitsim.hardware.gpu import Efficiency, GpuSpec
from splitsim.hardware.profile import ErrorStats, HardwareProfile, LinkFit, apply_profile
from splitsim.models import ops
from splitsim.models.precision import BYTES_PER_ELEMENT, compute_dtype
from splitsim.models.spec import ModelSpec
from splitsim.validate import aiconfigurator, fit, measurements, vidur
from splitsim.validate.compare import measurement_id  # the name `validate compare` recognises
from splitsim.writing import check_out_path

VIDUR_GPUS = {"h100": "h100-sxm", "a100": "a100-sxm"}
VIDUR_CLUSTERS = {"h100_dgx": "h100-ib-2node", "a100_dgx": "a100-nvlink-node"}  # to check the profile applies
VIDUR_HELD_OUT = ("meta-llama/Llama-2-7b-hf", "Qwen/Qwen-72B", "microsoft/phi-2", "meta-llama/Meta-Llama-3-8B",
                  "meta-llama/Meta-Llama-3-70B")
GEMM_OPS = ("qkv", "o_proj", "gate_up", "down")
GROUPED_COLUMNS = ["m", "groups", "gate_up_n", "gate_up_k", "down_n", "down_k", "weight_bytes", "dtype", "act_bytes",
                   "reduce_bytes", "seconds"]
GROUPED_NOTE = ("the runner's grouped_gemm rows (each expert's matmul back to back, the stand-in of one grouped "
                "launch: one grouped GEMM a row)")
ELEMENTWISE_OPS = ("input_norm", "post_norm", "act")  # the runner times RoPE inside attention


@dataclass
class Dataset:
    """Tidy rows per op kind, each with a boolean `train` column (False: held out)."""

    gpu: GpuSpec
    cluster: str | None  # a preset the profile should apply to, if known
    gemm: pd.DataFrame
    attention: pd.DataFrame | None = None
    elementwise: pd.DataFrame | None = None  # nbytes, seconds
    collectives: pd.DataFrame | None = None  # inside a node: op, group_size, nbytes, seconds
    p2p: pd.DataFrame | None = None
    inter_collectives: pd.DataFrame | None = None  # between nodes, group_size = nodes
    inter_p2p: pd.DataFrame | None = None
    fitted_on: list[str] = field(default_factory=list)
    description: str = ""
    nvls: bool = False  # the node's NVSwitch reduces: fit NVLS all-reduces beside the ring
    gemm_launch_s: float | None = None  # a GEMM's launch cost measured apart (then held in the fit)
    custom_allreduce: pd.DataFrame | None = None  # the engine's own all-reduce: group_size, nbytes, seconds
    custom_rules: CustomAllReduce | None = None  # its size limits (vLLM's, from the cluster's fabric preset)
    nvlink: bool = True  # every pair of GPUs on NVLink (else PCIe: the engine's own all-reduce for 2 GPUs only)
    by_group: bool = False  # a ring bandwidth per group size (PCIe: a ring runs at the widest level it spans)
    moe: pd.DataFrame | None = None  # fused-MoE timings as grouped GEMMs + element-wise work (aiconfigurator.moe_rows;
    # the runner's grouped_gemm rows: one grouped GEMM each, down_n = 0, no element-wise bytes)
    moe_smallest: pd.DataFrame | None = None  # the smallest of them: their time is the fused kernel's fixed cost
    moe_note: str = ""  # which MoE table and kernels, for the notes


@dataclass
class Calibration:
    profile: HardwareProfile
    gemm_by_op: dict[str, ErrorStats]
    notes: list[str]


def _alternate(rows: pd.DataFrame, key: str, by: list[str]) -> np.ndarray:
    """Training mask: every other distinct `key` within each group of `by`."""
    mask = np.zeros(len(rows), bool)
    for index in rows.groupby(by).indices.values():
        mask[index] = fit.every_other(rows[key].to_numpy()[index])
    return mask


def _stats(predicted: np.ndarray, rows: pd.DataFrame, held_out: bool) -> ErrorStats:
    r = fit.residuals(predicted, rows["seconds"].to_numpy(float))
    return ErrorStats(rows=r.rows, median=r.median, max=r.max, held_out=held_out)


def _evaluate(rows: pd.DataFrame, predict: Callable[[pd.DataFrame], np.ndarray]) -> ErrorStats:
    """Errors on the held-out rows, and how often the truth falls inside the 80 % interval a run would give
    (sim/uncertainty.py) if the fit's own training residuals set its width: an out-of-sample check."""
    test = rows[~rows["train"]]
    if not len(test):
        return _stats(predict(rows), rows, False)
    stats = _stats(predict(test), test, True)
    train = rows[rows["train"]]
    if not len(train):
        return stats
    train_median = fit.residuals(predict(train), train["seconds"].to_numpy(float)).median
    sigma = train_median / HALF_NORMAL_MEDIAN
    log_ratio = np.abs(np.log(predict(test) / test["seconds"].to_numpy(float)))
    return stats.model_copy(update={"within_80": float(np.mean(log_ratio <= Z * sigma))})


def _fail(where: str, err: ValueError) -> ScenarioError:
    """One line: a fitted figure the profile schema refuses (say 25 TB/s from timings that do not grow with
    size) names the figure and why, not pydantic's whole report."""
    if isinstance(err, ValidationError):
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        return ScenarioError(f"{where}: the fit gives {field} = {first.get('input')!r}, which cannot be real: "
                             f"{first['msg'].removeprefix('Value error, ')} (check the measurements)")
    return ScenarioError(f"{where}: {err}")


# ------------------------------------------------------------------------------------------- fitting

def calibrate(data: Dataset, name: str) -> Calibration:
    """Fit every kind the dataset has, on its training rows, and build the profile."""
    notes: list[str] = []
    errors: dict[str, ErrorStats] = {}
    where = data.description
    try:
        gpu = _fit_gemms(data.gemm, data.gpu, notes, data.gemm_launch_s)
    except ValueError as err:
        raise _fail(where, err) from None
    gemm_s = partial(fit.gemm_times_s, gpu)
    errors["gemm"] = _evaluate(data.gemm, gemm_s)
    by_op = {str(op): _evaluate(part, gemm_s) for op, part in data.gemm.groupby("op")} \
        if "op" in data.gemm.columns else {}
    if "dtype" in data.gemm.columns and data.gemm["dtype"].nunique() > 1:  # each dtype's own error, in the profile
        errors |= {f"gemm {dtype}": _evaluate(part, gemm_s) for dtype, part in data.gemm.groupby("dtype")}
    efficiency = gpu.efficiency
    if data.elementwise is not None and len(data.elementwise) >= 2:
        try:
            point = fit.fit_p2p(data.elementwise[data.elementwise["train"]])  # the same α + S/B form
        except ValueError as err:
            raise _fail(where, err) from None
        eta = point.bw_bytes_per_s / gpu.memory_bw_bytes_per_s
        if eta > 1:
            notes.append(f"element-wise kernels beat the memory bandwidth (η {eta:.2f}): capped at 1")
            eta = 1.0
        efficiency = efficiency.model_copy(update={"elementwise": eta, "elementwise_launch_s": point.latency_s})
        gpu = gpu.model_copy(update={"efficiency": efficiency})
        errors["elementwise"] = _evaluate(data.elementwise, lambda rows: np.array(
            [gpu.elementwise_time_s(b) for b in rows["nbytes"].to_numpy(float)]))
    if data.moe is not None and len(data.moe):
        efficiency = _fit_grouped(data, gpu, errors, notes)
        gpu = gpu.model_copy(update={"efficiency": efficiency})
    attention_note = f"attention efficiency {efficiency.attention:g} kept from {data.gpu.name} (no attention rows)"
    attention_rows = data.attention
    if attention_rows is not None and len(attention_rows):
        if "rope_bytes" in attention_rows.columns:
            # The runner's attention span holds RoPE too (as vLLM's attention layer does); the simulator
            # prices RoPE as its own element-wise op, so fit attention on what is left.
            measured = attention_rows["seconds"].to_numpy(float)
            rope_s = np.array([gpu.elementwise_time_s(b) for b in attention_rows["rope_bytes"].to_numpy(float)])
            attention_rows = attention_rows.assign(seconds=np.maximum(measured - rope_s, 0.1 * measured))
        if "phase" in attention_rows.columns:  # prefill and decode kernels apart (profile schema 2)
            efficiency, attention_note = _fit_attention_phases(attention_rows, gpu, efficiency, errors, where)
            gpu = gpu.model_copy(update={"efficiency": efficiency})
        else:
            att = fit.fit_attention(attention_rows[attention_rows["train"]], gpu)
            efficiency = efficiency.model_copy(update={"attention": att.attention})
            gpu = gpu.model_copy(update={"efficiency": efficiency})
            errors["attention"] = _evaluate(attention_rows,
                                            partial(fit.attention_times_s, gpu, attention=att.attention))
            attention_note = ("attention efficiency fitted" if att.fitted else
                              f"attention efficiency {att.attention:g} kept from {data.gpu.name} "
                              "(no compute-bound row)")
    notes.append(attention_note)
    gemm_err = errors["gemm"]
    efficiency = efficiency.model_copy(update={"source": (
        f"Fitted by splitsim calibrate (least squares on log time) to {where}: "
        f"{int(data.gemm['train'].sum())} GEMM rows, tile by best fit; "
        f"{'held-out' if gemm_err.held_out else 'in-sample'} median error {gemm_err.median:.1%}, "
        f"worst {gemm_err.max:.1%}. {attention_note[0].upper()}{attention_note[1:]}.")})
    try:
        intra = _link(data.collectives, data.p2p, None, errors, "", notes, nvls=data.nvls, by_group=data.by_group)
        launch = intra.collective_launch_s if intra is not None else None
        inter = _link(data.inter_collectives, data.inter_p2p, launch, errors, "_inter_node", notes)
        if intra is not None and data.custom_allreduce is not None and data.custom_rules is not None:
            intra = intra.model_copy(update={"custom_allreduce": _fit_custom_allreduce(data, errors, notes)})
    except ValueError as err:
        raise _fail(where, err) from None
    try:
        efficiency = efficiency.model_copy(update={"held_out_errors": {}})  # its own are `errors`, not the preset's
        profile = HardwareProfile(name=name, gpu=data.gpu.name, efficiency=efficiency, intra_node=intra,
                                  inter_node=inter, fitted_on=data.fitted_on, errors=errors)
    except ValidationError as err:
        raise _fail(where, err) from None
    if data.cluster is not None:
        try:
            apply_profile(load_cluster(data.cluster), profile)
        except ValueError as err:
            notes.append(f"warning: the profile does not apply to cluster {data.cluster}: {err}")
    return Calibration(profile, by_op, notes)


def _fit_gemms(rows: pd.DataFrame, gpu: GpuSpec, notes: list[str], launch_s: float | None = None) -> GpuSpec:
    """The GEMM figures: all of them on bf16 rows (or on every row, when they hold one dtype), then each other
    dtype's own η_peak, γ, m½ and tile with the memory efficiency and launch cost held (profile schema 2)."""
    train = rows[rows["train"]]
    dtypes = sorted(set(train["dtype"])) if "dtype" in train.columns else []
    base = "bf16" if "bf16" in dtypes else (dtypes[0] if dtypes else None)
    fitted = fit.fit_gemm(train if len(dtypes) < 2 else train[train["dtype"] == base], gpu, launch_s=launch_s)
    if launch_s is not None:
        notes.append(f"GEMM launch cost {launch_s * 1e6:.3g} µs: the median of the smallest GEMMs, held")
    gpu = fitted.gpu(gpu)
    own = {}
    for dtype in dtypes:
        part = train[train["dtype"] == dtype]
        if dtype == base:
            continue
        if len(part) < 5:
            notes.append(f"{dtype} GEMMs: {len(part)} training rows, too few for their own fit: {base}'s used")
            continue
        e = gpu.efficiency
        own[dtype] = fit.gemm_shape(fit.fit_gemm(part, gpu, memory_and_launch=(e.memory, e.launch_s)))
    if own:
        gpu = gpu.model_copy(update={"efficiency": gpu.efficiency.model_copy(update={"gemm_by_dtype": own})})
    return gpu


def _fit_grouped(data: Dataset, gpu: GpuSpec, errors: dict[str, ErrorStats], notes: list[str]) -> Efficiency:
    """Each dtype's grouped GEMM figures (`Efficiency.grouped_gemm`) from the fused-MoE rows, the element-wise work
    held at the GPU's fitted figures and the fixed cost at the smallest rows' (`fit.grouped_launch_s`). A dtype keeps
    them only if they price its training rows better (median error) than its dense GEMM figures do; else it is
    priced as today. Held-out errors as `moe <dtype>`, of the pricing kept."""
    assert data.moe is not None
    grouped = {}
    smallest = data.moe_smallest if data.moe_smallest is not None else data.moe.iloc[:0]
    dense = gpu.model_copy(update={"efficiency": gpu.efficiency.model_copy(update={"grouped_gemm": {}})})
    for dtype, part in data.moe.groupby("dtype"):
        train = part[part["train"]]
        if len(train) < 5:
            notes.append(f"MoE {dtype}: {len(train)} training rows, too few for a grouped GEMM fit: dense figures kept")
            continue
        small = smallest[smallest["dtype"] == dtype]
        launch_s = fit.grouped_launch_s(small, gpu) if len(small) else None
        try:
            own = fit.fit_grouped_gemm(train, gpu, launch_s)
        except ValueError as err:
            raise _fail(data.description, err) from None
        with_own = gpu.model_copy(update={"efficiency": gpu.efficiency.model_copy(
            update={"grouped_gemm": {str(dtype): own}})})
        measured = train["seconds"].to_numpy(float)
        fitted_error = fit.residuals(fit.moe_times_s(with_own, train), measured).median
        dense_error = fit.residuals(fit.moe_times_s(dense, train), measured).median
        if fitted_error >= dense_error:
            notes.append(f"MoE {dtype}: grouped figures price the training rows no better than the dense GEMM figures "
                         f"({fitted_error:.1%} against {dense_error:.1%} median): dense figures kept")
            continue
        grouped[str(dtype)] = own
        if launch_s is not None:
            notes.append(f"grouped {dtype} GEMM fixed cost {launch_s * 1e6:.3g} µs: from the median of the "
                         f"{len(small)} smallest MoE rows, held")
    efficiency = gpu.efficiency.model_copy(update={"grouped_gemm": grouped})
    fitted = gpu.model_copy(update={"efficiency": efficiency})
    for dtype, part in data.moe.groupby("dtype"):
        errors[f"moe {dtype}"] = _evaluate(part, partial(fit.moe_times_s, fitted))
    elementwise = bool(((data.moe["act_bytes"] > 0) | (data.moe["reduce_bytes"] > 0)).any())
    notes.append(f"MoE rows: {data.moe_note}"
                 + ("; the kernels' element-wise work priced at the element-wise figures" if elementwise else "")
                 + (f"; grouped GEMM figures fitted for {', '.join(grouped)}" if grouped else ""))
    return efficiency


def _fit_attention_phases(rows: pd.DataFrame, gpu: GpuSpec, efficiency: Efficiency, errors: dict[str, ErrorStats],
                          where: str) -> tuple[Efficiency, str]:
    """Prefill and decode attention, each its own roofline (η_c, η_m, t_launch)."""
    update = {}
    for phase, part in rows.groupby("phase"):
        try:
            update[f"attention_{phase}"] = fit.fit_attention_kernel(part[part["train"]], gpu)
        except ValueError as err:
            raise _fail(where, err) from None
    efficiency = efficiency.model_copy(update=update)
    fitted = gpu.model_copy(update={"efficiency": efficiency})
    predicted = pd.Series(0.0, index=rows.index)
    for phase, part in rows.groupby("phase"):
        predict = partial(fit.attention_kernel_times_s, fitted, phase=str(phase))
        predicted[part.index] = predict(part)
        errors[f"attention {phase}"] = _evaluate(part, predict)
    errors["attention"] = _evaluate(rows, lambda r: predicted[r.index].to_numpy())
    return efficiency, f"attention fitted per phase ({', '.join(k.split('_')[1] for k in update)})"


def _fit_custom_allreduce(data: Dataset, errors: dict[str, ErrorStats], notes: list[str]) -> CustomAllReduce:
    """The engine's all-reduce regimes (validate/fit.py), judged on the held-out sizes of its own rows."""
    assert data.custom_allreduce is not None and data.custom_rules is not None
    rows = data.custom_allreduce
    rows = rows[fit.custom_regimes(rows, data.custom_rules, data.nvlink) != "nccl"]
    table = next((entry for entry in data.fitted_on if "/comm/" in entry and "/comm/nccl/" not in entry),
                 data.description)
    custom = fit.fit_custom_allreduce(rows[rows["train"]], data.custom_rules, f"Fitted to {table}", notes,
                                      data.nvlink)
    errors["allreduce custom"] = _evaluate(rows, partial(fit.custom_allreduce_times_s, custom, nvlink=data.nvlink))
    return custom


P2P_BW_CEILING = 1e13  # B/s: ten times the fastest link there is (NVLink 5, 900 GB/s a direction)


def _link(collectives: pd.DataFrame | None, p2p: pd.DataFrame | None, launch_s: float | None,
          errors: dict[str, ErrorStats], suffix: str, notes: list[str], nvls: bool = False,
          by_group: bool = False) -> LinkFit | None:
    """The LinkFit of one kind of link; ring figures from send/recv (or the reverse) when one is missing."""
    where = "inter-node" if suffix else "intra-node"
    ring = None
    alltoall = None
    if collectives is not None and (collectives["op"] == "alltoall").any():
        alltoall = _fit_alltoall(collectives[collectives["op"] == "alltoall"], errors, suffix, by_group, notes)
        collectives = collectives[collectives["op"] != "alltoall"]
    if collectives is not None and len(collectives):
        ring = fit.fit_collectives(collectives[collectives["train"]], launch_s, by_group)
        if by_group:
            notes.append(f"{where}: a ring bandwidth per group size (PCIe: the widest level of the tree spanned)")
        if nvls:
            ring = fit.fit_nvls_collectives(collectives[collectives["train"]], ring)
            notes.append(f"{where}: NVLS all-reduce fitted beside the ring (NCCL picks the faster)")
        for op, part in collectives.groupby("op"):
            errors[f"{op}{suffix}"] = _evaluate(part, partial(
                fit.collective_times_s, launch_s=ring.collective_launch_s, latency_s=ring.latency_s,
                bw_bytes_per_s=ring.bandwidth, nvls=ring.nvls))
        if not ring.alpha_identified:
            notes.append(f"{where}: one ring step count and a free t0: α set to 0, t0 holds it")
    point = None
    if p2p is not None and len(p2p):
        try:
            point = fit.fit_p2p(p2p[p2p["train"]])
            if point.bw_bytes_per_s > P2P_BW_CEILING:  # no such link: the sizes did not show in the times
                raise ValueError(f"the send/recv rows fit {point.bw_bytes_per_s:.3g} B/s, beyond any link: their "
                                 "times do not grow with size (ranks sharing cores?)")
        except ValueError as err:  # noise where sizes should show: the ring's figures serve, and the note says so
            point = None
            notes.append(f"{where}: {err}; send/recv takes the ring's figures")
        else:
            errors[f"sendrecv{suffix}"] = _evaluate(p2p, partial(fit.p2p_times_s, latency_s=point.latency_s,
                                                                 bw_bytes_per_s=point.bw_bytes_per_s))
    if ring is None and point is None:
        return None
    if ring is None:
        assert point is not None
        notes.append(f"{where}: no collective rows: ring α and B taken from send/recv"
                     + ("" if launch_s is not None else ", t0 = 0"))
        return LinkFit(collective_launch_s=launch_s or 0.0, latency_s=point.latency_s,
                       bw_bytes_per_s=point.bw_bytes_per_s, p2p_latency_s=point.latency_s,
                       p2p_bw_bytes_per_s=point.bw_bytes_per_s, alltoall=alltoall)
    if point is None:
        notes.append(f"{where}: no send/recv rows: send/recv α and B taken from the ring fit")
    return LinkFit(collective_launch_s=ring.collective_launch_s, latency_s=ring.latency_s,
                   bw_bytes_per_s=ring.bw_bytes_per_s,
                   p2p_latency_s=point.latency_s if point else ring.latency_s,
                   p2p_bw_bytes_per_s=point.bw_bytes_per_s if point else ring.bw_bytes_per_s,
                   nvls_latency_s=ring.nvls[0] if ring.nvls else None,
                   nvls_bw_bytes_per_s=ring.nvls[1] if ring.nvls else None,
                   bw_by_group_bytes_per_s=ring.bw_by_group, alltoall=alltoall)


def _fit_alltoall(rows: pd.DataFrame, errors: dict[str, ErrorStats], suffix: str, by_group: bool,
                  notes: list[str]) -> AllToAll:
    """The all-to-all (NCCL's in the tables, the runner's `all_to_all_single` on gloo or NCCL): its own t₀, α
    per peer and rate (per group size where `by_group`), on its own rows. It is not a ring (every pair at
    once), so the ring's figures would misprice it; `fit_collectives` fits its α-β form all the same."""
    a2a = fit.fit_collectives(rows[rows["train"]], None, by_group)
    if not a2a.alpha_identified:
        notes.append(f"{'inter-node' if suffix else 'intra-node'}: all-to-all of one group size: α set to 0, "
                     "t0 holds it")
    errors[f"alltoall{suffix}"] = _evaluate(rows, partial(
        fit.collective_times_s, launch_s=a2a.collective_launch_s, latency_s=a2a.latency_s,
        bw_bytes_per_s=a2a.bandwidth))
    return AllToAll(collective_launch_s=a2a.collective_launch_s, latency_s=a2a.latency_s,
                    bw_bytes_per_s=a2a.bw_bytes_per_s, bw_by_group_bytes_per_s=a2a.bw_by_group,
                    source="fitted by splitsim calibrate")


# ---------------------------------------------------------------------------------------- Vidur input

def vidur_dataset(root: Path, gpu_name: str | None, topology: str | None) -> Dataset:
    if gpu_name is None:
        raise ScenarioError(f"{root}: a Vidur profiling folder needs --gpu "
                            f"(valid: {', '.join(vidur.gpu_names(root)) or 'none: no compute/ folder'})")
    if gpu_name not in VIDUR_GPUS:
        raise ScenarioError(f"--gpu {gpu_name}: no splitsim GPU preset for it (valid: {', '.join(VIDUR_GPUS)})")
    if topology is not None and topology not in vidur.topology_names(root):
        raise ScenarioError(f"{root}: no network/{topology} (valid: {', '.join(vidur.topology_names(root)) or 'none'})")
    gpu = load_gpu(VIDUR_GPUS[gpu_name])
    folders = vidur.model_folders(root, gpu_name)
    gemm = pd.concat([vidur.read_model_gemms(f) for f in folders], ignore_index=True)
    gemm = gemm.assign(weight_bytes=2.0, dtype="fp16", train=~gemm["model"].isin(VIDUR_HELD_OUT))
    if not gemm["train"].any():
        raise ScenarioError(f"{root}/compute/{gpu_name}: every model is held out ({', '.join(VIDUR_HELD_OUT)})")
    used = sorted({f for f in folders if f"{f.parent.name}/{f.name}" not in VIDUR_HELD_OUT})
    data = Dataset(gpu=gpu, cluster=None, gemm=gemm, fitted_on=[str(f.resolve()) for f in [root, *used]],
                   description=f"{root} (Vidur profiling, compute/{gpu_name}")
    if topology is not None:
        net = vidur.read_network(root, topology)
        net = net.assign(train=_alternate(net, "nbytes", ["op", "group_size", "devices_per_node"]))
        intra = net[net["group_size"] == net["devices_per_node"]]
        inter = net[(net["devices_per_node"] == 1) & (net["group_size"] > 1)]
        inter = inter.assign(group_size=inter["group_size"] // inter["devices_per_node"])
        data.collectives = intra[intra["op"] == "allreduce"]
        data.p2p = intra[intra["op"] == "sendrecv"]
        data.inter_collectives = inter[inter["op"] == "allreduce"]
        data.inter_p2p = inter[inter["op"] == "sendrecv"]
        data.cluster = VIDUR_CLUSTERS.get(topology)
        data.fitted_on.append(str((root / "network" / topology).resolve()))
        data.description = data.description[:-1] + f", network/{topology})"
    return data


# --------------------------------------------------------------------------------------- runner input

def _cluster_name(folder: Path, config: dict[str, Any]) -> str:
    name = config.get("cluster")
    if name:
        return str(name)
    if config.get("device", "cpu") == "cpu":
        return "cpu-local"
    raise ScenarioError(f"{folder / measurements.CONFIG}: no cluster preset for device {config.get('device')!r} "
                        "(rerun `splitsim validate run` with --cluster)")


def _int(value: Any, default: int = 0) -> int:
    return default if pd.isna(value) else int(value)


def _layer_op(model: ModelSpec, tokens: int, sharding: ops.Sharding, name: str) -> ops.Op:
    """The op of a (dense) layer's graph that a runner row names."""
    return next(op for op in ops.layer_graph(model, "dense", tokens, sharding) if op.name == name)


def _runner_rows(folder: Path, rows: pd.DataFrame, config: dict[str, Any], gpu: GpuSpec) -> dict[str, pd.DataFrame]:
    """GEMM, attention, collective and send/recv rows of one measurements folder."""
    dtype = measurements.measured_dtype(folder, config)
    compute = compute_dtype(dtype, gpu.has_fp8, gpu.has_fp4)  # type: ignore[arg-type]
    weight_bytes = BYTES_PER_ELEMENT[dtype]
    micro, op_rows = rows[rows["kind"] == "micro"], rows[rows["kind"] == "op"]
    needs_model = (op_rows["op"].isin(GEMM_OPS + ELEMENTWISE_OPS + ("attention",)).any()
                   or micro["op"].str.startswith("attention").any())
    model = measurements.measured_model(folder, config) if needs_model else None

    def sharding(tp: int) -> ops.Sharding:
        return ops.Sharding(tp=tp, weights=dtype, kv_cache=dtype, compute=compute)  # type: ignore[arg-type]

    gemm = [(int(r["m"]), int(r["n"]), int(r["k"]), float(r["seconds"]))
            for r in micro[micro["op"] == "gemm"].to_dict("records")]
    attention = []
    for r in op_rows[op_rows["op"].isin(GEMM_OPS)].to_dict("records"):
        assert model is not None
        batch = _int(r["batch"], 1)
        tokens = _int(r["tokens"]) or (batch * _int(r["prompt"], 1) if r["phase"] == "prefill" else batch)
        op = _layer_op(model, tokens, sharding(_int(r["tp"], 1)), r["op"])
        gemm.append((op.m, op.n, op.k, float(r["seconds"])))
    elementwise = []
    for r in op_rows[op_rows["op"].isin(ELEMENTWISE_OPS)].to_dict("records"):
        assert model is not None
        batch = _int(r["batch"], 1)
        tokens = _int(r["tokens"]) or (batch * _int(r["prompt"], 1) if r["phase"] == "prefill" else batch)
        kernel = _layer_op(model, tokens, sharding(_int(r["tp"], 1)), r["op"])
        elementwise.append((kernel.nbytes, float(r["seconds"])))
    for r in pd.concat([micro[micro["op"].isin(["attention_prefill", "attention_decode"])],
                        op_rows[op_rows["op"] == "attention"]]).to_dict("records"):
        assert model is not None
        batch = _int(r["batch"], 1)
        prefill = r["op"] == "attention_prefill" or (r["op"] == "attention" and r["phase"] == "prefill")
        if prefill:
            shape = ops.BatchShape.of(((_int(r["prompt"], 1), 0),) * batch)
        else:
            shape = ops.BatchShape(num_decode=batch, decode_context=batch * _int(r["context"], 1))
        kernel = ops.attention(model, shape, sharding(_int(r["tp"], 1)))[0 if prefill else 1]
        rope = _layer_op(model, shape.num_tokens, sharding(_int(r["tp"], 1)), "rope")
        attention.append((kernel.flops, kernel.nbytes, rope.nbytes, float(r["seconds"])))
    out = {
        "gemm": pd.DataFrame(gemm, columns=["m", "n", "k", "seconds"]).assign(weight_bytes=weight_bytes,
                                                                             dtype=compute),
        "attention": pd.DataFrame(attention, columns=["flops", "nbytes", "rope_bytes", "seconds"]),
        "elementwise": pd.DataFrame(elementwise, columns=["nbytes", "seconds"]),
    }
    # a grouped GEMM alone, in the columns of a fused-MoE row (fit.moe_times_s): no down GEMM, no element-wise work
    grouped = micro[micro["op"] == "grouped_gemm"]
    if len(grouped):  # only then: a folder without them reads as before
        out["grouped"] = pd.DataFrame({
            "m": grouped["m"], "groups": grouped["groups"], "gate_up_n": grouped["n"], "gate_up_k": grouped["k"],
            "down_n": 0, "down_k": 0, "weight_bytes": weight_bytes, "dtype": compute, "act_bytes": 0.0,
            "reduce_bytes": 0.0, "seconds": grouped["seconds"]})[GROUPED_COLUMNS]
    coll = micro[micro["op"].isin(["allreduce", "allgather", "alltoall"]) & (micro["group_size"] > 1)]
    out["collectives"] = coll[["op", "group_size", "nbytes", "seconds"]].astype({"group_size": int})
    out["p2p"] = micro[micro["op"] == "sendrecv"][["nbytes", "seconds"]]
    for kind, table in out.items():
        if table.isna().any().any():
            raise ScenarioError(f"{folder / measurements.TABLE}: {kind} rows with empty fields")
    return out


def runner_dataset(folders: list[Path]) -> Dataset:
    parts: dict[str, list[pd.DataFrame]] = {}
    clusters: dict[str, Path] = {}
    gpu: GpuSpec | None = None
    fitted_on = []
    for folder in folders:
        rows, config = measurements.read(folder)
        name = _cluster_name(folder, config)
        clusters.setdefault(name, folder)
        if len(clusters) > 1:
            raise ScenarioError(f"{folder}: measured on cluster {name}, but {clusters[next(iter(clusters))]} on "
                                f"{next(iter(clusters))}: calibrate one kind of hardware at a time")
        try:
            gpu = load_cluster(name).gpu
        except ValueError as err:
            raise ScenarioError(f"{folder / measurements.CONFIG}: cluster: {str(err).splitlines()[0]}") from None
        for kind, table in _runner_rows(folder, rows, config, gpu).items():
            parts.setdefault(kind, []).append(table)
        fitted_on.append(measurement_id(folder))
    assert gpu is not None
    tables = {kind: pd.concat(tables, ignore_index=True) for kind, tables in parts.items()}
    gemm = tables["gemm"].groupby(["m", "n", "k", "weight_bytes", "dtype"])["seconds"].median().reset_index()
    if gemm.empty:
        raise ScenarioError(f"{', '.join(map(str, folders))}: no GEMM rows (micro gemm, or op rows of "
                            f"{', '.join(GEMM_OPS)}) to fit")
    collectives = tables["collectives"].groupby(["op", "group_size", "nbytes"])["seconds"].median().reset_index()
    p2p = tables["p2p"].groupby("nbytes")["seconds"].median().reset_index()
    attention = tables["attention"].groupby(["flops", "nbytes", "rope_bytes"])["seconds"].median().reset_index()
    elementwise = tables["elementwise"].groupby("nbytes")["seconds"].median().reset_index()
    moe = None
    if "grouped" in tables:
        grouped = tables["grouped"].groupby(GROUPED_COLUMNS[:-1])["seconds"].median().reset_index()
        moe = grouped.assign(train=_alternate(grouped, "m", ["gate_up_n", "gate_up_k", "groups", "dtype"]))
    return Dataset(
        moe=moe, moe_note=GROUPED_NOTE if moe is not None else "",
        gpu=gpu, cluster=next(iter(clusters)), fitted_on=fitted_on,
        gemm=gemm.assign(train=fit.every_other(gemm["m"])),
        attention=attention.assign(train=fit.every_other(attention["nbytes"])),
        elementwise=elementwise.assign(train=fit.every_other(elementwise["nbytes"])),
        collectives=collectives.assign(train=_alternate(collectives, "nbytes", ["op", "group_size"])),
        p2p=p2p.assign(train=fit.every_other(p2p["nbytes"])),
        description=f"{', '.join(map(str, folders))} (measured on {next(iter(clusters))})",
    )


# ------------------------------------------------------------------------------- aiconfigurator input

def aiconfigurator_dataset(system: str, framework: str, version: str | None, tables: Path | None) -> Dataset:
    """One system's measured kernel tables (validate/aiconfigurator.py): the engine's GEMMs per dtype, its
    prefill and decode attention kernels, NCCL inside a node, and its fused-MoE kernel where the system has a MoE
    table with balanced rows (`_moe_dataset`)."""
    root = aiconfigurator.data_root(tables)
    if system not in aiconfigurator.SYSTEMS:
        raise ScenarioError(f"--aiconfigurator {system}: not a system with a splitsim GPU preset "
                            f"(valid: {', '.join(aiconfigurator.systems(root))})")
    gpu_name, cluster = aiconfigurator.SYSTEMS[system]
    package = aiconfigurator.package_version(tables)
    chosen = [aiconfigurator.pick_table(root, system, "gemm", framework, version),
              aiconfigurator.pick_table(root, system, "attention", framework, version)]
    gemm, launch_s = aiconfigurator.gemm_rows(chosen[0], framework, aiconfigurator.L2_BYTES[system])
    collectives = custom = rules = None
    if (root / system / "comm" / "nccl").is_dir():
        chosen.append(aiconfigurator.pick_table(root, system, "comm", "nccl"))
        collectives = aiconfigurator.collective_rows(chosen[-1])
    if framework in aiconfigurator.CUSTOM_ALLREDUCE_FRAMEWORKS and (root / system / "comm" / framework).is_dir():
        chosen.append(aiconfigurator.pick_table(root, system, "comm", framework))
        custom = aiconfigurator.custom_allreduce_rows(chosen[-1])
        rules = _custom_rules(cluster)
    gpu = load_gpu(gpu_name)
    moe, smallest, moe_note = _moe_dataset(root, system, framework, version, gpu, chosen,
                                           aiconfigurator.L2_BYTES[system])
    return Dataset(custom_allreduce=custom, custom_rules=rules, nvlink=aiconfigurator.NVLINK[system],
        moe=moe, moe_smallest=smallest, moe_note=moe_note,
        by_group=not aiconfigurator.NVLINK[system],
        nvls=system in aiconfigurator.NVLS_SYSTEMS, gemm_launch_s=None if launch_s != launch_s else launch_s,
        gpu=gpu, cluster=cluster, gemm=gemm, attention=aiconfigurator.attention_rows(chosen[1]),
        collectives=collectives, fitted_on=[f"{package} {system}/{t.op}/{t.framework}/{t.version}" for t in chosen],
        description=f"{package} tables for {system} ({'; '.join(t.describe() for t in chosen)})")


def _moe_dataset(root: Path, system: str, framework: str, version: str | None, gpu: GpuSpec,
                 chosen: list[aiconfigurator.Table],
                 l2_bytes: float) -> tuple[pd.DataFrame | None, pd.DataFrame | None, str]:
    """The fused-MoE rows of the system's MoE table and its smallest rows (`aiconfigurator.moe_rows`), if it has
    one (of `version`, if given) with `balanced` rows the GPU computes; the table joins `chosen`."""
    folder = root / system / "moe" / framework
    if not folder.is_dir() or (version is not None and not (folder / version).is_dir()):
        return None, None, ""
    table = aiconfigurator.pick_table(root, system, "moe", framework, version)
    rows, smallest = aiconfigurator.moe_rows(table, gpu.has_fp8, gpu.has_fp4, l2_bytes)
    if not len(rows):
        return None, None, ""
    chosen.append(table)
    kernels = "; ".join(f"{dtype}: {', '.join(sorted(set(part['kernel'])))}" for dtype, part in rows.groupby("dtype"))
    return rows, smallest, f"{system}/moe/{framework}/{table.version} balanced rows ({kernels})"


def _custom_rules(cluster: str | None) -> CustomAllReduce:
    """The size limits of the engine's all-reduce on this system: its cluster preset's fabric's, or vLLM's
    defaults (custom kernels below 8 MiB, no symmetric memory); the α and B here are placeholders."""
    fabric = load_cluster(cluster).intra_node if cluster is not None else None
    if fabric is not None and fabric.custom_allreduce is not None:
        return fabric.custom_allreduce
    return CustomAllReduce(one_shot_latency_s=1e-6, one_shot_bw_bytes_per_s=1e11, two_shot_latency_s=1e-6,
                           two_shot_bw_bytes_per_s=1e11, source="vLLM's default limits")


# ---------------------------------------------------------------------------------------------- CLI

def load_dataset(paths: list[Path], gpu: str | None, network: str | None) -> Dataset:
    for path in paths:
        if not path.exists():
            raise ScenarioError(f"{path}: no such folder")
        if not path.is_dir():
            raise ScenarioError(f"{path}: not a folder (give the measurements folder or Vidur profiling folder)")
    kinds = ["vidur" if vidur.is_vidur_folder(p) else "runner" for p in paths]
    if "vidur" in kinds:
        if len(paths) > 1:
            raise ScenarioError(f"{paths[kinds.index('vidur')]}: a Vidur profiling folder is calibrated alone")
        return vidur_dataset(paths[0], gpu, network)
    for path in paths:
        if not (path / measurements.CONFIG).is_file():
            raise ScenarioError(f"{path}: neither a measurements folder ({measurements.CONFIG} + "
                                f"{measurements.TABLE}) nor a Vidur profiling folder (compute/, network/)")
    if gpu is not None or network is not None:
        raise ScenarioError(f"--gpu/--network read a Vidur profiling folder; {paths[0]} is a measurements folder")
    return runner_dataset(paths)


def _us(seconds: float) -> str:
    return f"{round(seconds * 1e6, 3):g} µs"


def _gbs(bw: float) -> str:
    return f"{bw / 1e9:.4g} GB/s"


def format_report(cal: Calibration, out: Path) -> str:
    p = cal.profile
    e = p.efficiency
    lines = [f"profile {p.name} for {p.gpu}, written to {out}",
             f"  GEMM        η_peak {e.compute:.4f}  γ {e.wave_exponent:.4f}  m½ {e.m_half:.4g}  "
             f"tile {e.tile_m}×{e.tile_n}  η_m {e.memory:.4f}  t_launch {_us(e.launch_s)}",
             f"  attention   η {e.attention:.4g}"]
    for dtype, g in e.grouped_gemm.items():
        lines.append(f"  grouped {dtype:4} η_peak {g.compute:.4f}  m½ {g.m_half:.4g}  η_m {g.memory:.4f}  "
                     f"t_launch {_us(g.launch_s)}")
    if e.elementwise is not None and e.elementwise_launch_s is not None:
        lines.append(f"  elementwise η_m {e.elementwise:.4g}  t_launch {_us(e.elementwise_launch_s)}")
    for label, link in (("intra-node", p.intra_node), ("inter-node", p.inter_node)):
        if link is not None:
            ring = (", ".join(f"{_gbs(bw)} ({p} GPUs)" for p, bw in link.bw_by_group_bytes_per_s.items())
                    if link.bw_by_group_bytes_per_s else _gbs(link.bw_bytes_per_s))
            lines.append(f"  {label:11} t0 {_us(link.collective_launch_s)}  α {_us(link.latency_s)}/step  "
                         f"B {ring}  p2p α {_us(link.p2p_latency_s)}  B {_gbs(link.p2p_bw_bytes_per_s)}")
            if link.alltoall is not None:
                a2a = link.alltoall
                rate = (", ".join(f"{_gbs(bw)} ({p} GPUs)" for p, bw in a2a.bw_by_group_bytes_per_s.items())
                        if a2a.bw_by_group_bytes_per_s else _gbs(a2a.bw_bytes_per_s))
                lines.append(f"  {'all-to-all':11} t0 {_us(a2a.collective_launch_s)}  α {_us(a2a.latency_s)}/peer  "
                             f"B {rate} (what each GPU sends)")
    lines += [f"  note: {note}" for note in cal.notes if not note.startswith("warning")]
    lines.append(f"  {'|predicted/measured − 1|':28} {'rows':>6} {'median':>8} {'worst':>8} {'in 80%':>7}")
    rows = [(kind, s) for kind, s in p.errors.items()]
    rows[1:1] = [(f"  gemm {op}", s) for op, s in cal.gemm_by_op.items() if f"gemm {op}" not in p.errors]
    for kind, s in rows:
        where = "held out" if s.held_out else "in sample"
        inside = f"{s.within_80:>7.0%}" if s.within_80 is not None else f"{'':>7}"
        lines.append(f"  {kind:28} {s.rows:>6} {s.median:>8.1%} {s.max:>8.1%} {inside}  {where}")
    return "\n".join(lines)


def calibrate_command(args: argparse.Namespace) -> int:
    check_out_path(args.out, folder=False)
    if args.aiconfigurator is not None:
        if args.measurements:
            raise ScenarioError(f"{args.measurements[0]}: --aiconfigurator fits the package's tables alone")
        data = aiconfigurator_dataset(args.aiconfigurator, args.framework or "vllm", args.version, args.tables)
        print(f"fitting {data.description}")
    else:
        if not args.measurements:
            raise ScenarioError("calibrate: give measurement folders, or --aiconfigurator SYSTEM")
        for flag in ("framework", "version", "tables"):
            if getattr(args, flag) is not None:
                raise ScenarioError(f"--{flag}: only with --aiconfigurator")
        data = load_dataset(list(args.measurements), args.gpu, args.network)
    cal = calibrate(data, args.out.stem)
    cal.profile.write(args.out)
    print(format_report(cal, args.out))
    warnings = [n for n in cal.notes if n.startswith("warning")]
    for warning in warnings:  # stdout, as a run's notes: stderr is for errors only
        print(f"splitsim: {warning}")
    if args.json:
        kinds = {**cal.profile.errors, **{f"gemm {op}": stats for op, stats in cal.gemm_by_op.items()}}
        print(json.dumps({"held_out": {kind: {"median": s.median, "worst": s.max, "n": s.rows, "within_80": s.within_80}
                                       for kind, s in kinds.items() if s.held_out}}, separators=(",", ":")))
    return 0
