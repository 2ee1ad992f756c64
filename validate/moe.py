"""A mixture-of-experts MLP block (the part of a MoE decoder layer after post_norm), for one device, with
expert parallelism (EP) applied from outside, as model.py leaves TP to parallel.py.

    p = softmax(x W_gateᵀ)                      W_gate [E, h], the router
    S = top-k(p),  w_e = p_e / Σ_{j∈S} p_j       renormalised: Mixtral's behaviour, Qwen3-MoE's norm_topk_prob=True
    y = Σ_{e∈S} w_e · W_down,e (silu(W_g,e x) ⊙ W_u,e x)

Expert parallelism over ep ranks: rank r holds the whole experts [r·E/ep, (r+1)·E/ep) (contiguous, as vLLM
places them without EPLB) and the router whole. The ranks hold different tokens (attention data parallelism;
a rank may have none, attention-DP's dummy batch). Each rank routes its own tokens, sorts the (token, expert)
pairs by expert — so by destination rank —, exchanges per-expert counts, sends the rows to the experts'
ranks (the *dispatch* all-to-all), runs its experts on what it received, sends the results back (the
*combine* all-to-all) and sums w·output per token where the token lives. Per-expert counts rather than
per-rank ones let the receiver group its rows by expert without a second exchange of expert ids.

Spans, as the simulator names the ops (models/ops.py `moe_layer`): router (the gate GEMM, softmax, top-k and
renormalisation: vLLM's gate linear and top-k kernel), moe_dispatch, experts_gate_up, experts_act,
experts_down, moe_combine. As with model.py's all-reduces, moe_dispatch and moe_combine exist only when
ep > 1; they hold the local reordering around the all-to-alls too (the sort by destination and the grouping
by expert, the ungrouping and the weighted sum), as an EP kernel's dispatch and combine do. With ep = 1
nothing is exchanged: the gather into expert order opens experts_gate_up and the weighted sum closes
experts_down, as in vLLM's fused MoE kernel.

`reference_moe` is the same block written apart (a loop over experts, float64) to check the EP version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from splitsim.models.spec import MoeSpec
from splitsim.validate.dist import Context
from splitsim.validate.model import OpTimer
from splitsim.validate.timing import NO_TIMING, OpRecorder, PerfCounterTimer


@dataclass(frozen=True)
class MoeWeights:
    """Router and expert weights in the [out, in] orientation: router [E, h]; gate_up [n, 2f, h] (each
    expert's gate rows, then its up rows); down [n, h, f]. n = E for the full model, E/ep on one EP rank."""

    router: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor

    @classmethod
    def random(cls, hidden_size: int, moe: MoeSpec, seed: int, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> MoeWeights:
        """Every weight from one generator seeded with `seed`, drawn in float32 on the CPU and then cast and
        moved, so every rank (any device) builds the same numbers. Uniform in ±√(3/in_features), as
        weights.py draws them: unit-variance inputs give unit-variance router logits and expert outputs."""
        h, f, e = hidden_size, moe.intermediate_size, moe.num_experts
        g = torch.Generator().manual_seed(seed)

        def uniform(*shape: int, fan_in: int) -> torch.Tensor:
            bound = math.sqrt(3 / fan_in)
            return torch.empty(shape).uniform_(-bound, bound, generator=g).to(dtype=dtype, device=device)

        return cls(router=uniform(e, h, fan_in=h), gate_up=uniform(e, 2 * f, h, fan_in=h),
                   down=uniform(e, h, f, fan_in=f))

    @property
    def num_experts(self) -> int:
        return self.router.shape[0]

    def experts(self, held: range) -> MoeWeights:
        """What an EP rank keeps: the router whole, the experts `held`."""
        return MoeWeights(self.router, self.gate_up[held.start:held.stop].contiguous(),
                          self.down[held.start:held.stop].contiguous())


def expert_range(num_experts: int, ep: int, rank: int) -> range:
    """The experts EP rank `rank` holds: [r·E/ep, (r+1)·E/ep)."""
    if num_experts % ep:
        raise ValueError(f"{num_experts} experts do not split evenly over {ep} EP ranks")
    per_rank = num_experts // ep
    return range(rank * per_rank, (rank + 1) * per_rank)


@dataclass(frozen=True)
class EPGroup:
    """The ranks that share the experts of a layer. With size 1 nothing is ever exchanged."""

    rank: int
    size: int
    group: dist.ProcessGroup | None = None

    def all_to_all(self, x: torch.Tensor, send: tuple[int, ...], receive: tuple[int, ...]) -> torch.Tensor:
        """Rows x[Σ send[:j] : Σ send[:j+1]] to rank j; returns the rows received, rank i's block in order."""
        out = x.new_empty((sum(receive), *x.shape[1:]))
        dist.all_to_all_single(out, x.contiguous(), output_split_sizes=list(receive), input_split_sizes=list(send),
                               group=self.group)
        return out


def route(x: torch.Tensor, router: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, h] → (weights [T, k] in x's dtype, experts [T, k]): softmax over the experts (in float32, as vLLM's
    top-k kernel computes it), the top k, renormalised to sum to 1."""
    probs = torch.softmax(F.linear(x, router).float(), dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    return (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype), experts


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Rows grouped by expert (counts[e] rows for expert e, in order) through each expert's weight [out, in]:
    the grouped GEMM, here one GEMM per expert that has rows."""
    out = x.new_empty(x.shape[0], weight.shape[1])
    start = 0
    for e, n in enumerate(counts):
        if n:
            out[start:start + n] = F.linear(x[start:start + n], weight[e])
        start += n
    return out


@dataclass(frozen=True)
class Exchange:
    """Where a rank's (token, expert) pairs went: `order`, the pair indices sorted by expert (row j of what
    comes back is pair order[j], pair p being token p // k's p % k-th choice); `counts`, the rows each local
    expert runs; and with ep > 1, `by_expert` (received row by_expert[j] is grouped row j) and the rows sent to
    and received from each rank."""

    order: torch.Tensor
    counts: list[int]
    by_expert: torch.Tensor | None = None
    send: tuple[int, ...] = ()
    receive: tuple[int, ...] = ()


class MoeBlock(nn.Module):
    """The MoE MLP of layer `index` on EP rank `group.rank`: the router whole, `weights` holding just the experts
    this rank holds (all of them at ep = 1)."""

    def __init__(self, index: int, weights: MoeWeights, num_experts: int, top_k: int, group: EPGroup) -> None:
        super().__init__()
        self.held = expert_range(num_experts, group.size, group.rank)
        if weights.gate_up.shape[0] != len(self.held):
            raise ValueError(f"EP rank {group.rank} of {group.size} holds {len(self.held)} experts, "
                             f"the weights {weights.gate_up.shape[0]}")
        self.index, self.num_experts, self.top_k, self.group = index, num_experts, top_k, group
        self.router = nn.Parameter(weights.router, requires_grad=False)
        self.gate_up = nn.Parameter(weights.gate_up, requires_grad=False)
        self.down = nn.Parameter(weights.down, requires_grad=False)

    def forward(self, x: torch.Tensor, timer: OpTimer = NO_TIMING) -> torch.Tensor:
        """x [..., h], this rank's tokens (any number, none included) → [..., h]. With ep > 1 every rank of the
        group must call it, each with its own tokens."""
        i, ep = self.index, self.group.size
        tokens = x.reshape(-1, x.shape[-1])
        with timer.span("router", i):
            weights, experts = route(tokens, self.router, self.top_k)
        if ep > 1:
            with timer.span("moe_dispatch", i):
                rows, exchange = self._dispatch(tokens, experts.flatten())
        with timer.span("experts_gate_up", i):
            if ep == 1:
                rows, exchange = self._gather(tokens, experts.flatten())
            gate_up = grouped_linear(rows, self.gate_up, exchange.counts)
        with timer.span("experts_act", i):
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate) * up
        with timer.span("experts_down", i):
            y = grouped_linear(act, self.down, exchange.counts)
            if ep == 1:
                out = self._weighted_sum(y, exchange.order, weights, tokens)
        if ep > 1:
            with timer.span("moe_combine", i):
                out = self._weighted_sum(self._combine(y, exchange), exchange.order, weights, tokens)
        return out.view_as(x)

    def _gather(self, tokens: torch.Tensor, flat: torch.Tensor) -> tuple[torch.Tensor, Exchange]:
        """ep = 1: each pair's token row, in expert order (a stable sort of the pairs by expert)."""
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.num_experts).tolist()
        return tokens[order // self.top_k], Exchange(order, counts)

    def _dispatch(self, tokens: torch.Tensor, flat: torch.Tensor) -> tuple[torch.Tensor, Exchange]:
        """Send each pair's token row to its expert's rank; return the rows received, grouped by local expert.

        The pairs are sorted by expert, so by destination rank (experts are contiguous), and a first all-to-all
        tells each rank how many rows it gets for each of its experts from each source (E counts out, E in:
        [source, local expert] row-major). The rows from one source arrive sorted by expert; a stable sort
        by local expert then groups all sources' rows for the grouped GEMM."""
        ep, local = self.group.size, len(self.held)
        order = torch.argsort(flat, stable=True)
        send_counts = torch.bincount(flat, minlength=self.num_experts)  # [E] = [destination, local expert]
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group.group)
        matrix = recv_counts.view(ep, local)  # [source, local expert]
        send = tuple(send_counts.view(ep, local).sum(dim=1).tolist())
        receive = tuple(matrix.sum(dim=1).tolist())
        received = self.group.all_to_all(tokens[order // self.top_k], send, receive)
        expert_of_row = torch.repeat_interleave(torch.arange(local, device=flat.device).repeat(ep), matrix.flatten())
        by_expert = torch.argsort(expert_of_row, stable=True)
        return received[by_expert], Exchange(order, matrix.sum(dim=0).tolist(), by_expert, send, receive)

    def _combine(self, y: torch.Tensor, exchange: Exchange) -> torch.Tensor:
        """Expert outputs (grouped by local expert) back to their tokens' ranks: rows in this rank's send order."""
        assert exchange.by_expert is not None, "a combine follows a dispatch"
        by_source = torch.empty_like(y)
        by_source[exchange.by_expert] = y
        return self.group.all_to_all(by_source, exchange.receive, exchange.send)

    def _weighted_sum(self, y: torch.Tensor, order: torch.Tensor, weights: torch.Tensor,
                      tokens: torch.Tensor) -> torch.Tensor:
        """y [T·k, h], row j the output for pair order[j] → Σ_k w_k · y per token, [T, h]."""
        out = torch.zeros_like(tokens)
        return out.index_add_(0, order // self.top_k, y * weights.flatten()[order, None])


def shard_moe(weights: MoeWeights, layer: int, top_k: int, group: EPGroup) -> MoeBlock:
    """The block as EP rank `group.rank` holds it, cut from the full weights every rank built."""
    held = expert_range(weights.num_experts, group.size, group.rank)
    return MoeBlock(layer, weights.experts(held), weights.num_experts, top_k, group)


def ep_moe_outputs(ctx: Context, hidden_size: int, moe: MoeSpec, seed: int, tokens: list[torch.Tensor],
                   dtype: torch.dtype) -> tuple[torch.Tensor, list[str]]:
    """One EP rank of a process group that is all EP (ep = world size): its output for tokens[rank] and the
    ops it timed, in order. Every rank builds the full weights and keeps its experts. Run via `dist.launch`."""
    group = EPGroup(ctx.rank, ctx.world_size)
    block = shard_moe(MoeWeights.random(hidden_size, moe, seed, dtype, ctx.device), 0, moe.top_k, group)
    recorder = OpRecorder(PerfCounterTimer())
    with torch.inference_mode():
        out = block(tokens[ctx.rank].to(device=ctx.device, dtype=dtype), recorder)
    return out.cpu(), [op for op, _, _ in recorder.collect()]


def reference_moe(x: torch.Tensor, weights: MoeWeights, top_k: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The block on one device, written apart from MoeBlock: for each expert, the tokens that chose it, its
    SwiGLU MLP with separate gate and up matrices, added in with the renormalised router weight. x [T, h]."""
    x = x.to(dtype)
    router, gate_up, down = (t.to(dtype) for t in (weights.router, weights.gate_up, weights.down))
    f = down.shape[2]
    probs = torch.softmax(x @ router.T, dim=-1)
    top_p, top_e = probs.topk(top_k, dim=-1)
    top_p = top_p / top_p.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(router.shape[0]):
        token, slot = (top_e == e).nonzero(as_tuple=True)
        if token.numel() == 0:
            continue
        h = x[token]
        gate, up = h @ gate_up[e, :f].T, h @ gate_up[e, f:].T
        y = (gate * torch.sigmoid(gate) * up) @ down[e].T
        out.index_add_(0, token, y * top_p[token, slot, None])
    return out
