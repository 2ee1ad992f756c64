"""Shared helpers: scenario dicts, an idealised GPU whose costs have closed forms, and catalog readers
that read the shipped YAML directly (so expectations do not go through the code under test)."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"

# An ideal GPU: every efficiency 1, no launch cost, no wave quantisation (γ = 0), no few-row penalty.
# Its op times are exactly max(FLOPs / F, bytes / M).
IDEAL_F = 1.0e15
IDEAL_M = 2.0e12
IDEAL_GPU: dict[str, Any] = {
    "name": "ideal", "memory_bytes": 80e9, "memory_bw_bytes_per_s": IDEAL_M, "bf16_flops_per_s": IDEAL_F,
    "fp8_flops_per_s": None, "num_sms": 100, "source": "test",
    "efficiency": {"compute": 1.0, "tile_m": 1, "tile_n": 1, "wave_exponent": 0.0, "m_half": 0.0,
                   "memory": 1.0, "launch_s": 0.0, "attention": 1.0, "source": "test"},
}


def catalog_yaml(kind: str, name: str) -> dict[str, Any]:
    path = resources.files("splitsim.hardware") / "catalog" / kind / f"{name}.yaml"
    return yaml.safe_load(path.read_text())


def ideal_cluster(gpus_per_node: int = 8, num_nodes: int = 1) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": "ideal-node", "gpu": copy.deepcopy(IDEAL_GPU), "num_nodes": num_nodes,
        "gpus_per_node": gpus_per_node, "intra_node": "nvlink4-nvswitch",
    }
    if num_nodes > 1:
        cluster["inter_node"] = "roce-200g-node"
    return cluster


def scenario_dict(**overrides: Any) -> dict[str, Any]:
    """A small scenario; keyword arguments replace top-level keys (nested dicts merge)."""
    base: dict[str, Any] = {
        "name": "test",
        "model": "llama-3-8b",
        "cluster": "h100-nvlink-node",
        "parallel": {"tp": 1, "pp": 1, "dp": 1},
        "workload": {"num_requests": 2, "rate": 0, "prompt_tokens": 64, "output_tokens": 4},
        "scheduler": {"max_num_seqs": 64, "max_batched_tokens": 4096, "policy": "prefill_first"},
        "sim": {"granularity": "stage", "seed": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base
