"""Number formats: what a weight or a KV-cache entry costs in bytes, and which peak computes it.

fp8 weights compute at the FP8 tensor-core peak only on GPUs that have FP8 cores (H100, H200, L40S,
Blackwell); elsewhere they are weight-only (8-bit bytes, 16-bit compute). fp4 weights (NVFP4) compute at the
FP4 peak on Blackwell (B200, RTX PRO 6000: vLLM's NVFP4 linear kernels quantise the activations too), and are
weight-only elsewhere.
Activations, all-reduces and hand-offs are always 16-bit.
"""

from __future__ import annotations

from typing import Literal

WeightDtype = Literal["bf16", "fp16", "fp8", "fp4"]
KvDtype = Literal["bf16", "fp16", "fp8"]
ComputeDtype = Literal["bf16", "fp16", "fp8", "fp4"]

BYTES_PER_ELEMENT: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5}
ACTIVATION_BYTES = 2.0

# HF `torch_dtype` → our name; the config's dtype is the default weight precision.
HF_DTYPES: dict[str, WeightDtype] = {"bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8"}


def compute_dtype(weights: WeightDtype, gpu_has_fp8: bool, gpu_has_fp4: bool = False) -> ComputeDtype:
    """The tensor-core format a GEMM with these weights runs in."""
    if weights == "fp8" and gpu_has_fp8:
        return "fp8"
    if weights == "fp4" and gpu_has_fp4:
        return "fp4"
    return "fp16" if weights == "fp16" else "bf16"
