"""A plain single-process Llama forward pass, written apart from the sharded layers to check them.

It shares no code with model.py / parallel.py / pipeline.py: no KV cache (every call recomputes the
whole sequence), RoPE as a complex rotation, attention as an explicit masked softmax with K and V
repeated per query group, separate Q, K, V, gate and up matrices. It takes the full weights as a dict
(`RandomWeights.full_model`: `layers.{i}.wq` … in the [out, in] orientation, `embedding`,
`final_norm`, `lm_head`) and works in float64 unless told otherwise.
"""

from __future__ import annotations

import torch

from splitsim.models.spec import ModelSpec


def _rms_norm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * gain


def _rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x [heads, n, d] at positions 0 … n−1: the pair (x_j, x_{j+d/2}) read as the complex number
    x_j + i·x_{j+d/2} is multiplied by e^{i·p·θ^(−2j/d)}."""
    _, n, d = x.shape
    half = d // 2
    freqs = theta ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    phase = torch.polar(torch.ones(n, half, dtype=torch.float64),
                        torch.arange(n, dtype=torch.float64)[:, None] * freqs[None, :])  # [n, d/2]
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * phase
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [h_q, n, d], k and v [h_kv, n, d] → [h_q, n, d], causal: position i sees 0 … i."""
    n, d = q.shape[1], q.shape[2]
    group = q.shape[0] // k.shape[0]
    k = k.repeat_interleave(group, dim=0)  # query head j uses KV head ⌊j / group⌋
    v = v.repeat_interleave(group, dim=0)
    scores = q @ k.transpose(1, 2) / d**0.5
    future = torch.arange(n)[None, :] > torch.arange(n)[:, None]
    scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def reference_logits(spec: ModelSpec, weights: dict[str, torch.Tensor], num_layers: int, ids: torch.Tensor,
                     theta: float = 500_000.0, eps: float = 1e-5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Logits [b, n, V] at every position of the token sequences ids [b, n] (each starting at 0)."""
    w = {name: t.to(dtype) for name, t in weights.items()}
    h_q, h_kv, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    outputs = []
    for seq in ids:
        n = seq.shape[0]
        x = w["embedding"][seq]  # [n, h]
        for i in range(num_layers):
            p = f"layers.{i}."
            a = _rms_norm(x, w[p + "input_norm"], eps)
            q = (a @ w[p + "wq"].T).view(n, h_q, d).transpose(0, 1)
            k = (a @ w[p + "wk"].T).view(n, h_kv, d).transpose(0, 1)
            v = (a @ w[p + "wv"].T).view(n, h_kv, d).transpose(0, 1)
            o = _attention(_rotate(q, theta), _rotate(k, theta), v)  # [h_q, n, d]
            x = x + o.transpose(0, 1).reshape(n, h_q * d) @ w[p + "wo"].T
            m = _rms_norm(x, w[p + "post_norm"], eps)
            gate, up = m @ w[p + "w_gate"].T, m @ w[p + "w_up"].T
            x = x + (gate * torch.sigmoid(gate) * up) @ w[p + "w_down"].T
        outputs.append(_rms_norm(x, w["final_norm"], eps) @ w["lm_head"].T)
    return torch.stack(outputs)
