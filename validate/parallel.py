"""Megatron-style tensor parallelism: column- and row-parallel linears, the vocab-parallel embedding
and LM head, and the sharding of a decoder layer's weights over a TP group.

A layer's linear Y = XA (A: [in, out]; stored as the [out, in] weight W = Aᵀ) is cut two ways:

- column-parallel, A = [A_1, …, A_p]: rank i holds A_i and computes Y_i = X A_i from the whole X
  ("copy to the region": in inference the input is already on every rank, so nothing moves);
- row-parallel, A = [A_1; …; A_p] with X = [X_1, …, X_p]: rank i computes X_i A_i, a partial sum, and
  Y = Σ_i X_i A_i is an all-reduce ("reduce from the region").

QKV and gate/up are column-parallel (query heads, KV heads and FFN columns split across the group), O
and down row-parallel, so each layer makes exactly two all-reduces. With more ranks than KV heads each
KV head is replicated on tp / h_kv consecutive ranks, as vLLM does. The embedding and LM head split the
vocabulary: rows [r·⌈V/p⌉, (r+1)·⌈V/p⌉) on rank r, zero-padded to equal size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from splitsim.models.spec import ModelSpec
from splitsim.validate.model import DecoderLayer, RMSNorm, Rope
from splitsim.validate.weights import RandomWeights

# all_gather_into(out, x, group): equal tensors from every rank into one, concatenated on dim 0
# (torch ≥ 2.12 names it all_gather_single and deprecates all_gather_into_tensor).
all_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass(frozen=True)
class TPGroup:
    """The ranks of one pipeline stage that share its layers. With size 1 every collective is a no-op."""

    rank: int
    size: int
    group: dist.ProcessGroup | None = None

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """x ← Σ_ranks x, in place."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """[n, …] on each rank → [size·n, …], rank i's block at rows i·n … (i+1)·n − 1."""
        if self.size == 1:
            return x
        out = torch.empty((self.size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        all_gather_into(out, x.contiguous(), group=self.group)
        return out


SINGLE = TPGroup(rank=0, size=1)


class ColumnParallelLinear(nn.Module):
    """Y_i = X A_i: weight [out/p, in], the rows of W = Aᵀ this rank holds; no communication."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)  # [..., in] → [..., out/p]


class RowParallelLinear(nn.Module):
    """X_i A_i: weight [out, in/p]; `forward` gives the partial sum, `reduce` the all-reduce Σ_i X_i A_i."""

    def __init__(self, weight: torch.Tensor, group: TPGroup) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.group = group

    @property
    def group_size(self) -> int:
        return self.group.size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)  # [..., in/p] → [..., out], this rank's partial sum

    def reduce(self, y: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(y)


def vocab_range(vocab_size: int, group: TPGroup) -> range:
    """The vocabulary rows rank r holds: [r·⌈V/p⌉, min(V, (r+1)·⌈V/p⌉))."""
    per_rank = -(-vocab_size // group.size)
    return range(min(vocab_size, group.rank * per_rank), min(vocab_size, (group.rank + 1) * per_rank))


def _padded_rows(weights: RandomWeights, name: str, group: TPGroup) -> tuple[torch.Tensor, range]:
    vocab = weights.spec.vocab_size
    rows = vocab_range(vocab, group)
    per_rank = -(-vocab // group.size)
    part = weights.slice(name, -1, rows)
    if len(rows) < per_rank:
        part = torch.cat([part, part.new_zeros(per_rank - len(rows), part.shape[1])])
    return part, rows


class VocabParallelEmbedding(nn.Module):
    """E = [E_1; …; E_p] split by vocabulary rows: rank i looks up the ids it holds and writes zeros for
    the rest; the all-reduce Σ_i gives every rank E[ids]."""

    def __init__(self, weights: RandomWeights, group: TPGroup) -> None:
        super().__init__()
        weight, rows = _padded_rows(weights, "embedding", group)
        self.weight = nn.Parameter(weight, requires_grad=False)  # [⌈V/p⌉, h]
        self.rows = rows
        self.group = group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [b, s] → [b, s, h], this rank's share (zeros where another rank holds the id)."""
        if self.group.size == 1:
            return F.embedding(ids, self.weight)
        local = ids - self.rows.start
        outside = (local < 0) | (local >= len(self.rows))
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return out.masked_fill_(outside.unsqueeze(-1), 0)

    def reduce(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(x)


class ParallelLMHead(nn.Module):
    """Logits = H Wᵀ with W = [W_1; …; W_p] split by vocabulary rows (column-parallel in A = Wᵀ): rank i
    computes the logits of its ⌈V/p⌉ words, and an all-gather puts the V columns together."""

    def __init__(self, weights: RandomWeights, group: TPGroup) -> None:
        super().__init__()
        weight, _ = _padded_rows(weights, "lm_head", group)
        self.weight = nn.Parameter(weight, requires_grad=False)  # [⌈V/p⌉, h]
        self.group = group
        self.vocab_size = weights.spec.vocab_size

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self.weight)  # [n, h] → [n, ⌈V/p⌉]

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """[n, ⌈V/p⌉] on each rank → [n, V] on every rank."""
        n, per_rank = local.shape
        gathered = self.group.all_gather(local)  # [p·n, ⌈V/p⌉], rank-major
        full = gathered.view(self.group.size, n, per_rank).permute(1, 0, 2).reshape(n, self.group.size * per_rank)
        return full[:, :self.vocab_size]


# ------------------------------------------------------------------------------------------ sharding

@dataclass(frozen=True)
class HeadSplit:
    """What one TP rank holds of a layer: query heads, KV heads and FFN columns (global indices)."""

    q_heads: range
    kv_heads: range
    ffn: range


def layout_problem(spec: ModelSpec, tp: int) -> str | None:
    """Why `spec` cannot be split over `tp` ranks, or None when it can (the simulator's rule)."""
    return spec.tp_problem(tp)


def valid_tp(spec: ModelSpec) -> list[int]:
    return spec.valid_tp()


def head_split(spec: ModelSpec, group: TPGroup) -> HeadSplit:
    """Rank r holds query heads [r·h_q/p, (r+1)·h_q/p), KV heads [r·h_kv/p, …) when p ≤ h_kv, else KV head
    ⌊r / (p/h_kv)⌋ (the one its query heads use), and FFN columns [r·f/p, (r+1)·f/p)."""
    problem = layout_problem(spec, group.size)
    if problem:
        raise ValueError(problem)
    p, r = group.size, group.rank
    q = spec.num_heads // p
    if spec.num_kv_heads >= p:
        kv = spec.num_kv_heads // p
        kv_heads = range(r * kv, (r + 1) * kv)
    else:
        replicas = p // spec.num_kv_heads
        kv_heads = range(r // replicas, r // replicas + 1)
    f = spec.intermediate_size // p
    return HeadSplit(range(r * q, (r + 1) * q), kv_heads, range(r * f, (r + 1) * f))


def shard_layer(weights: RandomWeights, layer: int, group: TPGroup, rope: Rope) -> DecoderLayer:
    """Decoder layer `layer` as TP rank `group.rank` holds it: QKV and gate/up column-parallel (the
    rank's rows of W_q, W_k, W_v, of W_gate and W_up, concatenated), O and down row-parallel."""
    split = head_split(weights.spec, group)
    d = weights.spec.head_dim

    def rows(heads: range) -> range:
        return range(heads.start * d, heads.stop * d)

    qkv = ColumnParallelLinear(torch.cat([weights.slice("wq", layer, rows(split.q_heads)),
                                          weights.slice("wk", layer, rows(split.kv_heads)),
                                          weights.slice("wv", layer, rows(split.kv_heads))]))
    gate_up = ColumnParallelLinear(torch.cat([weights.slice("w_gate", layer, split.ffn),
                                              weights.slice("w_up", layer, split.ffn)]))
    return DecoderLayer(
        index=layer,
        input_norm=RMSNorm(weights.vector("input_norm", layer)),
        qkv=qkv,
        o_proj=RowParallelLinear(weights.slice("wo", layer, rows(split.q_heads)), group),
        post_norm=RMSNorm(weights.vector("post_norm", layer)),
        gate_up=gate_up,
        down=RowParallelLinear(weights.slice("w_down", layer, split.ffn), group),
        q_heads=len(split.q_heads), kv_heads=len(split.kv_heads), head_dim=d, rope=rope,
    )
