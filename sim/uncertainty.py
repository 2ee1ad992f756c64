"""Error bars: how far a run's headline figures may be off, from the held-out residuals of the fits its costs
rest on (the presets' and profiles' `held_out_errors`).

Each op kind k (GEMMs of a dtype, prefill or decode attention, element-wise kernels, each collective) has a
median held-out relative error e_k. Taking its log-ratio error as normal, σ_k = e_k / 0.6745 (the median of
|N(0, σ)| is 0.6745σ). A fit's error on a kind is systematic — the same shapes recur in every step — so it is
one draw per kind, shared by all its ops, and independent across kinds. A figure made of op times t_k is off
by Σ_k w_k ε_k in log (w_k = t_k / Σ t), so σ = √(Σ_k (w_k σ_k)²), and the 80 % interval is
[x·e^(−zσ), x·e^(zσ)] with z = 1.2816. The weights come from the run's typical steps (`_typical_work`):
TTFT from a prefill of the mean prompt, TPOT from a decode step at the run's mean batch and context,
throughput from one request's prefill plus its decode steps' share. Queueing is taken to scale with the
step times. A kind without residuals widens nothing unless its figures are marked assumed (then e =
`ASSUMED_ERROR`); the summary lists such kinds. Analytic: no extra simulation, runs stay byte-identical.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from splitsim.error_bars import HALF_NORMAL_MEDIAN, LEVEL, Z
from splitsim.hardware import collectives
from splitsim.hardware.fabric import NetworkFabric
from splitsim.models.ops import BatchShape, local_positions
from splitsim.sim.costs import StageCosts, TimedOp
from splitsim.sim.plan import Plan, Pool
from splitsim.sim.workload import RequestStream

# An assumed figure is taken to be no better than the worst fit we ship: A100 decode attention's held-out
# median, 31 % (hardware/catalog/profiles/a100_sxm-vllm.yaml).
ASSUMED_ERROR = 0.31
ERROR_CAP = 10.0  # per kind: a fit more than 10× off (a noisy CPU run) bounds nothing finer, and keeps e^(zσ) finite
def _collective_kind(costs: StageCosts, name: str, group: list[int], nbytes: float) -> str:
    """The residual kind of a collective: NCCL's, the engine's own all-reduce, or the network's."""
    if len({costs.cluster.node_of(g) for g in group}) > 1:
        return f"{name}_inter_node"
    custom = name == "allreduce" and costs.engine.custom_allreduce
    if custom and collectives.engine_allreduce(costs.cluster, group, nbytes)[1] != "nccl":
        return "allreduce custom"
    return name


def _stage_work(costs: StageCosts, batch: BatchShape, num_logits: int) -> dict[str, float]:
    """Seconds by op kind of one stage's work on `batch`: its walk, the layers folded by kind as
    `StageCosts.stage_time` folds them, then the prologue and the epilogue, and the hand-off to the next stage."""
    work = defaultdict[str, float](float)
    tokens = batch.num_tokens
    walk = costs.walk(batch, num_logits)
    counts: dict[str, int] = {}
    layer: dict[str, list[TimedOp]] = {}
    for layer_kind, count, ops in walk.runs:
        counts[layer_kind] = counts.get(layer_kind, 0) + count
        layer[layer_kind] = ops
    timed = [(count, op) for layer_kind, count in counts.items() for op in layer[layer_kind]]
    for count, op in [*timed, *((1, op) for op in walk.prologue.ops), *((1, op) for op in walk.epilogue.ops)]:
        kind = op.kind
        if op.category != "compute":  # a collective: the all-to-alls span the experts' GPUs, the rest the TP group
            group = costs.moe_group if kind == "alltoall" else costs.group
            kind = _collective_kind(costs, kind, group, tokens * costs.model.hidden_size * 2)
        work[kind] += count * op.seconds
    if costs.next_group is not None:
        send, gather = costs.handoff_times(tokens)
        work[_collective_kind(costs, "sendrecv", [costs.group[0], costs.next_group[0]], 0.0)] += send
        work[_collective_kind(costs, "allgather", costs.next_group, 0.0)] += gather
    return work


def _through_stages(pool: Pool, batch: BatchShape, num_logits: int) -> dict[str, float]:
    total: dict[str, float] = defaultdict(float)
    for stage in range(pool.pp):
        for kind, seconds in _stage_work(StageCosts.of(pool, 0, stage), batch, num_logits).items():
            total[kind] += seconds
    return total


def _typical_work(pool: Pool, stream: RequestStream, summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Seconds by op kind behind each figure, from the run's typical steps."""
    prompt = max(1, round(float(np.mean(stream.prompt_tokens))))
    output = max(1, round(float(np.mean(stream.output_tokens))))
    budget = pool.scheduler.max_batched_tokens
    prefill: dict[str, float] = defaultdict(float)
    done = 0
    while done < prompt:  # the mean prompt alone, in chunks of the token budget
        chunk = min(budget, prompt - done)
        shape = BatchShape.of(((chunk, done),), local=pool.model.local_attention)
        for kind, seconds in _through_stages(pool, shape, 1).items():
            prefill[kind] += seconds
        done += chunk
    tpot = _figure(summary, "tpot_s") or 0.0
    running = summary["throughput_tokens_per_s"] * tpot / pool.dp  # Little's law: sequences decoding per replica
    batch = int(min(max(1, round(running)), pool.scheduler.max_num_seqs))
    context = prompt + output // 2
    local = pool.model.local_attention
    seen = local_positions(context, *local) if local is not None else 0
    decode = _through_stages(pool, BatchShape(num_decode=batch, decode_context=batch * context,
                                              decode_context_local=batch * seen), batch)
    # In a fixed order (prefill's kinds, then decode's): the sums below must not depend on string hashing, which
    # differs between processes (a pool's, a Ray worker's), or the same run gives different last digits.
    per_request = {kind: prefill.get(kind, 0.0) + (output - 1) * decode.get(kind, 0.0) / batch
                   for kind in dict.fromkeys([*prefill, *decode])}
    return {"ttft_p50": prefill, "tpot_p50": decode, "throughput": per_request}


def _figure(summary: dict[str, Any], key: str) -> float | None:
    """A p50 of summary.json, or None where the run has none (TPOT with one output token each)."""
    stats = summary.get(key)
    return stats.get("p50") if isinstance(stats, dict) else None


def residuals(pool: Pool) -> tuple[dict[str, float], set[str]]:
    """(median error by op kind, the kinds whose figures are assumed) for this pool's GPU and fabrics."""
    gpu, intra, inter = pool.cluster.gpu, pool.cluster.intra_node, pool.cluster.inter_node
    errors = gpu.efficiency.held_out_errors | intra.held_out_errors
    if isinstance(inter, NetworkFabric):
        errors |= {f"{kind}_inter_node": error for kind, error in inter.held_out_errors.items()}
    assumed = {"gemm", "moe", "attention prefill", "attention decode", "elementwise"} if gpu.efficiency.assumed \
        else set()
    if intra.assumed:
        assumed |= {"allreduce", "allreduce custom", "allgather", "sendrecv", "alltoall"}
    if isinstance(inter, NetworkFabric) and inter.assumed:
        assumed |= {"allreduce_inter_node", "allgather_inter_node", "sendrecv_inter_node", "alltoall_inter_node"}
    return errors, assumed


def _error_of(kind: str, pool: Pool, errors: dict[str, float], assumed: set[str]) -> tuple[float | None, bool]:
    """(median error, whether assumed) of `kind`: its own, its dtype's or phase's, the family's, or the
    assumed figure; None when it has no residuals and is not assumed."""
    if kind == "gemm":
        candidates = [f"gemm {pool.sharding.compute}", "gemm"]
    elif kind == "moe":  # the fused MoE kernel's own fit, else the GEMMs' (the experts priced as dense GEMMs)
        experts = pool.sharding.expert_compute or pool.sharding.compute
        candidates = [f"moe {experts}", f"gemm {experts}", "gemm"]
    elif kind.startswith("attention "):
        candidates = [kind, "attention"]
    else:
        candidates = [kind]
    for candidate in candidates:
        if candidate in errors:
            return errors[candidate], False
    return (ASSUMED_ERROR, True) if kind in assumed else (None, False)


def uncertainty(plan: Plan, stream: RequestStream, summary: dict[str, Any]) -> dict[str, Any]:
    """summary.json's `uncertainty`: an 80 % interval for TTFT p50, TPOT p50 and throughput, and the op kinds
    that had no residuals (they widen nothing) or only assumed figures (they widen by `ASSUMED_ERROR`)."""
    pool = plan.pool  # an aggregated deployment's
    errors, assumed = residuals(pool)
    work = _typical_work(pool, stream, summary)
    missing: set[str] = set()
    widened: set[str] = set()
    out: dict[str, Any] = {"level": LEVEL}
    values = {"ttft_p50": _figure(summary, "ttft_s"), "tpot_p50": _figure(summary, "tpot_s"),
              "throughput": summary["throughput_tokens_per_s"]}
    for figure, seconds in work.items():
        total = sum(seconds.values())
        variance = 0.0
        for kind, t in seconds.items():
            if t <= 0:
                continue
            error, is_assumed = _error_of(kind, pool, errors, assumed)
            if error is None:
                missing.add(kind)
                continue
            if is_assumed:
                widened.add(kind)
            variance += (t / total * min(error, ERROR_CAP) / HALF_NORMAL_MEDIAN) ** 2
        spread = math.exp(Z * math.sqrt(variance))
        value = values[figure]
        out[figure] = None if value is None else [value / spread, value * spread]
    out["no_residuals"] = sorted(missing)
    out["assumed"] = sorted(widened)
    return out
