"""Number formats: what a weight or a KV-cache entry costs in bytes, and which peak computes it.

fp8 weights compute at the FP8 tensor-core peak only on GPUs that have FP8 cores (H100, H200, L40S);
elsewhere they are weight-only (8-bit bytes, 16-bit compute). fp4 is weight-only on all of them.
Activations, all-reduces and hand-offs are always 16-bit.
"""

from __future__ import annotations

from typing import Literal

WeightDtype = Literal["bf16", "fp16", "fp8", "fp4"]
KvDtype = Literal["bf16", "fp16", "fp8"]
ComputeDtype = Literal["bf16", "fp16", "fp8"]

BYTES_PER_ELEMENT: dict[str, float] = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "fp4": 0.5}
ACTIVATION_BYTES = 2.0

# HF `torch_dtype` → our name; the config's dtype is the default weight precision.
HF_DTYPES: dict[str, WeightDtype] = {"bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8"}


def compute_dtype(weights: WeightDtype, gpu_has_fp8: bool) -> ComputeDtype:
    """The tensor-core format a GEMM with these weights runs in."""
    if weights == "fp8" and gpu_has_fp8:
        return "fp8"
    return "fp16" if weights == "fp16" else "bf16"
