"""Shared helpers: scenario dicts, an idealised GPU whose costs have closed forms, and catalog readers
that read the shipped YAML directly (so expectations do not go through the code under test)."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "scenarios"
# Real measurements and traces live beside the repository, not in it (a user's checkout has none): tests that
# read them skip when the folder is absent.
REFERENCE_DATA = REPO.parent / "shared" / "reference-data"

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


# A small Llama: runs in milliseconds; `tiny_model_path` writes it as an HF config.json.
TINY_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 2,
    "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 1000, "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16"}


def tiny_model_path(folder: Path, **changes: Any) -> str:
    path = folder / "tiny" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(TINY_CONFIG | changes))
    return str(path)


def ideal_step_s(model: Any, batch: Any, num_logits: int) -> float:
    """One TP1 PP1 step on the ideal GPU: Σ max(FLOPs/F, bytes/M) over models/' op list, summed here (never
    through sim.costs)."""
    from splitsim.models.ops import Sharding, embedding, layer_ops, lm_head

    sharding = Sharding(1, "bf16", "bf16", "bf16")
    ops = [embedding(model, batch.num_tokens, sharding), *layer_ops(model, batch, sharding) * model.num_layers,
           lm_head(model, num_logits, sharding)]
    return sum(max(op.flops / IDEAL_F, op.nbytes / IDEAL_M) for op in ops)


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
    """A small scenario; keyword arguments replace top-level keys (nested dicts merge). `engine: ideal`: the
    closed-form oracles hold the physics alone (test_serving_engine.py tests what an engine adds)."""
    base: dict[str, Any] = {
        "name": "test",
        "engine": "ideal",
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


def cluster_holding(model: str, kv_tokens: float, scheduler: dict, parallel: dict | None = None) -> dict:
    """The ideal cluster with just enough memory for the weights, activations and `kv_tokens` tokens of KV
    (on the tightest stage)."""
    from splitsim.scenario import scenario_from_dict
    from splitsim.sim.plan import build_plan

    probe = build_plan(scenario_from_dict(scenario_dict(model=model, cluster=ideal_cluster(), scheduler=scheduler,
                                                        parallel=parallel or {}, memory={"gpu_utilization": 1.0}))).pool
    cluster = ideal_cluster()
    cluster["gpu"]["memory_bytes"] = max(stage.weight_bytes_per_gpu + probe.activation_bytes_per_gpu
                                         + kv_tokens * stage.kv_bytes_per_token_per_gpu for stage in probe.stages)
    return cluster


def error_line(capsys: Any, argv: list[str]) -> str:
    """Run the command in-process on bad input: exit code 2 and exactly one stderr line, no traceback."""
    from splitsim.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err
