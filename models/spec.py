"""ModelSpec: the shapes of a Llama-class decoder, dense or mixture-of-experts, from our catalog or an HF
`config.json`.

A mixture-of-experts layer (Mixtral, Qwen3-MoE) replaces the MLP by a router over `moe.num_experts` experts,
`moe.top_k` of them per token, each a SwiGLU MLP of `moe.intermediate_size`. Derived sizes (head_dim, parameter
counts, KV bytes per token) are properties, never stored copies.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from splitsim.files import cut, read_json_file, shown
from splitsim.models.precision import BYTES_PER_ELEMENT, HF_DTYPES, KvDtype, WeightDtype

LayerKind = Literal["dense", "moe"]  # what a decoder layer's MLP is made of (models/ops.py LAYERS)
AttentionKind = Literal["full", "sliding", "chunked"]  # what its attention sees: everything, a window, its chunk
_CATALOG = "catalog"
_SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                            "MixtralForCausalLM", "Qwen3MoeForCausalLM", "DeepseekV3ForCausalLM", "Phi3ForCausalLM",
                            "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GptOssForCausalLM", "Llama4ForCausalLM",
                            "Llama4ForConditionalGeneration")


class MoeSpec(BaseModel):
    """The experts of a mixture-of-experts model: `num_experts` SwiGLU MLPs of `intermediate_size`, `top_k` per
    token, on every layer but `dense_layers` (those keep the dense MLP of the model's `intermediate_size`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_experts: int = Field(gt=1)
    top_k: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    dense_layers: tuple[int, ...] = ()
    shared_experts: int = Field(0, ge=0, description="experts every token runs besides its top-k (DeepSeek)")
    groups: int = Field(1, gt=0, description="expert groups (DeepSeek's n_group)")
    groups_per_token: int = Field(1, gt=0, description="the groups one token's experts may come from (topk_group)")

    @model_validator(mode="after")
    def _top_k_fits(self) -> MoeSpec:
        if self.top_k > self.num_experts:
            raise ValueError(f"num_experts_per_tok={self.top_k} is more than the {self.num_experts} experts")
        if self.num_experts % self.groups or self.groups_per_token > self.groups:
            raise ValueError(f"n_group={self.groups}, topk_group={self.groups_per_token}: the {self.num_experts} "
                             "experts must split into n_group groups, of which topk_group ≤ n_group are picked")
        if self.top_k > self.groups_per_token * (self.num_experts // self.groups):
            raise ValueError(f"num_experts_per_tok={self.top_k} is more than the experts of topk_group="
                             f"{self.groups_per_token} groups")
        return self


class MlaSpec(BaseModel):
    """Multi-head latent attention (DeepSeek-V2/V3): queries through a low-rank `q_lora_rank` (none: a plain
    projection), keys and values from one `kv_lora_rank` latent per token plus a shared `qk_rope_head_dim` RoPE key
    (what the KV cache holds), each head's query/key `qk_nope_head_dim` + `qk_rope_head_dim`, value `v_head_dim`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    q_lora_rank: int | None = Field(None, gt=0)
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)

    @property
    def latent(self) -> int:
        """Values one token's KV cache holds per layer: the latent and the RoPE key (576 for DeepSeek-V3)."""
        return self.kv_lora_rank + self.qk_rope_head_dim


class ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    architecture: str = "LlamaForCausalLM"  # HF `architectures[0]`
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim_override: int | None = Field(None, gt=0, description="HF `head_dim` when not hidden/heads")
    vocab_size: int = Field(gt=0)
    tie_word_embeddings: bool = False
    max_position_embeddings: int = Field(gt=0)
    default_weight_dtype: WeightDtype = "bf16"
    moe: MoeSpec | None = None
    expert_weight_dtype: WeightDtype | None = Field(
        None, description="the experts' own weight format when the checkpoint quantises them alone (gpt-oss: MXFP4)")
    mla: MlaSpec | None = None
    sliding_window: int | None = Field(None, gt=0, description="positions a sliding layer's token attends to, "
                                                                "itself included")
    attention_chunk: int | None = Field(None, gt=0, description="a chunked layer's token attends to its own chunk "
                                                                 "of this many positions, up to itself (Llama 4)")
    local_layers: tuple[int, ...] = Field((), description="the layers with sliding or chunked attention")

    @model_validator(mode="after")
    def _local_attention(self) -> ModelSpec:
        if self.local_layers and (self.sliding_window is None) == (self.attention_chunk is None):
            raise ValueError("local attention layers need exactly one of sliding_window and attention_chunk")
        if any(not 0 <= i < self.num_layers for i in self.local_layers) or len(set(self.local_layers)) < len(
                self.local_layers):
            raise ValueError(f"local attention layers must be distinct layers among the {self.num_layers}")
        return self

    @model_validator(mode="after")
    def _heads_group(self) -> ModelSpec:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_key_value_heads={self.num_kv_heads} must divide num_attention_heads={self.num_heads}"
            )
        if self.head_dim_override is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must be a multiple of num_attention_heads="
                             f"{self.num_heads} (or the config gives head_dim), as transformers requires")
        return self

    @property
    def layer_kinds(self) -> tuple[LayerKind, ...]:
        """Each layer's kind, in order (the layers of one model may differ)."""
        moe = self.moe
        return tuple("dense" if moe is None or i in moe.dense_layers else "moe" for i in range(self.num_layers))

    @property
    def layer_attention(self) -> tuple[AttentionKind, ...]:
        """Each layer's attention, in order."""
        local: AttentionKind = "sliding" if self.sliding_window is not None else "chunked"
        return tuple(local if i in self.local_layers else "full" for i in range(self.num_layers))

    @property
    def layer_types(self) -> tuple[str, ...]:
        """Each layer's kind and attention, the unit costs are priced by: `dense`, `moe`, or with local attention
        `dense/sliding`, `moe/chunked`…"""
        return tuple(kind if attention == "full" else f"{kind}/{attention}"
                     for kind, attention in zip(self.layer_kinds, self.layer_attention))

    @property
    def local_span(self) -> int | None:
        """The positions a local layer's KV cache needs at most: its window, or its chunk."""
        return self.sliding_window or self.attention_chunk

    @property
    def local_attention(self) -> tuple[AttentionKind, int] | None:
        """(sliding or chunked, its span) when some layer attends locally; None otherwise."""
        if not self.local_layers:
            return None
        if self.sliding_window is not None:
            return "sliding", self.sliding_window
        assert self.attention_chunk is not None
        return "chunked", self.attention_chunk

    @property
    def head_dim(self) -> int:
        return self.head_dim_override or self.hidden_size // self.num_heads

    @property
    def layer_params(self) -> int:
        """Parameters of one dense decoder layer: QKV, O, gate/up/down and two RMSNorm weights."""
        return self.layer_params_per_rank(1)

    def kind_params(self, kind: LayerKind, active: bool = False) -> int:
        """Parameters of one layer of `kind`; with `active`, those one token's forward pass reads (its top-k
        experts of a mixture-of-experts layer, not all of them)."""
        return self.layer_params_per_rank(1, kind, active)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        """The output projection (zero when tied to the embedding) plus the final norm."""
        return (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size) + self.hidden_size

    @property
    def num_params(self) -> int:
        return sum(self.kind_params(kind) for kind in self.layer_kinds) + self.embedding_params + self.lm_head_params

    @property
    def num_active_params(self) -> int:
        """Parameters one token's forward pass reads: all of a dense model's; a mixture-of-experts model's top-k
        experts (and router) on each MoE layer."""
        return (sum(self.kind_params(kind, active=True) for kind in self.layer_kinds) + self.embedding_params
                + self.lm_head_params)

    def layer_params_per_rank(self, tp: int, kind: LayerKind = "dense", active: bool = False, ep: int = 1,
                              moe_tp: int | None = None, redundant: int = 0) -> int:
        """One layer's parameters on one TP rank: its heads (KV heads replicated when TP > h_kv), its FFN
        slice — or the router (replicated) and its experts: (E + `redundant` copies)/ep of them, each split
        `moe_tp` ways (by default tp/ep; `active`: the top-k's) —, and both norms whole."""
        d, h = self.head_dim, self.hidden_size
        q_heads, kv_heads = self.num_heads // tp, self.kv_heads_per_rank(tp)
        attention = h * (q_heads + 2 * kv_heads) * d + q_heads * d * h
        if self.mla is not None:  # the low-rank projections and their norms are replicated, the heads split
            m = self.mla
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            q = h * q_heads * qk if m.q_lora_rank is None else h * m.q_lora_rank + m.q_lora_rank * (1 + q_heads * qk)
            attention = (q + h * m.latent + m.kv_lora_rank * (1 + q_heads * (m.qk_nope_head_dim + m.v_head_dim))
                         + q_heads * m.v_head_dim * h)
        if kind == "moe":
            assert self.moe is not None, "a moe layer needs the model's experts"
            experts = self.moe.top_k if active else (self.moe.num_experts + redundant) // ep
            split = moe_tp or tp // ep
            mlp = (h * self.moe.num_experts + experts * 3 * h * (self.moe.intermediate_size // split)
                   + self.moe.shared_experts * 3 * h * self.moe.intermediate_size // tp)
        else:
            mlp = 3 * h * (self.intermediate_size // tp)
        return attention + mlp + 2 * h

    def expert_params_per_rank(self, tp: int, ep: int = 1, moe_tp: int | None = None, redundant: int = 0) -> int:
        """The routed experts' share of `layer_params_per_rank` for a moe layer (what `expert_weight_dtype`
        stores)."""
        assert self.moe is not None, "experts need the model's experts"
        split = moe_tp or tp // ep
        return (self.moe.num_experts + redundant) // ep * 3 * self.hidden_size * (self.moe.intermediate_size // split)

    def vocab_params_per_rank(self, tp: int) -> int:
        """The embedding's (or the LM head's) rows on one rank: the vocabulary padded to a multiple of TP."""
        return -(-self.vocab_size // tp) * self.hidden_size

    def tp_problem(self, tp: int, ep: int = 1, moe_tp: int | None = None) -> str | None:
        """Why this model cannot be split over `tp` tensor-parallel ranks, or None when it can: heads and FFN
        split evenly, KV heads split or replicate evenly (vLLM's rule), the hidden size slices for hand-offs."""
        if self.num_heads % tp:
            return f"{self.num_heads} attention heads do not split over {tp} ranks"
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            return (f"{self.num_kv_heads} KV heads neither split over {tp} ranks nor replicate evenly "
                    f"({tp} is not a multiple of {self.num_kv_heads})")
        if self.intermediate_size % tp and "dense" in self.layer_kinds:
            return f"intermediate_size {self.intermediate_size} does not split over {tp} ranks"
        split = moe_tp or (tp // ep if tp % ep == 0 else 1)
        if self.moe is not None and self.moe.intermediate_size % split:
            return f"experts' intermediate size {self.moe.intermediate_size} does not split over {split} ranks"
        if self.hidden_size % tp:
            return f"hidden_size {self.hidden_size} does not split over {tp} ranks (the pipeline hand-off slices it)"
        return None

    def valid_tp(self) -> list[int]:
        return [tp for tp in range(1, self.num_heads + 1) if self.tp_problem(tp) is None]

    def weight_bytes(self, dtype: WeightDtype) -> float:
        return self.num_params * BYTES_PER_ELEMENT[dtype]

    def kv_heads_per_rank(self, tp: int) -> int:
        """KV heads each TP rank holds: h_kv/TP, but at least one (replicated heads, as vLLM does)."""
        return max(1, self.num_kv_heads // tp)

    def kv_bytes_per_token(self, dtype: KvDtype, tp: int = 1, num_layers: int | None = None) -> float:
        """K and V bytes one token occupies on one GPU: 2 · layers · h_kv/TP · d · b_kv; under MLA the latent and
        RoPE key, layers · (kv_lora_rank + qk_rope_head_dim) · b_kv, whole on every TP rank (vLLM replicates it)."""
        layers = self.num_layers if num_layers is None else num_layers
        if self.mla is not None:
            return layers * self.mla.latent * BYTES_PER_ELEMENT[dtype]
        return 2 * layers * self.kv_heads_per_rank(tp) * self.head_dim * BYTES_PER_ELEMENT[dtype]

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], name: str, source: str | None = None) -> ModelSpec:
        """Read the fields of an HF `config.json` mapping; refuses architectures we do not model.

        Errors name the config's own fields (`num_attention_heads`, not `num_heads`), headed by `source`.
        """
        where = source or f"model {name!r}"
        architectures = config.get("architectures") or []
        if not (isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)):
            raise ValueError(f"{where}: architectures = {cut(repr(architectures))}: need a list of class names "
                             f"such as [\"LlamaForCausalLM\"]")
        if architectures and not set(architectures) & set(_SUPPORTED_ARCHITECTURES):
            raise ValueError(f"{where}: architecture {cut(architectures[0])} is not supported "
                             f"(valid: {', '.join(_SUPPORTED_ARCHITECTURES)})")
        if "Llama4ForConditionalGeneration" in architectures:  # the language model's fields sit under text_config
            text = config.get("text_config")
            if not isinstance(text, dict):
                raise ValueError(f"{where}: text_config = {cut(repr(text))}: need the language model's fields")
            config = {key: value for key, value in config.items() if key != "text_config"} | text | {
                "architectures": architectures}
        if any(a.startswith("Llama4") for a in architectures):
            # a dense layer's MLP (transformers' default 16384); Llama 4's intermediate_size is an expert's
            dense = config.get("intermediate_size_mlp")
            config = config | {"intermediate_size": 16384 if dense is None else dense,
                               "expert_intermediate_size": config.get("intermediate_size")}
        missing = [key for key in _HF_REQUIRED if key not in config]
        if missing:
            raise ValueError(f"{where}: config.json lacks {', '.join(missing)}")
        sizes = {key: _hf_count(config[key], key, where) for key in _HF_REQUIRED}
        given = {key: None if config.get(key) is None else _hf_count(config[key], key, where) for key in _HF_OPTIONAL}
        weight_dtype = _hf_weight_dtype(config, where)
        tied = config.get("tie_word_embeddings", False)
        if not isinstance(tied, bool):
            raise ValueError(f"{where}: tie_word_embeddings = {cut(repr(tied))}: need true or false")
        heads = sizes["num_attention_heads"]
        if given["head_dim"] is None and sizes["hidden_size"] < heads:
            raise ValueError(f"{where}: hidden_size = {sizes['hidden_size']} is smaller than num_attention_heads = "
                             f"{heads}: heads would have no dimensions (give head_dim)")
        try:
            return cls(
                name=name,
                architecture=architectures[0] if architectures else "LlamaForCausalLM",
                hidden_size=sizes["hidden_size"],
                intermediate_size=sizes["intermediate_size"],
                num_layers=sizes["num_hidden_layers"],
                num_heads=heads,
                num_kv_heads=given["num_key_value_heads"] or heads,
                head_dim_override=given["head_dim"],
                vocab_size=sizes["vocab_size"],
                tie_word_embeddings=tied,
                max_position_embeddings=given["max_position_embeddings"] or 4096,
                default_weight_dtype=weight_dtype,
                moe=_hf_moe(config, sizes["num_hidden_layers"], where),
                expert_weight_dtype=_hf_expert_dtype(config),
                mla=_hf_mla(config, where),
                **_hf_local_attention(config, architectures[0] if architectures else "", sizes["num_hidden_layers"],
                                      where),
            )
        except ValidationError as err:  # the cross-field checks, whose messages use the HF names
            raise ValueError(f"{where}: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _hf_moe(config: dict[str, Any], num_layers: int, where: str) -> MoeSpec | None:
    """The experts of a Mixtral (`num_local_experts`, `intermediate_size` per expert) or Qwen3-MoE
    (`num_experts`, `moe_intermediate_size`; `mlp_only_layers` and `decoder_sparse_step` keep some layers dense,
    as transformers' Qwen3MoeDecoderLayer decides) config; None for a dense one."""
    if "n_routed_experts" in config:
        return _hf_deepseek_moe(config, num_layers, where)
    architectures = config.get("architectures") or []
    if any(a.startswith("Llama4") for a in config.get("architectures") or []):
        return _hf_llama4_moe(config, num_layers, where)
    for architecture, key in (("MixtralForCausalLM", "num_local_experts"), ("Qwen3MoeForCausalLM", "num_experts"),
                              ("GptOssForCausalLM", "num_local_experts")):
        if architecture in architectures and key not in config:
            raise ValueError(f"{where}: config.json lacks {key} ({architecture} has experts)")
    if "num_local_experts" not in config and "num_experts" not in config:
        return None
    mixtral = "num_local_experts" in config
    experts = _hf_count(config["num_local_experts" if mixtral else "num_experts"],
                        "num_local_experts" if mixtral else "num_experts", where)
    top_key = "num_experts_per_tok" if "num_experts_per_tok" in config or "experts_per_token" not in config \
        else "experts_per_token"  # gpt-oss names it both ways
    if top_key not in config:
        raise ValueError(f"{where}: config.json lacks num_experts_per_tok")
    top_k = _hf_count(config[top_key], top_key, where)
    size_key = "intermediate_size" if mixtral else "moe_intermediate_size"
    if size_key not in config:
        raise ValueError(f"{where}: config.json lacks {size_key}")
    size = _hf_count(config[size_key], size_key, where)
    dense: tuple[int, ...] = ()
    if not mixtral:
        only = config.get("mlp_only_layers") or []
        if not (isinstance(only, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in only)):
            raise ValueError(f"{where}: mlp_only_layers = {cut(repr(only))}: need a list of layer indices")
        step = _hf_count(config.get("decoder_sparse_step", 1), "decoder_sparse_step", where)
        dense = tuple(i for i in range(num_layers) if i in only or (i + 1) % step)
    try:
        return MoeSpec(num_experts=experts, top_k=top_k, intermediate_size=size, dense_layers=dense)
    except ValidationError as err:
        raise ValueError(f"{where}: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _hf_llama4_moe(config: dict[str, Any], num_layers: int, where: str) -> MoeSpec:
    """Llama 4's experts: `num_local_experts` of the text config's `intermediate_size`, top `num_experts_per_tok`,
    and one shared expert of that size, on the layers transformers makes sparse (every
    `interleave_moe_layer_step`-th, from step − 1); the others a dense MLP of `intermediate_size_mlp`."""
    missing = [key for key in ("num_local_experts", "num_experts_per_tok") if config.get(key) is None]
    if missing or config.get("expert_intermediate_size") is None:
        raise ValueError(f"{where}: config.json lacks {', '.join(missing) or 'intermediate_size'} (Llama 4's experts)")
    counts = {key: _hf_count(config[key], key, where) for key in ("num_local_experts", "num_experts_per_tok")}
    size = config["expert_intermediate_size"]
    step = _hf_count(config.get("interleave_moe_layer_step", 1), "interleave_moe_layer_step", where)
    sparse = set(range(step - 1, num_layers, step))
    try:
        return MoeSpec(num_experts=counts["num_local_experts"], top_k=counts["num_experts_per_tok"],
                       intermediate_size=_hf_count(size, "intermediate_size", where), shared_experts=1,
                       dense_layers=tuple(i for i in range(num_layers) if i not in sparse))
    except ValidationError as err:
        raise ValueError(f"{where}: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _hf_deepseek_moe(config: dict[str, Any], num_layers: int, where: str) -> MoeSpec:
    """DeepSeek-V3's experts: `n_routed_experts` of `moe_intermediate_size`, `n_shared_experts` run by every token,
    the first `first_k_dense_replace` layers dense (and, as transformers decides, layers off `moe_layer_freq`),
    routing limited to `topk_group` of `n_group` groups."""
    counts: dict[str, int] = {}
    for key, default in (("n_routed_experts", None), ("num_experts_per_tok", None), ("moe_intermediate_size", None),
                         ("n_shared_experts", 0), ("first_k_dense_replace", 0), ("moe_layer_freq", 1),
                         ("n_group", 1), ("topk_group", 1)):
        value = config.get(key)
        if value is None:  # absent or null: its default, if it has one
            if default is None:
                raise ValueError(f"{where}: config.json lacks {key}")
            value = default
        zero = default == 0 and isinstance(value, int) and not isinstance(value, bool) and value == 0
        counts[key] = 0 if zero else _hf_count(value, key, where)
    freq, first = counts["moe_layer_freq"], counts["first_k_dense_replace"]
    dense = tuple(i for i in range(num_layers) if i < first or i % freq)
    try:
        return MoeSpec(num_experts=counts["n_routed_experts"], top_k=counts["num_experts_per_tok"],
                       intermediate_size=counts["moe_intermediate_size"], dense_layers=dense,
                       shared_experts=counts["n_shared_experts"], groups=counts["n_group"],
                       groups_per_token=counts["topk_group"])
    except ValidationError as err:
        raise ValueError(f"{where}: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None


_LOCAL_TYPES = {"full_attention": None, "sliding_attention": "sliding", "chunked_attention": "chunked"}


def _hf_local_attention(config: dict[str, Any], architecture: str, num_layers: int, where: str) -> dict[str, Any]:
    """Which layers attend within a sliding window, as transformers decides: a config's `layer_types`
    (transformers ≥ 4.53 writes it), else the architecture's rule — Mistral and Phi-3 every layer when
    `sliding_window` is set, Qwen2/3 the layers from `max_window_layers` on when `use_sliding_window`, Gemma 2
    every other layer from the first, Gemma 3 all but every `sliding_window_pattern`-th."""
    if architecture.startswith("Llama4") and config.get("attention_chunk_size") is not None:
        # chunked local attention on the RoPE layers (no_rope_layers[i] = 1; by default all but every 4th, which
        # attend globally without RoPE, as transformers' Llama4TextConfig decides)
        rope = config.get("no_rope_layers") or [int((i + 1) % 4 != 0) for i in range(num_layers)]
        if not (isinstance(rope, list) and len(rope) == num_layers and all(r in (0, 1) for r in rope)):
            raise ValueError(f"{where}: no_rope_layers = {cut(repr(rope))}: need 0 or 1 for each of the "
                             f"{num_layers} layers")
        local = tuple(i for i, r in enumerate(rope) if r)
        chunk = _hf_count(config["attention_chunk_size"], "attention_chunk_size", where)
        return {"attention_chunk": chunk, "local_layers": local} if local else {}
    window = config.get("sliding_window")
    types = config.get("layer_types")
    if types is not None:
        if not (isinstance(types, list) and len(types) == num_layers
                and all(isinstance(t, str) and t in _LOCAL_TYPES for t in types)):
            raise ValueError(f"{where}: layer_types = {cut(repr(types))}: need one of {', '.join(_LOCAL_TYPES)} "
                             f"for each of the {num_layers} layers")
        local = tuple(i for i, t in enumerate(types) if _LOCAL_TYPES[t] == "sliding")
        if any(_LOCAL_TYPES[t] == "chunked" for t in types):
            raise ValueError(f"{where}: layer_types: chunked_attention outside Llama 4 is not supported")
    elif window is None:
        return {}
    elif architecture in ("MistralForCausalLM", "Phi3ForCausalLM"):
        local = tuple(range(num_layers))
    elif architecture.startswith("Qwen"):
        if not config.get("use_sliding_window", False):
            return {}
        start = config.get("max_window_layers", num_layers)
        start = num_layers if start is None else _hf_count(start, "max_window_layers", where)
        local = tuple(range(min(start, num_layers), num_layers))
    elif architecture == "Gemma2ForCausalLM":
        local = tuple(range(0, num_layers, 2))
    elif architecture == "Gemma3ForCausalLM":
        pattern = _hf_count(config.get("sliding_window_pattern", 6), "sliding_window_pattern", where)
        local = tuple(i for i in range(num_layers) if (i + 1) % pattern)
    else:
        return {}
    if not local:
        return {}
    if window is None:
        raise ValueError(f"{where}: config.json lacks sliding_window (its layer_types has sliding layers)")
    return {"sliding_window": _hf_count(window, "sliding_window", where), "local_layers": local}


def _hf_mla(config: dict[str, Any], where: str) -> MlaSpec | None:
    """Multi-head latent attention's ranks and head sizes (DeepSeek-V2/V3 configs), or None without `kv_lora_rank`.
    The multi-token-prediction layers (`num_nextn_predict_layers`) are left out: vLLM loads them only to speculate."""
    if config.get("kv_lora_rank") is None:
        return None
    keys = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    missing = [key for key in keys if config.get(key) is None]
    if missing:
        raise ValueError(f"{where}: config.json lacks {', '.join(missing)} (multi-head latent attention)")
    sizes = {key: _hf_count(config[key], key, where) for key in keys}
    q_lora = config.get("q_lora_rank")
    return MlaSpec(q_lora_rank=None if q_lora is None else _hf_count(q_lora, "q_lora_rank", where), **sizes)


def _hf_expert_dtype(config: dict[str, Any]) -> WeightDtype | None:
    """The experts' own format when the checkpoint quantises them and not the rest: gpt-oss's `mxfp4`
    quantization_config (its modules_to_not_convert: attention, router, embedding, head), read as fp4 (the
    E8M0 scale per 32 values, 1/64 more, left out)."""
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict) and quantization.get("quant_method") == "mxfp4":
        return "fp4"
    return None


def _hf_weight_dtype(config: dict[str, Any], where: str) -> WeightDtype:
    """The weights' format: a `quantization_config` with fp8 weights (DeepSeek-V3's block-scaled e4m3) says fp8;
    otherwise `torch_dtype`."""
    dtype = config.get("torch_dtype", "bfloat16")
    if not isinstance(dtype, str) or dtype not in HF_DTYPES:
        raise ValueError(f"{where}: torch_dtype = {cut(repr(dtype))} (valid: {', '.join(HF_DTYPES)})")
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict) and quantization.get("quant_method") == "fp8":
        return "fp8"
    return HF_DTYPES[dtype]


_HF_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_HF_OPTIONAL = ("num_key_value_heads", "head_dim", "max_position_embeddings")  # null or absent: the default


HF_COUNT_LIMIT = 2**31 - 1  # sizes and counts of any real model fit a signed 32-bit int (torch's own limit for dims)


def _hf_count(value: Any, key: str, where: str) -> int:
    """A positive whole number of config.json (4096.0 too, as some JSON writers give it)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= HF_COUNT_LIMIT:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{where}: {key} = {cut(repr(value))}: need a whole number greater than 0")
    if value > HF_COUNT_LIMIT:
        raise ValueError(f"{where}: {key} = {cut(repr(value))}: more than {HF_COUNT_LIMIT:,} (no model is that large)")
    return value


def catalog_names() -> tuple[str, ...]:
    root = resources.files("splitsim.models") / _CATALOG
    return tuple(sorted(entry.name for entry in root.iterdir() if entry.is_dir()))


def hub_id(ref: str) -> str:
    """The Hugging Face repository a catalog model's config came from (its `_source`), for commands such as
    `vllm serve`; other references as given."""
    if ref not in catalog_names():
        return ref
    path = Path(str(resources.files("splitsim.models") / _CATALOG / ref / "config.json"))
    source = str(read_json_file(path, "model config").get("_source", ""))
    repo = source.split(" ", 1)[0]
    return repo if repo.count("/") == 1 else ref


def load_model(ref: str | ModelSpec) -> ModelSpec:
    """A catalog name, a `config.json` path, a folder holding one, or the spec itself (as resolved inputs
    carry it to a worker)."""
    if isinstance(ref, ModelSpec):
        return ref
    if ref in catalog_names():
        path = Path(str(resources.files("splitsim.models") / _CATALOG / ref / "config.json"))
        name = ref
    else:
        path = Path(ref)
        if os.path.isdir(path):
            path = path / "config.json"
        elif not ("/" in ref or os.sep in ref or ref.endswith(".json") or os.path.exists(path)):
            raise ValueError(f"model {cut(repr(ref))}: not a catalog name ({', '.join(catalog_names())}) "
                             "nor a config.json file or a folder holding one")
        name = path.parent.name
    config = read_json_file(path, "model config", "hidden_size, num_hidden_layers, num_attention_heads…")
    return ModelSpec.from_hf_config(config, name, shown(path))


def pp_layer_counts(num_layers: int, pp: int) -> list[int]:
    """Layers per stage as vLLM splits them (`get_pp_indices`): the remainder goes one each to the
    stages before the last, from the second-to-last backwards, since the last stage holds the LM head."""
    counts = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        counts[-i] += 1
    return counts
