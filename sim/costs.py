"""Seconds for a stage's work on one batch, from models/ (what work) and hardware/ (how long).

models/ops.py's `layer_graph` is the one description of a layer's work; it is priced here generically, op by
op. The engine's hot path calls `stage_time` once per stage per batch, so the ops that depend on the token
count alone (GEMMs, element-wise kernels, collectives) are priced once per (layer kind, token count) into
`LayerTerms`; attention, which depends on the context lengths, is two rooflines. Stage mode sums each layer
kind's terms times its count; layer mode walks the same ops (`layer_ops`): without contention the two
granularities agree to float rounding (the clock adds layer mode's ops one at a time), and `decode_stage_times`
gives what `stage_time` gives bit for bit (the fast-forward relies on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from splitsim.hardware import collectives
from splitsim.hardware.gpu import GpuSpec
from splitsim.models import ops as model_ops
from splitsim.models.ops import BatchShape, Op
from splitsim.models.precision import ACTIVATION_BYTES
from splitsim.models.spec import AttentionKind
from splitsim.sim.plan import Plan


@dataclass(frozen=True, slots=True)
class TimedOp:
    name: str
    category: str  # "compute" | "tp_comm" | "ep_comm" | "attention" (the placeholder of a layer's attention kernels)
    seconds: float


def split_at_exchange(ops: list[TimedOp]) -> tuple[list[TimedOp], list[TimedOp]]:
    """A layer's ops before its first all-to-all (what a lockstep replica runs at its own pace) and from it on
    (what lockstep replicas run together)."""
    cut = next((i for i, op in enumerate(ops) if op.category == "ep_comm"), len(ops))
    return ops[:cut], ops[cut:]


@dataclass(frozen=True, slots=True)
class LayerTerms:
    """One layer kind's token-priced ops for one token count. `before`: the compute ahead of the attention,
    summed in order; `after`: the compute ops behind it, each apart (a float sum depends on its order, and the
    attention comes between); `comm`: the TP collectives, summed; `ep_comm`: the experts' all-to-alls across
    replicas, summed; `timed`: every op, for layer mode."""

    before: float
    after: tuple[float, ...]
    comm: float
    timed: tuple[TimedOp, ...]
    ep_comm: float = 0.0


def _layer_runs(kinds: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """Consecutive layers of one kind as (kind, count), in order."""
    runs: list[tuple[str, int]] = []
    for kind in kinds:
        if runs and runs[-1][0] == kind:
            runs[-1] = (kind, runs[-1][1] + 1)
        else:
            runs.append((kind, 1))
    return tuple(runs)


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
        self.moe_group = plan.moe_group(replica, stage)
        first, self.num_layers = plan.stages[stage].first_layer, plan.stages[stage].num_layers
        kinds = plan.model.layer_types[first:first + self.num_layers]
        self.layer_runs = _layer_runs(kinds)  # layer mode walks these, in order
        self.layer_counts: tuple[tuple[str, int], ...] = tuple(  # stage mode sums these
            (kind, kinds.count(kind)) for kind in dict.fromkeys(kinds))
        self.is_first = stage == 0
        self.is_last = stage == plan.pp - 1
        self.next_group = plan.tp_group(replica, stage + 1) if not self.is_last else None
        # Caches shared by every StageCosts of the same model, number formats, GPU (and TP group, for the
        # collectives) in this process: an advisor's runs of many layouts and loads price each shape once.
        self._padded = plan.padded_tokens  # CUDA-graph sizes (the engine's): a batch's tokens as its graph runs them
        layer = (plan.model, plan.sharding, self.gpu, self._padded)
        comm = (plan.model, plan.cluster, tuple(self.group), tuple(self.moe_group), plan.engine, self._padded)
        self._terms: dict[tuple[str, int], LayerTerms] = _shared(("terms", layer, comm))
        self._lockstep: dict[tuple[str, int], tuple[float, float, float, float, float]] = _shared(
            ("lockstep", layer, comm))
        self._lm_head: dict[int, float] = _shared(("lm_head", layer))
        self._logits_gather: dict[int, float] = _shared(("logits_gather", comm))
        self._prefill_attention: dict[tuple[tuple[int, int], ...], float] = _shared(("prefill_attention", layer))
        self._local_prefill: dict[tuple[str, tuple[tuple[int, int], ...]], float] = _shared(("local_prefill", layer))
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
                return self.gpu.gemm_time_s(op.m, op.n, op.k, weight_bytes=op.weight_bytes, dtype=op.dtype,
                                            groups=op.groups, grouped=op.grouped)
            case "attention":
                return self.gpu.attention_time_s(op.flops, op.nbytes, "prefill")  # decode: attention_times
            case "memory":
                return self.gpu.elementwise_time_s(op.nbytes)
            case "allreduce":
                if self.plan.tp == 1:
                    return 0.0
                if self.plan.engine.custom_allreduce:
                    return collectives.engine_allreduce(self.plan.cluster, self.group, op.nbytes)[0]
                return collectives.allreduce_s(self.plan.cluster, self.group, op.nbytes)
            case "allgather":
                return collectives.allgather_s(self.plan.cluster, self.group, op.nbytes)
            case "alltoall":
                return collectives.alltoall_s(self.plan.cluster, self.moe_group, op.nbytes)
        raise ValueError(f"unknown op kind {op.kind}")

    def _graph_tokens(self, tokens: int) -> int:
        """The token count a batch of `tokens` runs as: its CUDA graph's size, or itself (sim/defaults.py)."""
        return self._padded[tokens] if tokens < len(self._padded) else tokens

    def layer_terms(self, kind: str, tokens: int) -> LayerTerms:
        """A layer of `kind` priced for `tokens` tokens (cached; a CUDA graph's batch at its padded size)."""
        key = (kind, tokens)
        cached = self._terms.get(key)
        if cached is None:
            padded = self._graph_tokens(tokens)
            if padded != tokens:  # a CUDA graph's batch: priced as the graph runs it
                cached = self._terms[key] = self.layer_terms(kind, padded)
                return cached
            timed = []
            before, after, comm, ep_comm, seen_attention = 0.0, [], 0.0, 0.0, False
            for op in model_ops.layer_graph(self.plan.model, kind, tokens, self.plan.sharding):  # type: ignore[arg-type]
                if op is model_ops.ATTENTION:
                    timed.append(TimedOp("attention", "attention", 0.0))
                    seen_attention = True
                    continue
                seconds = self._op_time(op)
                if op.kind in ("allreduce", "allgather"):
                    timed.append(TimedOp(op.name, "tp_comm", seconds))
                    comm += seconds
                    continue
                if op.kind == "alltoall":
                    timed.append(TimedOp(op.name, "ep_comm", seconds))
                    ep_comm += seconds
                    continue
                timed.append(TimedOp(op.name, "compute", seconds))
                if seen_attention:
                    after.append(seconds)
                else:
                    before += seconds
            cached = self._terms[key] = LayerTerms(before, tuple(after), comm, tuple(timed), ep_comm)
        return cached

    def allreduce_time(self, tokens: int) -> float:
        cached = self._allreduce.get(tokens)
        if cached is None:
            padded = self._graph_tokens(tokens)
            if padded != tokens:
                cached = self._allreduce[tokens] = self.allreduce_time(padded)
                return cached
            op = model_ops.allreduce("attn_allreduce", tokens, self.plan.model)
            cached = self._allreduce[tokens] = self._op_time(op)  # 0 at TP1
        return cached

    def attention_times(self, batch: BatchShape, kind: str = "dense") -> tuple[float, float]:
        """(prefill, decode) attention seconds of a layer of type `kind` (its attention: full, sliding, chunked);
        prefill cached by its chunks, decode from coefficients (a local layer's on the batch's local context)."""
        attention = model_ops.layer_attention(kind)
        if attention != "full":
            return self._local_attention_times(batch, attention)
        prefill = 0.0
        if batch.prefill:
            prefill = self._prefill_attention.get(batch.prefill, -1.0)
            if prefill < 0:
                op = model_ops.attention(self.plan.model, BatchShape(prefill=batch.prefill), self.plan.sharding)[0]
                prefill = self._prefill_attention[batch.prefill] = self._op_time(op)
        decode = self._decode_attention_s(batch.decode_context, batch.num_decode) if batch.num_decode else 0.0
        return prefill, decode

    def _decode_attention_s(self, context: int, num_decode: int) -> float:
        """Decode attention over `context` positions in all for `num_decode` sequences, from its coefficients."""
        return self.gpu.attention_time_s(
            self._decode_flops_per_ctx * context,
            self._decode_bytes_per_ctx * context + self._decode_bytes_per_seq * num_decode, "decode")

    def _local_attention_times(self, batch: BatchShape, attention: AttentionKind) -> tuple[float, float]:
        """`attention_times` of a sliding or chunked layer: the same kernels over the positions in view."""
        prefill = 0.0
        if batch.prefill:
            key = (attention, batch.prefill)
            prefill = self._local_prefill.get(key, -1.0)
            if prefill < 0:
                op = model_ops.attention(self.plan.model, BatchShape(prefill=batch.prefill), self.plan.sharding,
                                         attention)[0]
                prefill = self._local_prefill[key] = self._op_time(op)
        decode = self._decode_attention_s(batch.decode_context_local, batch.num_decode) if batch.num_decode else 0.0
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
        attn_prefill, attn_decode = self.attention_times(batch)
        compute, comm = self.edge_times(tokens)
        for kind, count in self.layer_counts:
            terms = self.layer_terms(kind, tokens)
            if "/" in kind:  # a sliding or chunked layer's attention
                local_prefill, local_decode = self.attention_times(batch, kind)
                layer_compute = terms.before + local_prefill + local_decode
            else:
                layer_compute = terms.before + attn_prefill + attn_decode
            for seconds in terms.after:
                layer_compute += seconds
            compute += count * layer_compute
            comm += count * terms.comm
        return compute + self.lm_head_time(num_logits), comm + self.logits_gather_time(num_logits)

    def decode_stage_times(self, num_decode: int, contexts: np.ndarray,
                           local_contexts: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """`stage_time` of decode-only batches of `num_decode` sequences (each sampling), one per Σ context
        in `contexts` (and, for sliding or chunked layers, Σ positions they see in `local_contexts`): the same
        terms added in the same order, so every element equals what `stage_time` gives bit for bit
        (tests/test_fast_forward.py holds them together). The fast-forward's step times."""
        attn_decode = self._decode_attention_array(num_decode, contexts)
        attn_local = attn_decode if local_contexts is None else self._decode_attention_array(num_decode, local_contexts)
        edge_compute, comm = self.edge_times(num_decode)
        compute = np.full_like(contexts, edge_compute, dtype=float)
        for kind, count in self.layer_counts:
            terms = self.layer_terms(kind, num_decode)
            layer_compute = terms.before + 0.0 + (attn_local if "/" in kind else attn_decode)
            for seconds in terms.after:
                layer_compute += seconds
            compute = compute + count * layer_compute
            comm += count * terms.comm
        return compute + self.lm_head_time(num_decode), comm + self.logits_gather_time(num_decode)

    def _decode_attention_array(self, num_decode: int, contexts: np.ndarray) -> np.ndarray:
        """`_decode_attention_s` for each Σ context in `contexts` (GpuSpec.attention_time_s, vectorised)."""
        gpu = self.gpu
        eta_c, eta_m, launch_s = gpu.efficiency.attention_kernel("decode")
        flops = self._decode_flops_per_ctx * contexts
        nbytes = self._decode_bytes_per_ctx * contexts + self._decode_bytes_per_seq * num_decode
        return np.maximum(flops / (gpu.bf16_flops_per_s * eta_c),  # type: ignore[no-any-return]
                          nbytes / (gpu.memory_bw_bytes_per_s * eta_m)) + launch_s

    def layer_ops(self, batch: BatchShape, kind: str | None = None, tokens: int | None = None) -> list[TimedOp]:
        """One layer's ops in execution order, timed, its attention kernels in place: what layer mode makes
        events of (`kind`: the stage's first layer kind unless given; `tokens`: the count the token-priced ops
        run, the batch's own unless given)."""
        kind = kind or self.layer_counts[0][0]
        terms = self.layer_terms(kind, batch.num_tokens if tokens is None else tokens)
        attn_prefill, attn_decode = self.attention_times(batch, kind)
        timed: list[TimedOp] = []
        for op in terms.timed:
            if op.category != "attention":
                timed.append(op)
                continue
            if batch.prefill:
                timed.append(TimedOp("attention_prefill", "compute", attn_prefill))
            if batch.num_decode:
                timed.append(TimedOp("attention_decode", "compute", attn_decode))
        return timed

    def lockstep_tokens(self, shapes: Sequence[BatchShape]) -> tuple[list[int], int]:
        """The token counts a lockstep step runs: each replica's own ops, and the experts' share (the group's tokens
        over the replicas). When every replica's batch runs a CUDA graph, vLLM v0.11 pads them all to the largest
        (`coordinate_batch_across_dp` pads only under a synced CUDA-graph mode; one eager rank makes all eager)."""
        counts = [shape.num_tokens for shape in shapes]
        top = max(counts)
        if top < len(self._padded):
            return [top] * len(counts), top
        return counts, -(-sum(counts) // len(counts))

    def lockstep_parts(self, kind: str, tokens: int) -> tuple[float, float, float, float, float]:
        """A layer of `kind` cut at its first all-to-all: (compute, TP collectives) each replica runs alone before
        it (attention aside), (compute, TP collectives) the replicas run in step after it, and the all-to-alls."""
        cached = self._lockstep.get((kind, tokens))
        if cached is None:
            parts = [0.0, 0.0, 0.0, 0.0, 0.0]
            alone, together = split_at_exchange(list(self.layer_terms(kind, tokens).timed))
            for offset, ops in ((0, alone), (2, together)):
                for op in ops:
                    if op.category == "ep_comm":
                        parts[4] += op.seconds
                    elif op.category != "attention":
                        parts[offset + (op.category == "tp_comm")] += op.seconds
            cached = self._lockstep[(kind, tokens)] = (parts[0], parts[1], parts[2], parts[3], parts[4])
        return cached

    def lockstep_times(self, shapes: Sequence[BatchShape], num_logits: Sequence[int]) -> LockstepTimes:
        """One step of replicas whose experts span them (attention-DP, one stage): each replica runs its own
        tokens (`lockstep_tokens`) and attention up to a MoE layer's dispatch, where all wait for the last to
        arrive; the experts and what follows run in step, the all-to-alls as long as the busiest replica's. A
        replica's wait counts as `ep_comm` (it sits in the all-to-all's kernel). Layer mode walks the same ops (the
        engine's `_lockstep_layers`), equal to float rounding."""
        local, shared = self.lockstep_tokens(shapes)
        edges = [self.edge_times(tokens) for tokens in local]
        compute = [c for c, _ in edges]
        comm = [t for _, t in edges]
        clock = [c + t for c, t in edges]
        busiest = max(local)  # an all-to-all lasts until its busiest sender is done
        for kind, count in self.layer_runs:
            attention = [sum(self.attention_times(shape, kind)) for shape in shapes]
            _, _, shared_compute, shared_comm, _ = self.lockstep_parts(kind, shared)
            ep = self.lockstep_parts(kind, busiest)[4]
            alone = []
            for r, tokens in enumerate(local):
                own_compute, own_comm = self.lockstep_parts(kind, tokens)[:2]
                compute[r] += count * (own_compute + attention[r] + shared_compute)
                comm[r] += count * (own_comm + shared_comm)
                alone.append(own_compute + attention[r] + own_comm)
            if not ep:  # no all-to-all: each replica goes its own pace
                clock = [c + count * (a + shared_compute + shared_comm) for c, a in zip(clock, alone)]
                continue
            together = ep + shared_compute + shared_comm
            end = max(c + a for c, a in zip(clock, alone)) + together + (count - 1) * (max(alone) + together)
            clock = [end] * len(clock)
        waits = [c - busy - tp for c, busy, tp in zip(clock, compute, comm)]  # all-to-alls and waits at them
        heads = [self.lm_head_time(n) for n in num_logits]
        gathers = [self.logits_gather_time(n) for n in num_logits]
        step = max(c + h + g for c, h, g in zip(clock, heads, gathers))
        return LockstepTimes(step, tuple(c + h for c, h in zip(compute, heads)),
                             tuple(t + g for t, g in zip(comm, gathers)), tuple(waits))


@dataclass(frozen=True, slots=True)
class LockstepTimes:
    """A lockstep step's seconds, and each replica's compute, TP collectives and all-to-alls (waits included); each
    replica's exchanges and waits are `ep_comm`."""

    step: float
    compute: tuple[float, ...]
    tp_comm: tuple[float, ...]
    ep_comm: tuple[float, ...]
