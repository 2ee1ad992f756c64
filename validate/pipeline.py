"""Pipeline stages: contiguous layers on each stage, activations handed to the next with send/recv.

Stage s of pp holds the layers vLLM gives it (`models.spec.pp_layer_counts`); the first stage also the
vocab-parallel embedding, the last the final norm and the LM head. A stage's output x [b, s, h] is the
same on each of its TP ranks, so the hand-off is split (as vLLM and Megatron do): with T = b·s·h
elements, TP rank r sends the contiguous slice x.flat[r·T/tp, (r+1)·T/tp) to TP rank r of the next
stage, which all-gathers the tp slices over its TP group to rebuild x. Ops timed here (besides the
layers'): embedding (+ embedding_allreduce), handoff (the send, on the sender), handoff_allgather (on
the receiver), lm_head (+ logits_allgather); the collectives only when tp > 1. The receive itself is
not an op: its time is mostly waiting for the previous stage, and whole steps include it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from splitsim.models.spec import ModelSpec, pp_layer_counts
from splitsim.validate.dist import Context, ParallelState, parallel_state
from splitsim.validate.model import KVCache, OpTimer, RMSNorm, Rope
from splitsim.validate.parallel import ParallelLMHead, VocabParallelEmbedding, head_split, shard_layer
from splitsim.validate.timing import NO_TIMING
from splitsim.validate.weights import RandomWeights


def stage_layers(num_layers: int, pp: int, stage: int) -> range:
    """The global indices of the layers stage `stage` holds."""
    counts = pp_layer_counts(num_layers, pp)
    if min(counts) == 0:
        raise ValueError(f"{num_layers} layers leave a stage of {pp} empty")
    first = sum(counts[:stage])
    return range(first, first + counts[stage])


@dataclass(frozen=True)
class StepShape:
    """b sequences of s new tokens each (prefill: s = prompt; decode: s = 1)."""

    batch: int
    tokens: int

    @property
    def num_tokens(self) -> int:
        return self.batch * self.tokens


class Stage(nn.Module):
    """One rank's part of the model: [embedding] → layers → [final norm → LM head], or a hand-off."""

    def __init__(self, spec: ModelSpec, state: ParallelState, weights: RandomWeights, num_layers: int,
                 max_positions: int) -> None:
        super().__init__()
        self.spec, self.state = spec, state
        self.dtype, self.device = weights.dtype, weights.device
        self.layer_range = stage_layers(num_layers, state.pp, state.stage)
        self.rope = Rope(spec.head_dim, max_positions, weights.dtype, weights.device)
        group = state.tp_group
        self.embedding = VocabParallelEmbedding(weights, group) if state.is_first else None
        self.layers = nn.ModuleList(shard_layer(weights, i, group, self.rope) for i in self.layer_range)
        self.final_norm = RMSNorm(weights.vector("final_norm", -1)) if state.is_last else None
        self.lm_head = ParallelLMHead(weights, group) if state.is_last else None
        self.kv_heads = len(head_split(spec, group).kv_heads)

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        return [KVCache(batch, self.kv_heads, max_len, self.spec.head_dim, self.dtype, self.device)
                for _ in self.layers]

    def forward(self, ids: torch.Tensor | None, shape: StepShape, caches: list[KVCache],
                timer: OpTimer) -> torch.Tensor | None:
        """One step. ids [b, s] on the first stage (None elsewhere). Returns the logits [b, V] of each
        sequence's last position on the last stage's ranks, None on the others."""
        tp = self.state.tp_group
        if self.embedding is not None:
            if ids is None:
                raise ValueError("the first stage needs token ids")
            with timer.span("embedding"):
                x = self.embedding(ids)  # [b, s, h], this rank's vocabulary only
            if tp.size > 1:
                with timer.span("embedding_allreduce"):
                    x = self.embedding.reduce(x)
        else:
            x = self._receive(shape, timer)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, cache, timer)
        if self.lm_head is None:
            self._send(x, timer)
            return None
        assert self.final_norm is not None
        last = self.final_norm(x[:, -1])  # [b, h]: only the last position samples a token
        with timer.span("lm_head"):
            logits = self.lm_head(last)  # [b, ⌈V/tp⌉]
        if tp.size > 1:
            with timer.span("logits_allgather"):
                logits = self.lm_head.gather(logits)
        return logits[:, :self.spec.vocab_size]

    def _send(self, x: torch.Tensor, timer: OpTimer) -> None:
        tp, dst = self.state.tp_group, self.state.next_rank
        assert dst is not None
        flat = x.contiguous().view(-1)
        n = flat.numel() // tp.size
        with timer.span("handoff"):
            dist.send(flat[tp.rank * n:(tp.rank + 1) * n], dst=dst)

    def _receive(self, shape: StepShape, timer: OpTimer) -> torch.Tensor:
        tp, src = self.state.tp_group, self.state.prev_rank
        assert src is not None
        h = self.spec.hidden_size
        part = torch.empty(shape.num_tokens * h // tp.size, dtype=self.dtype, device=self.device)
        dist.recv(part, src=src)
        if tp.size == 1:
            return part.view(shape.batch, shape.tokens, h)
        with timer.span("handoff_allgather"):
            full = tp.all_gather(part)
        return full.view(shape.batch, shape.tokens, h)


def teacher_forced_logits(ctx: Context, spec: ModelSpec, num_layers: int, tp: int, pp: int, seed: int,
                          prompt: torch.Tensor, decode: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor] | None:
    """Prefill prompt [b, s], then feed decode [b, n] one token per step. On the last stage's TP rank 0,
    the logits [b, V] of every step (the prompt's last position, then each fed token); None elsewhere.
    Run on every rank of a tp·pp process group (see `dist.launch`)."""
    state = parallel_state(ctx, tp, pp)
    weights = RandomWeights(spec, seed, dtype, ctx.device)
    (b, s), n = prompt.shape, decode.shape[1]
    stage = Stage(spec, state, weights, num_layers, max_positions=s + n)
    caches = stage.new_caches(b, s + n)
    steps = [(prompt, StepShape(b, s))] + [(decode[:, i:i + 1], StepShape(b, 1)) for i in range(n)]
    out = []
    with torch.inference_mode():
        for ids, shape in steps:
            logits = stage(ids.to(ctx.device) if state.is_first else None, shape, caches, NO_TIMING)
            if logits is not None:
                out.append(logits.cpu())
    return out if state.is_last and state.tp_rank == 0 else None


def stage_weight_bytes(spec: ModelSpec, num_layers: int, tp: int, pp: int, stage: int, element_bytes: int) -> int:
    """Bytes of weights one TP rank of `stage` holds: its layers' shards (KV heads replicated when
    tp > h_kv), plus the padded vocabulary shard of the embedding (first stage) and LM head (last)."""
    h, d = spec.hidden_size, spec.head_dim
    q, kv, f = spec.num_heads // tp, spec.kv_heads_per_rank(tp), spec.intermediate_size // tp
    layer = (q + 2 * kv) * d * h + q * d * h + 3 * f * h + 2 * h
    vocab_rows = -(-spec.vocab_size // tp)
    params = len(stage_layers(num_layers, pp, stage)) * layer
    params += vocab_rows * h if stage == 0 else 0
    params += vocab_rows * h + h if stage == pp - 1 else 0
    return params * element_bytes
