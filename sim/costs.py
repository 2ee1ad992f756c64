"""Seconds for a stage's work on one batch, from models/ (what work) and hardware/ (how long).

The engine's hot path calls `stage_time` once per stage per batch, so the parts that depend on the
token count alone (GEMMs, all-reduces, hand-offs) are cached by token count; attention, which depends
on the context lengths, is two rooflines. Layer mode asks `layer_ops` for the same numbers op by op;
both sum the same terms, so without contention the two granularities agree to float precision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitsim.hardware import collectives
from splitsim.hardware.gpu import GpuSpec
from splitsim.models import ops as model_ops
from splitsim.models.ops import BatchShape, Op, Sharding
from splitsim.models.precision import ACTIVATION_BYTES
from splitsim.models.spec import ModelSpec
from splitsim.sim.plan import Plan


@dataclass(frozen=True, slots=True)
class TimedOp:
    name: str
    category: str  # "compute" | "tp_comm"
    seconds: float


_CACHES: dict[Any, dict[Any, Any]] = {}


def _shared(key: Any) -> dict[Any, Any]:
    """The process's cache for `key` (what the cached times depend on besides the token count)."""
    return _CACHES.setdefault(key, {})


class StageCosts:
    """Cost of one stage of one replica (every replica's stage s costs the same: same GPUs' kind)."""

    def __init__(self, plan: Plan, replica: int, stage: int) -> None:
        self.plan = plan
        self.gpu: GpuSpec = plan.cluster.gpu
        self.group = plan.tp_group(replica, stage)
        self.num_layers = plan.stages[stage].num_layers
        self.is_first = stage == 0
        self.is_last = stage == plan.pp - 1
        self.next_group = plan.tp_group(replica, stage + 1) if not self.is_last else None
        # Caches shared by every StageCosts of the same model, number formats, GPU (and TP group, for the
        # collectives) in this process: an advisor's runs of many layouts and loads price each shape once.
        self._padded = plan.padded_tokens  # CUDA-graph sizes (the engine's): a batch's tokens as its graph runs them
        layer = (plan.model, plan.sharding, self.gpu, self._padded)
        comm = (plan.model, plan.cluster, tuple(self.group), plan.engine, self._padded)
        self._gemms: dict[int, tuple[float, ...]] = _shared(("gemms", layer))
        self._elementwise: dict[int, tuple[float, ...]] = _shared(("elementwise", layer))
        self._lm_head: dict[int, float] = _shared(("lm_head", layer))
        self._logits_gather: dict[int, float] = _shared(("logits_gather", comm))
        self._prefill_attention: dict[tuple[tuple[int, int], ...], float] = _shared(("prefill_attention", layer))
        self._allreduce: dict[int, float] = _shared(("allreduce", comm))
        self._per_token: dict[int, tuple[float, float]] = _shared(("edges", layer, comm))
        self._handoff: dict[int, tuple[float, float]] = _shared(
            ("handoff", comm, tuple(self.next_group or ())))
        # Decode attention is linear in (Σ context, sequences): take its coefficients from models/ once.
        unit_ctx = model_ops.attention(plan.model, BatchShape(decode_context=1), plan.sharding)[1]
        unit_seq = model_ops.attention(plan.model, BatchShape(num_decode=1), plan.sharding)[1]
        self._decode_flops_per_ctx = unit_ctx.flops
        self._decode_bytes_per_ctx = unit_ctx.nbytes
        self._decode_bytes_per_seq = unit_seq.nbytes

    # -- pieces, each cached by what it depends on ------------------------------------------------
    def _op_time(self, op: Op) -> float:
        match op.kind:
            case "gemm":
                return self.gpu.gemm_time_s(op.m, op.n, op.k, weight_bytes=op.weight_bytes, dtype=op.dtype)
            case "attention":
                return self.gpu.attention_time_s(op.flops, op.nbytes, "prefill")  # decode: attention_times
            case "memory":
                return self.gpu.elementwise_time_s(op.nbytes)
            case "allreduce":
                if self.plan.engine.custom_allreduce:
                    return collectives.engine_allreduce(self.plan.cluster, self.group, op.nbytes)[0]
                return collectives.allreduce_s(self.plan.cluster, self.group, op.nbytes)
        raise ValueError(f"unknown op kind {op.kind}")

    def _graph_tokens(self, tokens: int) -> int:
        """The token count a batch of `tokens` runs as: its CUDA graph's size, or itself (sim/defaults.py)."""
        return self._padded[tokens] if tokens < len(self._padded) else tokens

    def _by_tokens(self, cache: dict[int, tuple[float, ...]], tokens: int,
                   ops: Callable[[ModelSpec, int, Sharding], tuple[Op, ...]]) -> tuple[float, ...]:
        cached = cache.get(tokens)
        if cached is None:
            padded = self._graph_tokens(tokens)
            if padded != tokens:  # a CUDA graph's batch: priced as the graph runs it
                cached = cache[tokens] = self._by_tokens(cache, padded, ops)
                return cached
            cached = cache[tokens] = tuple(self._op_time(op) for op in ops(self.plan.model, tokens, self.plan.sharding))
        return cached

    def gemm_times(self, tokens: int) -> tuple[float, ...]:
        """(qkv, o_proj, gate_up, down) seconds for `tokens` tokens."""
        return self._by_tokens(self._gemms, tokens, model_ops.layer_gemms)

    def elementwise_times(self, tokens: int) -> tuple[float, ...]:
        """(input_norm, rope, post_norm, act) seconds for `tokens` tokens."""
        return self._by_tokens(self._elementwise, tokens, model_ops.layer_elementwise)

    def allreduce_time(self, tokens: int) -> float:
        cached = self._allreduce.get(tokens)
        if cached is None:
            padded = self._graph_tokens(tokens)
            if padded != tokens:
                cached = self._allreduce[tokens] = self.allreduce_time(padded)
                return cached
            op = model_ops.allreduce("attn_allreduce", tokens, self.plan.model)
            cached = self._allreduce[tokens] = self._op_time(op) if self.plan.tp > 1 else 0.0
        return cached

    def attention_times(self, batch: BatchShape) -> tuple[float, float]:
        """(prefill, decode) attention seconds; prefill cached by its chunks, decode from coefficients."""
        prefill = 0.0
        if batch.prefill:
            prefill = self._prefill_attention.get(batch.prefill, -1.0)
            if prefill < 0:
                op = model_ops.attention(self.plan.model, BatchShape(prefill=batch.prefill), self.plan.sharding)[0]
                prefill = self._prefill_attention[batch.prefill] = self._op_time(op)
        decode = 0.0
        if batch.num_decode:
            ctx = batch.decode_context
            decode = self.gpu.attention_time_s(
                self._decode_flops_per_ctx * ctx,
                self._decode_bytes_per_ctx * ctx + self._decode_bytes_per_seq * batch.num_decode, "decode")
        return prefill, decode

    def edge_times(self, tokens: int) -> tuple[float, float]:
        """(compute, tp_comm) of the embedding on the first stage: lookup, then a vocab-parallel all-reduce."""
        if not self.is_first:
            return 0.0, 0.0
        cached = self._per_token.get(tokens)
        if cached is None:
            embedding = model_ops.embedding(self.plan.model, self._graph_tokens(tokens), self.plan.sharding)
            cached = self._per_token[tokens] = (self._op_time(embedding), self.allreduce_time(tokens))
        return cached

    def lm_head_time(self, num_logits: int) -> float:
        if not self.is_last or not num_logits:
            return 0.0
        cached = self._lm_head.get(num_logits)
        if cached is None:
            cached = self._lm_head[num_logits] = self._op_time(
                model_ops.lm_head(self.plan.model, num_logits, self.plan.sharding))
        return cached

    def logits_gather_time(self, num_logits: int) -> float:
        """The last stage's all-gather of the vocab-parallel logits over its TP group (sim/defaults.py)."""
        if not self.is_last or not num_logits or self.plan.tp == 1 or not self.plan.engine.logits_gather:
            return 0.0
        cached = self._logits_gather.get(num_logits)
        if cached is None:
            nbytes = num_logits * self.plan.model.vocab_size * ACTIVATION_BYTES
            cached = self._logits_gather[num_logits] = collectives.allgather_s(self.plan.cluster, self.group, nbytes)
        return cached

    def handoff_times(self, tokens: int) -> tuple[float, float]:
        """(send, all-gather) seconds to hand this stage's output to the next stage."""
        cached = self._handoff.get(tokens)
        if cached is None:
            assert self.next_group is not None
            nbytes = self.plan.engine.handoff_tensors * tokens * self.plan.model.hidden_size * ACTIVATION_BYTES
            cached = self._handoff[tokens] = collectives.handoff_s(
                self.plan.cluster, self.group, self.next_group, nbytes)
        return cached

    # -- what the engine asks for ------------------------------------------------------------------
    def stage_time(self, batch: BatchShape, num_logits: int) -> tuple[float, float]:
        """(compute, tp_comm) seconds of this stage's layers on `batch`, plus first/last-stage extras."""
        tokens = batch.num_tokens
        qkv, o_proj, gate_up, down = self.gemm_times(tokens)
        input_norm, rope, post_norm, act = self.elementwise_times(tokens)
        attn_prefill, attn_decode = self.attention_times(batch)
        layer_compute = (input_norm + qkv + rope + attn_prefill + attn_decode + o_proj + post_norm + gate_up
                         + act + down)
        layer_comm = 2 * self.allreduce_time(tokens)
        edge_compute, edge_comm = self.edge_times(tokens)
        compute = edge_compute + self.num_layers * layer_compute + self.lm_head_time(num_logits)
        return compute, edge_comm + self.num_layers * layer_comm + self.logits_gather_time(num_logits)

    def decode_stage_times(self, num_decode: int, contexts: np.ndarray) -> tuple[np.ndarray, float]:
        """`stage_time` of decode-only batches of `num_decode` sequences (each sampling), one per Σ context
        in `contexts`: the same terms added in the same order, so every element equals what `stage_time`
        gives bit for bit (tests/test_fast_forward.py holds them together). The fast-forward's step times."""
        qkv, o_proj, gate_up, down = self.gemm_times(num_decode)
        input_norm, rope, post_norm, act = self.elementwise_times(num_decode)
        gpu = self.gpu
        eta_c, eta_m, launch_s = gpu.efficiency.attention_kernel("decode")  # GpuSpec.attention_time_s, vectorised
        flops = self._decode_flops_per_ctx * contexts
        nbytes = self._decode_bytes_per_ctx * contexts + self._decode_bytes_per_seq * num_decode
        attn_decode = np.maximum(flops / (gpu.bf16_flops_per_s * eta_c),
                                 nbytes / (gpu.memory_bw_bytes_per_s * eta_m)) + launch_s
        layer_compute = (input_norm + qkv + rope + 0.0 + attn_decode + o_proj + post_norm + gate_up + act + down)
        edge_compute, edge_comm = self.edge_times(num_decode)
        compute = edge_compute + self.num_layers * layer_compute + self.lm_head_time(num_decode)
        return compute, (edge_comm + self.num_layers * (2 * self.allreduce_time(num_decode))
                         + self.logits_gather_time(num_decode))

    def layer_ops(self, batch: BatchShape) -> list[TimedOp]:
        """One layer's ops in execution order, timed: what layer mode makes events of."""
        tokens = batch.num_tokens
        qkv, o_proj, gate_up, down = self.gemm_times(tokens)
        input_norm, rope, post_norm, act = self.elementwise_times(tokens)
        attn_prefill, attn_decode = self.attention_times(batch)
        ar = self.allreduce_time(tokens)
        timed = [TimedOp("input_norm", "compute", input_norm), TimedOp("qkv", "compute", qkv),
                 TimedOp("rope", "compute", rope)]
        if batch.prefill:
            timed.append(TimedOp("attention_prefill", "compute", attn_prefill))
        if batch.num_decode:
            timed.append(TimedOp("attention_decode", "compute", attn_decode))
        timed.append(TimedOp("o_proj", "compute", o_proj))
        if self.plan.tp > 1:
            timed.append(TimedOp("attn_allreduce", "tp_comm", ar))
        timed += [TimedOp("post_norm", "compute", post_norm), TimedOp("gate_up", "compute", gate_up),
                  TimedOp("act", "compute", act), TimedOp("down", "compute", down)]
        if self.plan.tp > 1:
            timed.append(TimedOp("mlp_allreduce", "tp_comm", ar))
        return timed
