"""A Llama-style decoder layer written for one device: RMSNorm, GQA attention with RoPE and a KV cache,
SwiGLU MLP, residual connections.

    x ← x + W_o · Attn(RoPE(W_q n(x)), RoPE(W_k n(x)), W_v n(x))      n = RMSNorm
    x ← x + W_down (silu(W_gate n(x)) ⊙ W_up n(x))

Tensor parallelism is applied from outside (`validate/parallel.py`): the layer is built with the
linears of one TP rank and the head counts that rank holds, and calls `reduce` on the outputs of the
row-parallel O and down projections. With one rank every linear is whole and `reduce` does nothing, so
this file never mentions ranks.

Each op the simulator knows (models/ops.py) runs inside `timer.span(op, layer)`: input_norm, qkv,
attention (RoPE, the KV-cache write and the attention kernel, as vLLM's attention layer does; the
simulator's `rope` and `attention` together), o_proj, attn_allreduce, post_norm (with the residual add
before it), gate_up, act (SiLU-and-mul), down, mlp_allreduce (the all-reduces only when there is more
than one rank). Only the layer's closing residual add is outside every span (vLLM fuses it into the next
norm); the whole-step times include it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

ROPE_THETA = 500_000.0  # Llama 3's rope_theta (ModelSpec does not carry it; timing does not depend on it)
RMS_NORM_EPS = 1e-5


class OpTimer(Protocol):
    def span(self, op: str, layer: int = -1) -> AbstractContextManager[object]: ...


class Reducing(Protocol):
    """A row-parallel linear: `forward` gives this rank's partial sum, `reduce` sums the partials."""

    @property
    def group_size(self) -> int: ...

    @property
    def weight(self) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def reduce(self, y: torch.Tensor) -> torch.Tensor: ...


class RMSNorm(nn.Module):
    """y = x / √(mean(x²) + ε) · g, computed in float32 and returned in x's dtype."""

    def __init__(self, weight: torch.Tensor, eps: float = RMS_NORM_EPS) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.to(x.dtype) * self.weight


class Rope(nn.Module):
    """Rotary position embedding (the non-interleaved "rotate half" form of Llama):

        θ_j = base^(−2j/d),  j < d/2
        RoPE(x)_p = x_p · cos(p θ) + rotate_half(x)_p · sin(p θ),  rotate_half([x₁, x₂]) = [−x₂, x₁]

    with cos and sin tabulated (float32, then cast) for positions 0 … max_positions − 1.
    """

    cos: torch.Tensor  # [max_positions, d]
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_positions: int, dtype: torch.dtype, device: torch.device,
                 base: float = ROPE_THETA) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32, device=device), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # [positions, d]: both halves rotate by θ_j
        self.register_buffer("cos", angles.cos().to(dtype), persistent=False)
        self.register_buffer("sin", angles.sin().to(dtype), persistent=False)

    def forward(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x: [b, s, heads, d] at positions start … start + s − 1."""
        s = x.shape[1]
        if start + s > self.cos.shape[0]:
            raise ValueError(f"position {start + s - 1} beyond the RoPE table of {self.cos.shape[0]} positions")
        cos = self.cos[start:start + s, None, :]  # [s, 1, d]
        sin = self.sin[start:start + s, None, :]
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class KVCache:
    """K and V of the positions seen so far, for a batch of sequences of equal length.

    k, v: [b, h_kv, max_len, d]; `length` positions are filled. `append` writes s new positions and
    returns views of the first length + s.
    """

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.k = torch.zeros(batch, kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def reset(self, length: int = 0) -> None:
        """Forget every position after the first `length` (a repeat starts from an empty cache)."""
        self.length = length

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: [b, h_kv, s, d] → the cache's [b, h_kv, length + s, d] after writing them."""
        s = k.shape[2]
        end = self.length + s
        if end > self.capacity:
            raise ValueError(f"KV cache of {self.capacity} positions cannot take {s} more after {self.length}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d + M) v over GQA groups: q [b, h_q, s, d]; k, v [b, h_kv, t, d], t ≥ s, the
    last s positions of k being q's. M masks key j for query i when j > t − s + i."""
    s, t = q.shape[2], k.shape[2]
    if s == 1 or s == t:  # decode (one query sees every key), or prefill from position 0
        return F.scaled_dot_product_attention(q, k, v, is_causal=s > 1, enable_gqa=True)
    allowed = torch.ones(s, t, dtype=torch.bool, device=q.device).tril(diagonal=t - s)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)


class DecoderLayer(nn.Module):
    """One decoder layer over the heads and FFN columns its linears hold.

    qkv: [h] → [(h_q + 2 h_kv)·d] (Q, K, V concatenated); o_proj: [h_q·d] → [h] (partial sums);
    gate_up: [h] → [2f] (gate, up concatenated); down: [f] → [h] (partial sums). h_q, h_kv and f are
    the counts this layer holds.
    """

    def __init__(self, index: int, input_norm: RMSNorm, qkv: nn.Module, o_proj: Reducing, post_norm: RMSNorm,
                 gate_up: nn.Module, down: Reducing, q_heads: int, kv_heads: int, head_dim: int, rope: Rope) -> None:
        super().__init__()
        if q_heads % kv_heads:
            raise ValueError(f"{kv_heads} KV heads do not divide {q_heads} query heads")
        self.index = index
        self.input_norm, self.qkv, self.post_norm, self.gate_up = input_norm, qkv, post_norm, gate_up
        self.o_proj, self.down = o_proj, down
        self.q_heads, self.kv_heads, self.head_dim = q_heads, kv_heads, head_dim
        self.rope = rope

    def attention(self, qkv: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """[b, s, (h_q + 2h_kv)·d] → [b, s, h_q·d]: RoPE on Q and K, K and V into the cache, attention."""
        b, s, _ = qkv.shape
        d = self.head_dim
        q, k, v = qkv.split([self.q_heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        start = cache.length
        q = self.rope(q.view(b, s, self.q_heads, d), start).transpose(1, 2)  # [b, h_q, s, d]
        k = self.rope(k.view(b, s, self.kv_heads, d), start).transpose(1, 2)  # [b, h_kv, s, d]
        keys, values = cache.append(k, v.view(b, s, self.kv_heads, d).transpose(1, 2))
        out = causal_attention(q, keys, values)  # [b, h_q, s, d]
        return out.transpose(1, 2).reshape(b, s, self.q_heads * d)

    def forward(self, x: torch.Tensor, cache: KVCache, timer: OpTimer) -> torch.Tensor:
        """x: [b, s, h], the same on every rank → [b, s, h], the same on every rank."""
        i = self.index
        with timer.span("input_norm", i):
            h = self.input_norm(x)
        with timer.span("qkv", i):
            qkv = self.qkv(h)
        with timer.span("attention", i):
            a = self.attention(qkv, cache)
        with timer.span("o_proj", i):
            y = self.o_proj(a)
        if self.o_proj.group_size > 1:
            with timer.span("attn_allreduce", i):
                y = self.o_proj.reduce(y)
        with timer.span("post_norm", i):  # the residual add and the norm (one fused kernel in vLLM)
            x = x + y
            h = self.post_norm(x)
        with timer.span("gate_up", i):
            gate_up = self.gate_up(h)
        with timer.span("act", i):
            gate, up = gate_up.chunk(2, dim=-1)
            act = F.silu(gate) * up
        with timer.span("down", i):
            y = self.down(act)
        if self.down.group_size > 1:
            with timer.span("mlp_allreduce", i):
                y = self.down.reduce(y)
        return x + y
