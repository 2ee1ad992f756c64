"""Seeded random weights of a ModelSpec: any TP shard of a tensor is built without building the rest.

The values are those of one full, unsharded model, fixed by the seed. Each tensor has a *split axis*,
the one tensor parallelism cuts (output features of QKV, gate/up, the embedding and the LM head;
input features of O and down), and every slice across that axis — a row of `W_q`, a column of `W_o` —
comes from its own generator seeded by (seed, layer, tensor, index). So a rank that owns rows
[a, b) of `W_q` draws only those rows, a 405B layer never has to exist whole on one rank, and a test
that asks for the full tensor gets exactly the concatenation of the shards.

Tensors are in the Hugging Face orientation, `[out_features, in_features]` (`y = x Wᵀ`):

    wq [h_q·d, h]   wk, wv [h_kv·d, h]   wo [h, h_q·d]   w_gate, w_up [f, h]   w_down [h, f]
    input_norm, post_norm, final_norm [h]   embedding [V, h]   lm_head [V, h] (the embedding when tied)

Linear weights are uniform in ±√(3/in_features), so a unit-variance input gives unit-variance
outputs; embedding rows are uniform in ±√3 (unit variance); norm gains are 1 ± 0.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from splitsim.models.spec import ModelSpec

SplitAxis = Literal["out", "in", "none"]
TENSORS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "input_norm", "post_norm",
           "embedding", "final_norm", "lm_head")
LAYER_TENSORS = TENSORS[:9]
_MASK64 = 2**64 - 1


@dataclass(frozen=True)
class TensorShape:
    out_features: int
    in_features: int  # 0 for a vector
    split: SplitAxis
    scale: float  # half-width of the uniform distribution

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features) if self.in_features else (self.out_features,)

    @property
    def split_size(self) -> int:
        return self.in_features if self.split == "in" else self.out_features


class RandomWeights:
    """The seeded weights of `spec` in `dtype` on `device`, drawn slice by slice along each split axis."""

    def __init__(self, spec: ModelSpec, seed: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> None:
        self.spec = spec
        self.seed = seed
        self.dtype = dtype
        self.device = torch.device(device)
        self._generator = torch.Generator(self.device)

    def shape(self, name: str) -> TensorShape:
        s = self.spec
        h, d, f, v = s.hidden_size, s.head_dim, s.intermediate_size, s.vocab_size
        match name:
            case "wq":
                return TensorShape(s.num_heads * d, h, "out", math.sqrt(3 / h))
            case "wk" | "wv":
                return TensorShape(s.num_kv_heads * d, h, "out", math.sqrt(3 / h))
            case "wo":
                return TensorShape(h, s.num_heads * d, "in", math.sqrt(3 / (s.num_heads * d)))
            case "w_gate" | "w_up":
                return TensorShape(f, h, "out", math.sqrt(3 / h))
            case "w_down":
                return TensorShape(h, f, "in", math.sqrt(3 / f))
            case "input_norm" | "post_norm" | "final_norm":
                return TensorShape(h, 0, "none", 0.1)
            case "embedding":
                return TensorShape(v, h, "out", math.sqrt(3))
            case "lm_head":
                return TensorShape(v, h, "out", math.sqrt(3 / h))
        raise ValueError(f"unknown tensor {name!r} (valid: {', '.join(TENSORS)})")

    def _resolve(self, name: str, layer: int) -> tuple[str, int]:
        """The tensor whose values `name` has (a tied LM head is the embedding) and its layer (-1 for the
        tensors outside the layers)."""
        if name == "lm_head" and self.spec.tie_word_embeddings:
            name = "embedding"
        return name, (layer if name in LAYER_TENSORS else -1)

    def _seed(self, name: str, layer: int, index: int) -> int:
        """A 32-bit seed (the CPU generator, an MT19937, keeps only the low 32 bits of a seed) mixed from
        (seed, layer, tensor, index) with splitmix64, so neighbouring rows and layers are unrelated. With
        2³² seeds a model of millions of rows repeats a few of them: harmless for timing, and a test
        model's few thousand rows almost surely repeat none."""
        x = (((self.seed * 1_000_003 + layer + 1) * 64 + TENSORS.index(name)) << 32) + index
        x = (x + 0x9E3779B97F4A7C15) & _MASK64
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
        return (x ^ (x >> 31)) & 0xFFFFFFFF

    def slice(self, name: str, layer: int, index: range) -> torch.Tensor:
        """Rows `index` of a tensor split by output features ([len(index), in]), columns `index` of one
        split by input features ([out, len(index)])."""
        name, layer = self._resolve(name, layer)
        t = self.shape(name)
        if t.split == "none":
            raise ValueError(f"{name} is a vector: use vector()")
        if index.step != 1 or not 0 <= index.start <= index.stop <= t.split_size:
            raise ValueError(f"{name}: slice {index} outside range(0, {t.split_size})")
        width = t.in_features if t.split == "out" else t.out_features
        out = torch.empty(len(index), width, dtype=self.dtype, device=self.device)
        g = self._generator
        for row, i in enumerate(index):
            g.manual_seed(self._seed(name, layer, i))
            out[row].uniform_(-t.scale, t.scale, generator=g)
        return out if t.split == "out" else out.t().contiguous()  # columns of W are rows of Wᵀ

    def full(self, name: str, layer: int) -> torch.Tensor:
        t = self.shape(self._resolve(name, layer)[0])
        if t.split == "none":
            return self.vector(name, layer)
        return self.slice(name, layer, range(t.split_size))

    def vector(self, name: str, layer: int) -> torch.Tensor:
        """A norm gain: 1 + uniform(±0.1), replicated on every rank."""
        name, layer = self._resolve(name, layer)
        t = self.shape(name)
        if t.split != "none":
            raise ValueError(f"{name} is a matrix: use slice() or full()")
        g = self._generator
        g.manual_seed(self._seed(name, layer, 0))
        out = torch.empty(t.out_features, dtype=self.dtype, device=self.device)
        return out.uniform_(1 - t.scale, 1 + t.scale, generator=g)

    def full_model(self, num_layers: int) -> dict[str, torch.Tensor]:
        """Every tensor of the first `num_layers` layers, keyed `layers.{i}.{name}`, plus the embedding,
        final norm and LM head: what a single-process reference loads."""
        weights = {f"layers.{i}.{name}": self.full(name, i) for i in range(num_layers) for name in LAYER_TENSORS}
        for name in ("embedding", "final_norm", "lm_head"):
            weights[name] = self.full(name, -1)
        return weights
