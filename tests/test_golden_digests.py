"""SHA-256 digests of every output file (requests.csv, gpus.csv, trace.json, summary.json) for one run per
execution path of the engine: a refactor leaves every byte where it was. A change that moves them regenerates
them in a commit of its own that says which numbers moved and why.

    SPLITSIM_UPDATE_GOLDENS=1 .venv/bin/pytest tests/test_golden_digests.py   # rewrite them (the tests skip)
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import REPO, SCENARIOS

DIGESTS = REPO / "tests" / "goldens" / "digests.json"
FILES = ("summary.json", "requests.csv", "gpus.csv", "trace.json")
CHAT = {"prompt_tokens": {"dist": "lognormal", "median": 1020, "sigma": 0.8, "max": 4096},
        "output_tokens": {"dist": "lognormal", "median": 129, "sigma": 1.0, "max": 512}}


def _shipped(name: str, **changes: Any) -> dict[str, Any]:
    data = yaml.safe_load((SCENARIOS / f"{name}.yaml").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def _moe(model: str, cluster: str, parallel: dict[str, Any], granularity: str = "stage",
         requests: int = 60, rate: float = 8.0) -> dict[str, Any]:
    return {"name": model, "model": model, "cluster": cluster, "parallel": parallel,
            "workload": {"num_requests": requests, "rate": rate, **copy.deepcopy(CHAT)},
            "scheduler": {"policy": "chunked", "max_num_seqs": 128, "max_batched_tokens": 2048},
            "sim": {"granularity": granularity, "seed": 1}}


# One run per way the engine can execute a batch (sim/engine.py), each small enough for a few seconds.
CASES: dict[str, dict[str, Any]] = {
    # PP1, stage mode, fast-forward folding decode runs
    "pp1-fast-forward": _shipped("h100-nvlink-70b", workload={"num_requests": 200}),
    # PP2 without contention: the closed-form walk through the stages (_through_stages)
    "pp2-closed-form": _shipped("h100-nvlink-70b", parallel={"tp": 4, "pp": 2, "dp": 1},
                                workload={"num_requests": 120}, sim={"contention": False}),
    # TP8xPP2 over Ethernet: no link has two users, so the closed-form walk (named before that was checked)
    "contended-stage": _shipped("h100-2node-ethernet", workload={"num_requests": 40}),
    # stage mode over links that are shared (the L40S box's host path): every step walked as flows
    # (_stage_segments, _handoff), and with fast-forward on
    "contended-walked": _shipped("l40s-pcie-70b", workload={"num_requests": 24}, sim={"fast_forward": False}),
    "contended-fast-forward": _shipped("l40s-pcie-70b", workload={"num_requests": 60}),
    # layer granularity: an event per op
    "layer-mode": _shipped("h100-nvlink-70b", parallel={"tp": 4, "pp": 2, "dp": 1},
                           workload={"num_requests": 24}, sim={"granularity": "layer"}),
    # attention-DP replicas in lockstep, closed form and op by op
    "attention-dp-stage": _moe("qwen3-30b-a3b", "h100-nvlink-node", {"tp": 1, "pp": 1, "dp": 2, "ep": 2}),
    "attention-dp-layer": _moe("qwen3-30b-a3b", "h100-nvlink-node", {"tp": 1, "pp": 1, "dp": 2, "ep": 2},
                               granularity="layer", requests=16),
    # sliding windows on every other layer, MXFP4 experts
    "gpt-oss-windows": _moe("gpt-oss-20b", "h100-nvlink-node", {"tp": 1, "pp": 1, "dp": 2}),
    # MLA, grouped routing, fp8 checkpoint, experts over two InfiniBand nodes
    "deepseek-v3-ib": _moe("deepseek-v3", "h100-ib-2node", {"tp": 8, "pp": 2, "dp": 1}, requests=40),
    # vLLM V0 without chunking, KV reserved at admission (TRT-LLM's guaranteed-no-evict)
    "prefill-first-reserve": _shipped("h100-nvlink-70b", parallel={"tp": 4, "pp": 1, "dp": 2},
                                      workload={"num_requests": 150, "rate": 12.0},
                                      scheduler={"policy": "prefill_first", "max_batched_tokens": 8192},
                                      memory={"kv_allocation": "reserve"}),
    # a closed loop of clients over replicas
    "closed-loop": _shipped("l40s-pcie-70b", parallel={"tp": 4, "pp": 1, "dp": 2},
                            workload={"num_requests": 80, "rate": None, "concurrency": 12}),
    # a trace's arrivals and lengths (written by the test)
    "trace": _shipped("h100-nvlink-70b", parallel={"tp": 8, "pp": 1, "dp": 1},
                      workload={"trace": "TRACE", "num_requests": None, "rate": None, "prompt_tokens": None,
                                "output_tokens": None}),
}


def _trace(folder: Path) -> str:
    """A deterministic trace: bursts and gaps, short and long prompts."""
    rows = ["arrival_s,prompt_tokens,output_tokens"]
    for i in range(90):
        rows.append(f"{(i // 6) * 0.9 + (i % 6) * 0.013:.3f},{97 + (i * 389) % 2900},{3 + (i * 53) % 300}")
    path = folder / "trace.csv"
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def _digests(case: str, folder: Path) -> dict[str, str]:
    from splitsim import simulate
    from splitsim.report import write_outputs
    from splitsim.scenario import scenario_from_dict

    data = copy.deepcopy(CASES[case])
    data["name"] = case
    if data["workload"].get("trace") == "TRACE":
        data["workload"] = {"trace": _trace(folder)}
    data["workload"] = {k: v for k, v in data["workload"].items() if v is not None}
    result = simulate(scenario_from_dict(data))
    out = folder / "out"
    write_outputs(result, out, timeline=False)
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in FILES}


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_are_byte_identical_to_the_goldens(case, tmp_path):
    digests = _digests(case, tmp_path)
    if os.environ.get("SPLITSIM_UPDATE_GOLDENS"):
        stored = json.loads(DIGESTS.read_text()) if DIGESTS.exists() else {}
        stored[case] = digests
        DIGESTS.write_text(json.dumps(dict(sorted(stored.items())), indent=2) + "\n")
        pytest.skip("golden digests rewritten: not a check")
    golden = json.loads(DIGESTS.read_text())[case]
    moved = [name for name in FILES if digests[name] != golden[name]]
    assert not moved, f"{case}: {', '.join(moved)} moved"
