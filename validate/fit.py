"""Least-squares fits that recover the cost model's named parameters from timings (numpy/scipy only).

Each fit minimises the squared log ratio of predicted to measured seconds (relative errors, so a 5 µs
kernel counts as much as a 50 ms one) with `scipy.optimize.least_squares`, and returns the parameters
with the residuals of the rows it saw. The forward models are the simulator's own:

- GEMM (`GpuSpec.gemm_time_s`): t = max(2mnk / (F·η_peak·q^γ·m/(m+m½)), bytes / (M·η_m)) + t_launch,
  q the wave quantisation of an m×n output cut in `tile_m × tile_n` tiles over the GPU's SMs; the tile
  is picked from a small set by best fit. The fit runs on a vectorised copy of that formula and checks,
  before it returns, that the copy and `gemm_time_s` agree on every row.
- attention (`GpuSpec.kernel_time_s`): the roofline with the op's FLOPs and bytes; only η_attention is
  fitted (η_m and t_launch come from the GEMMs), and only if some row is compute-bound.
- collectives (`hardware.collectives`): t = t₀ + 2(p−1)α + 2(p−1)/p · S/B (all-reduce) and
  t = t₀ + (p−1)α + (p−1)/p · S/B (all-gather, S the gathered size), over several group sizes p;
  an all-to-all, t = t₀ + (p−1)α + S/B with S what each GPU sends to the others, takes the same fit on its
  own rows (`hardware.collectives.alltoall_s`).
- send/recv: t = α + S/B.
- the engine's own all-reduce (`hardware.collectives.custom_allreduce_regime`): each regime's α and B
  (one-shot, two-shot, symmetric memory) on the rows vLLM's rules send to it; the switch points are vLLM's.
- a mixture-of-experts layer's grouped GEMMs (`GpuSpec.grouped_gemm_time_s`): a fused-MoE timing is its gate/up
  and down grouped GEMMs plus its element-wise work, priced with the GPU's element-wise figures (held); each dtype's
  η_peak, m½, η_m and fixed cost of the grouped kernel are fitted (`fit_grouped_gemm`). The runner's `grouped_gemm`
  microbenchmark rows take the same fit as one grouped GEMM and no element-wise work (down_n = down_k = 0,
  act_bytes = reduce_bytes = 0: a GEMM or kernel of no size is absent, and pays no fixed cost).

Rows are DataFrames: GEMMs `m, n, k, weight_bytes, seconds` (optional `dtype`, default bf16); attention
`flops, nbytes, seconds`; collectives `op` (allreduce | allgather | alltoall), `group_size, nbytes, seconds`;
send/recv `nbytes, seconds`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, nnls

from splitsim.hardware.collectives import (
    CUSTOM_REGIME_BYTES,
    custom_allreduce_regime,
    custom_regime_s,
    ring_allgather_s,
    ring_allreduce_s,
)
from splitsim.hardware.fabric import CustomAllReduce
from splitsim.hardware.gpu import AttentionKernel, Efficiency, GemmShape, GpuSpec, GroupedGemm

US = 1e-6
TILES: tuple[tuple[int, int], ...] = tuple((a, b) for a in (64, 128, 256) for b in (64, 128, 256))
_AGREEMENT = 1e-9  # relative: the vectorised GEMM formula must reproduce gemm_time_s to this


@dataclass(frozen=True)
class Residuals:
    """How a fit (or a prediction) meets the rows: log-ratio RMS and |predicted/measured − 1| stats."""

    rows: int
    rms_log: float
    median: float
    max: float


def relative_errors(predicted: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(predicted, float) / np.asarray(measured, float) - 1.0)


def residuals(predicted: np.ndarray, measured: np.ndarray) -> Residuals:
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    if len(measured) == 0:
        return Residuals(0, float("nan"), float("nan"), float("nan"))
    errors = relative_errors(predicted, measured)
    return Residuals(len(measured), float(np.sqrt(np.mean(np.log(predicted / measured) ** 2))),
                     float(np.median(errors)), float(errors.max()))


def every_other(values: pd.Series | np.ndarray) -> np.ndarray:
    """Training mask: rows whose value is the 1st, 3rd, 5th… of the sorted distinct values.

    The other rows (the 2nd, 4th… value) are held out, so a fit is judged at sizes it never saw.
    """
    values = np.asarray(values)
    distinct = np.unique(values)
    return np.isin(values, distinct[::2])


def _least_squares(residual: Callable[[np.ndarray], np.ndarray], starts: Sequence[Sequence[float]],
                   lower: Sequence[float], upper: Sequence[float]) -> np.ndarray:
    """The best of a few bounded least-squares runs from different starting points."""
    best = None
    for start in starts:
        x0 = np.clip(np.asarray(start, float), lower, upper)
        run = least_squares(residual, x0, bounds=(lower, upper), x_scale="jac", max_nfev=2000)
        if best is None or run.cost < best.cost:
            best = run
    assert best is not None
    return np.asarray(best.x)


# ---------------------------------------------------------------------------------------------- GEMMs

@dataclass(frozen=True)
class GemmFit:
    """The fitted GEMM efficiency (attention left as the GPU had it) and its residuals on the fit's rows."""

    efficiency: Efficiency
    residuals: Residuals
    tile_rms_log: dict[tuple[int, int], float]  # how well each candidate tile fitted

    def gpu(self, base: GpuSpec) -> GpuSpec:
        return base.model_copy(update={"efficiency": self.efficiency})


def _dtypes(rows: pd.DataFrame) -> list[str]:
    return list(rows["dtype"]) if "dtype" in rows.columns else ["bf16"] * len(rows)


def gemm_times_s(gpu: GpuSpec, rows: pd.DataFrame) -> np.ndarray:
    """The simulator's seconds (`GpuSpec.gemm_time_s`) for each GEMM row."""
    return np.array([gpu.gemm_time_s(int(m), int(n), int(k), weight_bytes=float(w), dtype=dtype)  # type: ignore[arg-type]
                     for m, n, k, w, dtype in zip(rows["m"], rows["n"], rows["k"], rows["weight_bytes"],
                                                  _dtypes(rows))])


class _GemmArrays:
    """Per-row quantities of the GEMM formula that do not depend on the fitted parameters."""

    def __init__(self, gpu: GpuSpec, rows: pd.DataFrame) -> None:
        self.m = rows["m"].to_numpy(float)
        self.n = rows["n"].to_numpy(float)
        k = rows["k"].to_numpy(float)
        self.flops = 2.0 * self.m * self.n * k
        self.nbytes = (self.m * k + self.m * self.n) * 2.0 + k * self.n * rows["weight_bytes"].to_numpy(float)
        self.peak = np.array([gpu.peak_flops_per_s(d) for d in _dtypes(rows)])  # type: ignore[arg-type]
        self.memory_bw = gpu.memory_bw_bytes_per_s
        self.num_sms = gpu.num_sms
        self.log_seconds = np.log(rows["seconds"].to_numpy(float))

    def wave(self, tile: tuple[int, int]) -> np.ndarray:
        """q: useful fraction of the SM-tiles issued (`GpuSpec.wave_efficiency`)."""
        tiles = np.ceil(self.m / tile[0]) * np.ceil(self.n / tile[1])
        waves = np.ceil(tiles / self.num_sms)
        return (self.m * self.n) / (waves * self.num_sms * tile[0] * tile[1])

    def seconds(self, x: np.ndarray, wave: np.ndarray) -> np.ndarray:
        """x = (η_peak, γ, m½, η_m, t_launch in µs)."""
        eta_peak, gamma, m_half, eta_m, launch_us = x
        eta = eta_peak * wave ** gamma * self.m / (self.m + m_half)
        return np.maximum(self.flops / (self.peak * eta), self.nbytes / (self.memory_bw * eta_m)) + launch_us * US


_GEMM_LOWER = [1e-4, 0.0, 0.0, 1e-4, 0.0]
_GEMM_UPPER = [1.0, 1.0, 1e5, 1.0, 1e5]


def _gemm_starts(data: _GemmArrays) -> list[list[float]]:
    seconds = np.exp(data.log_seconds)
    launch_us = 0.5 * float(seconds.min()) / US
    eta_peak = float(np.clip(np.max(data.flops / (seconds * data.peak)), 0.05, 0.95))
    eta_m = float(np.clip(np.max(data.nbytes / (seconds * data.memory_bw)), 0.05, 0.95))
    return [[eta_peak, gamma, m_half, eta_m, launch_us] for gamma in (0.2, 0.8) for m_half in (16.0, 128.0)]


def fit_gemm(rows: pd.DataFrame, gpu: GpuSpec, tiles: Sequence[tuple[int, int]] = TILES,
             memory_and_launch: tuple[float, float] | None = None, launch_s: float | None = None) -> GemmFit:
    """η_peak, γ, m½, η_m and t_launch of `gpu` from GEMM timings; the tile from `tiles` by best fit.
    `memory_and_launch` holds η_m and t_launch (s) at given values (a second dtype's fit: the memory system
    and the launch are the GPU's, the kernels are the dtype's); `launch_s` holds t_launch alone (rows too
    large to show it)."""
    if len(rows) < 5:
        raise ValueError(f"a GEMM fit needs at least 5 rows, got {len(rows)}")
    data = _GemmArrays(gpu, rows)
    starts = _gemm_starts(data)
    lower, upper = _GEMM_LOWER, _GEMM_UPPER
    held: list[float] = []
    if memory_and_launch is not None:
        held = [memory_and_launch[0], memory_and_launch[1] / US]
    elif launch_s is not None:
        held = [launch_s / US]
    free = 5 - len(held)
    starts, lower, upper = [start[:free] for start in starts], lower[:free], upper[:free]
    fits: dict[tuple[int, int], tuple[float, np.ndarray]] = {}
    for tile in dict.fromkeys(tiles):
        wave = data.wave(tile)

        def residual(x: np.ndarray, wave: np.ndarray = wave) -> np.ndarray:
            return np.log(data.seconds(np.concatenate([x, held]), wave)) - data.log_seconds

        x = _least_squares(residual, starts, lower, upper)
        fits[tile] = (float(np.sqrt(np.mean(residual(x) ** 2))), np.concatenate([x, held]))
    tile = min(fits, key=lambda t: fits[t][0])
    eta_peak, gamma, m_half, eta_m, launch_us = (float(v) for v in fits[tile][1])
    efficiency = gpu.efficiency.model_copy(update={
        "compute": eta_peak, "tile_m": tile[0], "tile_n": tile[1], "wave_exponent": gamma, "m_half": m_half,
        "memory": eta_m, "launch_s": launch_us * US, "assumed": False, "gemm_by_dtype": {},
    })
    fitted = gpu.model_copy(update={"efficiency": efficiency})
    predicted = gemm_times_s(fitted, rows)
    vectorised = data.seconds(fits[tile][1], data.wave(tile))
    worst = float(np.max(np.abs(vectorised / predicted - 1.0)))
    if worst > _AGREEMENT:
        raise AssertionError(f"the fit's GEMM formula differs from GpuSpec.gemm_time_s by {worst:.2e}")
    return GemmFit(efficiency, residuals(predicted, rows["seconds"].to_numpy(float)),
                   {t: rms for t, (rms, _) in fits.items()})


def gemm_shape(fitted: GemmFit) -> GemmShape:
    """A dtype's own GEMM figures (`Efficiency.gemm_by_dtype`) from its fit."""
    e = fitted.efficiency
    return GemmShape(compute=e.compute, tile_m=e.tile_m, tile_n=e.tile_n, wave_exponent=e.wave_exponent,
                     m_half=e.m_half)


# ------------------------------------------------------------------------------ mixture-of-experts layers

def _elementwise_s(gpu: GpuSpec, nbytes: float) -> float:
    """An element-wise kernel of a MoE row; none (0 s) where the row has none (0 bytes: a runner row)."""
    return gpu.elementwise_time_s(nbytes) if nbytes > 0 else 0.0


def moe_times_s(gpu: GpuSpec, rows: pd.DataFrame) -> np.ndarray:
    """The simulator's seconds for each fused-MoE row (`aiconfigurator.moe_rows`): its gate/up and down grouped GEMMs
    (`GpuSpec.gemm_time_s`, grouped) and its two element-wise kernels (activation, top-k reduction). A runner
    `grouped_gemm` row is one grouped GEMM (gate_up_n × gate_up_k) alone: down_n = 0 and no element-wise bytes."""
    times = []
    columns = ("m", "groups", "gate_up_n", "gate_up_k", "down_n", "down_k", "weight_bytes", "dtype", "act_bytes",
               "reduce_bytes")
    for m, groups, n1, k1, n2, k2, w, dtype, act, reduce in zip(*(rows[c] for c in columns)):
        gemms = sum(gpu.gemm_time_s(int(m), int(n), int(k), weight_bytes=float(w), dtype=dtype, groups=float(groups),
                                    grouped=True) for n, k in ((n1, k1), (n2, k2)) if n > 0)
        times.append(gemms + _elementwise_s(gpu, float(act)) + _elementwise_s(gpu, float(reduce)))
    return np.array(times)


def grouped_launch_s(smallest: pd.DataFrame, gpu: GpuSpec) -> float:
    """The fixed cost of one grouped GEMM from the smallest fused-MoE rows (a few tokens on experts whose weights
    the L2 holds: their time is the kernel's fixed cost): the median of what is left of their time after the
    element-wise kernels (`gpu`'s figures), over the two GEMMs; at least 0."""
    left = smallest["seconds"].to_numpy(float) - np.array(
        [gpu.elementwise_time_s(float(a)) + gpu.elementwise_time_s(float(r))
         for a, r in zip(smallest["act_bytes"], smallest["reduce_bytes"])])
    return max(0.0, float(np.median(left)) / 2)


_GROUPED_LOWER = [1e-4, 0.0, 1e-4, 0.0]
_GROUPED_UPPER = [1.0, 1e5, 1.0, 1e5]


def fit_grouped_gemm(rows: pd.DataFrame, gpu: GpuSpec, launch_s: float | None = None) -> GroupedGemm:
    """η_peak, m½, η_m and fixed cost of one dtype's grouped GEMMs from fused-MoE timings (`moe_times_s`), the
    element-wise work held at `gpu`'s figures; `launch_s` holds the fixed cost (rows whose weights dwarf it cannot
    tell it from η_m). Rows of one grouped GEMM alone (the runner's `grouped_gemm` microbenchmark, down_n = 0, no
    element-wise bytes) take the same fit. Checks, before it returns, that its vectorised formula and `moe_times_s`
    agree on every row."""
    if len(rows) < 5:
        raise ValueError(f"a grouped GEMM fit needs at least 5 rows, got {len(rows)}")
    dtypes = set(rows["dtype"])
    if len(dtypes) != 1:
        raise ValueError(f"a grouped GEMM fit takes one dtype's rows, got {', '.join(sorted(map(str, dtypes)))}")
    dtype = dtypes.pop()
    m, groups = rows["m"].to_numpy(float), rows["groups"].to_numpy(float)
    weight = rows["weight_bytes"].to_numpy(float)
    gemms = []
    for n_col, k_col in (("gate_up_n", "gate_up_k"), ("down_n", "down_k")):
        n, k = rows[n_col].to_numpy(float), rows[k_col].to_numpy(float)
        present = n > 0  # a runner row has no down GEMM (down_n = 0): no work, no fixed cost
        gemms.append((2.0 * m * n * k * groups * present, ((m * k + m * n) * 2.0 + k * n * weight) * groups * present))
    launches = 1.0 + (rows["down_n"].to_numpy(float) > 0)  # grouped GEMMs per row: the fixed cost each
    held = np.array([_elementwise_s(gpu, float(a)) + _elementwise_s(gpu, float(r))
                     for a, r in zip(rows["act_bytes"], rows["reduce_bytes"])])
    peak = gpu.peak_flops_per_s(dtype)
    log_seconds = np.log(rows["seconds"].to_numpy(float))

    fixed = [] if launch_s is None else [launch_s / US]

    def seconds(free: np.ndarray) -> np.ndarray:  # x = (η_peak, m½, η_m, t_launch in µs)
        x = np.concatenate([free, fixed])
        eta = x[0] * m / (m + x[1])
        return held + sum(np.maximum(flops / (peak * eta), nbytes / (gpu.memory_bw_bytes_per_s * x[2]))
                          for flops, nbytes in gemms) + launches * x[3] * US

    measured = np.exp(log_seconds)
    start_eta = float(np.clip(np.max(sum(f for f, _ in gemms) / (measured * peak)), 0.05, 0.95))
    start_mem = float(np.clip(np.max(sum(b for _, b in gemms) / (measured * gpu.memory_bw_bytes_per_s)), 0.05, 0.95))
    launch_us = 0.25 * float(measured.min()) / US
    starts = [[start_eta, m_half, start_mem, launch_us] for m_half in (16.0, 128.0)] + [[0.5, 64.0, 0.8, 10.0]]
    free = 4 - len(fixed)
    x = _least_squares(lambda x: np.log(seconds(x)) - log_seconds, [start[:free] for start in starts],
                       _GROUPED_LOWER[:free], _GROUPED_UPPER[:free])
    values = np.concatenate([x, fixed])
    fitted = GroupedGemm(compute=float(values[0]), m_half=float(values[1]), memory=float(values[2]),
                         launch_s=float(values[3]) * US)
    gpu = gpu.model_copy(update={"efficiency": gpu.efficiency.model_copy(
        update={"grouped_gemm": gpu.efficiency.grouped_gemm | {dtype: fitted}})})
    worst = float(np.max(np.abs(seconds(x) / moe_times_s(gpu, rows) - 1.0)))
    if worst > _AGREEMENT:
        raise AssertionError(f"the fit's grouped GEMM formula differs from GpuSpec.gemm_time_s by {worst:.2e}")
    return fitted


# ------------------------------------------------------------------------------------------ attention

@dataclass(frozen=True)
class AttentionFit:
    """η_c of attention kernels; `fitted` is false when no row was compute-bound (the GPU's value kept)."""

    attention: float
    fitted: bool
    residuals: Residuals


def fit_attention_kernel(rows: pd.DataFrame, gpu: GpuSpec) -> AttentionKernel:
    """η_c, η_m and t_launch of one phase's attention kernels (`GpuSpec.attention_time_s`) from timings."""
    if len(rows) < 3:
        raise ValueError(f"an attention fit needs at least 3 rows, got {len(rows)}")
    flops, nbytes = rows["flops"].to_numpy(float), rows["nbytes"].to_numpy(float)
    log_seconds = np.log(rows["seconds"].to_numpy(float))

    def seconds(x: np.ndarray) -> np.ndarray:
        eta_c, eta_m, launch_us = x
        return np.maximum(flops / (gpu.bf16_flops_per_s * eta_c), nbytes / (gpu.memory_bw_bytes_per_s * eta_m)) \
            + launch_us * US

    x = _least_squares(lambda x: np.log(seconds(x)) - log_seconds,
                       [[0.5, 0.5, 5.0], [0.2, 0.9, 20.0], [0.8, 0.3, 2.0]], [1e-4, 1e-4, 0.0], [1.0, 1.0, 1e5])
    return AttentionKernel(compute=float(x[0]), memory=float(x[1]), launch_s=float(x[2]) * US)


def attention_kernel_times_s(gpu: GpuSpec, rows: pd.DataFrame, phase: str) -> np.ndarray:
    """The simulator's seconds (`GpuSpec.attention_time_s`) for each attention row of `phase`."""
    return np.array([gpu.attention_time_s(float(f), float(b), phase) for f, b in zip(rows["flops"], rows["nbytes"])])


def attention_times_s(gpu: GpuSpec, rows: pd.DataFrame, attention: float) -> np.ndarray:
    """The simulator's seconds (`GpuSpec.kernel_time_s`) for each attention row."""
    return np.array([gpu.kernel_time_s(float(f), float(b), compute_efficiency=attention)
                     for f, b in zip(rows["flops"], rows["nbytes"])])


def fit_attention(rows: pd.DataFrame, gpu: GpuSpec) -> AttentionFit:
    """η_attention of `gpu` (whose η_m and t_launch are already fitted) from attention timings."""
    measured = rows["seconds"].to_numpy(float)
    kept = gpu.efficiency.attention
    if len(rows) == 0:
        return AttentionFit(kept, False, residuals(np.array([]), measured))

    def residual(x: np.ndarray) -> np.ndarray:
        return np.log(attention_times_s(gpu, rows, float(x[0])) / measured)

    eta = float(_least_squares(residual, [[0.5], [0.05]], [1e-4], [1.0])[0])
    compute_s = rows["flops"].to_numpy(float) / (gpu.bf16_flops_per_s * eta)
    memory_s = rows["nbytes"].to_numpy(float) / (gpu.memory_bw_bytes_per_s * gpu.efficiency.memory)
    if not np.any(compute_s > memory_s):
        return AttentionFit(kept, False, residuals(attention_times_s(gpu, rows, kept), measured))
    return AttentionFit(eta, True, residuals(attention_times_s(gpu, rows, eta), measured))


# -------------------------------------------------------------------------------------- collectives

@dataclass(frozen=True)
class CollectiveFit:
    """t₀ (`collective_launch_s`), α per ring step and ring bandwidth B; `alpha_identified` is false
    when the rows cannot tell t₀ from α (one ring step count, t₀ free): α is then 0."""

    collective_launch_s: float
    latency_s: float
    bw_bytes_per_s: float
    alpha_identified: bool
    residuals: Residuals
    nvls: tuple[float, float] | None = None  # (α_nvls, B_nvls) when the switch reduces large all-reduces
    bw_by_group: dict[int, float] | None = None  # B per group size, when each was fitted apart (PCIe)

    @property
    def bandwidth(self) -> float | dict[int, float]:
        """B, or B per group size: what `collective_times_s` takes."""
        return self.bw_by_group or self.bw_bytes_per_s


def _ring_s(op: str, p: int, nbytes: float, alpha_s: float, bw: float) -> float:
    match op:
        case "allreduce":
            return ring_allreduce_s(p, nbytes, alpha_s, bw)
        case "allgather":
            return ring_allgather_s(p, nbytes, alpha_s, bw)
        case "alltoall":  # `nbytes`: what each GPU sends to the others (hardware.collectives.alltoall_s)
            return (p - 1) * alpha_s + nbytes / bw if p > 1 else 0.0
    raise ValueError(f"unknown collective {op!r} (valid: allreduce, allgather, alltoall)")


def collective_times_s(rows: pd.DataFrame, launch_s: float, latency_s: float,
                       bw_bytes_per_s: float | Mapping[int, float],
                       nvls: tuple[float, float] | None = None) -> np.ndarray:
    """Seconds of each collective row: t₀ + the ring formula of `hardware.collectives` (at B, or at its group
    size's B), or, for an all-reduce of more than two GPUs on a switch that reduces (`nvls` = (α_nvls,
    B_nvls)), the faster of ring and NVLS."""
    times = []
    for op, p, s in zip(rows["op"], rows["group_size"], rows["nbytes"]):
        if isinstance(bw_bytes_per_s, Mapping) and int(p) not in bw_bytes_per_s:
            raise ValueError(f"no training rows for groups of {int(p)} GPUs: their bandwidth cannot be fitted")
        bw = bw_bytes_per_s[int(p)] if isinstance(bw_bytes_per_s, Mapping) else bw_bytes_per_s
        t = _ring_s(op, int(p), float(s), latency_s, bw)
        if nvls is not None and op == "allreduce" and int(p) > 2:
            t = min(t, 2 * nvls[0] + float(s) / nvls[1])
        times.append(launch_s + t)
    return np.array(times)


def fit_nvls_collectives(rows: pd.DataFrame, ring: CollectiveFit) -> CollectiveFit:
    """t₀, α, B and the NVLS α and B together, from `ring`'s fit: on an NVSwitch that reduces (NVLS), NCCL
    runs large all-reduces of more than two GPUs in the switch, so one ring cannot follow the curve."""
    seconds = rows["seconds"].to_numpy(float)
    steps, volume = _ring_terms(rows)
    nbytes = rows["nbytes"].to_numpy(float)
    switch = (rows["op"].to_numpy() == "allreduce") & (rows["group_size"].to_numpy() > 2)

    def model(x: np.ndarray) -> np.ndarray:  # x = (t₀ µs, α µs, s/GB ring, α_nvls µs, s/GB NVLS)
        ring_s = steps * x[1] * US + volume * x[2] * 1e-9
        nvls_s = 2 * x[3] * US + nbytes * x[4] * 1e-9
        return x[0] * US + np.where(switch, np.minimum(ring_s, nvls_s), ring_s)

    start = [ring.collective_launch_s / US, ring.latency_s / US, 1e9 / ring.bw_bytes_per_s]
    x = _least_squares(lambda x: np.log(model(x) / seconds),
                       [start + [10.0, start[2] * 0.5], start + [30.0, start[2]]], [0.0] * 5, [np.inf] * 5)
    nvls = (float(x[3]) * US, 1e9 / float(x[4]))
    t0, alpha, bw = float(x[0]) * US, float(x[1]) * US, 1e9 / float(x[2])
    return CollectiveFit(t0, alpha, bw, True, residuals(collective_times_s(rows, t0, alpha, bw, nvls), seconds),
                         nvls)


def _ring_terms(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(steps, bytes) per row: t = t₀ + steps·α + bytes/B (an all-to-all's `nbytes` already leaves its own share
    out: `_ring_s`)."""
    p = rows["group_size"].to_numpy(float)
    op = rows["op"].to_numpy()
    per_phase = np.where(op == "allreduce", 2.0, 1.0)
    share = np.where(op == "alltoall", 1.0, (p - 1) / p)
    return per_phase * (p - 1), per_phase * share * rows["nbytes"].to_numpy(float)


def _linear_start(design: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error: a start with no local minima to fall into."""
    x, _ = nnls(design / seconds[:, None], np.ones_like(seconds))
    return x


def fit_collectives(rows: pd.DataFrame, launch_s: float | None = None, by_group: bool = False) -> CollectiveFit:
    """t₀, α and B of ring collectives over several group sizes (t₀ held at `launch_s` if given); with
    `by_group`, a B for each group size (a PCIe ring runs at the widest level of the tree it spans)."""
    if len(rows) < 3:
        raise ValueError(f"a collective fit needs at least 3 rows, got {len(rows)}")
    unknown = sorted(set(rows["op"]) - {"allreduce", "allgather", "alltoall"})
    if unknown:
        raise ValueError(f"unknown collective {unknown[0]!r} (valid: allreduce, allgather, alltoall)")
    seconds = rows["seconds"].to_numpy(float)
    steps, volume = _ring_terms(rows)
    alpha_identified = launch_s is not None or len(np.unique(steps)) > 1
    free_launch = launch_s is None
    groups = sorted(int(p) for p in np.unique(rows["group_size"])) if by_group else [0]
    sizes = rows["group_size"].to_numpy(int)
    # x = (t₀ µs, α µs, 1/B in s per GB for each group); fixed parameters are dropped from x.
    columns = [np.ones_like(seconds) * US] if free_launch else []
    if alpha_identified:
        columns.append(steps * US)
    columns += [volume * 1e-9 * ((sizes == p) if by_group else 1.0) for p in groups]
    fixed = 0.0 if launch_s is None else launch_s
    design = np.column_stack(columns)
    start = _linear_start(design, seconds - (0.0 if free_launch else fixed))
    start = np.maximum(start, 1e-6)

    def residual(x: np.ndarray) -> np.ndarray:
        return np.log((fixed + design @ x) / seconds)

    x = _least_squares(residual, [start, start * 2.0], [0.0] * len(start), [np.inf] * len(start))
    values = list(x)
    t0 = values.pop(0) * US if free_launch else fixed
    alpha = values.pop(0) * US if alpha_identified else 0.0
    inverse_bw = np.array(values) * 1e-9
    if np.any(inverse_bw <= 0):
        raise ValueError("the collective rows show no time growing with size: bandwidth cannot be fitted")
    bws = {p: float(1.0 / inv) for p, inv in zip(groups, inverse_bw)}
    by = bws if by_group else None
    bw = bws[groups[0]]
    predicted = collective_times_s(rows, t0, alpha, by or bw)
    return CollectiveFit(t0, alpha, bw, alpha_identified, residuals(predicted, seconds), bw_by_group=by)


@dataclass(frozen=True)
class P2pFit:
    """α and B of a send/recv."""

    latency_s: float
    bw_bytes_per_s: float
    residuals: Residuals


def p2p_times_s(rows: pd.DataFrame, latency_s: float, bw_bytes_per_s: float) -> np.ndarray:
    return latency_s + rows["nbytes"].to_numpy(float) / bw_bytes_per_s


def fit_p2p(rows: pd.DataFrame) -> P2pFit:
    """α and B of t = α + S/B from send/recv timings."""
    if len(rows) < 2:
        raise ValueError(f"a send/recv fit needs at least 2 rows, got {len(rows)}")
    seconds = rows["seconds"].to_numpy(float)
    design = np.column_stack([np.ones_like(seconds) * US, rows["nbytes"].to_numpy(float) * 1e-9])
    start = np.maximum(_linear_start(design, seconds), 1e-6)

    def residual(x: np.ndarray) -> np.ndarray:
        return np.log(design @ x / seconds)

    alpha_us, inverse_bw = _least_squares(residual, [start, start * 2.0], [0.0, 0.0], [np.inf, np.inf])
    if inverse_bw <= 0:
        raise ValueError("the send/recv rows show no time growing with size: bandwidth cannot be fitted")
    latency, bw = float(alpha_us) * US, 1.0 / (float(inverse_bw) * 1e-9)
    return P2pFit(latency, bw, residuals(p2p_times_s(rows, latency, bw), seconds))


# ------------------------------------------------------------------------ the engine's own all-reduce

def custom_regimes(rows: pd.DataFrame, rules: CustomAllReduce, nvlink: bool = True) -> np.ndarray:
    """Each row's regime under vLLM's rules (`rules` gives the size limits; its α and B are not used).
    Without `nvlink` between all GPUs (PCIe), only groups of two take the engine's own kernels."""
    return np.array([custom_allreduce_regime(rules, int(p), float(s), peer_links=nvlink or int(p) == 2)
                     for p, s in zip(rows["group_size"], rows["nbytes"])])


def custom_allreduce_times_s(custom: CustomAllReduce, rows: pd.DataFrame, nvlink: bool = True) -> np.ndarray:
    """Seconds of each row that one of the engine's own all-reduces runs (NaN for NCCL's rows)."""
    regimes = custom_regimes(rows, custom, nvlink)
    return np.array([custom_regime_s(custom, r, int(p), float(s)) if r != "nccl" else np.nan
                     for r, p, s in zip(regimes, rows["group_size"], rows["nbytes"])])


def fit_custom_allreduce(rows: pd.DataFrame, rules: CustomAllReduce, source: str, notes: list[str] | None = None,
                         nvlink: bool = True) -> CustomAllReduce:
    """α and B of each regime of the engine's all-reduce, from rows (group_size, nbytes, seconds) of the
    engine's own all-reduce (NCCL's rows, above its limits, are left out). A regime with too few rows to
    tell α from B takes the other custom regime's figures (said in `notes`)."""
    regimes = custom_regimes(rows, rules, nvlink)
    p = rows["group_size"].to_numpy(float)
    nbytes = rows["nbytes"].to_numpy(float)
    seconds = rows["seconds"].to_numpy(float)
    fitted: dict[str, tuple[float, float]] = {}
    for regime, factor in CUSTOM_REGIME_BYTES.items():
        mask = regimes == regime
        if len(np.unique(nbytes[mask])) < 2:
            continue
        design = np.column_stack([np.ones(mask.sum()) * US, factor(p[mask]) * nbytes[mask] * 1e-9])  # α, 1/B
        measured = seconds[mask]
        start = np.maximum(_linear_start(design, measured), 1e-6)

        def residual(x: np.ndarray, design: np.ndarray = design, measured: np.ndarray = measured) -> np.ndarray:
            return np.log(design @ x / measured)

        x = _least_squares(residual, [start, start * 2.0], [0.0, 0.0], [np.inf, np.inf])
        bw = 1e9 / x[1] if x[1] > 0 else np.inf
        if bw > 4e12:  # no size dependence in these rows: B cannot be told from them
            continue
        fitted[regime] = (max(float(x[0]) * US, 50e-9), float(bw))
    for regime, other in (("one_shot", "two_shot"), ("two_shot", "one_shot")):
        if regime not in fitted:
            if other not in fitted:
                raise ValueError("the custom all-reduce rows do not identify α and B of either custom regime")
            fitted[regime] = fitted[other]
            if notes is not None:
                notes.append(f"custom all-reduce: too few {regime.replace('_', '-')} rows: {other}'s figures used")
    update: dict[str, object] = {"source": source}
    for regime, (alpha, bw) in fitted.items():
        update |= {f"{regime}_latency_s": alpha, f"{regime}_bw_bytes_per_s": bw}
    if "symm_mem" not in fitted:
        update |= {"symm_mem_max_bytes": {}, "symm_mem_latency_s": None, "symm_mem_bw_bytes_per_s": None}
    return CustomAllReduce.model_validate(rules.model_dump() | update)
