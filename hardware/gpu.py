"""One GPU: its datasheet figures and the roofline that turns an op's FLOPs and bytes into seconds.

Roofline with shape-dependent efficiency (PHYSICS.md, "One GPU"):

    t = max(FLOPs / (F · η_c(m, n)), bytes / (M · η_m)) + t_launch

`F` is the dense tensor-core peak for the compute dtype, `M` the memory bandwidth. `η_c` falls for small
and skinny GEMMs, for two reasons the fitted form keeps apart:

    η_c(m, n) = η_peak · q(m, n)^γ · m / (m + m_half)

- wave quantisation `q`: the output is cut into `tile_m × tile_n` tiles that run in waves of one tile
  per SM, and `q` is the useful fraction of the SM-tiles issued (a part-empty last wave idles SMs);
  `γ < 1` softens it, since real libraries switch tile shapes and split K;
- few rows: with `m` tokens well below `m_half` a GEMM cannot fill the tensor-core pipelines.

All parameters are fitted to kernel timings (`source` names which); `t_launch` is the fixed cost the fit
finds inside every kernel, not host launch overhead.

A mixture of experts' grouped GEMM (`groups` > 1: one launch, each expert a GEMM of its own few rows) is the
engine's fused-MoE kernel, not the dense library's: where a dtype has `grouped_gemm` figures it takes its own
η_peak, m½, η_m and fixed cost, without the wave term (the experts' tiles fill the waves together):

    t = max(G · 2mnk / (F · η_g · m/(m + m½_g)), G · bytes / (M · η_m,g)) + t_launch,g
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from splitsim.hardware.units import Exponent, FixedCost, Flops, Fraction, Memory, MemoryBandwidth, check_errors

ComputeDtype = Literal["bf16", "fp16", "fp8", "fp4"]


class GemmShape(BaseModel):
    """One compute dtype's own GEMM efficiency and small-m shape (its kernels differ: an fp8 GEMM is not a
    bf16 one at twice the peak); memory efficiency and launch cost stay the GPU's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute: Fraction = Field(description="η_peak of this dtype's GEMMs")
    tile_m: int = Field(128, gt=0, le=1024, strict=True)
    tile_n: int = Field(128, gt=0, le=1024, strict=True)
    wave_exponent: Exponent = 1.0
    m_half: float = Field(0.0, ge=0, le=1e6, allow_inf_nan=False)


class GroupedGemm(BaseModel):
    """One compute dtype's grouped GEMM, as the engine's fused mixture-of-experts kernel runs it (vLLM: Triton's or
    FlashInfer's, not cuBLAS): G experts' GEMMs of m rows each in one launch. Fitted to that kernel's timings
    (`splitsim calibrate --aiconfigurator`, the tables' balanced MoE rows); no wave term, since the experts' tiles
    share the waves (a fitted γ and tile moved the held-out errors by about a point, either way)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute: Fraction = Field(description="η_peak of the grouped kernel")
    m_half: float = Field(0.0, ge=0, le=1e6, allow_inf_nan=False,
                          description="rows per expert at which it reaches half of η_peak")
    memory: Fraction = Field(description="η_m: achieved fraction of memory bandwidth reading the experts' weights")
    launch_s: FixedCost = Field(description="fixed cost per grouped GEMM (the fused kernel's routing, alignment and "
                                            "reduction launches included, which the simulator does not price apart)")


class AttentionKernel(BaseModel):
    """A roofline of its own for prefill or decode attention: t = max(F / (P·η_c), B / (M·η_m)) + t_launch
    (prefill kernels are compute-bound, decode kernels read the KV cache)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute: Fraction = Field(description="η_c")
    memory: Fraction = Field(description="η_m")
    launch_s: FixedCost


class Efficiency(BaseModel):
    """Fitted fractions of the datasheet peaks, and where they were fitted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute: Fraction = Field(description="η_peak: GEMM efficiency of large, full-wave shapes")
    tile_m: int = Field(128, gt=0, le=1024, strict=True, description="GEMM output tile rows (token dimension)")
    tile_n: int = Field(128, gt=0, le=1024, strict=True, description="GEMM output tile columns")
    wave_exponent: Exponent = Field(1.0, description="γ: how fully wave quantisation bites (0: not at all)")
    m_half: float = Field(0.0, ge=0, le=1e6, allow_inf_nan=False,  # fits give 47 (A100) and 97 (H100) tokens
                          description="tokens at which few-row GEMMs reach half of η_peak (0: no such loss)")
    memory: Fraction = Field(description="η_m: achieved fraction of memory bandwidth")
    attention: Fraction = Field(description="η_c of attention kernels")
    elementwise: Fraction | None = Field(None, description="η_m of element-wise kernels (norms, activation); "
                                                           "default: memory")
    elementwise_launch_s: FixedCost | None = Field(None, description="their fixed cost; default: launch_s")
    launch_s: FixedCost = Field(description="fixed cost per kernel (launch, tail)")
    gemm_by_dtype: dict[ComputeDtype, GemmShape] = Field(
        default_factory=dict, description="a compute dtype's own GEMM figures (profile schema 2); others use "
                                          "compute, tile_*, wave_exponent, m_half")
    grouped_gemm: dict[ComputeDtype, GroupedGemm] = Field(
        default_factory=dict, description="a compute dtype's grouped (mixture-of-experts) GEMM figures; absent: "
                                          "priced as dense GEMMs of the dtype")
    attention_prefill: AttentionKernel | None = Field(None, description="default: η_c attention, η_m memory")
    attention_decode: AttentionKernel | None = Field(None, description="default: η_c attention, η_m memory")
    source: str
    assumed: bool = Field(False, description="true where no measurement of this GPU exists yet")
    held_out_errors: dict[str, float] = Field(
        default_factory=dict, description="median |predicted/measured − 1| of the fit on held-out kernels, by op "
                                          "kind (gemm bf16, attention decode…): the run's error bars")

    @field_validator("held_out_errors", mode="before")
    @classmethod
    def _errors_are_fractions(cls, errors: object) -> object:
        return check_errors(errors)

    def __hash__(self) -> int:  # frozen, but a dict field: hash what it says (cost caches key on the GPU)
        return hash(self.model_dump_json())

    def gemm_shape(self, dtype: ComputeDtype) -> tuple[float, int, int, float, float]:
        """(η_peak, tile_m, tile_n, γ, m½) of `dtype`'s GEMMs: its own, or the defaults."""
        own = self.gemm_by_dtype.get(dtype)
        if own is not None:
            return own.compute, own.tile_m, own.tile_n, own.wave_exponent, own.m_half
        return self.compute, self.tile_m, self.tile_n, self.wave_exponent, self.m_half

    def attention_kernel(self, phase: str) -> tuple[float, float, float]:
        """(η_c, η_m, t_launch) of prefill or decode attention: its own, or η_c attention with the GEMMs' η_m
        and launch cost."""
        own = self.attention_prefill if phase == "prefill" else self.attention_decode
        return (own.compute, own.memory, own.launch_s) if own is not None else \
            (self.attention, self.memory, self.launch_s)


class GpuSpec(BaseModel):
    """Datasheet figures of one GPU model; `source` cites them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    memory_bytes: Memory
    memory_bw_bytes_per_s: MemoryBandwidth
    bf16_flops_per_s: Flops = Field(description="dense BF16/FP16 tensor peak")
    fp8_flops_per_s: Flops | None = Field(None, description="dense FP8 peak; null if no FP8 cores")
    fp4_flops_per_s: Flops | None = Field(None, description="dense FP4 (NVFP4) peak; null if no FP4 cores")
    num_sms: int = Field(gt=0, le=1024, strict=True, description="streaming multiprocessors (CUs, cores)")
    efficiency: Efficiency
    source: str

    @property
    def has_fp8(self) -> bool:
        return self.fp8_flops_per_s is not None

    @property
    def has_fp4(self) -> bool:
        return self.fp4_flops_per_s is not None

    def peak_flops_per_s(self, dtype: ComputeDtype) -> float:
        if dtype in ("fp8", "fp4"):
            peak = self.fp8_flops_per_s if dtype == "fp8" else self.fp4_flops_per_s
            if peak is None:
                raise ValueError(f"{self.name} has no {dtype.upper()} tensor cores")
            return peak
        return self.bf16_flops_per_s

    def wave_efficiency(self, m: int, n: int, dtype: ComputeDtype = "bf16", groups: float = 1.0) -> float:
        """Useful fraction of the SM-tiles a GEMM with an m×n output occupies (in `dtype`'s tiles); `groups` such
        GEMMs in one grouped kernel fill the waves together."""
        _, tile_m, tile_n, _, _ = self.efficiency.gemm_shape(dtype)
        tiles = math.ceil(m / tile_m) * math.ceil(n / tile_n)
        if groups != 1.0:
            tiles = math.ceil(groups * tiles)
        waves = math.ceil(tiles / self.num_sms)
        useful = m * n if groups == 1.0 else groups * m * n
        return useful / (waves * self.num_sms * tile_m * tile_n)

    def gemm_time_s(
        self, m: int, n: int, k: int, *, weight_bytes: float, act_bytes: float = 2.0,
        dtype: ComputeDtype = "bf16", groups: float = 1.0, grouped: bool | None = None,
    ) -> float:
        """Seconds for `[m×k]·[k×n]` where the `k×n` operand is the weight matrix.

        Bytes moved: activations in (m·k) and out (m·n) at `act_bytes`, weights (k·n) at `weight_bytes`.
        `groups` such GEMMs (a mixture of experts' grouped kernel, `groups` experts of m tokens each): one
        launch, their tiles sharing the waves, each paying the small-m efficiency of its own m. A grouped kernel
        (`grouped`; default: `groups` ≠ 1) takes the dtype's `grouped_gemm` figures where it has them
        (`grouped_gemm_time_s`), else the dense ones as here.
        """
        if grouped is None:
            grouped = groups != 1.0
        if grouped and dtype in self.efficiency.grouped_gemm:
            return self.grouped_gemm_time_s(m, n, k, weight_bytes=weight_bytes, act_bytes=act_bytes, dtype=dtype,
                                            groups=groups)
        flops = 2.0 * m * n * k
        nbytes = (m * k + m * n) * act_bytes + k * n * weight_bytes
        if groups != 1.0:
            flops, nbytes = flops * groups, nbytes * groups
        eff = self.efficiency
        eta_peak, _, _, gamma, m_half = eff.gemm_shape(dtype)
        eta = eta_peak * self.wave_efficiency(m, n, dtype, groups) ** gamma * m / (m + m_half)
        compute = flops / (self.peak_flops_per_s(dtype) * eta)
        memory = nbytes / (self.memory_bw_bytes_per_s * eff.memory)
        return max(compute, memory) + eff.launch_s

    def grouped_gemm_time_s(
        self, m: int, n: int, k: int, *, weight_bytes: float, act_bytes: float = 2.0,
        dtype: ComputeDtype = "bf16", groups: float = 1.0,
    ) -> float:
        """`groups` GEMMs `[m×k]·[k×n]` in one fused-MoE launch, priced with the dtype's `grouped_gemm` figures:
        max(G·2mnk / (F·η_g·m/(m + m½_g)), G·bytes / (M·η_m,g)) + t_launch,g."""
        own = self.efficiency.grouped_gemm[dtype]
        flops = 2.0 * m * n * k * groups
        nbytes = ((m * k + m * n) * act_bytes + k * n * weight_bytes) * groups
        compute = flops / (self.peak_flops_per_s(dtype) * own.compute * m / (m + own.m_half))
        memory = nbytes / (self.memory_bw_bytes_per_s * own.memory)
        return max(compute, memory) + own.launch_s

    def elementwise_time_s(self, nbytes: float) -> float:
        """A memory-bound element-wise kernel: bytes / (M · η_e) + its fixed cost."""
        eff = self.efficiency
        eta = eff.elementwise if eff.elementwise is not None else eff.memory
        launch = eff.elementwise_launch_s if eff.elementwise_launch_s is not None else eff.launch_s
        return nbytes / (self.memory_bw_bytes_per_s * eta) + launch

    def attention_time_s(self, flops: float, nbytes: float, phase: str) -> float:
        """Prefill or decode attention: its roofline (`Efficiency.attention_kernel`)."""
        eta_c, eta_m, launch_s = self.efficiency.attention_kernel(phase)
        compute = flops / (self.bf16_flops_per_s * eta_c)
        memory = nbytes / (self.memory_bw_bytes_per_s * eta_m)
        return max(compute, memory) + launch_s

    def kernel_time_s(self, flops: float, nbytes: float, *, compute_efficiency: float) -> float:
        """Roofline for a non-GEMM kernel (attention, element-wise) with given FLOPs and bytes."""
        eff = self.efficiency
        compute = flops / (self.bf16_flops_per_s * compute_efficiency)
        memory = nbytes / (self.memory_bw_bytes_per_s * eff.memory)
        return max(compute, memory) + eff.launch_s
