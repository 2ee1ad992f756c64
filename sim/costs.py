"""Seconds for a stage's work on one batch, from models/ (what work) and hardware/ (how long).

models/ops.py's `layer_graph` is the one description of a layer's work; it is priced here generically, op by
op. `StageCosts.walk` is the one description of a stage's work on a batch: its prologue (the embedding and its
all-reduce on the first stage, `prologue`), its layer runs as (kind, count, timed ops), its epilogue (the LM head
and the logits gather on the last stage, `epilogue`); each op carries its category and the kernel family its time
rests on. Layer mode, the contended stage walk, the lockstep replicas, the error bars (sim/uncertainty.py) and
validate/compare.py read the walk. The engine's hot path calls `stage_time` once per stage per batch: the walk
folded by layer kind from the same cached parts (the ops that depend on the token count alone, GEMMs,
element-wise kernels and collectives, priced once per (layer kind, token count) into `LayerTerms`; attention,
which depends on the context lengths, two rooflines). Without contention the two granularities agree to float
rounding (the clock adds layer mode's ops one at a time), and `decode_stage_times` gives what `stage_time` gives
bit for bit (the fast-forward relies on it). A pipeline hand-off is `handoff_times`, for the closed-form and the
event walks alike.

Caches. The only state kept between calls, `_CACHES`, is process-wide (an advisor's or a sweep's worker prices
many runs with it) and never cleared; nothing in it depends on a batch's composition. Each is keyed first by what
its times depend on besides the count (the model, its sharding, the GPU and the CUDA-graph sizes; for collectives
also the cluster, the TP and expert groups and the serving engine), then by a count alone:
- `terms` and `lockstep`: (layer kind, token count), a layer's token-priced ops and their lockstep split;
- `allreduce`, `prologue`: token count; `handoff`: token count (and the next stage's group);
- `epilogue`: the sequences that sample.
So each holds at most one entry per layer kind per token count a batch can have, bounded by the scheduler's
`max_batched_tokens` (`max_num_seqs` for the epilogue; a count under a CUDA-graph size shares its graph's entry),
and the outer dict one entry per distinct configuration priced: a run's second pass, or a second run of the
same layout, adds nothing (tests/test_layer_graph.py). Attention is not cached: prefill attention is priced from
the batch's integer pair sums (`BatchShape`, models/ops.py `PrefillAttention`), decode attention from its Σ
context, each a few float operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from splitsim.hardware import collectives
from splitsim.hardware.cluster import ClusterSpec
from splitsim.hardware.gpu import GpuSpec
from splitsim.models import ops as model_ops
from splitsim.models.ops import BatchShape, Op, Sharding
from splitsim.models.precision import ACTIVATION_BYTES
from splitsim.models.spec import AttentionKind, ModelSpec
from splitsim.sim.defaults import ServingEngine
from splitsim.sim.plan import Pool

Category = Literal["compute", "tp_comm", "ep_comm", "attention"]  # attention: a layer's placeholder in `LayerTerms`


@dataclass(frozen=True, slots=True)
class TimedOp:
    """One op of a stage's walk: its name, what its time counts as, its seconds, and the kernel family whose fit
    prices it (`gemm`, `moe`, `elementwise`, `attention prefill`, `attention decode`, `allreduce`, `allgather`,
    `alltoall`: the error bars' kinds, sim/uncertainty.py)."""

    name: str
    category: Category
    seconds: float
    kind: str


@dataclass(frozen=True, slots=True)
class Edge:
    """The work a stage does once per batch besides its layers: the embedding and its vocab-parallel all-reduce on
    the first stage (prologue), the LM head and the logits gather on the last (epilogue). `compute` and `comm` are
    its ops' seconds summed by category."""

    ops: tuple[TimedOp, ...]
    compute: float
    comm: float


NO_EDGE = Edge((), 0.0, 0.0)


@dataclass(frozen=True, slots=True)
class StageWalk:
    """A stage's work on one batch, in execution order: the prologue, the layer runs (kind, count, one layer's
    timed ops), the epilogue. Layer mode makes an event of each op; every other reader folds it."""

    prologue: Edge
    runs: tuple[tuple[str, int, list[TimedOp]], ...]
    epilogue: Edge


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


def _kernel_kind(op: Op) -> str:
    """The fit a compute op's time rests on: a GEMM (a mixture of experts' grouped one apart) or an element-wise
    kernel."""
    if op.kind == "gemm":
        return "moe" if op.grouped else "gemm"
    return "elementwise"


_CACHES: dict[Any, dict[Any, Any]] = {}  # keyed by token counts only (the module docstring says what bounds them)


def _shared(key: Any) -> dict[Any, Any]:
    """The process's cache for `key` (what the cached times depend on besides the token count)."""
    return _CACHES.setdefault(key, {})


class StageCosts:
    """Cost of one pipeline stage's work, built from what it prices: the model and the kinds of its layers on this
    stage (`layers`, a range of layer indices), the cluster (its GPU and the fabrics between `group`'s GPUs), the
    sharding (TP degree, number formats, experts), the serving engine and the CUDA-graph sizes a batch is padded to.
    `group` is the stage's TP group, `moe_group` the GPUs its experts spread over, `next_group` the next stage's
    TP group (None on the last). `StageCosts.of` builds it for a replica's stage of a pool."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, sharding: Sharding, engine: ServingEngine,
                 padded_tokens: tuple[int, ...], layers: range, group: list[int], moe_group: list[int],
                 next_group: list[int] | None, is_first: bool = True) -> None:
        self.model, self.cluster, self.sharding, self.engine = model, cluster, sharding, engine
        self.gpu: GpuSpec = cluster.gpu
        self.tp = sharding.tp
        self.group, self.moe_group, self.next_group = group, moe_group, next_group
        self.num_layers = len(layers)
        kinds = model.layer_types[layers.start:layers.stop]
        self.layer_runs = _layer_runs(kinds)  # layer mode walks these, in order
        self.layer_counts: tuple[tuple[str, int], ...] = tuple(  # stage mode sums these
            (kind, kinds.count(kind)) for kind in dict.fromkeys(kinds))
        self.is_first = is_first
        self.is_last = next_group is None
        # Caches shared by every StageCosts of the same model, number formats, GPU (and TP group, for the
        # collectives) in this process: an advisor's runs of many layouts and loads price each shape once.
        self._padded = padded_tokens  # CUDA-graph sizes (the engine's): a batch's tokens as its graph runs them
        layer = (model, sharding, self.gpu, padded_tokens)
        comm = (model, cluster, tuple(group), tuple(moe_group), engine, padded_tokens)
        self._terms: dict[tuple[str, int], LayerTerms] = _shared(("terms", layer, comm))
        self._lockstep: dict[tuple[str, int], tuple[float, float, float, float, float]] = _shared(
            ("lockstep", layer, comm))
        self._epilogue: dict[int, Edge] = _shared(("epilogue", layer, comm))
        self._allreduce: dict[int, float] = _shared(("allreduce", comm))
        self._prologue: dict[int, Edge] = _shared(("prologue", layer, comm))
        self._handoff: dict[int, tuple[float, float]] = _shared(
            ("handoff", comm, tuple(self.next_group or ())))
        # Prefill attention is linear in the batch's integer sums, decode attention in (Σ context, sequences): take
        # their coefficients from models/ once.
        self._prefill = model_ops.PrefillAttention.of(model, sharding)
        unit_ctx = model_ops.attention(model, BatchShape(decode_context=1), sharding)[1]
        unit_seq = model_ops.attention(model, BatchShape(num_decode=1), sharding)[1]
        self._decode_flops_per_ctx = unit_ctx.flops
        self._decode_bytes_per_ctx = unit_ctx.nbytes
        self._decode_bytes_per_seq = unit_seq.nbytes

    @classmethod
    def of(cls, pool: Pool, replica: int, stage: int) -> StageCosts:
        """Replica `replica`'s stage `stage` of `pool` (every replica's stage s costs the same on the same GPUs)."""
        last = stage == pool.pp - 1
        return cls(pool.model, pool.cluster, pool.sharding, pool.engine, pool.padded_tokens,
                   pool.stages[stage].layers, pool.tp_group(replica, stage), pool.moe_group(replica, stage),
                   None if last else pool.tp_group(replica, stage + 1), stage == 0)

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
                if self.tp == 1:
                    return 0.0
                if self.engine.custom_allreduce:
                    return collectives.engine_allreduce(self.cluster, self.group, op.nbytes)[0]
                return collectives.allreduce_s(self.cluster, self.group, op.nbytes)
            case "allgather":
                return collectives.allgather_s(self.cluster, self.group, op.nbytes)
            case "alltoall":
                return collectives.alltoall_s(self.cluster, self.moe_group, op.nbytes)
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
            for op in model_ops.layer_graph(self.model, kind, tokens, self.sharding):  # type: ignore[arg-type]
                if op is model_ops.ATTENTION:
                    timed.append(TimedOp("attention", "attention", 0.0, "attention"))
                    seen_attention = True
                    continue
                seconds = self._op_time(op)
                if op.kind in ("allreduce", "allgather"):
                    timed.append(TimedOp(op.name, "tp_comm", seconds, op.kind))
                    comm += seconds
                    continue
                if op.kind == "alltoall":
                    timed.append(TimedOp(op.name, "ep_comm", seconds, op.kind))
                    ep_comm += seconds
                    continue
                timed.append(TimedOp(op.name, "compute", seconds, _kernel_kind(op)))
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
            op = model_ops.allreduce("attn_allreduce", tokens, self.model)
            cached = self._allreduce[tokens] = self._op_time(op)  # 0 at TP1
        return cached

    def attention_times(self, batch: BatchShape, kind: str = "dense") -> tuple[float, float]:
        """(prefill, decode) attention seconds of a layer of type `kind` (its attention: full, sliding, chunked),
        both from coefficients: prefill on the batch's pair sums, decode on its Σ context (a local layer's on its
        local sums)."""
        attention = model_ops.layer_attention(kind)
        if attention != "full":
            return self._local_attention_times(batch, attention)
        prefill = self._prefill_attention_s(batch, "full") if batch.prefill else 0.0
        decode = self._decode_attention_s(batch.decode_context, batch.num_decode) if batch.num_decode else 0.0
        return prefill, decode

    def _prefill_attention_s(self, batch: BatchShape, attention: AttentionKind) -> float:
        """Prefill attention of `batch`'s chunks in a layer of `attention`, from the batch's integer sums (never
        cached: they depend on the batch's composition)."""
        flops, nbytes = self._prefill.work(self.model, batch, self.sharding, attention)
        return self.gpu.attention_time_s(flops, nbytes, "prefill")

    def _decode_attention_s(self, context: int, num_decode: int) -> float:
        """Decode attention over `context` positions in all for `num_decode` sequences, from its coefficients."""
        return self.gpu.attention_time_s(
            self._decode_flops_per_ctx * context,
            self._decode_bytes_per_ctx * context + self._decode_bytes_per_seq * num_decode, "decode")

    def _local_attention_times(self, batch: BatchShape, attention: AttentionKind) -> tuple[float, float]:
        """`attention_times` of a sliding or chunked layer: the same kernels over the positions in view."""
        prefill = self._prefill_attention_s(batch, attention) if batch.prefill else 0.0
        decode = self._decode_attention_s(batch.decode_context_local, batch.num_decode) if batch.num_decode else 0.0
        return prefill, decode

    def prologue(self, tokens: int) -> Edge:
        """The first stage's work before its layers: the embedding lookup of `tokens` tokens (at the CUDA graph's
        size), then its vocab-parallel all-reduce where TP > 1. Other stages have none."""
        if not self.is_first:
            return NO_EDGE
        cached = self._prologue.get(tokens)
        if cached is None:
            lookup = self._op_time(model_ops.embedding(self.model, self._graph_tokens(tokens), self.sharding))
            allreduce = self.allreduce_time(tokens)
            ops: tuple[TimedOp, ...] = (TimedOp("embedding", "compute", lookup, "elementwise"),)
            if allreduce:
                ops += (TimedOp("embedding_allreduce", "tp_comm", allreduce, "allreduce"),)
            cached = self._prologue[tokens] = Edge(ops, lookup, allreduce)
        return cached

    def epilogue(self, num_logits: int) -> Edge:
        """The last stage's work after its layers: the LM head on the `num_logits` sequences that sample, then the
        all-gather of their vocab-parallel logits over the TP group where the engine gathers them
        (sim/defaults.py). A last stage whose batch samples nothing still has the head, at no cost."""
        if not self.is_last:
            return NO_EDGE
        cached = self._epilogue.get(num_logits)
        if cached is None:
            head = self._op_time(model_ops.lm_head(self.model, num_logits, self.sharding)) \
                if num_logits else 0.0
            gather = 0.0
            if num_logits and self.tp > 1 and self.engine.logits_gather:
                nbytes = num_logits * self.model.vocab_size * ACTIVATION_BYTES
                gather = collectives.allgather_s(self.cluster, self.group, nbytes)
            ops: tuple[TimedOp, ...] = (TimedOp("lm_head", "compute", head, "gemm"),)
            if gather:
                ops += (TimedOp("logits_gather", "tp_comm", gather, "allgather"),)
            cached = self._epilogue[num_logits] = Edge(ops, head, gather)
        return cached

    def handoff_times(self, tokens: int) -> tuple[float, float]:
        """(send, all-gather) seconds to hand this stage's output to the next stage."""
        cached = self._handoff.get(tokens)
        if cached is None:
            assert self.next_group is not None
            nbytes = self.engine.handoff_tensors * tokens * self.model.hidden_size * ACTIVATION_BYTES
            cached = self._handoff[tokens] = collectives.handoff_s(
                self.cluster, self.group, self.next_group, nbytes)
        return cached

    # -- what the engine asks for ------------------------------------------------------------------
    def stage_time(self, batch: BatchShape, num_logits: int) -> tuple[float, float]:
        """(compute, tp_comm) seconds of this stage's layers on `batch`, plus first/last-stage extras."""
        tokens = batch.num_tokens
        attn_prefill, attn_decode = self.attention_times(batch)
        prologue = self.prologue(tokens)
        compute, comm = prologue.compute, prologue.comm
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
        epilogue = self.epilogue(num_logits)
        return compute + epilogue.compute, comm + epilogue.comm

    def decode_stage_times(self, num_decode: int, contexts: np.ndarray,
                           local_contexts: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """`stage_time` of decode-only batches of `num_decode` sequences (each sampling), one per Σ context
        in `contexts` (and, for sliding or chunked layers, Σ positions they see in `local_contexts`): the same
        terms added in the same order, so every element equals what `stage_time` gives bit for bit
        (tests/test_fast_forward.py holds them together). The fast-forward's step times."""
        attn_decode = self._decode_attention_array(num_decode, contexts)
        attn_local = attn_decode if local_contexts is None else self._decode_attention_array(num_decode, local_contexts)
        prologue = self.prologue(num_decode)
        edge_compute, comm = prologue.compute, prologue.comm
        compute = np.full_like(contexts, edge_compute, dtype=float)
        for kind, count in self.layer_counts:
            terms = self.layer_terms(kind, num_decode)
            layer_compute = terms.before + 0.0 + (attn_local if "/" in kind else attn_decode)
            for seconds in terms.after:
                layer_compute += seconds
            compute = compute + count * layer_compute
            comm += count * terms.comm
        epilogue = self.epilogue(num_decode)
        return compute + epilogue.compute, comm + epilogue.comm

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
                timed.append(TimedOp("attention_prefill", "compute", attn_prefill, "attention prefill"))
            if batch.num_decode:
                timed.append(TimedOp("attention_decode", "compute", attn_decode, "attention decode"))
        return timed

    def walk(self, batch: BatchShape, num_logits: int, tokens: int | None = None) -> StageWalk:
        """This stage's work on `batch`, in order: the one description every walker reads (layer mode's events, the
        contended stage's flows, the lockstep replicas, the error bars, validate's compare). `num_logits`: the
        sequences that sample (on the last stage); `tokens`: the count the token-priced ops run, the batch's own
        unless given (a lockstep replica's padded count)."""
        count = batch.num_tokens if tokens is None else tokens
        ops: dict[str, list[TimedOp]] = {}
        runs = []
        for kind, repeats in self.layer_runs:
            if kind not in ops:
                ops[kind] = self.layer_ops(batch, kind, count)
            runs.append((kind, repeats, ops[kind]))
        return StageWalk(self.prologue(count), tuple(runs), self.epilogue(num_logits))

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
        edges = [self.prologue(tokens) for tokens in local]
        compute = [edge.compute for edge in edges]
        comm = [edge.comm for edge in edges]
        clock = [edge.compute + edge.comm for edge in edges]
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
        ends = [self.epilogue(n) for n in num_logits]
        heads = [edge.compute for edge in ends]
        gathers = [edge.comm for edge in ends]
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
